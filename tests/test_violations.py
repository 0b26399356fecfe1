"""Violations by the province's fact codes: the code list (a CSV checked at start), the
``violation`` event on the session record, and the escalation to the site office (an
``incident`` and a status alert until the session ends).

In-process on the check-in station's fixtures (tests/checkin_station.py: every check-in-page
payload is validated against the docs and scanned for names and full ID numbers); the
incidents go to their own list, validated against ``data/incident``."""
import csv
import json
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from examroom.agent.errors import ConfigError
from examroom.agent.proctors import Roster
from examroom.agent.violations import SHIPPED, ViolationError, Violations, load_codes
from tests.agentproc import write_config
from tests.checkin_station import FULL_ID, ID, MATH_END, NAMES, card, kinds, ts
from tests.schemas import validator

ROOT = Path(__file__).resolve().parent.parent
ROSTER = [{"id": "P01", "name": "周老师", "unit": "一中", "sex": "F"},
          {"id": "P02", "name": "吴老师", "unit": "二中", "sex": "M"}]


@pytest.fixture
def incidents():
    """The incidents the violations raised, each valid against the documented schema."""
    out: list[dict] = []
    yield out
    check = validator("data/incident")
    for data in out:
        assert list(check.iter_errors(data)) == [], data


def attach(st, incidents, roster=(), codes=None) -> Violations:
    """Violations on the station's session book, as the daemon wires them."""
    r = Roster(roster)
    v = Violations(codes or load_codes(), lambda kind, data: incidents.append(data) if kind == "incident" else None,
                   st.book._clock, lambda text: r.scrub(st.scrub(text)), lambda who: r.signature(who, st.scrub),
                   ZoneInfo("Asia/Shanghai"))
    v.attach(st.book)
    return v


def test_the_shipped_list_is_the_config_example_and_loads():
    codes = load_codes()
    assert codes.file == str(SHIPPED) and (ROOT / "config" / "violation-codes.csv").resolve() == SHIPPED
    assert "provinces replace" in SHIPPED.read_text(encoding="utf-8").lower()
    by = {c.code: c for c in codes.codes}
    assert len(by) == len(codes.codes) >= 15
    assert by["Z04"].escalate and "发送或者接收信息" in by["Z04"].text  # a phone
    assert not by["W04"].escalate and "交头接耳" in by["W04"].text  # talking


def test_a_violation_is_recorded_and_on_the_session_record(make, clock, emitted, incidents, tmp_path):
    st = make()
    v = attach(st, incidents, ROSTER)
    st.on_card(card(3))
    clock.t = ts("2026-06-07T09:40:12")
    d = v.record("03", "w04", "p01", "proctor", note=f"{NAMES[3]} 与邻座 {NAMES[4]} 交谈，证件号 {ID[4]}")
    assert {k: d[k] for k in ("session", "seat", "ticket", "code", "by", "user", "time", "escalated")} == {
        "session": "math-am", "seat": "3", "ticket": "20260003", "code": "W04", "by": "P01", "user": "proctor",
        "time": "2026-06-07T09:40:12.000+08:00", "escalated": False}
    assert "交头接耳" in d["text"] and NAMES[3] not in d["note"] and ID[4] not in d["note"] and "***" in d["note"]
    assert kinds(emitted, "violation") == [d] and incidents == []
    assert v.alerts() == []  # not escalated: the card only
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert rec["violations"] == [{"seat": "3", "ticket": "20260003", "code": "W04", "text": d["text"],
                                  "note": d["note"], "by": "P01", "time": "2026-06-07T09:40:12.000+08:00",
                                  "escalated": False}]  # as the violation event said it
    seats = {s["seat"]: s for s in rec["seats"]}
    assert seats["3"]["violations"] == ["W04"] and "violations" not in seats["1"]  # absent when none
    doc = json.loads((tmp_path / "records" / "math-am-12.json").read_text(encoding="utf-8"))
    assert doc["violations"] == [d] and {c["seat"]: c["violations"] for c in doc["candidates"]}["3"] == ["W04"]
    with open(tmp_path / "records" / "math-am-12.csv", encoding="utf-8-sig", newline="") as f:
        (row,) = [r for r in csv.DictReader(f) if r["record"] == "violation"]
    assert (row["seat"], row["ticket"], row["time"]) == ("3", "20260003", d["time"])
    assert row["detail"].startswith("W04 ") and "by P01" in row["detail"]


def test_a_violation_survives_a_restart(make, clock, emitted, incidents):
    st = make()
    attach(st, incidents).record("2", "W02", "P1", "proctor")
    again = make()  # the same journal, replayed
    attach(again, incidents)
    again.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert [x["code"] for x in rec["violations"]] == ["W02"]


def test_an_unknown_code_is_refused_with_the_closest_codes(make, emitted, incidents):
    st = make()
    v = attach(st, incidents)
    with pytest.raises(ViolationError) as e:
        v.record("1", "Z4", "P1", "proctor")
    assert "unknown violation code 'Z4'" in str(e.value) and "Z04 (携带具有发送" in str(e.value)
    with pytest.raises(ViolationError) as e:
        v.record("1", "phone", "P1", "proctor")
    assert "codes of the list: W01, W02" in str(e.value)  # nothing close: the whole list
    assert kinds(emitted, "violation") == [] and incidents == []


def test_what_is_refused(make, clock, emitted, incidents):
    clock.t = ts("2026-06-07T08:00:00")  # before entry opens
    st = make()
    v = attach(st, incidents, ROSTER)
    with pytest.raises(ViolationError, match="no exam session is open"):
        v.record("1", "W01", "P01", "proctor")
    clock.t = ts("2026-06-07T09:30:00")
    with pytest.raises(ViolationError, match="no seat 9 in room 12"):
        v.record("9", "W01", "P01", "proctor")
    with pytest.raises(ValueError, match="not on this room's proctor roster"):
        v.record("1", "W01", "P09", "proctor")
    without_roster = attach(make(), incidents)
    with pytest.raises(ValueError, match="holds a name or an ID number"):
        without_roster.record("1", "W01", NAMES[2], "proctor")
    with pytest.raises(ViolationError, match="'by' is required"):
        without_roster.command({"seat": "1", "code": "W01", "by": " "})
    clock.t = MATH_END + 1  # ended, record not written yet: the session is closed to violations
    with pytest.raises(ViolationError, match="no exam session is open"):
        v.record("1", "W01", "P01", "proctor")
    assert kinds(emitted, "violation") == [] and incidents == []


def test_escalation_raises_an_incident_and_an_alert_until_the_session_ends(make, clock, emitted, incidents):
    st = make()
    v = attach(st, incidents, ROSTER)
    st.on_card(card(5))
    clock.t = ts("2026-06-07T09:40:12.250")
    d = v.command({"seat": "5", "code": "Z04", "by": "P02", "note": "手机在桌肚内", "_caller": "proctor"})
    assert d["escalated"] is True and d["user"] == "proctor"
    (started,) = incidents
    assert started == {"type": "violation", "session": "math-am", "seat": "5", "code": "Z04", "text": d["text"],
                       "start": "2026-06-07T09:40:12.250+08:00", "phase": "started"}
    (alert,) = v.alerts()
    assert "violation Z04 at seat 5" in alert and "09:40:12" in alert and "reported to the site office" in alert
    again = make()  # a restart keeps the alert: it is derived from the journal
    assert len(attach(again, []).alerts()) == 1
    st.book.tick(MATH_END)
    ended = incidents[-1]
    assert ended == {**started, "phase": "ended", "end": "2026-06-07T11:00:00.000+08:00",
                     "duration_s": round(MATH_END - ts("2026-06-07T09:40:12.250"), 3)}
    assert v.alerts() == []
    (rec,) = kinds(emitted, "session_record")
    (inc,) = [i for i in rec["incidents"] if i["type"] == "violation"]
    assert (inc["seat"], inc["code"], inc["start"], inc["duration_s"]) == (
        "5", "Z04", "2026-06-07T09:40:12.250+08:00", 0.0)
    assert rec["violations"][0]["escalated"] is True


def test_a_room_without_a_seat_plan_records_the_seat_as_typed(tmp_path, schedule, clock, incidents):
    from examroom.agent.seatplan import SeatPlan
    from examroom.agent.session_book import SessionBook

    out: list[tuple[str, dict]] = []
    book = SessionBook(schedule, SeatPlan.empty("12"), lambda k, d: out.append((k, d)), clock, tmp_path, str)
    book.start()
    v = Violations(load_codes(), lambda k, d: None, clock, str, str, ZoneInfo("Asia/Shanghai"))
    v.attach(book)
    assert v.record("07", "W05", "P1", "proctor")["seat"] == "7"
    assert [d["ticket"] for k, d in out if k == "violation"] == [None]
    with pytest.raises(ViolationError, match="desk label"):
        v.record("7/../x", "W05", "P1", "proctor")
    validator("data/violation").validate(out[0][1])


BAD = """# a province's list with mistakes
code,text,escalate
A1,携带手机,yes
A2,交头接耳,maybe
a1,重复的代码,no
A 3,,no
A4,只有两列
"""


def test_a_bad_codes_file_names_file_row_and_column(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_codes(path)
    problems = [str(p) for p in e.value.problems]
    assert problems == [
        f"{path}: row 4.escalate: expected yes or no (true/false, 1/0, 是/否) (got 'maybe')",
        f"{path}: row 5.code: the same code as row 3 (codes are compared ignoring case); "
        "expected each code once (got 'a1')",
        f"{path}: row 6.code: expected 1-16 of A-Z a-z 0-9 . _ - (got 'A 3')",
        f"{path}: row 6.text: expected the fact in words, 1-200 characters",
        f"{path}: row 7: 2 fields where the header has 3 columns"]
    path.write_text("\ufeffcode,txt,escalate\nA1,x,yes\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"row 1 \(header\): unknown column 'txt' \(did you mean 'text'\?\)"):
        load_codes(path)
    path.write_text("# only comments\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected at least one code"):
        load_codes(path)
    with pytest.raises(ConfigError, match="cannot read the violation code list"):
        load_codes(tmp_path / "missing.csv")


def test_check_config_stops_on_a_bad_codes_file_with_exit_2(tmp_path):
    """Checked at start like the rest of the config: the file, row and column, exit 2."""
    (tmp_path / "codes.csv").write_text(BAD, encoding="utf-8")
    cfg = write_config(tmp_path, 1883, extra='[procedure]\nviolation_codes = "codes.csv"\n')
    done = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "check-config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: {tmp_path / 'codes.csv'}: row 4.escalate: expected yes or no" in done.stderr
    assert "Traceback" not in done.stderr
    assert not FULL_ID.search(done.stderr)
