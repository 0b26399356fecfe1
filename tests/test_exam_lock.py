"""The exam lock: nothing remote or routine disturbs an open session unless forced, on record."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from examroom.agent.control import RequestError
from examroom.agent.exam_lock import ExamLock
from examroom.agent.schedule import parse_sessions

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 6, 8, 15, 0, tzinfo=timezone(timedelta(hours=8)))


def at(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


SCHEDULE = parse_sessions([{"id": "eng", "subject": "English", "start": T0.isoformat(),
                            "end": (T0 + timedelta(hours=2)).isoformat(), "late_cutoff_min": 15,
                            "listening": [{"start": (T0 + timedelta(minutes=20)).isoformat(),
                                           "end": (T0 + timedelta(minutes=45)).isoformat()}]}], "agent.toml")


@pytest.mark.parametrize("minutes,locked", [(-31, False), (-29, True), (14, True), (16, False), (21, True),
                                            (46, False), (125, False)])
def test_locked_while_entry_or_listening_is_open(minutes, locked):
    lock = ExamLock(SCHEDULE, lambda: at(minutes), lambda k, d: None, str)
    assert lock.state()["locked"] is locked


def test_a_disruptive_action_needs_force_and_a_reason_and_is_recorded():
    events: list[tuple[str, dict]] = []
    lock = ExamLock(SCHEDULE, lambda: at(25), lambda k, d: events.append((str(k), d)), str)
    with pytest.raises(RequestError, match="refused: the listening window of session eng is open"):
        lock.check("audio_switch to backup", {}, "alice")
    with pytest.raises(RequestError, match="without a reason"):
        lock.check("audio_switch to backup", {"force": True}, "alice")
    assert events == []
    lock.check("audio_switch to backup", {"force": True, "reason": "primary feed crackles"}, "alice")
    assert events == [("forced", {"action": "audio_switch to backup", "by": "alice",
                                  "reason": "primary feed crackles",
                                  "lock": events[0][1]["lock"]})]
    assert "listening window of session eng" in events[0][1]["lock"]


SIM_AUDIO = """
[[device]]
kind = "audio"
name = "broadcast"
backend = "sim"
relay_pin = 17
"""


def test_the_agent_refuses_a_switch_in_an_open_entry_records_a_forced_one_and_tells_install(make_agent, watcher):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    agent = make_agent(extra=SIM_AUDIO + f"""
[[exam]]
id = "eng"
subject = "English"
start = {(now + timedelta(minutes=5)).isoformat()}
end = {(now + timedelta(hours=2)).isoformat()}
""").start()
    r = agent.call("audio_switch", source="backup")
    assert r["ok"] is False and "entry of session eng is open" in r["error"]
    r = agent.call("audio_switch", source="backup", force=True, reason="primary feed crackles")
    assert r["ok"] is True, r
    forced = watcher.wait_for(lambda ms: [m.json["data"] for m in ms if m.topic.endswith("/event/forced")])[0]
    switch = watcher.wait_for(lambda ms: [m.json["data"] for m in ms if m.topic.endswith("/event/audio_switch")])[0]
    me = __import__("pwd").getpwuid(__import__("os").getuid()).pw_name
    assert forced["by"] == me and forced["reason"] == "primary feed crackles"
    assert switch["by"] == me and switch["reason"] == "command"
    lock = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "exam-lock", "-c", str(agent.config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert lock.returncode == 1 and lock.stdout.startswith("locked: entry of session eng is open")
    agent.terminate()
    gone = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "exam-lock", "-c", str(agent.config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 3  # nothing running to disturb
