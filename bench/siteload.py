"""MQTT traffic of many simulated rooms from one process, for bench_site.py.

A thousand agents would measure the machine, not the aggregator: one paho client per
process publishes, for each of its rooms, the retained birth status, a heartbeat every
``heartbeat_s`` (rooms staggered over the interval, as boxes started at different times
are) and its share of the site's check-in stream. Payloads are copies of a real agent's
(captured by bench_site.py) with fresh ids, seq and ``ts`` set at the moment of sending,
so the aggregator's ingest lag is its store time minus ``ts``.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def iso_now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def run_rooms(port: int, rooms: list[str], templates: dict[str, Any], heartbeat_s: float,
              checkins_per_s: float, seconds: float, start_at: float, prefix: str = "exam/site01") -> int:
    """Publish for ``seconds`` from wall-clock ``start_at``; returns messages published."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"siteload-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("load generator could not connect")
    seq = {room: 0 for room in rooms}
    sent = 0
    for room in rooms:
        birth = templates["status"] | {"room": room, "room_label": f"第{room[4:]}考场", "ts": iso_now()}
        client.publish(f"{prefix}/{room}/status", json.dumps(birth, ensure_ascii=False), qos=1, retain=True)
        sent += 1
    time.sleep(max(0.0, start_at - time.time()))  # every generator starts its clock together
    t0 = time.monotonic()
    n = len(rooms)
    beats = 0
    checkins = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        due_beats = int(elapsed / heartbeat_s * n)  # rooms are staggered evenly over the interval
        while beats < due_beats:
            room = rooms[beats % n]
            hb = templates["heartbeat"] | {"ts": iso_now(), "uptime_s": round(elapsed, 1)}
            client.publish(f"{prefix}/{room}/heartbeat", json.dumps(hb, ensure_ascii=False), qos=1)
            beats += 1
        due_checkins = int(elapsed * checkins_per_s)
        while checkins < due_checkins:
            room = rooms[(checkins * 7919) % n]
            seq[room] += 1
            ev = templates["checkin"] | {"id": str(uuid.uuid4()), "seq": seq[room], "ts": iso_now()}
            client.publish(f"{prefix}/{room}/event/checkin", json.dumps(ev, ensure_ascii=False), qos=1)
            checkins += 1
        time.sleep(0.005)  # a pacing loop: publish what fell due, then look again
    client.disconnect()
    client.loop_stop()
    return sent + beats + checkins


def answer_commands(port: int, rooms: list[str], replies: dict[str, dict[str, Any]], seconds: float,
                    ready: Any = None, prefix: str = "exam/site01") -> int:
    """Answer the site's commands for ``rooms`` as their agents would (the replies a real agent
    gave, captured by bench_site.py), on the request's Response Topic with its Correlation
    Data; returns how many it answered. What it measures is the site's side: pacing, matching,
    the report, not the rooms' work."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    mine = set(rooms)
    answered = 0
    lock = threading.Lock()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"rooms-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe([(f"{prefix}/+/cmd/+", 1)])

    def on_message(c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal answered
        parts = m.topic.split("/")  # {prefix}/{site}/{room}/cmd/{name}
        room, name = parts[-3], parts[-1]
        targets = sorted(mine) if room == "broadcast" else [room] if room in mine else []
        request = json.loads(m.payload or b"{}")
        for target in targets:
            body = {"request_id": request.get("id"), "command": name, "ok": True, **replies.get(name, {})}
            props = Properties(PacketTypes.PUBLISH)
            correlation = getattr(m.properties, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
            topic = getattr(m.properties, "ResponseTopic", None)
            if room == "broadcast" or not topic:
                topic = f"{prefix}/{target}/reply/{name}"
            c.publish(topic, json.dumps(body, ensure_ascii=False), qos=1, properties=props)
            with lock:
                answered += 1

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("command responder could not subscribe")
    if ready is not None:
        ready.set()
    time.sleep(seconds)  # the rooms are there for as long as the round may take
    client.disconnect()
    client.loop_stop()
    return answered
