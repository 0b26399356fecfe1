"""The proctors' and technicians' exam commands, typed as commands.

Each test runs the installed console entry (``examroom-agent ...``) as a
subprocess against a real sim agent on a real Mosquitto, as a proctor's helper
does at the door, and judges three things: the exit code, what the command
prints for a person (a verdict line with the seat, ticket and masked ID and the
box's clock time, never the full ID number or the name), and the events the
aggregator receives. Waits are on messages (the watcher, the heartbeat's device
details), never on sleeps.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devkit.localbroker import Broker
from tests.agentproc import AgentProcess
from tests.mqttwatch import Watcher
from tests.room_config import TOPICS, Candidate, Room, is_hb, room_config, wait_kind, wait_status

CLI = Path(sys.executable).parent / "examroom-agent"


class Desk:
    """A proctor's helper at the room's box: the agent, the aggregator's view and the CLI."""

    def __init__(self, room: Room, agent: AgentProcess, w: Watcher) -> None:
        self.room, self.agent, self.w = room, agent, w
        self.ran: list[subprocess.CompletedProcess] = []

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "examroom.agent.cli"]
        done = subprocess.run([*cmd, *args, "-c", str(self.room.config)], capture_output=True, text=True,
                              timeout=timeout)
        self.ran.append(done)
        return done

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        return done.stdout

    def event_after(self, mark: int, kind: str, pred=lambda d: True) -> dict:
        return wait_kind(self.w, mark, kind, pred)

    def heartbeat_shows(self, device: str, pred) -> None:
        self.w.wait_for(lambda ms: any(pred(m.json["devices"][device]) for m in ms if is_hb(m)))

    def mark(self) -> int:
        return len(self.w.messages)


@pytest.fixture
def make_desk(tmp_path: Path, broker: Broker, watcher: Watcher):
    """A room on its own timeline (seconds from now, as room_config takes them)."""
    made: list[Desk] = []

    def make(**timeline: float) -> Desk:
        """Each room in its own directory: no spool or check-in journal carries over."""
        tmp = tmp_path / f"desk{len(made)}"
        tmp.mkdir()
        room = room_config(tmp, broker.port, heartbeat_s=0.2, **timeline)
        mark = len(watcher.messages)
        made.append(Desk(room, AgentProcess(room.config, room.socket).start(), watcher))
        wait_status(watcher, mark, "online")
        wait_kind(watcher, mark, "clock")  # the clock starts last: the start-up events are in
        return made[-1]

    yield make
    for d in made:
        d.agent.kill()
        for done in d.ran:  # whatever was typed, the command never crashed
            assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def desk(make_desk) -> Desk:
    """Entry open for the whole test: the start is 10 minutes away."""
    return make_desk(entry_in=-1, start_in=600, cutoff_after=600, end_after=1200)


def hhmmss(at: str) -> str:
    """What a proctor reads of an event's time (ISO 8601 with the exam zone's offset, +08:00 by
    default, which it must carry): the exam's zone (Asia/Shanghai), not this machine's."""
    t = datetime.fromisoformat(at)
    assert t.utcoffset() == timedelta(hours=8), at
    return t.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M:%S")


def who(c: Candidate) -> str:
    return f"seat {c.seat}, ticket {c.ticket}, ID {c.id_masked}"


def for_a_person(out: str, *candidates: Candidate) -> None:
    """Printed text, not a JSON dump, and nothing personal beyond the masked ID."""
    with pytest.raises(ValueError):
        json.loads(out)
    for c in candidates:
        assert c.id_number not in out and c.name not in out, out


def test_admit_by_seat_id_ending_and_ticket_ending(desk: Desk) -> None:
    c = desk.room.candidates
    mark = desk.mark()
    out = desk.ok("checkin", "admit", "--seat", "3", "--proctor", "proctor-A")
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "3")
    assert (ev["verdict"], ev["method"], ev["lookup"], ev["proctor"], ev["device"]) == (
        "admitted", "manual", "seat", "proctor-A", "manual")
    assert ev["id_masked"] == c["3"].id_masked and ev["sweep_required"] is True
    assert out.splitlines() == [f"ADMITTED {who(c['3'])} at {hhmmss(ev['time'])}, by proctor-A",
                                "next: metal-detector sweep (press clear when done)",
                                "photo requested (admitted-eng-e2e-3)"]
    for_a_person(out, c["3"])

    mark = desk.mark()
    out = desk.ok("checkin", "admit", "--id-last6", c["4"].id_number[-6:], "--proctor", "proctor-B")
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "4")
    assert (ev["verdict"], ev["lookup"], ev["proctor"]) == ("admitted", "id_last6", "proctor-B")
    assert out.startswith(f"ADMITTED {who(c['4'])} at {hhmmss(ev['time'])}, by proctor-B\n")
    for_a_person(out, c["4"])

    mark = desk.mark()  # --json: the reply is the very event the aggregator receives
    out = desk.ok("checkin", "admit", "--ticket-tail", c["6"].ticket[-4:], "--proctor", "proctor-A", "--json")
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "6")
    assert json.loads(out) == ev and ev["lookup"] == "ticket_tail"

    out = desk.ok("checkin", "state")
    assert out.splitlines()[:3] == ["room room101, session eng-e2e, phase entry",
                                    "present 3 of 30 (admitted 3, suspect 0, stepped out 0), absent 27",
                                    "waiting for a sweep: 3, 4, 6"]


def test_second_admission_is_recorded_and_exits_1(desk: Desk) -> None:
    c = desk.room.candidates["3"]
    desk.ok("checkin", "admit", "--seat", "3", "--proctor", "proctor-A")
    mark = desk.mark()
    again = desk.cli("checkin", "admit", "--seat", "3", "--proctor", "proctor-B")
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "3")
    assert (ev["verdict"], ev["status"], ev["proctor"]) == ("duplicate", "admitted", "proctor-B")
    assert again.returncode == 1, again
    assert again.stdout.splitlines()[0] == (f"NOT ADMITTED {who(c)} at {hhmmss(ev['time'])}, by proctor-B: "
                                            "already checked in (status admitted); this second admission "
                                            "is flagged")
    for_a_person(again.stdout, c)


def test_late_and_early_admissions_are_refused_with_the_reason(make_desk) -> None:
    late = make_desk(entry_in=-3, start_in=-2, cutoff_after=1, end_after=600)  # the cutoff was 1 s ago
    c = late.room.candidates["12"]
    mark = late.mark()
    refused = late.cli("checkin", "admit", "--seat", "12", "--proctor", "proctor-A")
    ev = late.event_after(mark, "checkin", lambda d: d["seat"] == "12")
    assert (ev["verdict"], ev["method"]) == ("late_refused", "manual") and refused.returncode == 1
    assert abs(datetime.fromisoformat(ev["cutoff"]).timestamp() - late.room.times["cutoff"]) < 0.01
    assert refused.stdout.splitlines()[0] == (f"NOT ADMITTED {who(c)} at {hhmmss(ev['time'])}, by proctor-A: "
                                              f"late: entry closed at {hhmmss(ev['cutoff'])}")
    late.agent.kill()

    early = make_desk(entry_in=300, start_in=600, cutoff_after=600, end_after=1200)
    mark = early.mark()
    refused = early.cli("checkin", "admit", "--seat", "12", "--proctor", "proctor-A")
    ev = early.event_after(mark, "checkin", lambda d: d["seat"] == "12")
    assert (ev["verdict"], ev["phase"], refused.returncode) == ("outside_window", "before_entry", 1)
    assert refused.stdout.splitlines()[0].endswith(": outside the entry window (phase before_entry)")


def test_suspect_needs_two_different_proctors(desk: Desk) -> None:
    c = desk.room.candidates["10"]
    mark = desk.mark()
    sim = desk.ok("sim", "card", c.id_number, c.name)
    assert json.loads(sim)["device"] == "idcard" and c.id_number not in sim
    card = desk.event_after(mark, "checkin", lambda d: d["seat"] == "10")
    assert (card["verdict"], card["method"], card["device"]) == ("admitted", "card", "idcard")
    desk.ok("sim", "idcard", "remove")

    mark = desk.mark()
    out = desk.ok("checkin", "suspect", "10", "--proctor", "proctor-A",
                  "--reason", f"photo unclear: {c.name} {c.id_number}")
    sus = desk.event_after(mark, "checkin", lambda d: d["verdict"] == "suspect")
    assert (sus["seat"], sus["proctor"]) == ("10", "proctor-A")
    assert sus["reason"] == f"photo unclear: *** {c.id_masked}"  # the name blanked, the ID masked
    assert out.splitlines() == [
        f"SUSPECT (存疑) {who(c)} at {hhmmss(sus['time'])}, by proctor-A: photo unclear: *** {c.id_masked}",
        "photo requested (suspect-eng-e2e-10)",
        "two different proctors must confirm: checkin confirm 10 --proctor NAME"]
    for_a_person(out, c)
    shot = desk.event_after(mark, "snapshot", lambda d: d.get("for", {}).get("verdict") == "suspect")
    assert shot["for"]["seat"] == "10" and (desk.room.snapshot_dir / shot["file"]).is_file()

    mark = desk.mark()
    first = desk.ok("checkin", "confirm", "10", "--proctor", "proctor-A")
    one = desk.event_after(mark, "suspect_confirm")
    assert (one["seat"], one["proctor"], one["confirmations"], one["required"], one["passed"]) == (
        "10", "proctor-A", 1, 2, False)
    assert first == (f"seat 10: confirmation 1 of 2 by proctor-A at {hhmmss(one['time'])}; a different "
                     "proctor must confirm before the candidate is admitted\n")

    same = desk.cli("checkin", "confirm", "10", "--proctor", "proctor-A")
    assert (same.returncode, same.stdout) == (1, "")
    assert same.stderr == ("error: seat 10: proctor-A has already confirmed; "
                           "a second, different proctor must confirm\n")

    second = desk.ok("checkin", "confirm", "10", "--proctor", "proctor-B")
    admitted = desk.event_after(mark, "checkin", lambda d: d["seat"] == "10")
    assert (admitted["verdict"], admitted["lookup"], admitted["proctors"]) == (
        "admitted", "suspect_confirm", ["proctor-A", "proctor-B"])
    # events are in seq order: a confirmation the refusal had recorded would sit between A and B
    assert [(e["proctor"], e["passed"]) for e in _kinds(desk, mark, "suspect_confirm")] == [
        ("proctor-A", False), ("proctor-B", True)]
    assert second.splitlines()[0] == (f"ADMITTED {who(c)} at {hhmmss(admitted['time'])}, "
                                      "confirmed by proctor-A, proctor-B")


def _kinds(desk: Desk, mark: int, kind: str) -> list[dict]:
    return [m.json["data"] for m in desk.w.messages[mark:] if m.topic == TOPICS.event(kind)]


def test_leave_then_reentry_needs_a_new_sweep(desk: Desk) -> None:
    c = desk.room.candidates["6"]
    desk.ok("checkin", "admit", "--seat", "6", "--proctor", "proctor-A")
    mark = desk.mark()
    out = desk.ok("checkin", "leave", "6")
    left = desk.event_after(mark, "checkin", lambda d: d["verdict"] == "left")
    assert (left["seat"], left["method"]) == ("6", "manual") and "snapshot" not in left
    swept = desk.event_after(mark, "sweep")  # the sweep that never happened is closed, not lost
    assert (swept["seat"], swept["result"], swept["alarms"]) == ("6", "left_before_clear", 0)
    assert out == f"LEFT {who(c)} at {hhmmss(left['time'])}; coming back needs a new check-in and sweep\n"
    assert "present 1 of 30 (admitted 0, suspect 0, stepped out 1), absent 29" in desk.ok("checkin", "state")

    mark = desk.mark()
    back = desk.ok("checkin", "admit", "--seat", "6", "--proctor", "proctor-B")
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "6")
    assert (ev["verdict"], ev["reentry"], ev["sweep_required"]) == ("admitted", True, True)
    assert back.splitlines()[:2] == [f"ADMITTED {who(c)} at {hhmmss(ev['time'])}, by proctor-B (re-entry)",
                                     "next: metal-detector sweep (press clear when done)"]


def test_sim_card_alarm_recheck_and_clear(desk: Desk) -> None:
    c = desk.room.candidates["2"]
    mark = desk.mark()
    sim = json.loads(desk.ok("sim", "card", c.id_number, c.name))
    assert sim == {"device": "idcard", "result": {"card": c.id_masked, "name": c.name,
                                                  "valid_to": sim["result"]["valid_to"], "id_valid": True}}
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "2")
    assert (ev["verdict"], ev["method"], ev["device"]) == ("admitted", "card", "idcard")
    assert json.loads(desk.ok("sim", "idcard", "remove"))["result"] == {"removed": True}

    assert json.loads(desk.ok("sim", "alarm", "on"))["result"]["value"] == "on"
    desk.heartbeat_shows("detector", lambda d: d["alarms"] == 1 and d["alarm_active"])
    assert json.loads(desk.ok("sim", "alarm", "off"))["result"]["value"] == "off"
    desk.heartbeat_shows("detector", lambda d: d["alarms"] == 1 and not d["alarm_active"])
    assert json.loads(desk.ok("sim", "button", "recheck"))["result"]["value"] == "recheck"
    desk.heartbeat_shows("detector", lambda d: d["presses"]["recheck"] == 1)
    mark = desk.mark()
    assert json.loads(desk.ok("sim", "button", "clear"))["device"] == "detector"
    sweep = desk.event_after(mark, "sweep")
    assert (sweep["seat"], sweep["alarms"], sweep["rechecks"], sweep["result"], sweep["unassociated"]) == (
        "2", 1, 1, "alarm_cleared_after_recheck", False)

    mark = desk.mark()  # a campus card's UID goes to the PC/SC reader and finds seat 8
    uid = desk.room.candidates["8"].card_uids[0]
    assert json.loads(desk.ok("sim", "card", uid))["device"] == "campus-card"
    ev = desk.event_after(mark, "checkin", lambda d: d["seat"] == "8")
    assert (ev["verdict"], ev["method"], ev["uid"]) == ("admitted", "uid", uid)


def test_snapshot_and_trial_listening(desk: Desk) -> None:
    mark = desk.mark()
    out = desk.ok("snapshot", "door")
    shot = desk.event_after(mark, "snapshot")
    jpeg = (desk.room.snapshot_dir / shot["file"]).read_bytes()
    assert shot["file"].endswith("_door.jpg") and hashlib.sha256(jpeg).hexdigest() == shot["sha256"]
    assert out == (f"snapshot kept on the box: {shot['file']} ({len(jpeg)} bytes, "
                   f"sha256 {shot['sha256'][:16]}…) at {shot['ts']}\n")

    mark = desk.mark()
    out = desk.ok("audio", "trial", "1")
    trial = desk.event_after(mark, "trial_listening")
    assert (trial["pass"], trial["device"], trial["measured_s"]) == (True, "broadcast", 1.0)
    lines = out.splitlines()
    assert lines[0] == "trial listening on broadcast (primary source): PASS"
    assert lines[1] == f"  1.0 of 1.0 s measured, mean {trial['mean_dbfs']} dBFS, peak {trial['peak_dbfs']} dBFS"
    assert lines[2:] == ["  silences: 0", "  clipping: none",
                         f"report {desk.room.record_dir / trial['file']}; kept with the record of session eng-e2e"]
    assert json.loads((desk.room.record_dir / trial["file"]).read_text(encoding="utf-8"))["pass"] is True


def test_failed_trial_listening_exits_1(desk: Desk) -> None:
    mark = desk.mark()
    desk.ok("sim", "broadcast", "silence")
    desk.event_after(mark, "audio", lambda d: d["state"] == "silence")
    failed = desk.cli("audio", "trial", "2")
    trial = desk.event_after(mark, "trial_listening")
    assert (trial["pass"], trial["problems"]) == (False, ["silence"])
    assert failed.returncode == 1 and failed.stderr == "", failed
    lines = failed.stdout.splitlines()
    assert lines[0] == "trial listening on broadcast (primary source): FAIL"
    assert lines[2] == "  silences: 1" and lines[3].startswith("    at +0.0 s for ")
    assert "  problems: silence" in lines


MALFORMED = [  # (what is typed, exit code, what it prints on stderr)
    (("checkin", "admit", "--seat", "99", "--proctor", "A"), 1, "error: no seat 99 in room room101\n"),
    (("checkin", "admit", "--seat", "3"), 2, "the following arguments are required: --proctor"),
    (("checkin", "admit", "--proctor", "A"), 2,
     "one of the arguments --seat --id-last6 --ticket-tail is required"),
    (("checkin", "admit", "--seat", "3", "--id-last6", "000000", "--proctor", "A"), 2,
     "argument --id-last6: not allowed with argument --seat"),
    (("checkin", "admit", "--id-last6", "12ab", "--proctor", "A"), 1,
     "error: id_last6: expected the last 6 characters of the ID number\n"),
    (("checkin", "admit", "--seat", "3", "--proctor", " "), 1,
     "error: proctor: expected who is doing this (it is signed on the record)\n"),
    (("checkin", "confirm", "3", "--proctor", "A"), 1, "error: seat 3 is not marked suspect (status absent)\n"),
    (("checkin", "leave", "77"), 1, "error: no seat 77 in room room101\n"),
    (("checkin", "leave", "3"), 1, "error: seat 3 is not in the room (status absent)\n"),
    (("checkin", "suspect", "3"), 2, "the following arguments are required: --proctor"),
    (("checkin", "bogus"), 2, "argument checkin_command: invalid choice: 'bogus'"),
    (("sim", "alarm", "maybe"), 1, "error: bad sim command 'alarm maybe': expected 'alarm on|off', "
                                   "'armed on|off' or 'button clear|recheck'\n"),
    (("sim", "nothing-here"), 1, "error: no simulated device for 'nothing-here'"),
    (("audio", "trial", "0.5"), 1, "error: 'seconds' must be a number from 1 to 300\n"),
    (("audio", "trial", "soon"), 2, "argument seconds: invalid float value: 'soon'"),
]


def test_malformed_invocations_are_refused_and_the_daemon_goes_on(desk: Desk) -> None:
    mark = desk.mark()
    for args, code, message in MALFORMED:
        bad = desk.cli(*args)
        assert (bad.returncode, bad.stdout) == (code, ""), (args, bad)
        if code == 2:  # argparse: the usage first, then the problem
            assert bad.stderr.startswith("usage: examroom-agent ") and message in bad.stderr, (args, bad.stderr)
        else:
            assert bad.stderr.startswith(message), (args, bad.stderr)
        assert desk.agent.proc.poll() is None, args
    # nothing refused was recorded: the only check-in (and photo) after them is the admission that follows
    out = desk.ok("checkin", "admit", "--seat", "5", "--proctor", "proctor-A")
    assert out.startswith("ADMITTED seat 5, ")
    desk.event_after(mark, "snapshot", lambda d: d.get("for", {}).get("seat") == "5")
    assert [d["seat"] for d in _kinds(desk, mark, "checkin")] == ["5"]
    assert [d["for"]["seat"] for d in _kinds(desk, mark, "snapshot")] == ["5"]
    assert not any(_kinds(desk, mark, k) for k in ("sweep", "suspect_confirm", "trial_listening"))
    assert "Traceback" not in desk.agent.logs()


def test_agent_not_running_is_a_clear_error(desk: Desk) -> None:
    assert desk.agent.terminate() == 0
    done = desk.cli("checkin", "state")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and str(desk.room.socket) in done.stderr, done.stderr
