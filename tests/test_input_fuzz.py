"""Bad input gets a clear error (exit 2 with file, key or row, and what was expected), never a
traceback: the cases a fault campaign found, then hypothesis over the loaders and parsers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examroom.agent.config import parse
from examroom.agent.control import dispatch
from examroom.agent.errors import ConfigError
from examroom.agent.seatplan import load_seatplan

ROOT = Path(__file__).resolve().parent.parent
PLAN = (ROOT / "config" / "seatplan-room101.csv").read_text(encoding="utf-8-sig")
HEADER, ROW1, *_ = PLAN.splitlines()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(tmp_path: Path, plan_name: str, blob: bytes) -> subprocess.CompletedProcess:
    (tmp_path / plan_name).write_bytes(blob)
    cfg = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    cfg = "\n".join(f'seatplan = "{tmp_path / plan_name}"' if line.startswith("seatplan =") else line
                    for line in cfg.splitlines())
    (tmp_path / "agent.toml").write_text(cfg, encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", "check-config", str(tmp_path / "agent.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_plan_with_cr_line_ends_is_read(tmp_path):
    """Excel's "CSV (Macintosh)" ends lines with CR alone: a real format, read like any other."""
    r = check(tmp_path, "mac.csv", PLAN.replace("\n", "\r").encode())
    assert r.returncode == 0, r.stderr
    assert "seat plan: 3 candidates" in r.stdout


@pytest.mark.parametrize("name,blob,expected", [
    ("big.csv", f"{HEADER}\n{ROW1.replace(',', ',' + 'x' * 140_000 + ',', 1)}\n".encode(), "field larger than"),
    ("bigint.json", b'{"room": "room101", "candidates": [{"seat": 1, "ticket": ' + b"9" * 5000 + b"}]}",
     "more than 4,300 digits"),
    ("deep.json", b'{"room": "room101", "candidates": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("gbk.csv", PLAN.encode("gbk"), "iconv -f GB18030 -t UTF-8 gbk.csv > gbk-utf8.csv"),
    ("name.csv", f"{HEADER}\nroom101,2,20260102,李芳,110105199104120028,李芳,,false\n".encode(), "card_uids"),
], ids=["field-over-131072", "int-over-4300-digits", "json-nested-100000", "gbk", "name-in-card_uids"])
def test_bad_plans_are_exit_2_with_a_message(tmp_path, name, blob, expected):
    r = check(tmp_path, name, blob)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {tmp_path / name}: ") and expected in r.stderr
    assert "Traceback" not in r.stderr and "李芳" not in r.stderr


def test_a_nul_in_a_config_path_is_exit_2(tmp_path):
    cfg = tmp_path / "nul.toml"
    cfg.write_text((ROOT / "config" / "example.toml").read_text(encoding="utf-8").replace(
        'seatplan = "', 'seatplan = "a\\u0000', 1), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "check-config", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "checkin.seatplan: expected a path; it holds a NUL character" in r.stderr


@pytest.mark.parametrize("text", ["a = " + "[" * 50_000 + "]" * 50_000, "a = " + "9" * 5000], ids=["deep", "bigint"])
def test_hostile_toml_is_a_config_error(text):
    with pytest.raises(ConfigError, match="nested too deeply|more than 4,300 digits"):
        parse(text, "agent.toml")


@FUZZ
@given(st.text(max_size=400))
def test_fuzzed_config_text_is_a_config_or_nothing(text):
    try:
        parse(text, "agent.toml")
    except ConfigError:
        pass


_CELL = st.one_of(st.text(max_size=30), st.sampled_from(["room101", "1", "110105199003070017", "true", "张三",
                                                          "04A1B2C3", "", '"', "\r", "\x00"]))


@FUZZ
@given(st.lists(st.lists(_CELL, min_size=0, max_size=9), max_size=6), st.sampled_from(["\n", "\r\n", "\r"]))
def test_fuzzed_csv_plans_load_or_say_why_without_a_name(tmp_path, rows, eol):
    text = HEADER + eol + eol.join(",".join(r) for r in rows) + eol
    p = tmp_path / "plan.csv"
    p.write_text(text, encoding="utf-8", newline="")
    try:
        load_seatplan(p, "room101")
    except ConfigError as e:
        assert all(str(x).startswith(f"{p}: ") for x in e.problems)
        assert "张三" not in str(e)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=40))
def test_fuzzed_json_plans_load_or_say_why(tmp_path, doc):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    try:
        load_seatplan(p, "room101")
    except ConfigError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                              max_leaves=20).map(lambda v: json.dumps({"cmd": "echo", "args": v}).encode())))
def test_fuzzed_control_requests_get_a_reply(line):
    reply = dispatch({"echo": lambda a: {"args": a}}, line)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    json.dumps(reply)
