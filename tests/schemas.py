"""The JSON Schemas of the MQTT contract, as the docs publish them, read one way.

A schema is fenced ```json schema:NAME (NAME: ``status``, ``heartbeat``, ``event``,
``reply``, ``data/<kind>`` for an event's data, ``device/<kind>`` for a heartbeat's
device entry); an example payload is fenced plain ```json. Any other ``json`` fence,
or a schema in a plain fence, makes ``doc_blocks()`` fail loudly: a schema that is
skipped is a contract nobody checks.

Shared by test_contract.py, test_audio.py, test_camera.py and checkin_station.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ("mqtt.md", "events-checkin.md", "events-devices.md")  # the contract pages
# Every fenced block whose info string starts with "json" (any case): (info string, body).
JSON_FENCE = re.compile(r"^```[ \t]*((?i:json)[^\n]*?)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SCHEMA_FENCE = re.compile(r"json schema:(\S+)")
# Keywords only a schema has, never an example payload: such a block must be fenced as a schema.
SCHEMA_KEYWORDS = re.compile(r'"(\$schema|\$id|\$defs|\$ref|properties|patternProperties|additionalProperties'
                             r'|oneOf|anyOf|allOf)"\s*:')
KIND_ID = re.compile(r"^examroom/(\w+)\.json$")  # the $id events-checkin.md's schemas also carry


def page_blocks(page: str, text: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(page, name, body) of each ```json schema:NAME block of one page, and every block fenced otherwise
    that should not be: a ``json`` fence of another style, or a schema in a plain ```json fence."""
    blocks: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for m in JSON_FENCE.finditer(text):
        info, body = m.group(1), m.group(2)
        where = f"{page}:{text.count(chr(10), 0, m.start()) + 1}"
        named = SCHEMA_FENCE.fullmatch(info)
        if named:
            name = named.group(1)
            blocks.append((page, name, body))
            try:
                found = KIND_ID.match(str(json.loads(body).get("$id", "")))
            except (ValueError, AttributeError):
                continue  # load_schemas() says what is wrong with it
            if found and name != f"data/{found.group(1)}":
                problems.append(f'{where}: schema:{name} has "$id" {found.group(0)!r}, which names data/{found.group(1)}')
        elif info != "json":
            problems.append(f"{where}: fence ```{info}: a schema is fenced ```json schema:NAME, an example ```json")
        elif SCHEMA_KEYWORDS.search(body):
            problems.append(f"{where}: a JSON Schema in a plain ```json fence (kept for examples): "
                            "fence it ```json schema:NAME")
    return blocks, problems


def doc_blocks(pages: tuple[str, ...] = PAGES) -> list[tuple[str, str, str]]:
    """(page, name, body) of every schema block of the contract pages; fails on a wrongly fenced block."""
    out: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for page in pages:
        blocks, wrong = page_blocks(page, (DOCS / page).read_text(encoding="utf-8"))
        out += blocks
        problems += wrong
    if problems:
        pytest.fail("schema blocks not read:\n" + "\n".join(problems))
    return out


def load_schemas(pages: tuple[str, ...] = PAGES) -> dict[str, dict]:
    """Every schema of the pages by NAME, each checked to be JSON and a valid JSON Schema 2020-12."""
    schemas: dict[str, dict] = {}
    for page, name, body in doc_blocks(pages):
        try:
            schema = json.loads(body)
        except ValueError as e:
            pytest.fail(f"{page}: schema:{name} is not valid JSON: {e}")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            pytest.fail(f"{page}: schema:{name} is not a valid JSON Schema 2020-12: {e.message}")
        assert name not in schemas, f"{page}: schema:{name} is documented twice"
        schemas[name] = schema
    return schemas


def validator(name: str) -> Draft202012Validator:
    """A validator for one documented schema, formats (date-time) checked."""
    return Draft202012Validator(load_schemas()[name], format_checker=Draft202012Validator.FORMAT_CHECKER)
