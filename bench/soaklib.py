"""What the soak runs share: a real agent process, a durable subscriber, the tally of a stream."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examroom.agent.control import AgentUnreachable, call  # noqa: E402


# the aggregator's queue must hold a whole backlog: Mosquitto's default of 1,000 queued messages
# per client drops the rest of a replay that arrives while the subscriber reconnects
BROKER_CONF = "max_queued_messages 0\nmax_inflight_messages 100\n"


def config(tmp: Path, port: int, max_bytes: int = 64 * 1024 * 1024) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""schema_version = 1
[site]
id = "site01"
name = "Soak"
[room]
id = "room101"
label = "soak"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.1
reconnect_max_s = 1.0
[spool]
path = "{tmp}/spool.db"
max_bytes = {max_bytes}
[heartbeat]
interval_s = 1
[control]
socket = "{tmp}/agent.sock"
[metrics]
listen = ""
""", encoding="utf-8")
    return cfg


class Agent:
    """``examroom-agent run`` as systemd runs it; killed with SIGKILL, stopped with SIGTERM."""

    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.cfg, self.sock, self.log = cfg, str(tmp / "agent.sock"), tmp / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 20) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "run", "-c", str(self.cfg)],
                                     cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                call(self.sock, "ping", timeout=1)
                self.starts += 1
                return
            except AgentUnreachable:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"agent exited {self.proc.returncode}: see {self.log}")
                time.sleep(0.05)  # polling a socket: there is no event to wait on
        raise RuntimeError(f"HANG: agent not up within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)  # TimeoutExpired here is a hang

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")


@dataclass
class Subscriber:
    """The aggregator's side: a durable MQTT v5 session (QoS 1) on the room's events."""

    port: int
    seqs: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-aggregator", protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe("exam/site01/room101/event/#", qos=1)
        self.client.on_message = self._on_message

    def _on_message(self, _c, _u, msg) -> None:
        seq = json.loads(msg.payload)["seq"]
        with self.cond:
            self.seqs.append(seq)
            self.cond.notify_all()

    def start(self) -> "Subscriber":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        return self

    def wait_for(self, wanted: set[int], timeout: float) -> float:
        """Seconds until every wanted seq arrived (raises after ``timeout``)."""
        t0 = time.monotonic()
        with self.cond:
            if not self.cond.wait_for(lambda: wanted <= set(self.seqs), timeout):
                raise RuntimeError(f"{len(wanted - set(self.seqs))} acknowledged events never arrived")
        return time.monotonic() - t0

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def tally(acknowledged: set[int], received: list[int]) -> dict[str, int]:
    """lost: stored by the agent, never delivered; duplicated: delivered more than once (allowed:
    QoS 1 after a lost PUBACK); reordered: a first delivery below an earlier first delivery."""
    first: list[int] = []
    seen: set[int] = set()
    for s in received:
        if s not in seen:
            seen.add(s)
            first.append(s)
    return {"acknowledged": len(acknowledged), "lost": len(acknowledged - seen),
            "duplicated": len(received) - len(first),
            "reordered": sum(1 for a, b in zip(first, first[1:]) if b < a)}
