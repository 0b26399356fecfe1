"""The whole room, end to end: the real agent process, a real Mosquitto, every device simulated.

Driven with the commands a person uses (`sim ...` and the proctors' check-in
commands on the control socket, `examroom-agent ...` on the command line) and
judged only by what the aggregator receives over MQTT, what the agent logs and
the record files it writes. Waits are on messages (watcher.wait_for), never on
sleeps; things with no event of their own (a card lifted off the reader, a
metal alarm counted) are waited for in the heartbeat's device details.
"""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from devkit.localbroker import Broker
from tests.agentproc import AgentProcess
from tests.mqttwatch import Watcher
from tests.room_config import (TOPICS, Aggregator, Door, Room, is_hb, kinds_after, room_config, settled,
                               status_after, wait_kind, wait_status)

NOT_IN_ROOM_ID = "110105199003070017"  # valid check digit, another room's candidate
CLI = Path(sys.executable).parent / "examroom-agent"


@pytest.fixture(scope="module")
def checkin_run(tmp_path_factory):
    """One exam session's entry, run once; the tests below judge it from different sides."""
    tmp = tmp_path_factory.mktemp("checkin")
    broker = Broker(tmp / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp, broker.port, entry_in=1.5, start_in=3, cutoff_after=8, end_after=11,
                               heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            out = {"room": room, "w": w, "replies": {}}
            _entry(Door(agent, w, room), room, out)
            agent.terminate()
            out["log"] = agent.logs()
            out["messages"] = list(w.messages)
            yield out
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()


def _entry(door: Door, room: Room, out: dict) -> None:
    c = room.candidates
    seen = out.setdefault("checkin", {})
    room.wait_until("entry_opens")  # the agent runs before entry opens: its report is complete
    for seat in ("1", "2"):
        seen[seat] = door.tap_id(c[seat].id_number, c[seat].name)
        out.setdefault("sweeps", {})[seat] = door.clear()
    seen["5"] = door.tap_id(c["5"].id_number, c["5"].name)
    door.alarm()
    door.recheck()
    out["sweeps"]["5"] = door.clear()
    seen["7"] = door.tap_id(c["7"].id_number, c["7"].name)
    door.alarm()
    out["sweeps"]["7"] = door.clear()
    seen["8"] = door.tap_uid(c["8"].card_uids[0])
    out["sweeps"]["8"] = door.clear()
    seen["dup"] = door.tap_id(c["1"].id_number, c["1"].name)
    seen["other"] = door.tap_id(NOT_IN_ROOM_ID, "外考生")
    seen["9"] = door.next_event("checkin", lambda: door.do(
        "checkin_admit", id_last6=c["9"].id_number[-6:], proctor="proctor-A"))
    out["sweeps"]["9"] = door.clear()
    seen["10"] = door.tap_id(c["10"].id_number, c["10"].name)
    seen["10-suspect"] = door.next_event("checkin", lambda: door.do(
        "checkin_suspect", seat="10", proctor="proctor-A",
        reason=f"photo unclear: {c['10'].name} {c['10'].id_number}, or is it {c['11'].name}?"))
    seen["10-confirm-A"] = door.next_event("suspect_confirm", lambda: door.do(
        "checkin_confirm", seat="10", proctor="proctor-A"))
    out["replies"]["same-proctor"] = door.do("checkin_confirm", ok=False, seat="10", proctor="proctor-A")
    seen["10-admitted"] = door.next_event("checkin", lambda: door.do(
        "checkin_confirm", seat="10", proctor="proctor-B"))
    out["sweeps"]["10"] = door.clear()
    seen["note"] = door.next_event("note", lambda: door.do(
        "note", text=f"{c['3'].name} ({c['3'].id_number}) asked for water",
        author=f"proctor of {c['4'].name}"))
    print(f"entry done {room.times['cutoff'] - time.time():.1f} s before the cutoff")
    assert time.time() < room.times["cutoff"], "entry took longer than the compressed timeline allows"
    w = door.w
    out["attendance"] = w.wait_for(lambda _: w.events("attendance"), timeout=room.times["cutoff"] - time.time() + 5)[0]["data"]
    seen["12-late"] = door.tap_id(c["12"].id_number, c["12"].name)
    out["record"] = w.wait_for(lambda _: w.events("session_record"),
                               timeout=room.times["end"] - time.time() + 5)[0]["data"]


def instant(at: str) -> float:
    """An event's time (contract version 2: ISO 8601 with the exam zone's offset, +08:00 by
    default) as epoch seconds, to compare with the room's timeline."""
    t = datetime.fromisoformat(at)
    assert t.utcoffset() == timedelta(hours=8), at
    return t.timestamp()


def photo_of(checkin_run: dict, data: dict) -> dict:
    """The check-in's follow-up ``snapshot`` event, joined as an aggregator does: by ``for.id``
    = the ``checkin`` envelope's id. Asserts what holds for every photo of the run."""
    room, w = checkin_run["room"], checkin_run["w"]
    env = next(m.json for m in checkin_run["messages"]
               if m.topic == TOPICS.event("checkin") and m.json["data"] == data)
    assert data["snapshot"] == {"pending": True, "tag": f"{data['verdict']}-{data['session']}-{data['seat']}"}
    shot = w.wait_for(lambda ms: next((m.json for m in ms if m.topic == TOPICS.event("snapshot")
                                       and m.json["data"].get("for", {}).get("id") == env["id"]), None))
    p = shot["data"]
    assert shot["seq"] > env["seq"] and p["device"] == "camera"
    assert p["for"] == {"kind": "checkin", "id": env["id"], "session": data["session"], "seat": data["seat"],
                        "verdict": data["verdict"]}
    assert p["file"].endswith(f"_{data['snapshot']['tag']}.jpg")
    jpeg = (room.snapshot_dir / p["file"]).read_bytes()
    assert hashlib.sha256(jpeg).hexdigest() == p["sha256"] and len(jpeg) == p["bytes"]
    return p


def test_checkin_run(checkin_run):
    room: Room = checkin_run["room"]
    ck, sw, c = checkin_run["checkin"], checkin_run["sweeps"], room.candidates
    for seat in ("1", "2", "5", "7", "10"):
        d = ck[seat]
        assert (d["verdict"], d["seat"], d["method"], d["device"]) == ("admitted", seat, "card", "idcard"), d
        assert d["ticket"] == c[seat].ticket and d["id_masked"] == c[seat].id_masked
        assert d["session"] == room.session and d["reentry"] is False and d["sweep_required"] is True
        photo_of(checkin_run, d)
    assert {ck[s]["seatplan_sha256"] for s in ck if "verdict" in ck[s]} == {hashlib.sha256(room.seatplan.read_bytes()).hexdigest()}
    assert [sw[s]["result"] for s in ("1", "2", "8", "9")] == ["clear"] * 4
    assert (sw["5"]["result"], sw["5"]["alarms"], sw["5"]["rechecks"]) == ("alarm_cleared_after_recheck", 1, 1)
    assert (sw["7"]["result"], sw["7"]["medical_metal_exempt"]) == ("alarm_expected_medical", True)
    assert c["7"].medical_metal and not sw["5"]["medical_metal_exempt"]
    assert all(sw[s]["seat"] == s and sw[s]["unassociated"] is False for s in sw)
    assert (ck["8"]["verdict"], ck["8"]["seat"], ck["8"]["method"], ck["8"]["uid"], ck["8"]["device"]) == (
        "admitted", "8", "uid", c["8"].card_uids[0], "campus-card")
    assert (ck["dup"]["verdict"], ck["dup"]["seat"], ck["dup"]["status"]) == ("duplicate", "1", "admitted")
    other = ck["other"]
    assert (other["verdict"], other["seat"], other["ticket"]) == ("not_in_room", None, None)
    assert other["id_masked"] == "110105********0017"
    m = ck["9"]
    assert (m["verdict"], m["seat"], m["method"], m["lookup"], m["proctor"], m["device"]) == (
        "admitted", "9", "manual", "id_last6", "proctor-A", "manual")
    sus = ck["10-suspect"]
    assert (sus["verdict"], sus["seat"], sus["proctor"]) == ("suspect", "10", "proctor-A")
    assert photo_of(checkin_run, sus)["for"]["verdict"] == "suspect"
    assert sus["reason"] == f"photo unclear: *** {c['10'].id_masked}, or is it ***?"  # every name, not only hers
    assert ck["note"]["text"] == f"*** ({c['3'].id_masked}) asked for water"  # a proctor's note, scrubbed
    assert ck["note"]["author"] == "proctor of ***"
    assert c["10"].id_number not in sus["reason"] and "photo unclear" in sus["reason"]
    first = ck["10-confirm-A"]
    assert (first["seat"], first["confirmations"], first["required"], first["passed"]) == ("10", 1, 2, False)
    assert "proctor-A" in checkin_run["replies"]["same-proctor"]["error"]
    adm = ck["10-admitted"]
    assert (adm["verdict"], adm["lookup"], adm["proctors"]) == ("admitted", "suspect_confirm", ["proctor-A", "proctor-B"])
    confirms = [e["data"] for e in checkin_run["w"].events("suspect_confirm")]
    assert [(d["proctor"], d["confirmations"], d["passed"]) for d in confirms] == [
        ("proctor-A", 1, False), ("proctor-B", 2, True)]

    present = {"1", "2", "5", "7", "8", "9", "10"}
    absent = [s for s in c if s not in present]
    att = checkin_run["attendance"]
    assert (att["session"], att["room"], att["total"], att["present"]) == (room.session, "room101", 30, 7)
    assert att["absent"] == absent and att["late_refused"] == [] and att["suspects"] == []
    # seat 9 (id_last6) and seat 10's admission signed by two proctors both count as manual
    assert att["pending_sweep"] == [] and att["complete"] is True and att["manual_admissions"] == 2
    assert instant(att["cutoff"]) == pytest.approx(room.times["cutoff"], abs=0.01)
    late = ck["12-late"]
    assert (late["verdict"], late["seat"]) == ("late_refused", "12")
    assert late["cutoff"] == att["cutoff"] and instant(late["time"]) >= instant(late["cutoff"])

    r = checkin_run["record"]
    assert (r["session"], r["room"], r["total"], r["present"], r["complete"]) == (room.session, "room101", 30, 7, True)
    assert r["absent"] == absent and r["late_refused"] == ["12"] and r["manual_admissions"] == 2
    assert r["checkin_events"] == len(checkin_run["w"].events("checkin"))
    assert r["sweeps"]["closed"] == 7 and r["sweeps"]["with_alarm"] == 2
    assert r["sweeps"]["medical_metal_exempt"] == 1 and r["sweeps"]["not_cleared"] == 0
    assert r["sweeps"]["unassociated"] == 0 and r["incidents"] == [] and r["unassociated_sweeps"] == []
    seats = {row["seat"]: row for row in r["seats"]}  # the record card's rows, published without names
    assert len(seats) == 30 and all("name" not in row for row in r["seats"])
    assert (seats["5"]["id_masked"], seats["5"]["ticket"], seats["5"]["method"]) == (c["5"].id_masked, c["5"].ticket, "card")
    assert seats["5"]["admitted_at"] == ck["5"]["time"] and seats["5"]["rechecks"] == 1
    assert [(x["result"], x["started"], x["cleared"]) for x in seats["5"]["sweeps"]] == [
        (sw["5"]["result"], sw["5"]["started"], sw["5"]["cleared"])]
    assert [x["verdict"] for x in seats["1"]["checkins"]] == ["admitted", "duplicate"]
    assert [x["verdict"] for x in seats["10"]["checkins"]] == ["admitted", "suspect", "admitted"]
    assert seats["10"]["suspect_confirmed_by"] == ["proctor-A", "proctor-B"]
    assert seats["12"]["checkins"] == [{"verdict": "late_refused", "time": late["time"], "method": "card"}]
    assert (seats["12"]["status"], seats["12"]["admitted_at"]) == ("absent", None)
    assert r["unmatched_checkins"] == [{"verdict": "not_in_room", "time": other["time"], "method": "card",
                                        "device": "idcard", "id_masked": "110105********0017"}]
    assert sorted(f["file"] for f in r["files"]) == [f"{room.session}-room101.{ext}" for ext in ("csv", "html", "json")]
    for f in r["files"]:
        assert hashlib.sha256((room.record_dir / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    record = json.loads((room.record_dir / f"{room.session}-room101.json").read_text(encoding="utf-8"))
    assert "410105********001X" in json.dumps(record, ensure_ascii=False)  # seat 1, masked
    raw_csv = (room.record_dir / f"{room.session}-room101.csv").read_bytes()
    assert raw_csv.startswith(b"\xef\xbb\xbf")  # BOM: opens in Excel
    rows = list(csv.DictReader(raw_csv.decode("utf-8-sig").splitlines()))
    cand_rows = {row["seat"]: row for row in rows if row["record"] == "candidate"}
    assert len(cand_rows) == 30 and cand_rows["12"]["status"] == "absent" and cand_rows["9"]["method"] == "manual"
    assert cand_rows["1"]["name"] == c["1"].name  # the local record card carries names


def _id_forms(id_number: str) -> list[str]:
    """The number as text, and as the UCS-2 hex a card frame dump would show."""
    ucs2 = id_number.encode("utf-16-le").hex()
    return [id_number, id_number.lower(), ucs2, ucs2.upper()]


def test_no_personal_data_leaves_the_box(checkin_run):
    """Names and full ID numbers never reach MQTT nor the agent's log, even at DEBUG."""
    room: Room = checkin_run["room"]
    log = checkin_run["log"]
    assert " DEBUG " in log and "card read" in log  # the log really was at DEBUG during the taps
    texts = {f"log {room.config.with_suffix('.log')}": log}
    for i, m in enumerate(checkin_run["messages"]):
        texts[f"message {i} {m.topic}"] = m.raw.decode("utf-8", "replace") + "\n" + (
            json.dumps(m.json, ensure_ascii=False) if m.json is not None else "")
    assert len(texts) > 50
    secrets = {f"ID of seat {c.seat}": _id_forms(c.id_number) for c in room.candidates.values()}
    secrets["ID of the other room's candidate"] = _id_forms(NOT_IN_ROOM_ID)
    secrets.update({f"name of seat {c.seat}": [c.name] for c in room.candidates.values()})
    leaks = [(what, where) for where, text in texts.items() for what, forms in secrets.items()
             if any(f in text for f in forms)]
    assert leaks == []
    masked = [m for m in checkin_run["messages"] if "410105********001X" in m.raw.decode()]
    assert masked, "seat 1's masked ID number should be in its checkin events"
    record = [m for m in checkin_run["messages"] if m.topic == TOPICS.event("session_record")]
    assert len(record) == 1 and all(c.id_masked in record[0].raw.decode() for c in room.candidates.values()), \
        "the scan covered the published record, which holds every seat"


# -- devices during the exam: one room per test, on the conftest broker and watcher ----------

@pytest.fixture
def start_room(tmp_path: Path, broker: Broker):
    started: list[AgentProcess] = []

    def start(**kw) -> tuple[Room, AgentProcess]:
        room = room_config(tmp_path, broker.port, **kw)
        started.append(AgentProcess(room.config, room.socket).start())
        return room, started[-1]

    yield start
    for a in started:
        a.kill()


def test_audio_loss_during_listening_is_an_incident(start_room, watcher):
    w = watcher
    room, agent = start_room(start_in=1, cutoff_after=0.5, end_after=8, listening=(2.5, 6))
    wait_kind(w, 0, "audio", lambda d: d["state"] == "signal")
    room.wait_until("listen_start", 0.2)
    mark = len(w.messages)
    agent.call("sim", words=["broadcast", "silence"])
    lost = wait_kind(w, mark, "audio", lambda d: d["state"] == "silence")
    assert (lost["device"], lost["previous"], lost["listening"]) == ("broadcast", "signal", True)
    started = wait_kind(w, mark, "incident", lambda d: d["phase"] == "started")
    assert (started["type"], started["device"], started["session"], started["cause"]) == (
        "audio_loss", "broadcast", room.session, "silence")
    assert started["start"] == lost["since"]
    switched = wait_kind(w, mark, "audio_switch")
    assert switched == {"device": "broadcast", "source": "backup", "reason": "auto"}
    alert = wait_status(w, mark, "alert", "broadcast: audio silence during listening since")
    assert alert["devices"]["broadcast"]["state"] == "ok"  # the device works; the broadcast is lost

    mark2 = len(w.messages)
    agent.call("sim", words=["broadcast", "level", "-20"])
    back = wait_kind(w, mark2, "audio", lambda d: d["state"] == "signal")
    ended = wait_kind(w, mark2, "incident", lambda d: d["phase"] == "ended")
    assert (ended["start"], ended["cause"], ended["end"]) == (started["start"], "silence", back["since"])
    assert 0 < ended["duration_s"] < room.times["listen_end"] - room.times["listen_start"]
    wait_status(w, mark2, "online")

    room.wait_until("listen_end", 0.2)  # after the window a silence is a state change only
    mark3 = len(w.messages)
    agent.call("sim", words=["broadcast", "silence"])
    assert wait_kind(w, mark3, "audio", lambda d: d["state"] == "silence")["listening"] is False
    agent.call("sim", words=["broadcast", "level", "-20"])
    wait_kind(w, mark3, "audio", lambda d: d["state"] == "signal")
    w.wait_for(lambda ms: any(is_hb(m) for m in ms[mark3:]) and is_hb(ms[-1]))  # a beat after it
    assert kinds_after(w, mark3, "incident") == [] and kinds_after(w, mark3, "audio_switch") == []
    assert status_after(w, mark3, lambda s: s["state"] == "alert") is None
    assert len(w.events("incident")) == 2


def test_camera_covered_turns_the_room_to_alert(start_room, watcher):
    w = watcher
    room, agent = start_room()
    settled(w)
    mark = len(w.messages)
    agent.call("sim", words=["camera", "black"])
    bad = wait_kind(w, mark, "camera", lambda d: d["state"] == "abnormal")
    assert (bad["device"], bad["reason"]) == ("camera", "dark") and bad["metrics"]["brightness"] < 20
    wait_kind(w, mark, "device", lambda d: d["device"] == "camera" and d["state"] == "fault")
    alert = wait_status(w, mark, "alert", "camera: fault (dark)")
    assert alert["devices"]["camera"] == {"kind": "camera", "state": "fault"}
    mark2 = len(w.messages)
    agent.call("sim", words=["camera", "normal"])
    good = wait_kind(w, mark2, "camera", lambda d: d["state"] == "normal")
    assert good["reason"] == "" and good["metrics"]["brightness"] > 20
    assert wait_status(w, mark2, "online")["alerts"] == []


def test_clock_offset_turns_the_room_to_alert(start_room, watcher):
    w = watcher
    room, agent = start_room()
    settled(w)
    mark = len(w.messages)
    agent.call("sim", words=["clock", "offset", "2"])
    ev = wait_kind(w, mark, "clock")
    assert ev == {"device": "clock", "synced": True, "offset_s": 2.0, "source": "sim", "stepped_s": None}
    wait_status(w, mark, "alert", "clock: fault (offset 2 s exceeds 0.5 s)")
    mark2 = len(w.messages)
    agent.call("sim", words=["clock", "offset", "0"])
    assert wait_kind(w, mark2, "clock")["offset_s"] == 0.0
    wait_status(w, mark2, "online")


def test_clock_steps_and_trial_listening_go_on_the_right_record(start_room, watcher):
    """Before entry a clock step is on no record while a trial listening is kept with the session
    it prepares; a step once entry is open is on that session's record; after the record is
    written a trial is on none, and its reply says so."""
    w = watcher
    room, agent = start_room(entry_in=12, start_in=13, cutoff_after=0.3, end_after=1.0)  # ~4 s used before entry
    settled(w)
    mark = len(w.messages)
    agent.call("sim", words=["clock", "step", "30"])
    assert wait_kind(w, mark, "clock", lambda d: d["stepped_s"] is not None)["stepped_s"] == pytest.approx(30, abs=0.5)
    trial = agent.call("trial_listening", seconds=1)
    assert trial["ok"] is True and trial["pass"] is True, trial
    assert (trial["recorded_on"], trial["record"]) == (room.session, f"kept with the record of session {room.session}")
    assert time.time() < room.times["entry_opens"], "the room took too long to start: the steps above were meant before entry"
    room.wait_until("entry_opens")
    mark = len(w.messages)
    agent.call("sim", words=["clock", "step", "-2"])
    assert wait_kind(w, mark, "clock", lambda d: d["stepped_s"] is not None)["stepped_s"] == pytest.approx(-2, abs=0.5)
    r = w.wait_for(lambda _: w.events("session_record"), timeout=room.times["end"] - time.time() + 5)[0]["data"]
    trials = [i for i in r["incidents"] if i["type"] == "trial_listening"]
    steps = [i for i in r["incidents"] if i["type"] == "clock_step"]
    assert [i["stepped_s"] for i in steps] == [pytest.approx(-2, abs=0.5)]  # not the +30 before entry
    assert steps[0]["start"] == steps[0]["end"] and steps[0]["device"] == "clock"
    assert len(trials) == 1
    t = trials[0]
    assert (t["pass"], t["silences"], t["silent_s"], t["clipping_s"], t["problems"]) == (True, 0, 0.0, 0.0, [])
    assert (t["mean_dbfs"], t["peak_dbfs"], t["file"]) == (trial["mean_dbfs"], trial["peak_dbfs"], Path(trial["file"]).name)
    assert (t["start"], t["end"], t["duration_s"], t["device"]) == (trial["start"], trial["end"], trial["measured_s"], "broadcast")
    rows = list(csv.DictReader((room.record_dir / f"{room.session}-room101.csv").read_text(encoding="utf-8-sig").splitlines()))
    details = [json.loads(row["detail"]) for row in rows if row["record"] == "incident"]
    assert sorted(d["type"] for d in details) == ["clock_step", "trial_listening"]
    late = agent.call("trial_listening", seconds=1)
    assert late["ok"] is True and late["recorded_on"] is None and "already written" in late["record"]
    assert f"trial listening {Path(late['file']).name} is on no session record" in agent.logs()


# -- what the aggregator and the technician can do remotely / at the box -----------------------

def test_remote_commands(start_room, watcher, broker):
    w = watcher
    room, agent = start_room()
    settled(w)
    agg = Aggregator(broker.port, w)
    try:
        mark = len(w.messages)
        shot = agg.call("snapshot", {"tag": "patrol"})
        assert shot["ok"] is True and shot["command"] == "snapshot" and shot["file"].endswith("_patrol.jpg")
        path = room.snapshot_dir / shot["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shot["sha256"]
        ev = wait_kind(w, mark, "snapshot")
        assert ev["device"] == "camera" and (ev["file"], ev["sha256"]) == (shot["file"], shot["sha256"])

        locked = agg.call("audio_switch", {"source": "backup"})  # entry is open: the exam lock
        assert locked["ok"] is False and "entry of session" in locked["error"] and "force" in locked["error"]
        sw = agg.call("audio_switch", {"source": "backup", "force": True, "reason": "primary feed crackles"})
        assert (sw["ok"], sw["source"], sw["previous"], sw["reason"], sw["changed"]) == (
            True, "backup", "primary", "command", True)
        by = f"site ({TOPICS.cmd('audio_switch')})"
        assert wait_kind(w, mark, "audio_switch") == {"device": "broadcast", "source": "backup", "reason": "command",
                                                      "by": by}
        assert wait_kind(w, mark, "forced")["by"] == by

        trial = agg.call("trial_listening", {"seconds": 1})
        assert trial["ok"] is True and trial["pass"] is True and trial["complete"] is True
        assert (trial["seconds"], trial["device"], trial["source"], trial["problems"]) == (1.0, "broadcast", "backup", [])
        assert -25 < trial["mean_dbfs"] < -20 and trial["silences"] == []
        assert Path(trial["file"]).parent == room.record_dir and Path(trial["file"]).is_file()
        tev = wait_kind(w, mark, "trial_listening")
        assert tev["file"] == Path(trial["file"]).name and tev["pass"] is True
        assert trial["recorded_on"] == room.session and room.session in trial["record"]
        assert json.loads(Path(trial["file"]).read_text(encoding="utf-8"))["mean_dbfs"] == trial["mean_dbfs"]

        bad = agg.call("trial_listening", {"seconds": 0})
        assert bad["ok"] is False and "seconds" in bad["error"]
        refused = agg.call("checkin_admit", {"seat": "3", "proctor": "remote"})
        assert refused["ok"] is False and "not accepted over MQTT" in refused["error"]
        sim = agg.call("sim", {"words": ["alarm", "on"]})
        assert sim["ok"] is False
        cmds = w.wait_for(lambda _: len(kinds_after(w, mark, "command")) >= 7 and kinds_after(w, mark, "command"))
        assert [(d["command"], d["ok"]) for d in cmds] == [
            ("snapshot", True), ("audio_switch", False), ("audio_switch", True), ("trial_listening", True),
            ("trial_listening", False), ("checkin_admit", False), ("sim", False)]
        assert [d["request_id"] for d in cmds] == [f"req-{i}" for i in range(1, 8)]
        assert agent.call("checkin_state")["admitted"] == 0 and kinds_after(w, mark, "checkin") == []
    finally:
        agg.close()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "examroom.agent.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


def test_cli_selftest_and_status(start_room, watcher):
    w = watcher
    room, agent = start_room()
    settled(w)
    mark = len(w.messages)
    done = cli("selftest", "-c", str(room.config))
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("idcard (idcard): PASS", "campus-card (pcsc): PASS", "detector (metal_detector): PASS",
                 "broadcast (audio): PASS", "camera (camera): PASS", "clock (clock): PASS", "self-test passed"):
        assert line in done.stdout, done.stdout
    ev = wait_kind(w, mark, "selftest")
    assert ev["ok"] is True and sorted(r["device"] for r in ev["results"]) == sorted(
        ["idcard", "campus-card", "detector", "broadcast", "camera", "clock"])

    wait_kind(w, mark, "selftest")
    w.wait_for(lambda ms: any(is_hb(m) for m in ms[mark:]))  # the status shows a heartbeat sent
    st = cli("status", "-c", str(room.config))
    assert st.returncode == 0, st.stderr
    out = st.stdout
    assert "room      room101 (郑州一中考点 第101考场) of site site01" in out
    assert f"broker    connected to 127.0.0.1:{room_port(room)}" in out
    assert "state     online" in out and "devices:" in out and "heartbeat none yet" not in out
    for name, kind in (("idcard", "idcard"), ("campus-card", "pcsc"), ("detector", "metal_detector"),
                       ("broadcast", "audio"), ("camera", "camera"), ("clock", "clock")):
        assert any(line.split()[:4] == [name, kind, "sim", "ok"] for line in out.splitlines()), (name, out)
    assert f'"session": "{room.session}"' in out  # the exam line


def room_port(room: Room) -> int:
    import tomllib

    return tomllib.loads(room.config.read_text(encoding="utf-8"))["mqtt"]["port"]
