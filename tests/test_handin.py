"""Hand-in (交卷) and no re-entry: "交卷退出考场的考生不允许再进入考场" and "考试终了信号发出前,
考生不得交卷出场" (some provinces: not before the last 30 minutes).

The rules run on the in-process station with a movable clock (every payload is checked
against the docs' schema by the ``emitted`` fixture); one room runs as a real agent process
and is driven through the CLI, as a proctor's helper does at the door.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devkit.localbroker import Broker
from examroom.agent.checkin import CheckinError, CheckinStation
from examroom.agent.checkin_errors import HandInTooEarly
from examroom.agent.privacy import Scrubber
from examroom.agent.session_book import SessionBook
from examroom.drivers.events import CardPresented, SweepButton
from tests.agentproc import AgentProcess
from tests.checkin_station import MATH_CUTOFF, MATH_END, MATH_START, NAMES, UID1, card, iso, kinds, ts
from tests.mqttwatch import Watcher
from tests.room_config import Door, Room, room_config, settled, wait_kind
from tests.schemas import validator

EXAM_ZONE = ZoneInfo("Asia/Shanghai")  # [procedure] timezone's default: what a proctor reads
CLI = Path(sys.executable).parent / "examroom-agent"


@pytest.fixture
def province(plan, schedule, emitted, clock, tmp_path):
    """``province(minutes)``: a station whose province allows hand-in in the last ``minutes``
    (the daemon passes ``[procedure] handin_not_before_end_min``); ``province.snaps`` are the
    photo requests. The journal is the one ``make`` uses, so a second build is a restart."""
    snaps: list[str] = []

    def build(minutes: float = 0, roster: tuple[str, ...] = ()) -> CheckinStation:
        scrub = Scrubber(c.name for c in plan.candidates)
        book = SessionBook(schedule, plan, lambda k, d: emitted.append((k, d)), clock, tmp_path / "records",
                           scrub, tmp_path / "checkin.journal")
        st = CheckinStation(book, clock, scrub, snapshot=lambda tag, about: snaps.append(tag), roster=roster,
                            handin_not_before_end_min=minutes)
        book.start()
        return st

    build.snaps = snaps
    return build


def hhmmss(t: float | str) -> str:
    """As a proctor reads a time: epoch seconds, or an event's ISO 8601 time, in the exam's zone."""
    at = datetime.fromisoformat(t).astimezone(EXAM_ZONE) if isinstance(t, str) else datetime.fromtimestamp(t, EXAM_ZONE)
    return at.strftime("%H:%M:%S")


# -- the rules ----------------------------------------------------------------------------------

def test_no_handin_before_the_end_signal_by_default(province, clock, emitted):
    st = province()
    st.on_card(card(1))
    clock.t = MATH_END - 1
    with pytest.raises(HandInTooEarly) as e:
        st.departures.hand_in(1, "P1")
    assert f"no hand-in before {hhmmss(MATH_END)}" in str(e.value) and "11:00:00" in str(e.value)
    assert [d["verdict"] for d in kinds(emitted, "checkin")] == ["admitted"]  # a refusal publishes nothing
    assert st.state()["admitted"] == 1 and st.state()["handin_from"] == "2026-06-07T11:00:00.000+08:00"
    clock.t = MATH_END  # the end signal: everyone hands in and the record closes; nothing to record by hand
    with pytest.raises(CheckinError, match="no exam session is running"):
        st.departures.hand_in(1, "P1")


def test_last_30_minutes_when_the_province_allows_it(province, clock, emitted):
    st = province(30)
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    clock.t = MATH_END - 30 * 60 - 0.5
    with pytest.raises(HandInTooEarly, match=hhmmss(MATH_END - 1800)):
        st.departures.hand_in(1, "P1")
    clock.t = MATH_END - 30 * 60
    d = st.departures.hand_in("01", "P1", by="proctor")
    assert d == {**d, "verdict": "handed_in", "seat": "1", "method": "manual", "device": "manual", "proctor": "P1",
                 "earliest_handin": "2026-06-07T10:30:00.000+08:00", "forced": False,
                 "time": iso(clock.t), "by": "proctor"}
    assert "reason" not in d and "snapshot" not in d and province.snaps == ["admitted-math-am-1"]  # gone: no photo
    s = st.state()
    assert (s["handed_in"], s["admitted"], s["present"], s["absent"]) == (1, 0, 1, 4)
    with pytest.raises(CheckinError, match="not in the room"):
        st.departures.hand_in(1, "P1")  # twice
    with pytest.raises(CheckinError, match="not in the room"):
        st.leave(1)


def test_a_forced_hand_in_is_on_record_with_its_reason(province, clock, emitted):
    st = province()
    st.on_card(card(2))  # not swept yet
    clock.t = MATH_START + 600
    with pytest.raises(CheckinError, match="reason"):
        st.departures.hand_in(2, "P1", force=True, reason="  ")
    d = st.departures.hand_in(2, "P1", force=True, reason=f"{NAMES[2]} fainted")
    assert (d["forced"], d["reason"], d["earliest_handin"]) == (True, "*** fainted", iso(MATH_END))
    (sweep,) = kinds(emitted, "sweep")
    assert (sweep["seat"], sweep["result"]) == ("2", "left_before_clear")


def test_only_a_candidate_in_the_room_hands_in(province, clock, emitted):
    st = province(600)  # any time after the start: the time rule is not what refuses here
    st.on_card(card(1))
    st.mark_suspect(2, "P1", "photo")
    st.on_card(card(3))
    clock.t = MATH_START + 60
    st.leave(3)
    for seat, status in ((4, "absent"), (2, "suspect"), (3, "out")):
        with pytest.raises(CheckinError, match=f"status {status}"):
            st.departures.hand_in(seat, "P1")
    assert [d["verdict"] for d in kinds(emitted, "checkin")] == ["admitted", "suspect", "admitted", "left"]
    with pytest.raises(CheckinError, match="roster"):
        province(600, roster=("P01", "P02")).departures.hand_in(1, "P1")
    assert province(600, roster=("P01", "P02")).departures.hand_in(1, "p01")["proctor"] == "P01"


def test_no_reentry_after_hand_in_even_before_the_cutoff(province, clock, emitted):
    st = province()
    st.on_card(CardPresented("pcsc0", uid=UID1))
    clock.t = ts("2026-06-07T08:50:00")  # entry open, long before the cutoff: taken ill, hands in
    st.departures.hand_in(1, "P1", force=True, reason="ill")
    clock.t += 300
    refused = [st.on_card(card(1)), st.on_card(CardPresented("pcsc0", uid=UID1)),
               st.manual_admit(seat=1, proctor="P2")]
    clock.t = MATH_CUTOFF + 60
    refused.append(st.on_card(card(1)))
    assert [(d["verdict"], d["status"]) for d in refused] == [("reentry_refused", "handed_in")] * 4
    assert refused[0]["snapshot"]["tag"] == "reentry_refused-math-am-1"  # someone at the door: photographed
    with pytest.raises(CheckinError, match="closed"):
        st.mark_suspect(1, "P1", "who is this")
    s = st.state()
    assert (s["handed_in"], s["admitted"], s["pending_sweep"]) == (1, 0, [])


def test_a_temporary_exit_still_readmits(province, clock, emitted):
    st = province(30)
    st.on_card(card(1))
    clock.t = MATH_CUTOFF + 600
    st.leave(1)  # escorted to the toilet, after the cutoff
    back = st.on_card(card(1))
    assert (back["verdict"], back["reentry"], back["sweep_required"]) == ("admitted", True, True)
    clock.t = MATH_END - 600
    st.departures.hand_in(1, "P1")
    assert st.on_card(card(1))["verdict"] == "reentry_refused"


def test_the_hand_in_survives_a_restart(province, clock, emitted):
    st = province(30)
    st.on_card(card(1))
    clock.t = MATH_END - 60
    st.departures.hand_in(1, "P1")
    again = province(30)  # the daemon restarts: the journal replays the hand-in
    assert again.state()["handed_in"] == 1
    assert again.on_card(card(1))["verdict"] == "reentry_refused"


def test_the_record_counts_and_lists_hand_ins(province, clock, emitted, tmp_path):
    st = province(30)
    for seat in (1, 2, 3):
        st.on_card(card(seat))
    clock.t = ts("2026-06-07T08:55:00")
    st.departures.hand_in(3, "P1", force=True, reason="ill")  # before the cutoff: on the attendance too
    st.book.tick(MATH_CUTOFF)
    (att,) = kinds(emitted, "attendance")
    assert (att["present"], att["absent"], att["handed_in"]) == (3, ["4", "5"], ["3"])
    clock.t = MATH_END - 25 * 60
    st.departures.hand_in(1, "P2")
    clock.t += 60
    st.on_card(card(1))  # tries to come back
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    assert (rec["present"], rec["handed_in"], rec["reentry_refused"]) == (3, ["1", "3"], ["1"])
    seats = {r["seat"]: r for r in rec["seats"]}
    assert [seats[s]["status"] for s in "12345"] == ["handed_in", "present", "handed_in", "absent", "absent"]
    assert [c["verdict"] for c in seats["1"]["checkins"]] == ["admitted", "handed_in", "reentry_refused"]
    doc = json.loads((tmp_path / "records" / "math-am-12.json").read_text(encoding="utf-8"))
    assert doc["summary"]["handed_in"] == ["1", "3"]
    rows = {r["seat"]: r for r in doc["candidates"]}
    assert (rows["1"]["handed_in_at"], rows["3"]["handed_in_at"], rows["2"]["handed_in_at"]) == (
        "2026-06-07T10:35:00+08:00", "2026-06-07T08:55:00+08:00", "")
    assert rows["1"]["refusals"] == ["reentry_refused 2026-06-07T10:36:00+08:00"]
    with open(tmp_path / "records" / "math-am-12.csv", encoding="utf-8-sig", newline="") as f:
        by_seat = {r["seat"]: r for r in csv.DictReader(f) if r["record"] == "candidate"}
    assert (by_seat["1"]["status"], by_seat["1"]["handed_in_at"]) == ("handed_in", "2026-06-07T10:35:00+08:00")
    assert "reentry_refused 2026-06-07T10:36:00+08:00" in by_seat["1"]["detail"]


# -- the real agent, through the CLI --------------------------------------------------------------

class Desk:
    """A room's box as a proctor's helper uses it: the agent, the CLI and the aggregator's view."""

    def __init__(self, room: Room, agent: AgentProcess, w: Watcher) -> None:
        self.room, self.agent, self.w = room, agent, w
        self.door = Door(agent, w, room)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "examroom.agent.cli"]
        done = subprocess.run([*cmd, *args, "-c", str(self.room.config)], capture_output=True, text=True,
                              timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def event(self, kind: str, pred) -> dict:
        """The event as the aggregator received it, checked against the docs' schema."""
        data = wait_kind(self.w, 0, kind, pred)
        errors = [e.message for e in validator(f"data/{kind}").iter_errors(data)]
        assert errors == [], (kind, data, errors)
        return data


@pytest.fixture
def start_desk(tmp_path: Path):
    """``start_desk(extra=..., **timeline)``: a simulated room run by a real agent process on
    its own broker, with the session started a minute ago (entry still open)."""
    made: list[tuple[Broker, Watcher, AgentProcess]] = []

    def start(extra: str = "", **timeline: float) -> Desk:
        broker = Broker(tmp_path / "broker").start()
        w = Watcher(broker.port).__enter__()
        room = room_config(tmp_path, broker.port, heartbeat_s=0.2, extra=extra,
                           **{"entry_in": -120, "start_in": -60, "cutoff_after": 600, **timeline})
        agent = AgentProcess(room.config, room.socket).start()
        made.append((broker, w, agent))
        settled(w)
        return Desk(room, agent, w)

    yield start
    for broker, w, agent in made:
        agent.kill()
        w.__exit__()
        broker.kill()


def test_hand_in_and_reentry_through_the_cli(start_desk):
    """Session ends in 50 min, the province allows the last 30: too early, unless forced."""
    desk = start_desk(extra="[procedure]\nhandin_not_before_end_min = 30\n", end_after=3000)
    c = desk.room.candidates
    assert desk.cli("checkin", "admit", "--seat", "5", "--proctor", "P1").returncode == 0
    early = desk.cli("checkin", "handin", "5", "--proctor", "P1")
    earliest = desk.room.times["end"] - 1800
    assert early.returncode == 1 and early.stdout == ""
    assert early.stderr.startswith(f"error: seat 5: no hand-in before {hhmmss(earliest)}"), early.stderr
    for bad, why in (({"force": "yes", "reason": "ill"}, "'force' must be true or false"),
                     ({"force": True}, "'reason' must be a non-empty string")):
        reply = desk.agent.call("checkin_handin", seat="5", proctor="P1", **bad)
        assert reply["ok"] is False and why in reply["error"], reply

    done = desk.cli("checkin", "handin", "5", "--proctor", "P1", "--force", "fainted, to the site doctor")
    assert done.returncode == 0, done.stderr
    ev = desk.event("checkin", lambda d: d["verdict"] == "handed_in")
    assert (ev["seat"], ev["forced"], ev["reason"]) == ("5", True, "fainted, to the site doctor")
    handin_from = datetime.fromisoformat(ev["earliest_handin"])  # the config keeps milliseconds
    assert handin_from.utcoffset().total_seconds() == 8 * 3600
    assert handin_from.timestamp() == pytest.approx(earliest, abs=0.001)
    who = f"seat 5, ticket {c['5'].ticket}, ID {c['5'].id_masked}"
    assert done.stdout.splitlines() == [
        f"HANDED IN {who} at {hhmmss(ev['time'])}, by P1",
        f"FORCED before the earliest hand-in at {hhmmss(earliest)}: fainted, to the site doctor (on the record)",
        "the seat is closed: the candidate may not come back this session"]

    again = desk.cli("checkin", "admit", "--seat", "5", "--proctor", "P2")
    assert again.returncode == 1
    assert "NOT ADMITTED" in again.stdout and "the seat is closed (status handed_in)" in again.stdout
    tapped = desk.door.tap_id(c["5"].id_number)
    assert (tapped["verdict"], tapped["status"]) == ("reentry_refused", "handed_in")
    desk.event("checkin", lambda d: d["verdict"] == "reentry_refused" and d["method"] == "card")
    state = desk.cli("checkin", "state").stdout
    assert f"handed in: 1 (hand-in from {hhmmss(earliest)})" in state
    assert c["5"].name not in done.stdout + again.stdout + state and c["5"].id_number not in state
