"""The site aggregator as tests run it: a site.toml, the aggregator in-process (``SiteApp``)
or as its own process (``SiteProcess``, to SIGKILL), and contract-shaped payloads for
tests that play a room directly on the broker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from examroom.site.config import SiteConfig, parse


def site_toml(tmp: Path, port: int, heartbeat_s: float = 0.5, missed: int = 3, gap_grace_s: float = 60,
              board: str = "", expected: tuple[str, ...] = ()) -> Path:
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
id = "site01"
name = "测试考点"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
[store]
path = "{tmp}/site.db"
[liveness]
heartbeat_s = {heartbeat_s}
missed = {missed}
gap_grace_s = {gap_grace_s}
[board]
listen = "{board}"
[rooms]
expected = {json.dumps(list(expected))}
""", encoding="utf-8")
    return path


def site_config(tmp: Path, port: int, **kw: Any) -> SiteConfig:
    path = site_toml(tmp, port, **kw)
    return parse(path.read_text(encoding="utf-8"), str(path))


class SiteProcess:
    """``examroom-site run`` as the site office's service runs it."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> "SiteProcess":
        offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "examroom.site.cli", "--config", str(self.config), "run"],
                                     stdout=out, stderr=out, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"examroom-site exited {self.proc.returncode}: {self.logs()[-2000:]}")
            if "examroom-site: following" in self.logs()[offset:]:
                return self
            time.sleep(0.02)  # polling its log: the process has no other way to say it is up
        raise RuntimeError(f"examroom-site did not connect: {self.logs()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def envelope(seq: int, kind: str, data: dict[str, Any], session: int = 1, eid: str | None = None,
             ts: str = "2026-06-07T09:00:00+08:00") -> bytes:
    """An event as a room's uplink publishes it."""
    return json.dumps({"id": eid or str(uuid.uuid4()), "seq": seq, "ts": ts, "kind": kind, "session": session,
                       "replayed": False, "data": data}, ensure_ascii=False).encode()


def status(state: str, session: int, room: str = "room101", **extra: Any) -> bytes:
    return json.dumps({"state": state, "session": session, "ts": "2026-06-07T09:00:00+08:00", "site": "site01",
                       "room": room, "room_label": "第101考场", **extra}, ensure_ascii=False).encode()


def heartbeat(session: int, dropped: dict[str, int] | None = None, state: str = "online") -> bytes:
    return json.dumps({"ts": "2026-06-07T09:00:00+08:00", "session": session, "state": state, "alerts": [],
                       "uptime_s": 1.0, "rtt_ms": None, "devices": {}, "host": {},
                       "spool": {"events": 0, "bytes": 0, "oldest_age_s": 0.0, "overfull": False,
                                 "dropped": dropped or {}}}).encode()
