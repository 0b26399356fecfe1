"""``examroom-agent selftest`` as a technician runs it: a subprocess with no terminal.

Against a real agent process (a simulated room like config/demo.toml) and
offline with the agent stopped; stdin is closed, so steps that act on outputs
are never confirmed unless ``--yes`` is given.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import jsonschema
import pytest

from tests.agentproc import AgentProcess
from tests.mqttwatch import Watcher

ROOT = Path(__file__).resolve().parent.parent

SIM_ROOM = """
[[device]]
kind = "idcard"
name = "idcard"
backend = "sim"

[[device]]
kind = "pcsc"
name = "campus-card"
backend = "sim"

[[device]]
kind = "metal_detector"
name = "detector"
backend = "sim"

[[device]]
kind = "audio"
name = "broadcast"
backend = "sim"

[[device]]
kind = "camera"
name = "camera"
backend = "sim"
snapshot_dir = "{tmp}/snapshots"

[[device]]
kind = "clock"
name = "clock"
backend = "sim"
"""

# A real-backend camera: no picamera2 and no camera on a test machine, so it is absent.
ABSENT_CAMERA = """
[[device]]
kind = "camera"
name = "front-camera"
backend = "picamera2"
snapshot_dir = "{tmp}/snapshots"
"""

# The event's schema as docs/mqtt.md publishes it to the aggregator.
SELFTEST_SCHEMA = json.loads(re.search(r"```json schema:data/selftest\n(.*?)```",
                                       (ROOT / "docs" / "mqtt.md").read_text(encoding="utf-8"), re.S)[1])

SIM_NAMES = ["idcard", "campus-card", "detector", "broadcast", "camera", "clock"]


def selftest(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", "selftest", "-c", str(agent.config), *args],
                          cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.fixture
def room(make_agent: Callable[..., AgentProcess], tmp_path: Path) -> Callable[[str], AgentProcess]:
    return lambda extra="": make_agent(extra=(SIM_ROOM + extra).replace("{tmp}", str(tmp_path)))


def test_sim_room_passes(room: Callable[[str], AgentProcess]) -> None:
    agent = room("").start()
    r = selftest(agent)
    assert r.returncode == 0, (r.stdout, r.stderr)
    verdicts = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert [v.split(" ")[0] for v in verdicts[:-1]] == SIM_NAMES
    assert all(v.endswith(": PASS") for v in verdicts[:-1]), r.stdout
    assert verdicts[-1] == "self-test passed: 6 passed, 0 failed, 0 absent"
    assert "   ok   samples:" in r.stdout and "   ok   not_dark:" in r.stdout


def test_no_terminal_skips_steps_that_act_on_outputs(room: Callable[[str], AgentProcess],
                                                      watcher: Watcher) -> None:
    agent = room("").start()
    r = selftest(agent, "broadcast")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "switch the audio relay" in r.stderr
    assert "no terminal to confirm and no --yes: these steps are skipped" in r.stderr
    assert "   skip relay switch: skipped: acts on an output and was not confirmed" in r.stdout
    (event,) = selftest_events(watcher, 1)
    assert event["data"]["act"] is False and event["data"]["ok"] is True


def test_yes_switches_the_relay_and_puts_it_back(room: Callable[[str], AgentProcess]) -> None:
    agent = room("").start()
    assert agent.call("audio_switch", source="backup")["ok"]
    r = selftest(agent, "broadcast", "--yes", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    steps = {s["name"]: s for s in json.loads(r.stdout)["results"][0]["steps"]}
    assert steps["relay switch"]["ok"] and not steps["relay switch"]["skipped"]
    assert steps["relay switch"]["detail"].startswith("backup -> primary -> backup")
    assert agent.call("status")["devices"]["broadcast"]["source"] == "backup"


def test_json(room: Callable[[str], AgentProcess]) -> None:
    agent = room("").start()
    r = selftest(agent, "--json", "clock", "detector")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] is True and out["offline"] is False and out["absent"] == [] == out["failed"]
    assert [x["device"] for x in out["results"]] == ["detector", "clock"]
    assert all(x["ok"] and x["steps"] for x in out["results"])


def test_absent_real_device_fails_unless_allowed(room: Callable[[str], AgentProcess],
                                                 watcher: Watcher) -> None:
    agent = room(ABSENT_CAMERA).start()
    r = selftest(agent)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "front-camera (camera): FAIL (absent)" in r.stdout
    assert r.stdout.rstrip().endswith("self-test FAILED: 6 passed, 0 failed, 1 absent; "
                                      "absent devices fail (--allow-absent to accept them)")

    r = selftest(agent, "--allow-absent")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "front-camera (camera): SKIPPED (absent)" in r.stdout
    assert "self-test passed: 6 passed, 0 failed, 1 absent (allowed)" in r.stdout
    strict, allowed = (e["data"] for e in selftest_events(watcher, 2))
    for data in (strict, allowed):
        jsonschema.validate(data, SELFTEST_SCHEMA)
    assert strict["ok"] is False and strict["absent"] == ["front-camera"] and not strict["allow_absent"]
    assert allowed["ok"] is True and allowed["allow_absent"] is True


def test_unknown_device_is_a_usage_error(room: Callable[[str], AgentProcess]) -> None:
    agent = room("")  # not started: names are checked against the config first
    r = selftest(agent, "projector")
    assert r.returncode == 2 and "no device named 'projector'" in r.stderr


def test_without_the_daemon_suggests_offline(room: Callable[[str], AgentProcess]) -> None:
    agent = room("")
    r = selftest(agent)
    assert r.returncode == 1 and "selftest --offline -c" in r.stderr and r.stdout == ""


def test_offline_with_the_daemon_stopped(room: Callable[[str], AgentProcess]) -> None:
    agent = room("")
    r = selftest(agent, "--offline")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "self-test (offline) passed: 6 passed, 0 failed, 0 absent" in r.stdout
    assert "   skip relay switch" in r.stdout
    r = selftest(agent, "--offline", "--json", "--yes", "broadcast")
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["offline"] is True and out["act"] is True
    assert {s["name"]: s["ok"] for s in out["results"][0]["steps"]}["relay switch"] is True


def test_offline_absent_device_fails(room: Callable[[str], AgentProcess]) -> None:
    agent = room(ABSENT_CAMERA)
    assert selftest(agent, "--offline", "front-camera").returncode == 1
    assert selftest(agent, "--offline", "--allow-absent", "front-camera").returncode == 0


def test_offline_refused_while_the_daemon_runs(room: Callable[[str], AgentProcess]) -> None:
    agent = room("").start()
    r = selftest(agent, "--offline")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "the agent is running" in r.stderr and "owns the hardware" in r.stderr
    assert r.stdout == ""


def selftest_events(watcher: Watcher, n: int) -> list[dict]:
    """The first ``n`` ``selftest`` evidence events as the aggregator receives them."""
    return watcher.wait_for(lambda _: watcher.events("selftest")[n - 1:] and watcher.events("selftest"))[:n]


def test_outputs_are_not_touched_during_listening(room: Callable[[str], AgentProcess]) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    at = lambda minutes: (now + timedelta(minutes=minutes)).isoformat()  # noqa: E731
    agent = room(f"""
[[exam]]
id = "eng"
subject = "English"
start = {at(-5)}
end = {at(60)}
listening = [{{ start = {at(-1)}, end = {at(20)} }}]
""").start()
    r = selftest(agent, "broadcast", "--yes")
    assert r.returncode == 1 and "refused" in r.stderr and "is open" in r.stderr, (r.stdout, r.stderr)
    assert selftest(agent, "broadcast").returncode == 0  # nothing acted on: allowed
    r = selftest(agent, "broadcast", "--yes", "--force", "relay suspected stuck, checked with the chief")
    assert r.returncode == 0, (r.stdout, r.stderr)  # forced through the lock: on the record
    assert "FORCED during an open session: selftest acting on outputs" in agent.logs()
    agent.terminate()
    r = selftest(agent, "broadcast", "--yes", "--offline")
    assert r.returncode == 1 and "is open" in r.stderr, (r.stdout, r.stderr)
