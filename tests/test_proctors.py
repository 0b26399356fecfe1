"""Proctors of the room (docs/procedure.md): sign-in from the roster, the rules checked when entry
opens, on demand and at each later sign-in, the failed check an alert, everything published with
roster ids only.

In-process cases drive ``Proctors`` on a session book with a movable clock; the end-to-end case
runs a real agent against a real Mosquitto and reads the retained status and the events the site
sees, each validated against the docs' schemas and scanned for names and units.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from examroom.agent.config import parse
from examroom.agent.control import CALLER, RequestError
from examroom.agent.errors import ConfigError
from examroom.agent.privacy import Scrubber
from examroom.agent.proctors import Proctor, Proctors, Roster, Rules, judge
from examroom.agent.schedule import parse_sessions
from examroom.agent.seatplan import SeatPlan
from examroom.agent.session_book import SessionBook
from examroom.contract.topics import Topics
from examroom.contract.vocabulary import CheckTrigger
from tests.agentproc import AgentProcess, write_config
from tests.mqttwatch import Watcher
from tests.schemas import load_schemas, validator

BJ = timezone(timedelta(hours=8))
TOPICS = Topics("exam", "site01", "room101")
ROSTER = [{"id": "P01", "name": "王芳", "unit": "第一中学", "sex": "F"},
          {"id": "P02", "name": "赵强", "unit": "第二中学", "sex": "M"},
          {"id": "P03", "name": "钱伟", "unit": "第一中学", "sex": "M"},
          {"id": "P04", "name": "孙丽", "unit": "第三中学", "sex": ""}]
PRIVATE = ("王芳", "赵强", "钱伟", "孙丽", "第一中学", "第二中学", "第三中学")
RULES = Rules(required=2, require_woman=True, distinct_units=True)


def at(text: str) -> float:
    return datetime.fromisoformat(text + "+08:00").timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def checked(emitted: list[tuple[str, dict]]) -> None:
    for kind, data in emitted:
        assert list(validator(f"data/{kind}").iter_errors(json.loads(json.dumps(data)))) == [], (kind, data)
        text = json.dumps(data, ensure_ascii=False)
        assert not any(p in text for p in PRIVATE), text


class Room:
    """A session book with the proctors attached, as the daemon wires them; ``start`` again is a restart."""

    def __init__(self, tmp: Path, rules: Rules = RULES, roster: list[dict] = ROSTER) -> None:
        self.tmp, self.rules, self.roster = tmp, rules, roster
        self.clock = Clock(at("2026-06-07T08:00:00"))
        self.emitted: list[tuple[str, dict]] = []
        self.schedule = parse_sessions([
            {"id": "math-am", "subject": "Maths", "start": "2026-06-07T09:00:00+08:00",
             "end": "2026-06-07T11:00:00+08:00"},
            {"id": "eng-pm", "subject": "English", "start": "2026-06-07T15:00:00+08:00",
             "end": "2026-06-07T17:00:00+08:00"}], "agent.toml")
        self.start()

    def start(self) -> None:
        self.book = SessionBook(self.schedule, SeatPlan.empty("101"), lambda k, d: self.emitted.append((str(k), d)),
                                self.clock, self.tmp / "records", Scrubber(), self.tmp / "book.journal")
        self.proctors = Proctors(Roster(self.roster), self.rules, self.clock, ZoneInfo("Asia/Shanghai"))
        self.proctors.attach(self.book)
        self.book.start()

    def tick(self, when: str) -> None:
        self.clock.t = at(when)
        self.book.tick(self.clock.t)

    def sign(self, proctor: str) -> dict:
        return self.proctors.signin({"proctor": proctor, CALLER: "alice"})

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.emitted if k == kind]


def people(*ids: str) -> list[Proctor]:
    roster = Roster(ROSTER)
    return [p for p in map(roster.find, ids) if p is not None]


@pytest.mark.parametrize("ids,ok,enough,woman,distinct,problem", [
    (("P01", "P02"), True, True, True, True, None),
    (("P01",), False, False, True, True, "1 of 2 required proctors signed in"),
    (("P02", "P04"), False, True, False, True,
     "no woman among the proctors signed in (the roster gives no sex for P04)"),
    (("P01", "P03"), False, True, True, False, "proctors from the same unit: P01, P03"),
    ((), False, False, False, True, "0 of 2 required proctors signed in"),
], ids=["pass", "too-few", "no-woman", "same-unit", "nobody"])
def test_each_rule_passes_and_fails_on_its_own(ids, ok, enough, woman, distinct, problem) -> None:
    v = judge(people(*ids), RULES)
    assert (v["ok"], v["enough"], v["woman"], v["distinct_units"]) == (ok, enough, woman, distinct)
    assert (problem in v["problems"]) if problem else v["problems"] == []


def test_rules_that_are_off_are_null_and_units_compare_as_written_loosely() -> None:
    v = judge(people("P02", "P03"), Rules(2, False, False))
    assert (v["ok"], v["woman"], v["distinct_units"]) == (True, None, None)
    twins = [Proctor("A", "a", "第一中学", "F"), Proctor("B", "b", " 第一 中学 ", "M")]
    assert judge(twins, RULES)["distinct_units"] is False
    assert judge(people("P01", "P02", "P03"), Rules(3, True, True))["problems"] == [
        "proctors from the same unit: P01, P03"]


def test_the_check_at_entry_fails_alerts_and_clears_at_the_next_signin(tmp_path: Path) -> None:
    room = Room(tmp_path)
    first = room.sign("p01")  # the roster's spelling is what is kept
    assert (first["session"], first["proctor"], first["signed_in"], first["check"]) == ("math-am", "P01", ["P01"], None)
    assert room.sign("P01")["repeat"] is True and len(room.of("proctor_signin")) == 1
    room.tick("2026-06-07T08:29:59")
    assert room.of("proctor_check") == [] and room.proctors.alerts() == []
    room.tick("2026-06-07T08:30:00")  # entry opens
    [entry] = room.of("proctor_check")
    assert (entry["trigger"], entry["ok"], entry["signed_in"], entry["required"]) == ("entry", False, ["P01"], 2)
    assert room.proctors.alerts() == ["proctors: session math-am: 1 of 2 required proctors signed in"]
    room.tick("2026-06-07T08:31:00")
    assert len(room.of("proctor_check")) == 1  # once per session

    room.start()  # a restart keeps the finding (journal) and does not check again
    room.tick("2026-06-07T08:32:00")
    assert len(room.of("proctor_check")) == 1 and room.proctors.alerts() != []

    second = room.sign("P02")
    assert second["check"]["trigger"] == "signin" and second["check"]["ok"] is True
    assert room.proctors.alerts() == []
    demand = room.proctors.check({})["check"]
    assert (demand["trigger"], demand["ok"]) == ("demand", True)
    assert [c["trigger"] for c in room.of("proctor_check")] == ["entry", "signin", "demand"]

    room.tick("2026-06-07T11:00:00")
    [record] = room.of("session_record")
    assert record["proctors"]["signed_in"] == ["P01", "P02"]
    assert [(c["trigger"], c["ok"]) for c in record["proctors"]["checks"]] == [
        ("entry", False), ("signin", True), ("demand", True)]
    files = json.loads((tmp_path / "records" / "math-am-101.json").read_text(encoding="utf-8"))
    assert files["proctors"] == ["P01", "P02"]
    checked(room.emitted)


def test_signins_belong_to_the_session_ahead_and_each_session_has_its_own(tmp_path: Path) -> None:
    room = Room(tmp_path)
    room.sign("P01")
    room.sign("P02")
    room.tick("2026-06-07T11:00:00")  # the morning ends
    assert room.proctors.listing({})["session"] == "eng-pm"
    assert not any(p["signed_in"] for p in room.proctors.listing({})["roster"])
    room.sign("P03")
    room.tick("2026-06-07T14:30:00")  # the afternoon's entry: one man, alone
    check = room.of("proctor_check")[-1]
    assert (check["session"], check["trigger"], check["woman"]) == ("eng-pm", "entry", False)
    assert room.proctors.alerts() == [("proctors: session eng-pm: 1 of 2 required proctors signed in; "
                                       "no woman among the proctors signed in")]
    listed = room.proctors.listing({})  # the box's own screen: names and units are for the person there
    assert {p["id"]: (p["name"], p["signed_in"]) for p in listed["roster"]}["P03"] == ("钱伟", True)
    assert listed["check"]["ok"] is False
    room.tick("2026-06-07T17:00:00")
    assert room.proctors.alerts() == []  # nothing ahead
    with pytest.raises(RequestError, match="ended"):
        room.sign("P01")
    checked(room.emitted)


def test_signin_refuses_strangers_and_rooms_without_a_roster_or_a_schedule(tmp_path: Path) -> None:
    room = Room(tmp_path)
    for who in ("P09", "王芳", "", None):
        with pytest.raises(RequestError, match="roster"):
            room.proctors.signin({"proctor": who})
    bare = Room(tmp_path / "bare", roster=[])
    with pytest.raises(RequestError, match=r"no \[\[proctor\]\] roster"):
        bare.sign("P01")
    bare.tick("2026-06-07T08:30:00")
    assert bare.of("proctor_check") == [] and bare.proctors.alerts() == []  # nobody to check
    no_book = Proctors(Roster(ROSTER), RULES, time.time, BJ)
    no_book.attach(None)
    with pytest.raises(RequestError, match="no exam session"):
        no_book.signin({"proctor": "P01"})
    assert no_book.alerts() == [] and no_book.listing({})["session"] is None


def test_the_roster_takes_sex_as_F_M_or_in_chinese(tmp_path: Path) -> None:
    base = 'schema_version = 1\n[site]\nid = "s"\n[room]\nid = "r"\n'
    rows = "".join(f'[[proctor]]\nid = "P{i}"\nname = "n{i}"\nunit = "u"\nsex = "{s}"\n'
                   for i, s in enumerate(("女", "男", "F", "m")))
    cfg = parse(base + rows + '[[proctor]]\nid = "P9"\nname = "n"\nunit = "u"\n', str(tmp_path / "a.toml"))
    assert [p["sex"] for p in cfg.proctors] == ["F", "M", "F", "M", ""]
    with pytest.raises(ConfigError, match="proctor.0..sex"):
        parse(base + '[[proctor]]\nid = "P1"\nname = "n"\nunit = "u"\nsex = "X"\n', str(tmp_path / "b.toml"))


def test_the_trigger_words_are_the_documented_ones() -> None:
    schemas = load_schemas()
    assert {t.value for t in CheckTrigger} == set(schemas["data/proctor_check"]["properties"]["trigger"]["enum"])


# -- end to end -----------------------------------------------------------------------------

def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, BJ).isoformat(timespec="milliseconds")


def test_a_real_room_alerts_the_site_until_its_proctors_meet_the_rules(tmp_path: Path, broker, watcher: Watcher):
    now = time.time()
    roster = "".join(f'\n[[proctor]]\nid = "{p["id"]}"\nname = "{p["name"]}"\nunit = "{p["unit"]}"\n'
                     + (f'sex = "{p["sex"]}"\n' if p["sex"] else "") for p in ROSTER)
    cfg = write_config(tmp_path, broker.port, extra="[procedure]\nproctors_required = 2\n" + roster
                       + f'[[exam]]\nid = "e2e"\nsubject = "Maths (e2e)"\nstart = "{iso(now + 4)}"\n'
                       f'end = "{iso(now + 600)}"\nentry_before_min = {3 / 60!r}\nlate_cutoff_min = 1\n')
    agent = AgentProcess(cfg, tmp_path / "room101.sock").start()
    try:
        cli = [sys.executable, "-m", "examroom.agent.cli", "proctor"]
        out = subprocess.run([*cli, "sign-in", "P02", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "P02 signed in for session e2e" in out.stdout, out
        entry, *more = watcher.wait_for(lambda _: watcher.events("proctor_check"), timeout=10)  # entry opens at +1 s
        assert more == [], more
        assert (entry["data"]["trigger"], entry["data"]["ok"], entry["data"]["woman"]) == ("entry", False, False)
        alert = watcher.wait_for(lambda ms: [m.json for m in ms if m.topic == TOPICS.status and m.json
                                             and any(a.startswith("proctors:") for a in m.json.get("alerts", []))])
        assert alert[-1]["state"] == "alert"
        assert agent.call("status")["state"] == "alert"

        listing = subprocess.run([*cli, "list", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0 and "赵强" in listing.stdout  # on the box's screen only
        failing = subprocess.run([*cli, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert failing.returncode == 1 and "FAIL" in failing.stdout, failing
        assert agent.call("proctor_signin", proctor="P01")["check"]["ok"] is True  # a woman from another unit
        watcher.wait_for(lambda ms: [m for m in ms if m.topic == TOPICS.status and m.json
                                     and m.json["state"] == "online"])
        passing = subprocess.run([*cli, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert passing.returncode == 0 and "PASS" in passing.stdout, passing
        agent.call("note", text="marker")  # events come in seq order: once the marker is here, all are
        watcher.wait_for(lambda _: watcher.events("note"))
        assert [e["data"]["proctor"] for e in watcher.events("proctor_signin")] == ["P02", "P01"]
        assert [(e["data"]["trigger"], e["data"]["ok"]) for e in watcher.events("proctor_check")] == [
            ("entry", False), ("demand", False), ("signin", True), ("demand", True)]
        for m in list(watcher.messages):
            text = m.raw.decode(errors="replace")
            assert not any(p in text for p in PRIVATE), (m.topic, text)
            if "/event/" in m.topic:
                kind = m.topic.rsplit("/", 1)[-1]
                assert list(validator(f"data/{kind}").iter_errors(m.json["data"])) == [], m
        assert agent.call("proctor_list")["roster"][0]["name"] == "王芳"  # the control socket only
    finally:
        agent.kill()
