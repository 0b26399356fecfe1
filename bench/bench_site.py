"""Site benchmark: the aggregator following 1,000 rooms.

Run: .venv/bin/python bench/bench_site.py [--rooms 1000] [--seconds 60] [--checkins-per-s 20]

1. A real agent on the demo's simulated devices is run once to capture real payloads (its
   birth status, a heartbeat with six devices, a check-in event).
2. ``examroom-site run`` (its own process, board on) follows a private Mosquitto.
3. A few load processes (bench/siteload.py) publish for every room a birth, a heartbeat
   every 5 s and the site's check-in stream.
4. Measured: ingest lag (the store's receive time minus the payload's ``ts``) of heartbeats
   and check-ins, p50/p99/max; the aggregator's CPU over the steady window; the board's
   update time (a room turns to alert -> its tile arrives on the board's event stream).
5. The joint-test round: ``examroom-site jointtest`` (ping, selftest, snapshot) over 100 rooms
   answered by a responder with a real agent's replies: wall time and round trips.
Targets (docs/performance.md): lag p99 < 1 s at 1,000 rooms, CPU < 50 % of a core,
board update < 2 s.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from devkit.localbroker import Broker, free_port  # noqa: E402
from examroom.agent.control import call  # noqa: E402
from examroom.site.store import Store  # noqa: E402
from siteload import answer_commands, run_rooms  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.site_lab import SiteProcess, site_toml  # noqa: E402

BROKER_CONF = "max_queued_messages 0\nmax_inflight_messages 1000\n"
TICKS = os.sysconf("SC_CLK_TCK")


def capture_templates(tmp: Path, port: int) -> dict[str, Any]:
    """Real payloads from a real agent on the demo's sim devices."""
    text = (ROOT / "config/demo.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1).replace('"demo-state/', f'"{tmp}/')
    text = text.replace('"demo-seatplan.csv"', f'"{ROOT / "config/demo-seatplan.csv"}"')
    text = text.replace("/tmp/examroom-demo-snapshots", str(tmp / "snapshots"))
    text = text.replace("interval_s = 10", "interval_s = 0.5")
    cfg = tmp / "capture.toml"
    cfg.write_text(text, encoding="utf-8")
    got: dict[str, Any] = {}
    done = threading.Condition()

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload)
        key = m.topic.rsplit("/", 1)[-1]
        if key == "heartbeat" and len(body.get("devices", {})) < 6:
            return
        with done:
            got.setdefault(key, body)
            done.notify_all()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, *_: c.subscribe("exam/#", qos=1)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    agent = AgentProcess(cfg, Path(re.search(r'socket = "([^"]+)"', text).group(1))).start()
    try:
        first_id = (ROOT / "config/demo-seatplan.csv").read_text(encoding="utf-8").splitlines()[1].split(",")[4]
        call(agent.socket, "sim", words=["card", first_id])
        got["replies"] = {name: {k: v for k, v in call(agent.socket, name, **args).items()
                                 if k not in ("ok", "request_id", "command")}
                          for name, args in (("ping", {}), ("selftest", {"act": False}), ("snapshot", {"tag": "bench"}))}
        with done:
            if not done.wait_for(lambda: {"status", "heartbeat", "checkin"} <= set(got), 30):
                raise RuntimeError(f"no real payloads captured: {sorted(got)}")
    finally:
        agent.terminate()
        sub.loop_stop()
    return got


def percentiles(xs: list[float]) -> str:
    if not xs:
        return "n=0"
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return f"p50 {p(0.5) * 1000:7.1f}  p99 {p(0.99) * 1000:7.1f}  max {xs[-1] * 1000:7.1f} ms  (n={len(xs)})"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def keep_board_open(board: str, stop: threading.Event) -> threading.Thread:
    """A board left open all day in the site office: its stream read for the whole window."""
    def read() -> None:
        with urllib.request.urlopen(board + "api/stream", timeout=30) as stream:
            while not stop.is_set() and stream.readline():
                pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def board_update_s(board: str, port: int, room: str) -> float:
    """A room turns to alert: seconds until the board's stream carries that room."""
    stream = urllib.request.urlopen(board + "api/stream", timeout=10)
    seen = threading.Event()
    sent_at: list[float] = []
    arrived: list[float] = []

    def read() -> None:
        for line in stream:
            if sent_at and room.encode() in line and b"alert" in line:
                arrived.append(time.monotonic())
                seen.set()
                return

    threading.Thread(target=read, daemon=True).start()
    time.sleep(1.0)  # let the snapshot that opens the stream go by
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    status = {"state": "alert", "session": 10**6, "ts": datetime.now().astimezone().isoformat(),
              "site": "site01", "room": room, "alerts": ["camera: covered (bench)"]}
    sent_at.append(time.monotonic())
    pub.publish(f"exam/site01/{room}/status", json.dumps(status), qos=1, retain=True).wait_for_publish(5)
    ok = seen.wait(10)
    pub.disconnect()
    pub.loop_stop()
    stream.close()
    return arrived[0] - sent_at[0] if ok else float("inf")


def event_lags(db: Path, since: float) -> list[float]:
    store = Store(db)
    store.open()
    try:
        rows = store.db.execute("SELECT received, payload FROM events WHERE received > ?", (since,)).fetchall()
        return [r - datetime.fromisoformat(json.loads(p)["ts"]).timestamp() for r, p in rows]
    finally:
        store.close()


def sample_heartbeats(db: Path, stop: threading.Event, out: list[float]) -> None:
    """The lag of each room's newest heartbeat, sampled; a heartbeat is counted once."""
    store = Store(db)
    store.open()
    seen: dict[str, float] = {}
    try:
        while not stop.wait(0.5):
            for room, at, hb in store.db.execute("SELECT room, heartbeat_at, heartbeat FROM rooms "
                                                  "WHERE heartbeat IS NOT NULL").fetchall():
                if seen.get(room) != at:
                    seen[room] = at
                    out.append(at - datetime.fromisoformat(json.loads(hb)["ts"]).timestamp())
    finally:
        store.close()


def jointtest_round(tmp: Path, port: int, replies: dict[str, Any], n: int) -> str:
    """``examroom-site jointtest`` over ``n`` rooms answered by the responder: wall time, round trips."""
    rooms = [f"jt{i:04d}" for i in range(1, n + 1)]
    ready = threading.Event()
    responder = threading.Thread(target=answer_commands, args=(port, rooms, replies, 120, ready), daemon=True)
    responder.start()
    ready.wait(10)
    out = tmp / "jointtest"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "examroom.site.cli", "--config", str(tmp / "site.toml"), "jointtest",
                        "--rooms", ",".join(rooms), "--steps", "ping,selftest,snapshot", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    wall = time.monotonic() - t0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    p50s = sorted(r_["rtt_ms"]["p50"] for r_ in report["rooms"] if r_["rtt_ms"]["p50"] is not None)
    passed = sum(1 for r_ in report["rooms"] if r_.get("passed"))
    return (f"{n} rooms x ping(3),selftest,snapshot in {wall:.1f} s (exit {r.returncode}, {passed} passed); "
            f"ping p50 per room: median {p50s[len(p50s) // 2]:.1f} ms, worst {p50s[-1]:.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--checkins-per-s", type=float, default=20)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--jointtest-rooms", type=int, default=100)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-site-"))
    broker = Broker(tmp / "broker", extra_conf=BROKER_CONF).start()
    try:
        templates = capture_templates(tmp, broker.port)
        board_port = free_port()
        site = SiteProcess(site_toml(tmp, broker.port, heartbeat_s=5, board=f"127.0.0.1:{board_port}")).start()
        rooms = [f"room{i:04d}" for i in range(1, a.rooms + 1)]
        shares = [rooms[i::a.processes] for i in range(a.processes)]
        start_at = time.time() + 3
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_heartbeats, args=(tmp / "site.db", stop, samples))
        with multiprocessing.get_context("spawn").Pool(a.processes) as pool:
            jobs = [pool.apply_async(run_rooms, (broker.port, share, templates, 5.0,
                                                 a.checkins_per_s / a.processes, a.seconds, start_at))
                    for share in shares]
            time.sleep(max(0.0, start_at - time.time()) + 10)  # warm-up: the first round of heartbeats
            sampler.start()
            keep_board_open(f"http://127.0.0.1:{board_port}/", stop)
            cpu0, t0, wall0 = cpu_s(site.proc.pid), time.monotonic(), time.time()
            board = board_update_s(f"http://127.0.0.1:{board_port}/", broker.port, rooms[len(rooms) // 2])
            sent = sum(j.get(a.seconds + 120) for j in jobs)
            cpu1, t1 = cpu_s(site.proc.pid), time.monotonic()
        time.sleep(2)  # what is still in flight lands
        stop.set()
        sampler.join()
        ev_lags = event_lags(tmp / "site.db", wall0)
        print(f"rooms {a.rooms}, heartbeat every 5 s, check-ins {a.checkins_per_s}/s, {a.seconds:.0f} s; "
              f"{sent} messages published by {a.processes} load processes")
        print(f"  heartbeat ingest lag   {percentiles(samples)}")
        print(f"  check-in ingest lag    {percentiles(ev_lags)}")
        print(f"  aggregator CPU         {(cpu1 - cpu0) / (t1 - t0) * 100:.1f} % of a core (steady window "
              f"{t1 - t0:.0f} s, a board open throughout)")
        print(f"  board update           {board * 1000:.0f} ms (status alert published -> tile on the stream)")
        print(f"  joint-test round       {jointtest_round(tmp, broker.port, templates['replies'], a.jointtest_rooms)}")
        site.terminate()
    finally:
        broker.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
