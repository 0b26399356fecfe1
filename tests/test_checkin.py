"""The check-in station: verdicts, sweeps, manual admission, suspects, re-entry."""
from types import SimpleNamespace

import pytest

from examroom.agent.checkin import CheckinError
from examroom.agent.schedule import parse_sessions
from examroom.drivers.events import CardPresented, MetalAlarm, SweepButton
from examroom.drivers.gb11643 import mask_id

from tests.checkin_station import (ENG_START, ID, MATH_CUTOFF, OUTSIDER, UID1, card, doc_schemas, iso, kinds, station,
                                   ts)


def test_doc_schemas_are_valid():
    jsonschema = pytest.importorskip("jsonschema")
    schemas = doc_schemas()
    assert set(schemas) == {"checkin", "sweep", "suspect_confirm", "attendance", "session_record", "violation"}
    for s in schemas.values():
        jsonschema.Draft202012Validator.check_schema(s)


def test_admitted_by_card_and_by_uid(make, emitted, plan):
    st = make()
    d = st.on_card(card(3))
    assert d["verdict"] == "admitted" and d["seat"] == "3" and d["method"] == "card"
    assert d["session"] == "math-am" and d["id_masked"] == mask_id(ID[3]) and d["ticket"] == "20260003"
    assert d["device"] == "idreader" and d["time"] == "2026-06-07T08:40:00.000+08:00"
    assert d["seatplan_sha256"] == plan.sha256 and d["reentry"] is False
    assert d["snapshot"] == {"pending": True, "tag": "admitted-math-am-3"}
    u = st.on_card(CardPresented("pcsc0", uid=UID1))
    assert (u["verdict"], u["seat"], u["method"], u["uid"]) == ("admitted", "1", "uid", UID1)
    assert emitted == [("checkin", d), ("checkin", u)]
    assert [(tag, about["id"], about["seat"]) for tag, about in make.snaps] == [  # emit gave no event: no id
        ("admitted-math-am-3", None, "3"), ("admitted-math-am-1", None, "1")]


def test_photo_is_asked_for_after_its_checkin_is_published_and_names_it(make, emitted):
    """The photo request carries the spooled event's id: the aggregator joins the follow-up
    ``snapshot`` event to this ``checkin`` by it."""
    def emit(kind, data):
        assert len(make.snaps) == len(kinds(emitted, "checkin")), "a photo was asked for before its checkin"
        emitted.append((kind, data))
        return SimpleNamespace(id=f"ev-{len(emitted)}", seq=len(emitted))

    st = make(emit=emit)
    st.on_card(card(2))
    nobody = st.on_card(CardPresented("pcsc0", uid="DEADBEEF"))
    assert nobody["snapshot"] == {"pending": True, "tag": "unknown_card-math-am-unknown"}
    st.leave(2)  # no photo of a candidate going out
    assert [a for _, a in make.snaps] == [
        {"kind": "checkin", "id": "ev-1", "session": "math-am", "seat": "2", "verdict": "admitted"},
        {"kind": "checkin", "id": "ev-2", "session": "math-am", "seat": None, "verdict": "unknown_card"}]
    assert "snapshot" not in kinds(emitted, "checkin")[-1]


def test_refusal_verdicts(make, emitted):
    st = make(with_snapshot=False)
    assert st.on_card(card(1, id_number=OUTSIDER))["verdict"] == "not_in_room"
    assert st.on_card(CardPresented("pcsc0", uid="DEADBEEF"))["verdict"] == "unknown_card"
    assert st.on_card(CardPresented("pcsc0"))["verdict"] == "unknown_card"
    bad = ID[1][:17] + ("1" if ID[1][17] != "1" else "2")
    r = st.on_card(card(1, id_number=bad))
    assert r["verdict"] == "invalid_id" and r["id_masked"] == mask_id(bad) and r["seat"] is None
    assert st.on_card(card(2, id_number=ID[2][:17] + "X"))["verdict"] == "invalid_id"  # a wrong X too
    assert st.on_card(card(1, valid_to="2026/12/31"))["verdict"] == "invalid_id"
    e = st.on_card(card(1, valid_to="20260606"))
    assert e["verdict"] == "expired_card" and e["seat"] == "1"
    assert st.on_card(card(1, valid_to="20260607"))["verdict"] == "admitted"  # valid through the day
    assert st.on_card(card(2, valid_to="长期"))["verdict"] == "admitted"
    d = st.on_card(card(1))
    assert d["verdict"] == "duplicate" and d["status"] == "admitted"
    assert len(kinds(emitted, "checkin")) == 10
    assert st.state()["admitted"] == 2


def test_outside_window(make, clock, plan, emitted, tmp_path):
    st = make()
    clock.t = ts("2026-06-07T08:29:59")
    assert st.on_card(card(1))["verdict"] == "outside_window"
    clock.t = ts("2026-06-08T17:00:00")
    d = st.on_card(card(1))
    assert d["verdict"] == "outside_window" and d["phase"] == "ended"
    empty = station(plan, parse_sessions([], "x"), lambda k, d: emitted.append((k, d)), clock, tmp_path)
    empty.book.start()
    d = empty.on_card(card(1))
    assert d["verdict"] == "outside_window" and d["session"] is None
    assert empty.manual_admit(seat=1, proctor="P1")["verdict"] == "outside_window"
    with pytest.raises(CheckinError):
        empty.mark_suspect(1, "P1", "photo")


def test_late_refused_after_cutoff_and_in_attendance(make, clock, emitted):
    st = make()
    clock.t = MATH_CUTOFF - 1
    assert st.on_card(card(1))["verdict"] == "admitted"  # in progress, still allowed
    clock.t = MATH_CUTOFF
    d = st.on_card(card(2))
    assert d["verdict"] == "late_refused" and d["cutoff"] == iso(MATH_CUTOFF) == "2026-06-07T09:15:00.000+08:00"
    assert st.manual_admit(seat=3, proctor="P1")["verdict"] == "late_refused"
    st.book.tick(MATH_CUTOFF)
    (att,) = kinds(emitted, "attendance")
    assert att["late_refused"] == ["2", "3"] and att["absent"] == ["2", "3", "4", "5"]


def test_negative_cutoff_for_listening_session(make, clock, emitted):
    st = make()
    clock.t = ENG_START - 16 * 60
    assert st.on_card(card(1))["verdict"] == "admitted"
    clock.t = ENG_START - 15 * 60
    assert st.on_card(card(2))["verdict"] == "late_refused"
    assert st.state()["phase"] == "cutoff_passed" and st.state()["session"] == "eng-pm"
    st.book.tick(ENG_START - 15 * 60)
    att = [a for a in kinds(emitted, "attendance") if a["session"] == "eng-pm"]
    assert len(att) == 1 and att[0]["present"] == 1


def test_sweep_clear_recheck_and_medical(make, clock, emitted):
    st = make()
    st.on_card(card(1))
    clock.t += 12
    s = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (s["seat"], s["alarms"], s["rechecks"], s["result"], s["duration_s"]) == ("1", 0, 0, "clear", 12)
    st.on_card(card(3))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))  # no falling edge: still one alarm
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=False))
    st.sweeps.on_sweep_button(SweepButton("det", button="recheck"))
    clock.t += 30
    s = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (s["alarms"], s["rechecks"], s["result"], s["medical_metal_exempt"]) == \
        (1, 1, "alarm_cleared_after_recheck", False)
    assert s["started"] == iso(clock.t - 30) and s["cleared"] == iso(clock.t)
    st.on_card(card(2))  # registered implant
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    s = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (s["result"], s["medical_metal_exempt"]) == ("alarm_expected_medical", True)
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=False))
    st.on_card(card(4))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    assert st.sweeps.on_sweep_button(SweepButton("det", button="clear"))["result"] == "alarm_cleared_without_recheck"
    assert st.state()["pending_sweep"] == []


def test_sweeps_are_fifo(make, emitted):
    st = make()
    st.on_card(card(1))
    st.on_card(card(3))
    assert st.state()["pending_sweep"] == ["1", "3"]
    assert st.sweeps.on_sweep_button(SweepButton("det", button="clear"))["seat"] == "1"
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    s = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (s["seat"], s["alarms"]) == ("3", 1)


def test_unassociated_sweeps_are_published(make, emitted, clock):
    st = make()
    a = st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=False))
    r = st.sweeps.on_sweep_button(SweepButton("det", button="recheck"))
    c = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert [(x["unassociated"], x["trigger"], x["seat"]) for x in (a, r, c)] == \
        [(True, "alarm", None), (True, "recheck", None), (True, "clear", None)]
    assert kinds(emitted, "sweep") == [a, r, c]
    with pytest.raises(CheckinError):
        st.sweeps.on_sweep_button(SweepButton("det", button="reset"))
