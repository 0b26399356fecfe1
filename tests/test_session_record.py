"""The session's record: attendance at the cutoff, the record files and the published record,
the journal that survives a restart, clock steps on the record."""
import csv
import json

import pytest

from examroom.agent.checkin import AmbiguousCandidate, CheckinError, SameProctor, UnknownSeat
from examroom.agent.monitors import ClockWatch
from examroom.agent.session_book import IncidentError
from examroom.contract.vocabulary import Incident, IncidentType
from examroom.drivers.events import CardPresented, ClockState, MetalAlarm, SweepButton
from examroom.drivers.gb11643 import mask_id

from tests.checkin_station import (ENG_START, FULL_ID, ID, MATH_CUTOFF, MATH_END, MATH_START, NAMES, OUTSIDER,
                                   UID1, card, iso, kinds, station, ts)


def read_record(tmp_path, session="math-am"):
    """The local record files: the JSON document and the CSV rows."""
    doc = json.loads((tmp_path / "records" / f"{session}-12.json").read_text(encoding="utf-8"))
    with open(tmp_path / "records" / f"{session}-12.csv", encoding="utf-8-sig", newline="") as f:
        return doc, list(csv.DictReader(f))


def test_unassociated_sweeps_before_the_first_checkin_are_on_the_record(make, emitted, clock, tmp_path):
    """A proctor tests the detector as entry opens, before anyone has checked in: the session
    has no state yet, and the sweeps must still reach its record (event, JSON and CSV)."""
    clock.t = ts("2026-06-07T08:20:00")
    st = make()
    early = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))  # before entry: on no record
    assert (early["session"], early["unassociated"]) == (None, True)
    clock.t = ts("2026-06-07T08:30:00")  # entry opens
    a = st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=False))
    clock.t += 3
    c = st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (a["session"], a["trigger"], c["session"], c["trigger"]) == ("math-am", "alarm", "math-am", "clear")
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert rec["sweeps"]["unassociated"] == 2 and rec["sweeps"]["closed"] == 1
    assert rec["unassociated_sweeps"] == [
        {"trigger": "alarm", "device": "det", "time": "2026-06-07T08:30:00.000+08:00"},
        {"trigger": "clear", "device": "det", "time": "2026-06-07T08:30:03.000+08:00"}]
    doc, rows = read_record(tmp_path)
    assert doc["summary"]["sweeps"]["unassociated"] == 2
    assert [s["trigger"] for s in doc["sweeps"] if s["unassociated"]] == ["alarm", "clear"]
    un = [r for r in rows if r["record"] == "unassociated_sweep"]
    assert [(r["time"], r["detail"]) for r in un] == [
        ("2026-06-07T08:30:00+08:00", "alarm on det with no candidate pending"),
        ("2026-06-07T08:30:03+08:00", "clear on det with no candidate pending")]


def test_manual_admission_by_seat_last6_and_ticket(make, emitted):
    st = make()
    d = st.manual_admit(seat="01", proctor="P1")
    assert (d["verdict"], d["seat"], d["method"], d["proctor"], d["lookup"]) == \
        ("admitted", "1", "manual", "P1", "seat")
    assert st.manual_admit(id_last6=ID[3][-6:], proctor="P1")["seat"] == "3"
    assert st.manual_admit(ticket_tail="0002", proctor="P2")["seat"] == "2"
    before = list(emitted)
    with pytest.raises(AmbiguousCandidate) as e:
        st.manual_admit(id_last6=ID[4][-6:], proctor="P1")
    assert e.value.seats == ["4", "5"] and "4, 5" in str(e.value)
    with pytest.raises(UnknownSeat):
        st.manual_admit(seat=99, proctor="P1")
    with pytest.raises(UnknownSeat):
        st.manual_admit(id_last6="999999", proctor="P1")
    with pytest.raises(CheckinError):
        st.manual_admit(seat=4, proctor=" ")
    with pytest.raises(CheckinError):
        st.manual_admit(seat=4, id_last6=ID[4][-6:], proctor="P1")
    with pytest.raises(CheckinError):
        st.manual_admit(id_last6="12", proctor="P1")
    assert emitted == before and st.state()["admitted"] == 3


def test_suspect_needs_two_different_proctors(make, emitted):
    st = make()
    d = st.mark_suspect(4, "P1", f"photo does not match {ID[4]} {NAMES[4]}")
    assert d["verdict"] == "suspect" and d["snapshot"] == {"pending": True, "tag": "suspect-math-am-4"}
    assert mask_id(ID[4]) in d["reason"] and "***" in d["reason"]
    assert st.on_card(card(4))["verdict"] == "duplicate"
    with pytest.raises(CheckinError):
        st.mark_suspect(4, "P1", "again")
    c1 = st.confirm(4, "P1")
    assert (c1["confirmations"], c1["required"], c1["passed"]) == (1, 2, False)
    with pytest.raises(SameProctor):
        st.confirm(4, "P1")
    assert st.state()["suspect"] == 1 and st.state()["pending_sweep"] == []
    a = st.confirm(4, "P2")
    assert a["verdict"] == "admitted" and a["proctors"] == ["P1", "P2"] and a["method"] == "manual"
    assert [x["passed"] for x in kinds(emitted, "suspect_confirm")] == [False, True]
    assert st.state()["pending_sweep"] == ["4"]
    with pytest.raises(CheckinError):
        st.confirm(4, "P3")


def test_one_proctor_typing_their_id_two_ways_is_still_one_proctor(make):
    """P03 then p03, or full-width Ｐ01 then P01, counted as two proctors."""
    st = make()
    for first, again in (("P03", "p03"), ("Ｐ01", "P01"), ("P 07", "p07")):
        seat = {"P03": 3, "Ｐ01": 4, "P 07": 5}[first]
        st.mark_suspect(seat, "X9", "no photo match")
        st.confirm(seat, first)
        with pytest.raises(SameProctor):
            st.confirm(seat, again)


def test_with_a_roster_only_roster_ids_sign_and_as_the_roster_spells_them(plan, schedule, emitted, clock, tmp_path):
    st = station(plan, schedule, lambda k, d: emitted.append((k, d)), clock, tmp_path, roster=["P01", "P02"])
    st.book.start()
    with pytest.raises(CheckinError, match="not on this room's proctor roster"):
        st.mark_suspect(3, "P09", "no photo match")
    assert st.mark_suspect(3, "p01", "no photo match", by="alice")["proctor"] == "P01"
    assert st.confirm(3, "Ｐ０１")["confirmations"] == 1
    with pytest.raises(SameProctor):
        st.confirm(3, "P01")
    a = st.confirm(3, "p02 ", by="bob")
    assert a["verdict"] == "admitted" and a["proctors"] == ["P01", "P02"] and a["by"] == "bob"
    assert [d["by"] for k, d in emitted if k == "suspect_confirm"] == ["unknown", "bob"]


def test_a_signature_holding_a_name_or_an_id_is_refused_not_rewritten(make, emitted):
    """Rewritten to ***, two proctors who signed with names would count as one."""
    st = make()
    for bad in (f"{NAMES[2]}'s proctor", f"P2 {ID[2]}"):
        with pytest.raises(CheckinError, match="staff number or initials"):
            st.mark_suspect(3, bad, "no photo match")
        with pytest.raises(CheckinError, match="staff number or initials"):
            st.manual_admit(seat=1, proctor=bad)
    assert emitted == []
    st.mark_suspect(3, "P1", "no photo match")
    st.confirm(3, "P1")
    with pytest.raises(SameProctor):
        st.confirm(3, "P1")
    assert st.confirm(3, "P2")["verdict"] == "admitted"  # two different proctors


def test_free_text_is_scrubbed_of_every_name_and_full_id(make, emitted):
    """A proctor's reason names the neighbour and reads out a number: none of it leaves."""
    st = make()
    d = st.mark_suspect(4, "P1", f"{NAMES[4]} has the card of {NAMES[5]} ({ID[5]}), {NAMES[1]} saw it")
    assert d["reason"] == f"*** has the card of *** ({mask_id(ID[5])}), *** saw it"
    assert st.scrub(f"{NAMES[3]}{NAMES[3]} {ID[3].lower()}") == f"****** {mask_id(ID[3])}"
    published = json.dumps([x for _, x in emitted], ensure_ascii=False)
    assert "***" in published and not any(n in published for n in NAMES.values())


def test_suspect_already_swept_is_not_swept_again(make):
    st = make()
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.mark_suspect(1, "P1", "looks different from the photo")
    st.confirm(1, "P1")
    assert st.confirm(1, "P2")["sweep_required"] is False
    assert st.state()["pending_sweep"] == []


def test_reentry_needs_a_new_sweep_even_after_cutoff(make, clock, emitted):
    st = make()
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    clock.t = MATH_CUTOFF + 600
    assert st.leave(1)["verdict"] == "left"
    assert st.state()["out"] == 1
    with pytest.raises(CheckinError):
        st.leave(1)
    d = st.on_card(CardPresented("pcsc0", uid=UID1))
    assert d["verdict"] == "admitted" and d["reentry"] is True
    assert st.state()["pending_sweep"] == ["1"]
    st.leave(1)  # left again before being swept
    s = kinds(emitted, "sweep")[-1]
    assert (s["seat"], s["result"]) == ("1", "left_before_clear")
    assert st.manual_admit(seat=1, proctor="P1")["reentry"] is True
    assert st.sweeps.on_sweep_button(SweepButton("det", button="clear"))["seat"] == "1"


def test_attendance_exactly_once_at_cutoff(make, clock, emitted):
    clock.t = ts("2026-06-07T08:20:00")  # running since before entry opened: attendance is complete
    st = make()
    clock.t = ts("2026-06-07T08:40:00")
    st.on_card(card(1))
    st.manual_admit(seat=2, proctor="P1")
    st.mark_suspect(3, "P1", "no photo match")
    st.book.tick(MATH_CUTOFF - 0.001)
    assert kinds(emitted, "attendance") == []
    st.book.tick(MATH_CUTOFF)
    st.book.tick(MATH_CUTOFF + 1)
    (att,) = kinds(emitted, "attendance")
    assert att == {**att, "session": "math-am", "room": "12", "total": 5, "present": 3,
                   "absent": ["4", "5"], "late_refused": [], "manual_admissions": 1,
                   "suspects": ["3"], "pending_sweep": ["1", "2"], "complete": True}


def test_session_record_files(make, clock, emitted, tmp_path):
    st = make()
    st.on_card(card(1))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_sweep_button(SweepButton("det", button="recheck"))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(2))  # never cleared
    clock.t = MATH_START + 60
    assert st.book.add_incident(
        Incident(IncidentType.AUDIO_LOSS, {"time": MATH_START + 30, "duration_s": 4.5})) == "math-am"
    with pytest.raises(IncidentError):
        st.book.add_incident(Incident(IncidentType.AUDIO_LOSS, {"bad": object()}))
    st.book.tick(MATH_END)
    st.book.tick(MATH_END + 5)
    (rec,) = kinds(emitted, "session_record")
    assert rec["present"] == 2 and rec["absent"] == ["3", "4", "5"]
    assert rec["incidents"] == [{"type": "audio_loss", "start": "2026-06-07T09:00:30.000+08:00",
                                 "end": "2026-06-07T09:00:34.500+08:00", "duration_s": 4.5,
                                 "recorded_at": "2026-06-07T09:01:00.000+08:00"}]
    assert rec["sweeps"]["not_cleared"] == 1 and rec["sweeps"]["with_alarm"] == 1
    assert kinds(emitted, "sweep")[-1]["result"] == "not_cleared"
    assert [f["file"] for f in rec["files"]] == ["math-am-12.json", "math-am-12.csv"]
    doc, rows = read_record(tmp_path)
    cands = {c["seat"]: c for c in doc["candidates"]}
    assert cands["1"]["name"] == NAMES[1] and cands["1"]["id_masked"] == mask_id(ID[1])
    assert cands["1"]["sweep_results"] == ["alarm_cleared_after_recheck"] and cands["4"]["status"] == "absent"
    assert doc["incidents"][0]["type"] == "audio_loss" and doc["session"]["cutoff"] == "2026-06-07T09:15:00+08:00"
    by_seat = {r["seat"]: r for r in rows if r["record"] == "candidate"}
    assert by_seat["1"]["admitted_at"] == "2026-06-07T08:40:00+08:00" and by_seat["1"]["alarms"] == "1"
    assert by_seat["2"]["medical_metal"] == "yes" and by_seat["2"]["sweep_results"] == "not_cleared"
    assert by_seat["5"]["status"] == "absent" and by_seat["5"]["name"] == NAMES[5]
    assert [r["record"] for r in rows].count("incident") == 1
    for path in (tmp_path / "records").iterdir():
        assert not FULL_ID.search(path.read_text(encoding="utf-8-sig"))
    assert st.book.add_incident(Incident(IncidentType.AUDIO_LOSS)) is None  # record closed: the morning record is final


def test_published_record_has_every_seat_without_names_or_full_ids(make, clock, emitted):
    """The site gets the record card's rows from the event alone: who sat where, when, how
    checked and swept, re-checks, refusals, strangers at the door; never a name or full ID."""
    st = make()
    t0 = clock.t
    st.on_card(card(1))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=False))
    st.sweeps.on_sweep_button(SweepButton("det", button="recheck"))
    clock.t = t0 + 20
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(1))  # duplicate
    clock.t = t0 + 30
    st.on_card(card(1, id_number=OUTSIDER))  # another room's candidate
    st.manual_admit(seat=2, proctor="P1")
    st.mark_suspect(3, "P1", f"photo is not {NAMES[3]}")
    st.confirm(3, "P1")
    clock.t = t0 + 40
    st.confirm(3, "P2")
    st.leave(2)  # before being swept
    clock.t = MATH_CUTOFF + 60
    st.on_card(card(4))  # late
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    seats = {r["seat"]: r for r in rec["seats"]}
    assert list(seats) == ["1", "2", "3", "4", "5"]
    assert seats["1"] == {"seat": "1", "ticket": "20260001", "id_masked": mask_id(ID[1]), "status": "present",
                        "admitted_at": "2026-06-07T08:40:00.000+08:00", "method": "card", "reentries": 0,
                        "rechecks": 1, "suspect_confirmed_by": [],
                        "checkins": [{"verdict": "admitted", "time": "2026-06-07T08:40:00.000+08:00", "method": "card"},
                                     {"verdict": "duplicate", "time": "2026-06-07T08:40:20.000+08:00",
                                      "method": "card"}],
                        "sweeps": [{"result": "alarm_cleared_after_recheck", "alarms": 1, "rechecks": 1,
                                    "started": "2026-06-07T08:40:00.000+08:00",
                                    "cleared": "2026-06-07T08:40:20.000+08:00", "medical_metal_exempt": False}]}
    verdicts = {seat: [c["verdict"] for c in row["checkins"]] for seat, row in seats.items()}
    assert verdicts == {"1": ["admitted", "duplicate"], "2": ["admitted", "left"], "3": ["suspect", "admitted"],
                        "4": ["late_refused"], "5": []}
    assert seats["2"]["method"] == "manual" and seats["2"]["sweeps"][0]["result"] == "left_before_clear"
    assert seats["3"]["suspect_confirmed_by"] == ["P1", "P2"] and seats["3"]["admitted_at"] == iso(t0 + 40)
    assert seats["3"]["sweeps"][0]["result"] == "not_cleared"  # admitted at t0+40, never swept
    assert (seats["4"]["status"], seats["4"]["admitted_at"], seats["4"]["method"]) == ("absent", None, None)
    assert seats["4"]["checkins"][0]["time"] == "2026-06-07T09:16:00.000+08:00" and seats["5"]["sweeps"] == []
    assert rec["unmatched_checkins"] == [{"verdict": "not_in_room", "time": iso(t0 + 30), "method": "card",
                                          "device": "idreader", "id_masked": mask_id(OUTSIDER)}]
    text = json.dumps(rec, ensure_ascii=False)  # the scan is not vacuous: the masked numbers are there
    assert all(mask_id(ID[n]) in text for n in NAMES) and mask_id(OUTSIDER) in text
    assert not FULL_ID.search(text) and not any(n in text for n in NAMES.values())
    assert all("name" not in row for row in rec["seats"])  # the key, not only the value


def test_journal_replay_after_restart(make, clock, emitted, tmp_path):
    st = make()
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(3))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.mark_suspect(4, "P1", "photo")
    st.confirm(4, "P1")
    clock.t = MATH_CUTOFF
    st.book.tick(clock.t)
    with open(tmp_path / "checkin.journal", "a") as f:
        f.write('{"session": "math-am", "kind": "che')  # power lost mid-write
    n_att = len(kinds(emitted, "attendance"))

    again = make()  # the daemon restarts
    assert again.book.journal_skipped == 1
    s = again.state()
    assert (s["admitted"], s["suspect"], s["pending_sweep"], s["attendance_sent"]) == (1 + 1, 1, ["3"], True)
    again.book.tick(clock.t + 10)
    assert len(kinds(emitted, "attendance")) == n_att
    assert again.on_card(card(1))["verdict"] == "duplicate"
    with pytest.raises(SameProctor):
        again.confirm(4, "P1")
    assert again.confirm(4, "P2")["verdict"] == "admitted"
    sw = again.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert (sw["seat"], sw["alarms"]) == ("3", 1)


def test_no_attendance_for_a_session_never_observed(make, clock, emitted):
    clock.t = MATH_END + 3600
    st = make(journal=False)
    st.book.tick(clock.t)
    assert emitted == []


def test_restart_without_journal_marks_attendance_incomplete(make, clock, emitted):
    clock.t = MATH_START
    st = make(journal=False)
    st.book.tick(MATH_CUTOFF)
    (att,) = kinds(emitted, "attendance")
    assert att["complete"] is False


def test_camera_fault_does_not_block_the_door(plan, schedule, emitted, clock, tmp_path):
    def broken(tag, about):
        raise OSError("camera gone")

    st = station(plan, schedule, lambda k, d: emitted.append((k, d)), clock, tmp_path, snapshot=broken)
    with pytest.raises(RuntimeError, match="start"):
        st.on_card(card(1))
    st.book.start()
    d = st.on_card(card(1))
    assert d["verdict"] == "admitted" and d["snapshot"] == {"pending": True, "tag": "admitted-math-am-1"}
    assert kinds(emitted, "checkin") == [d] and st.state()["admitted"] == 1
    assert st.sweeps.on_sweep_button(SweepButton("det", button="clear"))["seat"] == "1"  # the lock was let go


def test_state_for_status_command(make, clock):
    st = make()
    st.on_card(card(1))
    clock.t = ENG_START + 60
    s = st.state()
    assert (s["session"], s["phase"], s["listening"], s["admitted"], s["absent"]) == \
        ("eng-pm", "cutoff_passed", True, 0, 5)


def test_clock_step_goes_only_on_a_session_open_at_the_step(make, clock, emitted):
    """Between sessions the room waits for the next one (days ahead, maybe): a step there is
    only the clock event, never a note on that session's record."""
    clock.t = ts("2026-06-07T08:00:00")
    st = make()
    clocks: list[dict] = []
    watch = ClockWatch(lambda k, d: clocks.append(d), clock, st.book.add_incident)

    def step(seconds: float) -> None:
        watch.on_clock(ClockState("clock", synced=True, offset_s=0.0, source="chrony:ntp1",
                                  stepped_s=seconds, ts=clock.t))

    step(5.0)  # before math-am's entry opens: on no record
    clock.t = ts("2026-06-07T08:40:00")
    step(-3.0)  # entry open
    clock.t = ts("2026-06-07T08:29:50")
    step(-20.0)  # set back from 08:30:10 (entry open) to before entry: still during math-am
    watch.on_clock(ClockState("clock", synced=True, offset_s=0.2, source="chrony:ntp1", ts=clock.t))
    clock.t = MATH_END
    st.book.tick(MATH_END)
    clock.t = MATH_END + 3600
    step(2.0)  # after math-am's record, eng-pm is tomorrow: on no record
    assert st.book.add_incident(Incident(IncidentType.CLOCK_STEP), during=[MATH_END + 3600]) is None
    assert [c["stepped_s"] for c in clocks] == [5.0, -3.0, -20.0, None, 2.0]  # every step is published
    (rec,) = kinds(emitted, "session_record")
    steps = [(i["type"], i["stepped_s"], i["start"], i["end"], i["duration_s"]) for i in rec["incidents"]]
    assert steps == [("clock_step", -3.0, "2026-06-07T08:40:00.000+08:00", "2026-06-07T08:40:00.000+08:00", 0.0),
                     ("clock_step", -20.0, "2026-06-07T08:29:50.000+08:00", "2026-06-07T08:29:50.000+08:00", 0.0)]
    assert all(i["source"] == "chrony:ntp1" and i["device"] == "clock" for i in rec["incidents"])
    st.book.tick(ts("2026-06-08T17:00:00"))  # nor on tomorrow's record, which the old rule picked
    assert [r["incidents"] for r in kinds(emitted, "session_record") if r["session"] == "eng-pm"] == [[]]
