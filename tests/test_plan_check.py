"""The seat plan is verified against the site's SHA-256, not just hashed, and its photos are checked.

Unit cases run the real check-in station on its session book with a PlanCheck as its gate
(the five-seat plan of checkin_station.py, photos written per case); the end-to-end case
sends ``seatplan_expect`` over MQTT through a real agent process and a real Mosquitto, and
restarts the agent to see the expectation kept.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from devkit.localbroker import Broker
from examroom.agent.alerts import room_state
from examroom.agent.checkin import CheckinStation
from examroom.agent.checkin_errors import CheckinError
from examroom.agent.control import CALLER, RequestError
from examroom.agent.plan_check import PlanCheck, describe, photo_problem
from examroom.agent.privacy import Scrubber
from examroom.agent.session_book import SessionBook
from examroom.agent.spool import Spool
from examroom.contract import vocabulary as v
from tests.agentproc import AgentProcess
from tests.checkin_station import FULL_ID, ID, MATH_END, NAMES, OUTSIDER, card, make_id
from tests.mqttwatch import Watcher
from tests.room_config import TOPICS, Aggregator, Door, room_config, settled, wait_kind, wait_status
from tests.schemas import load_schemas

JPEG, PNG = b"\xff\xd8\xff\xe0" + b"\0" * 40, b"\x89PNG\r\n\x1a\n" + b"\0" * 40
OTHER = "ab" * 32  # a SHA-256 the site could send that is not the plan's
SCHEMAS = load_schemas()


def valid(kind: str, data: dict) -> None:
    """Every published payload matches its documented schema, and shows no name or full ID."""
    Draft202012Validator(SCHEMAS[f"data/{kind}"], format_checker=Draft202012Validator.FORMAT_CHECKER).validate(data)
    text = json.dumps(data, ensure_ascii=False)
    assert not FULL_ID.search(text) and not any(n in text for n in NAMES.values()), text


class Room:
    """A station with its book, gated by a PlanCheck whose meta is a real spool's."""

    def __init__(self, plan, schedule, clock, tmp: Path, expected: str = "", photo_dir: str = "") -> None:
        self.events: list[tuple[str, dict]] = []
        self.spool = Spool(tmp / "spool.db")
        self.spool.open()
        scrub = Scrubber(c.name for c in plan.candidates)
        self.book = SessionBook(schedule, plan, self._emit, clock, tmp / "records", scrub, tmp / "journal")
        self.book.start()
        self.check = PlanCheck(plan, expected, photo_dir, self.spool, self._emit, clock, "Asia/Shanghai",
                               self.book.add_incident)
        self.station = CheckinStation(self.book, clock, scrub, gate=self.check.refusal)

    def _emit(self, kind: str, data: dict) -> None:
        valid(str(kind), data)
        self.events.append((str(kind), data))

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.events if k == kind]


def photos(plan_dir: Path, **files: bytes) -> None:
    """Write the plan's photos (named {seat}.jpg in checkin_station's plan) beside it."""
    for seat, blob in files.items():
        (plan_dir / f"{seat.removeprefix('s')}.jpg").write_bytes(blob)


@pytest.fixture
def room(plan, schedule, clock, tmp_path):
    def build(expected: str = "", photo_dir: str = "") -> Room:
        return Room(plan, schedule, clock, tmp_path, expected, photo_dir)
    return build


def test_a_mismatch_refuses_every_admission_alerts_and_goes_on_the_record(room, plan, clock, tmp_path):
    photos(tmp_path, s1=JPEG, s2=JPEG, s3=PNG, s4=b"GIF89a not what the plan promised")  # seat 5: none
    r = room(expected=OTHER)
    r.check.start()
    [start] = r.of("plan_check")
    assert (start["trigger"], start["verified"], start["entry_blocked"], start["expected_from"]) == (
        "start", False, True, "config")
    assert start["photos_missing"] == ["4", "5"] and start["photos_named"] == 5
    assert start["recorded_on"] == "math-am"  # entry is open for math-am at 08:40
    assert datetime.fromisoformat(start["time"]).utcoffset().total_seconds() == 8 * 3600

    refused = [r.station.on_card(card(1)),
               r.station.manual_admit(seat="2", proctor="P1"),
               r.station.manual_admit(id_last6=ID[3][-6:], proctor="P1")]
    for c in refused:
        assert c["verdict"] == v.Verdict.PLAN_UNVERIFIED and "sweep_required" not in c
        assert plan.sha256[:12] in c["reason"] and OTHER[:12] in c["reason"]
    assert r.station.on_card(card(id_number=OUTSIDER))["verdict"] == "not_in_room"  # refused as before
    r.station.mark_suspect("4", "P1", "photo unclear")  # doubting is not admitting
    r.station.confirm("4", "P1")
    with pytest.raises(CheckinError, match="entry is shut"):
        r.station.confirm("4", "P2")  # the confirmation that would admit
    assert r.station.state()["admitted"] == 0 and r.station.state()["pending_sweep"] == []

    [alert] = r.check.alerts()
    assert plan.sha256[:12] in alert and OTHER[:12] in alert
    assert room_state([], r.check.alerts(), {}, 0, False)[0] == v.RoomState.ALERT
    assert "DOES NOT MATCH" in describe(r.check.state()) and "4, 5" in describe(r.check.state())

    clock.t = MATH_END
    r.book.tick(clock.t)
    [rec] = r.of("session_record")
    [inc] = [i for i in rec["incidents"] if i["type"] == "plan_check"]
    assert (inc["entry_blocked"], inc["verified"], inc["photos_missing"]) == (True, False, ["4", "5"])
    assert (inc["seatplan_sha256"], inc["expected_sha256"]) == (plan.sha256, OTHER)
    refusals = [c["verdict"] for row in rec["seats"] for c in row["checkins"]]
    assert refusals.count("plan_unverified") == 3


def test_the_site_correcting_the_expectation_opens_entry(room, plan, tmp_path):
    photos(tmp_path, s1=JPEG, s2=JPEG, s3=JPEG, s4=JPEG, s5=JPEG)
    r = room(expected=OTHER)
    r.check.start()
    assert r.station.on_card(card(1))["verdict"] == "plan_unverified"
    reply = r.check.expect({"sha256": plan.sha256.upper(), CALLER: "site (exam/site01/12/cmd/seatplan_expect)"})
    assert reply["changed"] is True and reply["plan_check"]["verified"] is True
    assert r.check.refusal() is None and r.check.alerts() == []
    assert r.check.expect({"sha256": plan.sha256})["changed"] is False  # the same again: no new event
    [_, change] = r.of("plan_check")
    assert (change["trigger"], change["expected_from"], change["verified"], change["entry_blocked"]) == (
        "seatplan_expect", "site", True, False)
    assert change["by"].startswith("site (") and change["recorded_on"] == "math-am"
    assert r.station.on_card(card(1))["verdict"] == "admitted"
    for bad in ("", "xyz", "ab" * 31, 42):
        with pytest.raises(RequestError, match="64 hex"):
            r.check.expect({"sha256": bad})


def test_a_matching_hash_is_verified_and_a_clean_check_stays_off_the_record(room, plan, tmp_path):
    photos(tmp_path, s1=JPEG, s2=PNG, s3=JPEG, s4=JPEG, s5=JPEG)
    r = room(expected=plan.sha256)
    r.check.start()
    [ev] = r.of("plan_check")
    assert (ev["verified"], ev["entry_blocked"], ev["photos_missing"], ev["recorded_on"]) == (True, False, [], None)
    assert r.check.state() == {"seatplan_sha256": plan.sha256, "expected_sha256": plan.sha256,
                               "expected_from": "config", "verified": True, "entry_blocked": False,
                               "photos_named": 5, "photos_missing": []}
    assert "verified against the site's SHA-256" in describe(r.check.state())
    assert r.station.on_card(card(1))["verdict"] == "admitted" and r.check.alerts() == []


def test_without_an_expected_hash_entry_stays_open_unverified(room, tmp_path):
    r = room()
    r.check.start()
    state = r.check.state()
    assert (state["verified"], state["entry_blocked"], state["expected_from"]) == (False, False, None)
    assert state["photos_missing"] == ["1", "2", "3", "4", "5"]  # none written: each one is a finding
    assert "not verified: no expected SHA-256" in describe(state)
    assert r.station.manual_admit(seat="1", proctor="P1")["verdict"] == "admitted"


def test_photos_are_looked_up_in_photo_dir_and_judged_by_their_bytes(room, tmp_path):
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    photos(elsewhere, s1=JPEG, s2=PNG, s3=b"", s4=JPEG)
    (elsewhere / "5.jpg").mkdir()  # a directory where a photo should be: unreadable
    r = room(photo_dir=str(elsewhere))
    r.check.start()
    assert r.check.state()["photos_missing"] == ["3", "5"]
    assert photo_problem(elsewhere / "3.jpg") == "not a JPEG or PNG"
    assert photo_problem(elsewhere / "5.jpg").startswith("unreadable")
    assert photo_problem(elsewhere / "none.jpg") == "missing"


def test_the_stored_expectation_gives_way_to_a_new_bundle(plan, schedule, clock, tmp_path):
    r = Room(plan, schedule, clock, tmp_path)
    r.check.start()
    r.check.expect({"sha256": OTHER, CALLER: "site"})
    again = Room(plan, schedule, clock, tmp_path)  # a restart with the same bundle: still shut
    again.check.start()
    assert again.check.state()["expected_from"] == "site" and again.check.refusal() is not None
    newer = Room(plan, schedule, clock, tmp_path, expected=plan.sha256)  # a new bundle names the plan
    newer.check.start()
    assert newer.check.state()["expected_from"] == "config" and newer.check.refusal() is None


def test_the_trigger_words_are_the_documented_ones():
    assert {t.value for t in v.PlanCheckTrigger} == set(SCHEMAS["data/plan_check"]["properties"]["trigger"]["enum"])


# -- end to end: a real agent, a real broker ----------------------------------------------------

def _plan(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A three-seat plan for the room of room_config(), seat 3's photo missing."""
    ids = {"1": make_id("41010520080101123"), "2": make_id("41010520080202234"), "3": make_id("41010520080303345")}
    (tmp / "photos").mkdir()
    for seat in ("1", "2"):
        (tmp / "photos" / f"{seat}.jpg").write_bytes(JPEG)
    rows = ["room,seat,ticket,name,id_number,card_uids,photo,medical_metal"]
    rows += [f"room101,{s},2026000{s},{NAMES[int(s)]},{ids[s]},,photos/{s}.jpg,false" for s in ids]
    plan = tmp / "seats.csv"
    plan.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return plan, ids


def test_seatplan_expect_over_mqtt_shuts_entry_and_survives_a_restart(tmp_path):
    seatplan, ids = _plan(tmp_path)
    real = hashlib.sha256(seatplan.read_bytes()).hexdigest()
    broker = Broker(tmp_path / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp_path, broker.port, seatplan=seatplan, start_in=600, cutoff_after=600,
                               end_after=1200, heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            settled(w)
            first = wait_kind(w, 0, "plan_check")
            assert (first["trigger"], first["verified"], first["photos_missing"]) == ("start", False, ["3"])
            assert agent.call("seatplan_expect", sha256=OTHER)["ok"] is False  # never from the box itself

            agg = Aggregator(broker.port, w)
            mark = len(w.messages)
            refused = agg.call("seatplan_expect", {"sha256": OTHER})  # entry is open: the exam lock holds
            assert refused["ok"] is False and "force" in refused["error"]
            reply = agg.call("seatplan_expect", {"sha256": OTHER, "force": True, "reason": "plan re-issued"})
            assert reply["ok"] and reply["changed"] and reply["plan_check"]["entry_blocked"]
            change = wait_kind(w, mark, "plan_check")
            assert change["trigger"] == "seatplan_expect" and change["by"] == f"site ({TOPICS.cmd('seatplan_expect')})"
            status = wait_status(w, mark, "alert", OTHER[:12])
            assert any(real[:12] in a for a in status["alerts"])
            door = Door(agent, w, room)
            assert door.tap_id(ids["1"], NAMES[1])["verdict"] == "plan_unverified"
            cli = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "status", "--config", str(room.config)],
                                 capture_output=True, text=True, timeout=30)
            assert f"seat plan {real[:12]} DOES NOT MATCH the site's {OTHER[:12]}" in cli.stdout, cli.stdout

            assert agent.terminate() == 0
            mark = len(w.messages)
            agent = AgentProcess(room.config, room.socket).start()
            again = wait_kind(w, mark, "plan_check")
            assert (again["trigger"], again["expected_from"], again["entry_blocked"]) == ("start", "site", True)
            wait_status(w, mark, "alert", OTHER[:12])
            hb = w.wait_for(lambda ms: next((m.json for m in ms[mark:] if m.topic == TOPICS.heartbeat), None))
            assert hb["exam"]["plan_check"]["expected_sha256"] == OTHER
            assert hb["exam"]["plan_check"]["photos_missing"] == ["3"]
            assert agent.call("checkin_admit", seat="2", proctor="P1")["verdict"] == "plan_unverified"

            mark = len(w.messages)
            assert agg.call("seatplan_expect", {"sha256": real})["plan_check"]["verified"] is True
            wait_status(w, mark, "online")
            assert agent.call("checkin_admit", seat="2", proctor="P1")["verdict"] == "admitted"
            agg.close()
            for m in w.messages:
                if "/event/" in m.topic and m.json["kind"] in ("plan_check", "checkin"):
                    valid(m.json["kind"], m.json["data"])
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()


def test_a_new_expectation_during_entry_needs_force_and_a_reason(plan, schedule, clock, tmp_path):
    """It can shut entry in the middle of entry: the exam lock holds it back unless forced, on record."""
    from examroom.agent.exam_lock import ExamLock

    r = Room(plan, schedule, clock, tmp_path)
    lock = ExamLock(schedule, clock, r._emit, str)  # clock: 08:40, entry of math-am is open
    r.check = PlanCheck(plan, "", "", r.spool, r._emit, clock, "Asia/Shanghai", r.book.add_incident,
                        exam_lock=lock.check)
    site = "site (exam/site01/12/cmd/seatplan_expect)"
    with pytest.raises(RequestError, match="entry"):
        r.check.expect({"sha256": OTHER, CALLER: site})
    assert r.check.refusal() is None and r.of("forced") == []  # refused: nothing changed
    r.check.expect({"sha256": OTHER, CALLER: site, "force": True, "reason": "the site resent the right plan"})
    assert r.check.refusal() is not None
    (forced,) = r.of("forced")
    assert forced["reason"] == "the site resent the right plan" and "seatplan_expect" in forced["action"]
