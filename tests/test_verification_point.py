"""The identity-verification point: "用身份验证系统对发现的疑似替考考生进行身份验证".

A suspect is sent to the site's verification point and its outcome closes the doubt on
the record: confirmed admits (with a new sweep), refused records an impostor and closes
the seat. The rules run on the in-process station (every payload checked against the docs'
schema by ``emitted``); one room runs as a real agent process, driven through the CLI.
"""
from __future__ import annotations

import csv
import json

import pytest

from examroom.agent.checkin import CheckinError
from examroom.contract.vocabulary import VerificationOutcome
from examroom.drivers.events import SweepButton
from examroom.drivers.gb11643 import mask_id
from tests.checkin_station import ID, MATH_CUTOFF, MATH_END, NAMES, card, kinds, ts
from tests.test_handin import hhmmss, start_desk  # noqa: F401 (start_desk is a fixture)


def verdicts(emitted, seat: str) -> list[str]:
    return [d["verdict"] for d in kinds(emitted, "checkin") if d["seat"] == seat]


def test_outcomes_are_the_cli_choices():
    assert {o.value for o in VerificationOutcome} == {"confirmed", "refused"}


def test_confirmed_at_the_point_admits_and_closes_the_suspect(make, clock, emitted, tmp_path):
    st = make()
    st.mark_suspect(3, "P1", "photo does not match")
    clock.t += 60
    sent = st.departures.send_to_verification(3, "P1", by="proctor")
    assert (sent["verdict"], sent["proctor"], sent["by"]) == ("sent_to_verification", "P1", "proctor")
    assert "snapshot" not in sent  # the candidate is on the way to the point, not at the door
    s = st.state()
    assert (s["at_verification"], s["suspect"], s["present"]) == (["3"], 0, 1)
    dup = st.on_card(card(3))
    assert (dup["verdict"], dup["status"]) == ("duplicate", "at_verification")
    with pytest.raises(CheckinError, match="identity-verification point"):
        st.confirm(3, "P1")  # two proctors no longer decide: the point does
    with pytest.raises(CheckinError, match="already marked suspect"):
        st.mark_suspect(3, "P2", "again")
    with pytest.raises(CheckinError, match="not marked suspect"):
        st.departures.send_to_verification(3, "P1")
    clock.t += 600
    d = st.departures.verify(3, "confirmed", f"考点验证点 V2, {NAMES[4]} on duty", "P2")
    assert d == {**d, "verdict": "admitted", "lookup": "verification", "point": "考点验证点 V2, *** on duty",
                 "proctor": "P2", "reentry": False, "sweep_required": True}
    assert d["snapshot"]["tag"] == "admitted-math-am-3"  # back at the door: photographed
    assert st.state()["at_verification"] == [] and st.state()["pending_sweep"] == ["3"]
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert (rec["verified"], rec["suspects"], rec["identity_refused"]) == (["3"], [], [])
    row = next(r for r in rec["seats"] if r["seat"] == "3")
    assert row["status"] == "present" and row["admitted_at"] == "2026-06-07T08:51:00.000+08:00"
    assert [c["verdict"] for c in row["checkins"]] == ["suspect", "sent_to_verification", "duplicate", "admitted"]
    doc = json.loads((tmp_path / "records" / "math-am-12.json").read_text(encoding="utf-8"))
    (trip,) = next(c for c in doc["candidates"] if c["seat"] == "3")["verifications"]
    assert trip == {"sent_at": "2026-06-07T08:41:00+08:00", "sent_by": "P1", "outcome": "confirmed",
                    "point": "考点验证点 V2, *** on duty", "proctor": "P2", "time": "2026-06-07T08:51:00+08:00"}
    with open(tmp_path / "records" / "math-am-12.csv", encoding="utf-8-sig", newline="") as f:
        row3 = next(r for r in csv.DictReader(f) if r["seat"] == "3")
    assert ("sent to identity verification 2026-06-07T08:41:00+08:00 by P1, confirmed "
            "2026-06-07T08:51:00+08:00 at 考点验证点 V2, *** on duty by P2") in row3["detail"]


def test_refused_at_the_point_is_an_impostor_never_admitted(make, clock, emitted, tmp_path):
    st = make()
    st.mark_suspect(4, "P1", "photo")
    st.departures.send_to_verification(4, "P1")
    d = st.departures.verify(4, "refused", f"V1 ({ID[4]})", "P2")
    assert (d["verdict"], d["point"], d["proctor"]) == ("identity_refused", f"V1 ({mask_id(ID[4])})", "P2")
    assert "snapshot" not in d
    s = st.state()
    assert (s["identity_refused"], s["present"], s["absent"], s["admitted"]) == (["4"], 0, 4, 0)
    again = [st.on_card(card(4)), st.manual_admit(seat=4, proctor="P1")]
    assert [(x["verdict"], x["status"]) for x in again] == [("reentry_refused", "identity_refused")] * 2
    with pytest.raises(CheckinError, match="closed"):
        st.mark_suspect(4, "P1", "again")
    st.book.tick(MATH_CUTOFF)
    (att,) = kinds(emitted, "attendance")
    assert (att["present"], att["absent"], att["identity_refused"], att["suspects"]) == (
        0, ["1", "2", "3", "5"], ["4"], [])
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert (rec["identity_refused"], rec["reentry_refused"], rec["verified"]) == (["4"], ["4"], [])
    row = next(r for r in rec["seats"] if r["seat"] == "4")
    assert (row["status"], row["admitted_at"]) == ("identity_refused", None)
    doc = json.loads((tmp_path / "records" / "math-am-12.json").read_text(encoding="utf-8"))
    cand = next(c for c in doc["candidates"] if c["seat"] == "4")
    assert cand["verifications"][0]["outcome"] == "refused" and cand["status"] == "identity_refused"
    assert cand["refusals"][0].startswith("identity_refused ")


def test_what_the_point_can_and_cannot_be_told(make, clock, emitted):
    st = make()
    st.on_card(card(1))
    with pytest.raises(CheckinError, match="not marked suspect"):
        st.departures.send_to_verification(1, "P1")  # an admitted candidate is not sent
    st.mark_suspect(2, "P1", "photo")
    with pytest.raises(CheckinError, match="send-to-verification first"):
        st.departures.verify(2, "confirmed", "V1", "P2")
    st.departures.send_to_verification(2, "P1")
    for outcome, point, why in (("maybe", "V1", "outcome"), ("confirmed", "  ", "point")):
        with pytest.raises(CheckinError, match=why):
            st.departures.verify(2, outcome, point, "P2")
    with pytest.raises(CheckinError, match="ID number"):
        st.departures.verify(2, "confirmed", "V1", ID[2])  # a signature is never an ID number
    assert verdicts(emitted, "2") == ["suspect", "sent_to_verification"]


def test_a_candidate_doubted_inside_the_room_is_swept_again(make, clock, emitted):
    st = make()
    st.on_card(card(1))  # admitted, sweep pending
    st.mark_suspect(1, "P1", "looks different from the photo")
    st.departures.send_to_verification(1, "P1")
    (closed,) = kinds(emitted, "sweep")
    assert (closed["seat"], closed["result"]) == ("1", "left_before_clear")
    clock.t += 300
    st.departures.verify(1, "confirmed", "V1", "P2")
    assert st.state()["pending_sweep"] == ["1"]


def test_still_at_the_point_at_the_cutoff_and_the_end(make, clock, emitted, tmp_path):
    st = make()
    st.mark_suspect(5, "P1", "photo")
    st.departures.send_to_verification(5, "P1")
    again = make()  # a restart keeps the trip
    assert again.state()["at_verification"] == ["5"]
    again.book.tick(MATH_CUTOFF)
    (att,) = kinds(emitted, "attendance")
    assert (att["suspects"], att["present"]) == (["5"], 1)
    clock.t = ts("2026-06-07T10:00:00")
    again.departures.verify(5, "confirmed", "V1", "P2")  # not late: the point kept them past the cutoff
    assert again.state()["admitted"] == 1
    clock.t = MATH_END
    again.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert rec["verified"] == ["5"]


def test_no_outcome_by_the_end_stays_an_open_suspect(make, clock, emitted, tmp_path):
    st = make()
    st.mark_suspect(2, "P1", "photo")
    st.departures.send_to_verification(2, "P1")
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert rec["suspects"] == ["2"] and next(r for r in rec["seats"] if r["seat"] == "2")["status"] == "suspect"
    with open(tmp_path / "records" / "math-am-12.csv", encoding="utf-8-sig", newline="") as f:
        row2 = next(r for r in csv.DictReader(f) if r["seat"] == "2")
    assert row2["detail"].endswith("sent to identity verification 2026-06-07T08:40:00+08:00 by P1, no outcome")


def test_the_point_through_the_cli(start_desk):  # noqa: F811 (the fixture)
    desk = start_desk(end_after=3000)
    c = desk.room.candidates
    for seat in ("7", "8"):
        assert desk.cli("checkin", "suspect", seat, "--proctor", "P1", "--reason", "photo").returncode == 0
    refused = desk.cli("checkin", "verify", "7", "--outcome", "confirmed", "--point", "V1", "--proctor", "P2")
    assert refused.returncode == 1 and "send-to-verification first" in refused.stderr
    sent = desk.cli("checkin", "send-to-verification", "7", "--proctor", "P1")
    assert sent.returncode == 0, sent.stderr
    ev = desk.event("checkin", lambda d: d["verdict"] == "sent_to_verification")
    who7 = f"seat 7, ticket {c['7'].ticket}, ID {c['7'].id_masked}"
    assert sent.stdout.splitlines()[0] == f"SENT TO IDENTITY VERIFICATION {who7} at {hhmmss(ev['time'])}, by P1"
    assert "at the identity-verification point: 7;" in desk.cli("checkin", "state").stdout

    ok = desk.cli("checkin", "verify", "7", "--outcome", "confirmed", "--point", "考点验证点 V2", "--proctor", "P2")
    assert ok.returncode == 0, ok.stderr
    ev = desk.event("checkin", lambda d: d["verdict"] == "admitted" and d.get("lookup") == "verification")
    assert (ev["seat"], ev["point"], ev["proctor"], ev["sweep_required"]) == ("7", "考点验证点 V2", "P2", True)
    assert ok.stdout.splitlines()[:3] == ["IDENTITY CONFIRMED by 考点验证点 V2",
                                         f"ADMITTED {who7} at {hhmmss(ev['time'])}, by P2",
                                         "next: metal-detector sweep (press clear when done)"]

    assert desk.cli("checkin", "send-to-verification", "8", "--proctor", "P1").returncode == 0
    no = desk.cli("checkin", "verify", "8", "--outcome", "refused", "--point", "V1", "--proctor", "P2")
    assert no.returncode == 0, no.stderr
    ev = desk.event("checkin", lambda d: d["verdict"] == "identity_refused")
    who8 = f"seat 8, ticket {c['8'].ticket}, ID {c['8'].id_masked}"
    assert no.stdout.strip() == (f"IDENTITY REFUSED (替考) {who8} at {hhmmss(ev['time'])}, by V1 "
                                 "(recorded by P2): not admitted; the seat is closed")
    tapped = desk.door.tap_id(c["8"].id_number)
    assert (tapped["verdict"], tapped["status"]) == ("reentry_refused", "identity_refused")
    state = desk.cli("checkin", "state").stdout
    assert "identity refused: 8" in state and "at the identity-verification point: none;" in state
    for out in (sent.stdout, ok.stdout, no.stdout, state):
        assert c["7"].name not in out and c["8"].name not in out and c["8"].id_number not in out
