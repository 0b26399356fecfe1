"""Contract version 2 (issue 12, item 9): every time in an event's data is ISO 8601 with the
exam zone's offset, while the box keeps floats inside, so a journal written before the change
still replays. In-process on the check-in station's fixtures (tests/checkin_station.py: every
payload is validated against the docs, date-time formats checked)."""
from __future__ import annotations

import json
import re
from typing import Any, Iterator
from zoneinfo import ZoneInfo

from examroom.agent.checkin import CheckinStation
from examroom.agent.privacy import Scrubber
from examroom.agent.proctors import Roster
from examroom.agent.session_book import SessionBook
from examroom.agent.violations import Violations, load_codes
from examroom.contract.schemas import PayloadCheck
from examroom.contract.times import TIME, TIMES
from examroom.contract.vocabulary import Incident, IncidentType
from examroom.drivers.events import MetalAlarm, SweepButton
from tests.checkin_station import (ENG_START, MATH_CUTOFF, MATH_END, MATH_START, OUTSIDER, card, doc_schemas, kinds,
                                   ts)
from tests.schemas import load_schemas

# ISO 8601 as the room writes it in the default zone: milliseconds, Asia/Shanghai's offset
WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00$")
# what a time is called anywhere in the contract; none of these may be a number any more
TIME_NAMES = {"time", "cutoff", "earliest_handin", "started", "cleared", "start", "end", "recorded_at",
              "admitted_at", "at", "since", "ts", "box_time", "site_time", "checked_at", "handin_from"}
CHECKIN_KINDS = {"checkin", "sweep", "suspect_confirm", "attendance", "session_record"}


def date_time_paths(schema: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Where a schema says ``format: date-time``; ``*`` stands for every item of a list."""
    found = {path} if schema.get("format") == "date-time" else set()
    for key, sub in schema.get("properties", {}).items():
        found |= date_time_paths(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        found |= date_time_paths(schema["items"], (*path, "*"))
    for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ()), *schema.get("allOf", ())):
        found |= date_time_paths(branch, path)
    return found


def spec_paths(spec: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if spec == TIME:
        return {path}
    if isinstance(spec, list):
        return spec_paths(spec[0], (*path, "*"))
    return set().union(*(spec_paths(sub, (*path, key)) for key, sub in spec.items()))


def values_at(data: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        yield data
    elif path[0] == "*":
        for item in data if isinstance(data, list) else ():
            yield from values_at(item, path[1:])
    elif isinstance(data, dict) and path[0] in data:
        yield from values_at(data[path[0]], path[1:])


def numeric_times(data: Any, where: str = "") -> list[str]:
    """Every number under a time's name, anywhere in the data: what version 2 must not have."""
    if isinstance(data, list):
        return [p for i, x in enumerate(data) for p in numeric_times(x, f"{where}[{i}]")]
    if not isinstance(data, dict):
        return []
    found = [f"{where}.{k}" for k, v in data.items()
             if k in TIME_NAMES and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return found + [p for k, v in data.items() for p in numeric_times(v, f"{where}.{k}")]


def test_no_time_of_the_contract_is_a_number():
    """Every schema of the contract: a property named as a time is a date-time string (or
    null), never a number; and every field the room converts is documented as a date-time."""
    schemas = load_schemas()

    def numbers(schema: dict[str, Any], where: str) -> Iterator[str]:
        for key, sub in schema.get("properties", {}).items():
            types = sub.get("type", [])
            if key in TIME_NAMES and ("number" in types or "integer" in types):
                yield f"{where}.{key}"
            yield from numbers(sub, f"{where}.{key}")
        if isinstance(schema.get("items"), dict):
            yield from numbers(schema["items"], f"{where}[]")
        for branch in (*schema.get("oneOf", ()), *schema.get("anyOf", ()), *schema.get("allOf", ())):
            yield from numbers(branch, where)

    assert [p for name, s in schemas.items() for p in numbers(s, name)] == []
    for kind, spec in TIMES.items():
        schema = schemas[f"data/{kind}"]
        assert spec_paths(spec) <= date_time_paths(schema), kind
        for variant in schema.get("oneOf", [schema]):
            assert "v" in variant["required"] and variant["properties"]["v"]["const"] == 2, kind


def test_every_time_of_every_checkin_event_is_iso_with_the_exam_offset(make, clock, emitted):
    """A session that makes every check-in kind, a violation and incidents on the record: each
    date-time field the docs name holds ISO 8601 to the millisecond with +08:00 (the default
    zone), the six converted kinds say ``"v": 2``, and no time anywhere is a number."""
    st = make()
    roster = Roster(())
    violations = Violations(load_codes(), lambda kind, data: None, st.book._clock, st.scrub,
                            lambda who: roster.signature(who, st.scrub), ZoneInfo("Asia/Shanghai"))
    violations.attach(st.book)
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))  # nothing pending: unassociated
    st.on_card(card(1))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_sweep_button(SweepButton("det", button="recheck"))
    clock.t += 12.345  # sub-second: milliseconds on the wire
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(1, id_number=OUTSIDER))  # matches no seat: unmatched_checkins
    st.mark_suspect(3, "P1", "photo")
    st.confirm(3, "P1")
    st.confirm(3, "P2")
    st.book.add_incident(Incident(IncidentType.AUDIO_LOSS, {"start": "2026-06-07T00:50:00.500+00:00",
                                                            "end": "2026-06-07T00:50:04.000+00:00"}))
    st.book.add_incident(Incident(IncidentType.CLOCK_STEP, {"time": MATH_START - 60, "stepped_s": -1.0}))
    clock.t = MATH_CUTOFF + 1
    st.on_card(card(4))  # late_refused: cutoff
    st.book.tick(clock.t)  # attendance
    violations.record("1", "W04", "P01", "proctor")
    clock.t = MATH_START + 3600
    st.departures.hand_in(1, "P1", force=True, reason="ill")  # earliest_handin
    st.book.tick(MATH_END)  # record

    assert CHECKIN_KINDS | {"violation"} <= {str(k) for k, _ in emitted}
    schemas = doc_schemas()
    checked: set[str] = set()
    for kind, data in emitted:
        assert numeric_times(data) == [], (kind, data)
        if kind in TIMES:
            assert data["v"] == 2, (kind, data)
        for path in date_time_paths(schemas[kind]):
            for value in values_at(data, path):
                if value is not None:
                    assert WIRE_TIME.match(value), (kind, path, value)
                    checked.add(f"{kind}:{'.'.join(path)}")
    # every field that was epoch seconds in version 1 was there to check
    expected = {f"{kind}:{'.'.join(p)}" for kind in CHECKIN_KINDS for p in spec_paths(TIMES[kind])}
    assert expected - checked == set()
    (rec,) = kinds(emitted, "session_record")
    audio = next(i for i in rec["incidents"] if i["type"] == "audio_loss")
    assert (audio["start"], audio["end"]) == ("2026-06-07T08:50:00.500+08:00", "2026-06-07T08:50:04.000+08:00")
    swept = next(s for s in kinds(emitted, "sweep") if not s["unassociated"])
    assert (swept["started"], swept["cleared"]) == ("2026-06-07T08:40:00.000+08:00", "2026-06-07T08:40:12.345+08:00")
    assert next(s for s in rec["seats"] if s["seat"] == "1")["sweeps"][0]["cleared"] == swept["cleared"]


def test_the_exams_zone_gives_the_offset(plan, schedule, clock, tmp_path):
    """``[procedure] timezone`` decides the offset of every published time, not the box's zone."""
    out: list[tuple[str, dict]] = []
    scrub = Scrubber(c.name for c in plan.candidates)
    book = SessionBook(schedule, plan, lambda k, d: out.append((k, d)), clock, tmp_path / "records", scrub,
                       zone=ZoneInfo("Asia/Urumqi"))  # UTC+6
    st = CheckinStation(book, clock, scrub)
    book.start()
    d = st.on_card(card(2))
    assert d["time"] == "2026-06-07T06:40:00.000+06:00" == out[0][1]["time"]
    assert st.state()["handin_from"] == "2026-06-07T09:00:00.000+06:00"  # 11:00 in Beijing


def test_a_journal_written_before_version_2_still_replays(plan, make, clock, emitted, tmp_path):
    """A box upgraded mid-session: its journal holds the version-1 events as they were published
    (floats, no ``v``). The station replays it and what it publishes next, the record included,
    carries those times in ISO 8601."""
    c1, c2, c3 = (plan.by_seat(s) for s in ("1", "2", "3"))

    def admitted(c, t: float) -> dict[str, Any]:
        return {"session": "math-am", "verdict": "admitted", "seat": c.seat, "ticket": c.ticket,
                "id_masked": c.id_masked, "method": "card", "device": "idreader", "time": t,
                "seatplan_sha256": plan.sha256, "reentry": False, "sweep_required": True}

    t0 = ts("2026-06-07T08:40:00")
    old = [("_observe", {"from": t0 - 600}),
           ("checkin", admitted(c1, t0)),
           ("_alarm", {"seat": "1", "time": t0 + 5.5, "device": "det"}),
           ("sweep", {"session": "math-am", "seat": "1", "unassociated": False, "device": "det", "alarms": 1,
                      "rechecks": 0, "started": t0, "cleared": t0 + 42.0, "duration_s": 42.0,
                      "medical_metal_exempt": False, "special_items": 0,
                      "result": "alarm_cleared_without_recheck", "time": t0 + 42.0}),
           ("checkin", admitted(c2, t0 + 60.25)),
           ("checkin", {"session": "math-am", "verdict": "suspect", "seat": "3", "ticket": c3.ticket,
                        "id_masked": c3.id_masked, "method": "manual", "device": "manual", "time": t0 + 90,
                        "seatplan_sha256": plan.sha256, "proctor": "P1", "reason": "photo", "by": "proctor"}),
           ("suspect_confirm", {"session": "math-am", "seat": "3", "proctor": "P1", "time": t0 + 95, "confirmations": 1,
                                "required": 2, "passed": False, "by": "proctor"})]
    journal = tmp_path / "checkin.journal"
    journal.write_text("".join(json.dumps({"session": "math-am", "kind": k, "data": d}, separators=(",", ":")) + "\n"
                               for k, d in old), encoding="utf-8")
    clock.t = t0 + 600
    st = make()
    state = st.state()
    assert (state["admitted"], state["suspect"], state["pending_sweep"], st.book.journal_skipped) == (2, 1, ["2"], 0)
    admit3 = st.confirm(3, "P2")  # the first confirmation came from the old journal
    assert (admit3["verdict"], admit3["proctors"], admit3["time"]) == (
        "admitted", ["P1", "P2"], "2026-06-07T08:50:00.000+08:00")
    closed = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))  # seat 2's, opened before the upgrade
    assert (closed["seat"], closed["started"], closed["cleared"]) == (
        "2", "2026-06-07T08:41:00.250+08:00", "2026-06-07T08:50:00.000+08:00")
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    seats = {s["seat"]: s for s in rec["seats"]}
    assert (seats["1"]["admitted_at"], seats["2"]["admitted_at"]) == (
        "2026-06-07T08:40:00.000+08:00", "2026-06-07T08:41:00.250+08:00")
    assert seats["1"]["sweeps"] == [{"result": "alarm_cleared_without_recheck", "alarms": 1, "rechecks": 0,
                                     "started": "2026-06-07T08:40:00.000+08:00",
                                     "cleared": "2026-06-07T08:40:42.000+08:00", "medical_metal_exempt": False}]
    assert seats["3"]["checkins"][0] == {"verdict": "suspect", "time": "2026-06-07T08:41:30.000+08:00",
                                         "method": "manual"}
    assert (rec["v"], rec["start"], rec["present"], rec["checkin_events"]) == (
        2, "2026-06-07T09:00:00.000+08:00", 3, 4)
    # the journal goes on in floats: the next restart replays old and new lines alike
    lines = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert [(e["kind"], e["data"]["time"]) for e in lines[len(old):] if e["kind"] == "checkin"] == [
        ("checkin", t0 + 600)]
    assert all("v" not in e["data"] for e in lines)
    again = make()
    assert again.book.get("math-am").record_written and again.book.journal_skipped == 0


def test_the_site_reads_version_1_data_as_version_2():
    """An aggregator still receives version-1 events (a box not upgraded yet, a spool filled
    before the upgrade): valid, not flagged; data claiming version 2 with a number is wrong."""
    check = PayloadCheck()
    v1 = {"session": "eng-pm", "verdict": "late_refused", "seat": "2", "ticket": "20260002",
          "id_masked": "410105********2341", "method": "card", "device": "idreader", "time": ENG_START + 61.5,
          "seatplan_sha256": "0" * 64, "cutoff": ENG_START - 900}

    def envelope(data: dict[str, Any]) -> dict[str, Any]:
        return {"id": "e1", "seq": 1, "ts": "2026-06-08T15:01:01.500+08:00", "kind": "checkin", "session": 1,
                "replayed": False, "data": data}

    assert check.event("checkin", envelope(v1)) == []
    assert check.event("checkin", envelope({**v1, "v": 2})) != []
    v2 = {**v1, "v": 2, "time": "2026-06-08T15:01:01.500+08:00", "cutoff": "2026-06-08T14:45:00.000+08:00"}
    assert check.event("checkin", envelope(v2)) == []
