"""Core benchmark: spool + uplink throughput against bare paho, latency, drain, idle cost.

Run: .venv/bin/python bench/bench_core.py [--events N] [--idle-seconds S]
Prints a table; docs/performance.md records the numbers with the machine.
Everything runs against a private Mosquitto on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examroom.agent.config import parse  # noqa: E402
from examroom.agent.control import AgentUnreachable, call  # noqa: E402
from devkit.localbroker import Broker  # noqa: E402
from examroom.agent.metrics import Metrics  # noqa: E402
from examroom.agent.spool import Spool  # noqa: E402
from examroom.agent.uplink import Uplink  # noqa: E402
from examroom.contract.vocabulary import EventKind  # noqa: E402


# a subscriber slower than the publisher must not lose messages to the queue limit
BROKER_CONF = "max_queued_messages 0\nmax_inflight_messages 100\n"


class Counter:
    """A subscriber that timestamps every event it receives."""

    def __init__(self, port: int, topic: str) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.cond = threading.Condition()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        ready.wait(5)

    def _msg(self, _c, _u, m) -> None:
        with self.cond:
            self.received.append((time.perf_counter(), m.payload))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 120) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise RuntimeError(f"only {len(self.received)}/{n} received")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def make_uplink(tmp: Path, port: int, sync: str) -> tuple[Spool, Uplink]:
    cfg = parse(f'schema_version = 1\n[site]\nid="s"\n[room]\nid="r"\n[mqtt]\nport={port}\n'
                f'reconnect_min_s=0.05\nreconnect_max_s=0.2\n[spool]\npath="{tmp}/spool-{sync}-{time.time_ns()}.db"\n'
                f'sync="{sync}"\n', str(tmp / "bench.toml"))
    spool = Spool(cfg.spool["path"], cfg.spool["max_bytes"], sync)
    spool.open()
    up = Uplink(cfg.mqtt, cfg.topics, spool, Metrics(),
                lambda s: {"state": "online", "session": s}, lambda s: {"state": "offline", "session": s})
    return spool, up


def wait_connected(up: Uplink) -> None:
    if not up.wait_connected(10):
        raise RuntimeError("the uplink did not connect to the benchmark broker in 10 s")


def emit(spool: Spool, up: Uplink, i: int) -> None:
    ev = spool.append(EventKind.NOTE, {"text": f"bench {i}"}, up.session, up.connected)
    up.offer(ev)


def throughput_agent(tmp: Path, port: int, n: int, sync: str) -> float:
    spool, up = make_uplink(tmp, port, sync)
    sub = Counter(port, "exam/s/r/event/#")
    up.start()
    wait_connected(up)
    t0 = time.perf_counter()
    for i in range(n):
        emit(spool, up, i)
    sub.wait(n)
    dt = sub.received[-1][0] - t0
    up.stop()
    sub.close()
    spool.close()
    return n / dt


def throughput_paho(port: int, n: int) -> float:
    sub = Counter(port, "bare/#")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    payload = b'{"id":"00000000-0000-0000-0000-000000000000","seq":1,"kind":"note","data":{"text":"bench"}}'
    t0 = time.perf_counter()
    for _ in range(n):
        pub.publish("bare/event/note", payload, qos=1)
    sub.wait(n)
    dt = sub.received[-1][0] - t0
    pub.disconnect()
    pub.loop_stop()
    sub.close()
    return n / dt


def latency(tmp: Path, port: int, n: int) -> tuple[float, float]:
    spool, up = make_uplink(tmp, port, "full")
    sub = Counter(port, "exam/s/r/event/#")
    up.start()
    wait_connected(up)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        emit(spool, up, i)
        sub.wait(i + 1)
        samples.append((sub.received[i][0] - t0) * 1000)
    up.stop()
    sub.close()
    spool.close()
    q = statistics.quantiles(samples, n=100)
    return statistics.median(samples), q[98]


def drain(tmp: Path, n: int) -> float:
    broker = Broker(tmp / "drain-broker", extra_conf=BROKER_CONF)
    broker.start()
    port = broker.port
    spool, up = make_uplink(tmp, port, "full")
    broker.kill()
    up.start()
    for i in range(n):
        emit(spool, up, i)
    broker.start()
    sub = Counter(port, "exam/s/r/event/#")
    t0 = time.perf_counter()
    sub.wait(n, timeout=300)
    dt = sub.received[-1][0] - t0
    up.stop()
    sub.close()
    spool.close()
    broker.kill()
    return dt


def wait_ready(sock: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the idle agent exited with {proc.returncode}")
        try:
            if call(str(sock), "status", timeout=2)["broker"]["connected"]:
                return
        except AgentUnreachable:  # not listening yet, or busy starting
            pass
        time.sleep(0.05)  # polling a process we do not own: nothing to wait on
    raise RuntimeError("the idle agent did not connect in time")


def idle(tmp: Path, port: int, seconds: float, config_extra: str = "") -> tuple[float, float]:
    cfg = tmp / f"idle-{time.time_ns()}.toml"
    cfg.write_text(f'schema_version = 1\n[site]\nid="s"\n[room]\nid="idle"\n[mqtt]\nport={port}\n'
                   f'[spool]\npath="{tmp}/idle-{time.time_ns()}.db"\n[control]\nsocket="{tmp}/idle.sock"\n'
                   f'[metrics]\nlisten=""\n[heartbeat]\ninterval_s=10\n{config_extra}')
    proc = subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(tmp / "idle.sock", proc)  # start-up is not idle: measure from a connected agent
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    c0, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu(), time.monotonic()
    rss = next(int(l.split()[1]) for l in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
               if l.startswith("VmRSS")) / 1024
    proc.terminate()
    proc.wait(10)
    return rss, 100 * (c1 - c0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--latency-samples", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{platform.platform()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp / "broker", extra_conf=BROKER_CONF).start()
        try:
            # median of 3 runs each, interleaved, so a noisy neighbour hits all alike
            runs = [(throughput_paho(broker.port, a.events),
                     throughput_agent(tmp, broker.port, a.events, "full"),
                     throughput_agent(tmp, broker.port, a.events, "normal")) for _ in range(3)]
            bare, full, normal = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"bare paho QoS 1                 {bare:10.0f} events/s")
            print(f"spool+uplink QoS 1, sync=full   {full:10.0f} events/s  ratio {full / bare:.2f}")
            print(f"spool+uplink QoS 1, sync=normal {normal:10.0f} events/s  ratio {normal / bare:.2f}")
            p50, p99 = latency(tmp, broker.port, a.latency_samples)
            print(f"append -> subscriber latency    p50 {p50:.2f} ms  p99 {p99:.2f} ms  (n={a.latency_samples})")
            print(f"drain of {a.events} spooled events   {drain(tmp, a.events):.2f} s")
            rss, cpu = idle(tmp, broker.port, a.idle_seconds)
            print(f"idle agent, no devices          RSS {rss:.1f} MB  CPU {cpu:.2f}% of a core over {a.idle_seconds:.0f} s")
        finally:
            broker.kill()


if __name__ == "__main__":
    main()
