"""The uplink's loop in-process against a real Mosquitto: the spool stays the truth whatever the
hand-over says, a raising callback does not stop delivery, back-off is capped and jittered."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from examroom.agent.config import parse
from devkit.localbroker import Broker
from examroom.agent.metrics import Metrics
from examroom.agent.spool import Spool
from examroom.agent.uplink import Backoff, Uplink
from tests.mqttwatch import Watcher


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    top = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [top.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    top.reset()
    assert top.next() == 0.5
    bottom = Backoff(0.5, 4.0, rng=lambda: 0.0)  # jitter never waits less than half a step
    assert [bottom.next() for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


@pytest.fixture
def room(tmp_path: Path, broker: Broker):
    """A spool and an uplink of room r on the test broker, with a watcher on its events."""
    cfg = parse(f'schema_version = 1\n[site]\nid="s"\n[room]\nid="r"\n[mqtt]\nport={broker.port}\n'
                f'inflight=8\nreconnect_min_s=0.05\nreconnect_max_s=0.2\n'
                f'[spool]\npath="{tmp_path}/spool.db"\n', str(tmp_path / "agent.toml"))
    spool = Spool(cfg.spool["path"], cfg.spool["max_bytes"], "normal")
    spool.open()
    commands: list[str] = []
    got_command = threading.Event()

    def on_command(topic: str, _payload: bytes, _props: object, _retained: bool) -> None:
        commands.append(topic)
        got_command.set()
        raise RuntimeError("a handler bug")

    metrics = Metrics()
    up = Uplink(cfg.mqtt, cfg.topics, spool, metrics,
                lambda s: {"state": "online", "session": s},
                lambda s: {"state": "offline", "session": s}, on_command)
    with Watcher(broker.port, "exam/s/r/#") as w:
        up.start()
        w.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/status")
                               and m.json and m.json["state"] == "online"])
        yield spool, up, w, metrics, got_command
        up.stop()
    spool.close()


def _notes(w: Watcher, n: int) -> list[int]:
    got = w.wait_for(lambda ms: (e := [m.json for m in ms if "/event/" in m.topic])[n - 1:] and e)
    return [e["seq"] for e in got]


def test_events_never_offered_are_sent_from_the_spool_in_order(room) -> None:
    spool, up, w, _m, _c = room
    made = [spool.append("note", {"i": i}, up.session, True) for i in range(20)]
    # only some are handed over, and out of order (two producers racing): the rest must
    # still go, and the aggregator sees seq order
    for ev in (made[7], made[3], made[19]):
        up.offer(ev)
    assert _notes(w, 20) == [e.seq for e in made]


def test_window_smaller_than_burst_delivers_all_and_empties_the_spool(room) -> None:
    spool, up, w, _m, _c = room
    made = []
    for i in range(50):  # inflight is 8
        ev = spool.append("note", {"i": i}, up.session, True)
        made.append(ev.seq)
        up.offer(ev)
    assert _notes(w, 50) == made
    # acks are batched, but none is left behind once everything is sent and acknowledged.
    # The flush happens inside the loop with no outward sign to wait on: poll, briefly.
    deadline = time.monotonic() + 5
    while spool.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.pending == 0


def test_a_raising_command_handler_does_not_stop_delivery(room, broker: Broker) -> None:
    spool, up, w, metrics, got_command = room
    publish.single("exam/s/r/cmd/ping", json.dumps({"id": "x"}), hostname="127.0.0.1",
                   port=broker.port, qos=1)
    assert got_command.wait(10)
    ev = spool.append("note", {"after": "the bug"}, up.session, True)
    up.offer(ev)
    assert _notes(w, 1) == [ev.seq]
    assert up.alive() and up.connected
    assert metrics.callback_errors._value.get() >= 1


def test_a_goodbye_the_broker_never_takes_leaves_with_the_will(room, broker: Broker) -> None:
    """A clean stop waits GOODBYE_WAIT_S for the offline status's PUBACK; without it, the
    status may still say online, so the agent disconnects asking for its Will."""
    _spool, up, w, _m, _c = room
    session = up.session
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker hangs: nothing is acknowledged
    try:
        up.stop()
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    offline = w.wait_for(lambda ms: [m.json for m in ms if m.topic.endswith("/status") and m.json
                                     and m.json["state"] == "offline" and "clean" not in m.json])
    assert offline[0]["session"] == session
