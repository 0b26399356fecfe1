"""The schemas the site checks payloads with are the docs' schemas: the bundle shipped in the
package (examroom/contract/schemas.json) is rebuilt from docs/ and must not drift."""
from __future__ import annotations

from pathlib import Path

from examroom.contract.schemas import PayloadCheck, bundled, from_docs
from tests.schemas import load_schemas

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_shipped_bundle_is_the_docs_schemas():
    assert bundled() == from_docs(DOCS), "docs changed: run .venv/bin/python -m examroom.contract.schemas"
    assert bundled() == load_schemas()  # and the tests' reading of the docs agrees


def test_an_event_of_a_kind_the_contract_does_not_know_is_flagged():
    check = PayloadCheck()
    ev = {"id": "x", "seq": 1, "ts": "2026-06-07T09:00:00+08:00", "kind": "mystery", "session": 1,
          "replayed": False, "data": {}}
    assert check.event("mystery", ev) == ["kind: 'mystery' is not a kind of the contract"]
    assert check.event("note", ev)[0].startswith("kind: 'mystery' differs from the topic's 'note'")
