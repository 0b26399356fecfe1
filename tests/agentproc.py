"""Run the real agent as a separate process, the way systemd does, so tests can SIGKILL it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from examroom.agent.control import AgentNotRunning, call


def write_config(tmp: Path, port: int, room: str = "room101", extra: str = "",
                 heartbeat_s: float = 0.5, max_bytes: int = 64 * 1024 * 1024,
                 metrics_listen: str = "") -> Path:
    cfg = tmp / f"{room}.toml"
    cfg.write_text(f"""
schema_version = 1
[site]
id = "site01"
name = "Test site"
[room]
id = "{room}"
label = "测试考点 第101考场"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[spool]
path = "{tmp}/{room}-spool.db"
max_bytes = {max_bytes}
[heartbeat]
interval_s = {heartbeat_s}
[control]
socket = "{tmp}/{room}.sock"
[metrics]
listen = "{metrics_listen}"
[checkin]
record_dir = "{tmp}/records"
journal = "{tmp}/{room}-checkin.journal"
{extra}
""", encoding="utf-8")
    return cfg


class AgentProcess:
    def __init__(self, config: Path, socket_path: Path, env: dict | None = None) -> None:
        self.config = config
        self.socket = str(socket_path)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = config.with_suffix(".log")

    def start(self, timeout: float = 15) -> "AgentProcess":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(self.config)],
            stdout=out, stderr=out, env={**os.environ, "PYTHONFAULTHANDLER": "1", **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                call(self.socket, "ping", timeout=1)
                return self
            except (AgentNotRunning, OSError, ValueError):
                time.sleep(0.02)  # polling a socket that does not exist yet
        raise RuntimeError(f"agent not ready: {self.log.read_text()[-2000:]}")

    def call(self, cmd: str, **args) -> dict:
        return call(self.socket, cmd, **args)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> int:
        """SIGTERM and wait; an agent that does not stop in 15 s is a hang: SIGABRT makes its
        fault handler write every thread's stack to its log, which the error shows."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(10)
            raise RuntimeError(f"agent did not stop within 15 s of SIGTERM:\n{self.logs()[-6000:]}") from None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def wait_online(port: int, rooms: list[str], timeout: float = 60) -> None:
    """Until every room's retained status says it is connected: the control socket answers
    before the uplink has subscribed, and a command sent to a room not yet subscribed is
    lost (commands are not queued for an unconnected room)."""
    from tests.mqttwatch import Watcher

    with Watcher(port, "exam/+/+/status") as w:
        w.wait_for(lambda ms: set(rooms) <= {m.topic.split("/")[2] for m in ms
                                             if (m.json or {}).get("state") in ("online", "alert")}, timeout)
