"""One agent per spool and per control socket, and an agent starts whole or not at all.

Real agent processes against a real Mosquitto. The watcher plays the aggregator: a second
``run`` must not make the live room flap offline/online (it once took over the MQTT client
id, and opened the spool and the hardware, before it noticed the first agent).
"""
from __future__ import annotations

import configparser
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from devkit.localbroker import Broker
from tests.agentproc import AgentProcess, write_config
from tests.mqttwatch import Watcher

ROOT = Path(__file__).resolve().parent.parent


def run_cli(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def online_session(watcher: Watcher) -> int:
    msgs = watcher.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/status")
                                        and m.json and m.json["state"] == "online"])
    return msgs[0].json["session"]


def still_live(agent: AgentProcess, watcher: Watcher, session: int) -> None:
    """The first agent delivered a note and two more heartbeats, and the aggregator saw
    one status only: no Will, no second birth, no new session."""
    seq = agent.call("note", text="still here")["seq"]
    watcher.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/event/note") and m.json["seq"] == seq])
    n = len(watcher.on("heartbeat"))
    watcher.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/heartbeat")]) >= n + 2)
    assert [(m.json["state"], m.json["session"]) for m in watcher.on("status")] == [("online", session)]
    assert {m.json["session"] for m in watcher.on("heartbeat")} == {session}


def test_second_agent_on_the_same_spool_exits_3_and_the_first_never_flaps(
        make_agent, watcher: Watcher, tmp_path: Path) -> None:
    first = make_agent().start()
    session = online_session(watcher)
    r = run_cli(first.config)
    spool = tmp_path / "room101-spool.db"
    assert r.returncode == 3, r.stderr
    assert r.stderr == f"error: another examroom agent (pid {first.proc.pid}) is already running on {spool}\n"
    assert r.stdout == ""
    still_live(first, watcher, session)
    lock = Path(f"{spool}.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert lock.read_text() == f"{first.proc.pid}\n"


def test_lock_dies_with_its_agent(make_agent, watcher: Watcher) -> None:
    """flock, not a pid file: a SIGKILLed agent leaves no lock that keeps the next one out."""
    first = make_agent().start()
    online_session(watcher)
    first.kill()
    second = make_agent().start()  # raises if it exits (3 would be a stale lock)
    assert second.call("ping") == {"ok": True, "pong": True}
    assert second.terminate() == 0


def test_second_agent_on_another_spool_but_the_same_socket_opens_nothing(
        make_agent, broker: Broker, watcher: Watcher, tmp_path: Path) -> None:
    first = make_agent().start()
    session = online_session(watcher)
    other = tmp_path / "other"
    other.mkdir()
    cfg = write_config(other, broker.port)
    cfg.write_text(cfg.read_text().replace(f"{other}/room101.sock", first.socket))
    r = run_cli(cfg)
    assert r.returncode == 3, r.stderr
    assert r.stderr == (f"error: another examroom agent (pid {first.proc.pid}) is already running "
                        f"on {first.socket}\n")
    assert not (other / "room101-spool.db").exists()  # asked before the spool and the broker
    still_live(first, watcher, session)


def test_hung_agent_on_the_socket_is_not_pushed_aside(broker: Broker, tmp_path: Path) -> None:
    """Something listens on the control socket and never answers: the new agent must not
    take that socket over (the listener may be a hung agent that still owns the hardware)."""
    cfg = write_config(tmp_path, broker.port)
    path = str(tmp_path / "room101.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(path)
        hung.listen(8)  # the kernel queues connections; nobody accepts or answers
        before = os.stat(path).st_ino
        r = run_cli(cfg)
        assert r.returncode == 3, r.stderr
        assert r.stderr == (f"error: an examroom agent (pid {os.getpid()}) listens on {path} but does "
                            "not answer: hung? stop it first\n")
        assert os.stat(path).st_ino == before  # still the listener's socket, not replaced
        assert not (tmp_path / "room101-spool.db").exists()


def test_failed_start_is_one_line_exit_1_and_leaves_nothing_running(
        make_agent, broker: Broker, tmp_path: Path) -> None:
    """The metrics port is taken: the agent had opened its spool, uplink and control socket;
    it stops them again, says what failed in one line, and the next start works."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path, broker.port, metrics_listen=f"127.0.0.1:{port}")
        r = run_cli(cfg)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: the agent could not start its metrics listener 127.0.0.1:{port}: "
                      "[Errno 98] Address already in use"]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "room101.sock").exists()  # the control socket was closed again
    agent = make_agent().start()  # lock released, spool intact
    assert agent.call("ping") == {"ok": True, "pong": True}


def test_run_exits_2_on_a_bad_config_before_it_opens_anything(tmp_path: Path) -> None:
    """Why the unit has no ExecStartPre=check-config: run itself exits 2 (which systemd does
    not restart), and only ExecStart's exit status is subject to RestartPreventExitStatus."""
    cfg = write_config(tmp_path, 1883)
    cfg.write_text(cfg.read_text().replace("keepalive_s = 5", "keepalive_s = 1"))
    r = run_cli(cfg)
    assert r.returncode == 2
    assert r.stderr == f"error: {cfg}: mqtt.keepalive_s: expected 2-600 seconds (got 1)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room101.toml"]  # no spool, lock, socket
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy/systemd/examroom-agent.service")
    assert "ExecStartPre" not in unit["Service"]
    assert unit["Service"]["RestartPreventExitStatus"].split() == ["2"]  # 3 is retried
