"""A private Mosquitto on a free port: for the demo, the tests and the benchmarks.

Not used by the agent in production (the site runs its own broker) and not shipped
to a box: the demo, the benchmarks and the tests start brokers this one way.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A durable session holds a whole outage, as on the site's broker (deploy/mosquitto/examroom.conf):
# Mosquitto's default of 1,000 queued messages drops the rest of a drain that overtakes a
# subscriber still reconnecting after a restart.
SITE_QUEUE = "max_queued_messages 100000\nmax_queued_bytes 268435456\n"


class Broker:
    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "",
                 persistence: bool = False, conf: str | None = None) -> None:
        """``conf``: a whole mosquitto.conf to run as is (e.g. the site's TLS config) instead
        of the generated plain listener on ``port``."""
        self.conf = conf
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed: run scripts/setup.sh (Debian package mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        generated = (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                     f"persistence {'true' if self.persistence else 'false'}\n"
                     f"persistence_location {self.workdir}/\n"
                     f"{SITE_QUEUE if self.persistence else ''}"
                     f"{'user root' if os.geteuid() == 0 else ''}\n{self.extra_conf}\n")
        conf.write_text(self.conf if self.conf is not None else generated)
        log = open(self.workdir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.01)  # polling a port: there is no event to wait on
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Graceful stop: a persistent broker saves its sessions, so watchers keep theirs."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
