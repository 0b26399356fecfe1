"""``examroom-agent watch``: a live, readable view of what the site aggregator receives.

It subscribes to every room of every site under the prefix, as the
aggregator would, and prints one line per message. It is a viewer, not the
aggregator: it keeps no state beyond the last seq per room, which it uses to
show gaps and duplicates the way an aggregator must detect them.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from examroom.agent import human_time
from examroom.contract.topics import Topics

_SKIP_DATA = {"results"}


def _short(data: dict[str, Any], limit: int = 110) -> str:
    parts = []
    for k, v in data.items():
        if k in _SKIP_DATA:
            continue
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{k}={v}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rtt(ms: Any) -> str:
    """The first heartbeat goes out before any round trip was timed: say so, not "None ms"."""
    return f"rtt={ms}ms" if ms is not None else "rtt not measured yet"


def describe(topic: str, payload: dict[str, Any], last_seq: dict[str, int]) -> str:
    parsed = Topics.parse(topic)
    if parsed is None:
        return f"{topic:<18} {_short(payload)}"
    room = f"{parsed.site}/{parsed.room}"
    if parsed.channel == "status":
        alerts = "; ".join(payload.get("alerts") or [])
        return f"{room:<18} STATUS    {payload.get('state', '?').upper():<7} session {payload.get('session')}" + \
            (f"  ⚠ {alerts}" if alerts else "")
    if parsed.channel == "heartbeat":
        sp = payload.get("spool", {})
        devs = " ".join(f"{n}:{d.get('state')}" for n, d in (payload.get("devices") or {}).items())
        exam = payload.get("exam") or {}
        phase = f" phase={exam['phase']}" if exam.get("phase") else ""
        return (f"{room:<18} heartbeat {payload.get('state', '?'):<7} spool={sp.get('events')} "
                f"{_rtt(payload.get('rtt_ms'))}{phase} {devs}")
    if parsed.channel == "event":
        seq = payload.get("seq", 0)
        prev = last_seq.get(room)
        mark = ""
        if prev is not None and seq <= prev:
            mark = " (duplicate)"
        elif prev is not None and seq > prev + 1:
            mark = f" (gap: {seq - prev - 1} missing)"
        last_seq[room] = max(seq, prev or 0)
        replay = " REPLAYED" if payload.get("replayed") else ""
        return f"{room:<18} #{seq:<6} {payload.get('kind', parsed.name):<15}{replay}{mark} {_short(payload.get('data', {}))}"
    return f"{room:<18} {parsed.channel + '/' + str(parsed.name):<9} {_short(payload)}"


def watch(host: str, port: int, prefix: str, raw: bool = False, duration: float | None = None,
          tls: dict[str, str] | None = None) -> int:
    """``tls``: ca/cert/key file paths for a TLS-only site broker (an aggregator or ops
    certificate: a room's own certificate may read only its commands)."""
    last_seq: dict[str, int] = {}
    done = threading.Event()

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"broker refused: {reason}", file=sys.stderr)
            done.set()
            return
        client.subscribe(Topics.all_filter(prefix), qos=1)
        print(f"watching {Topics.all_filter(prefix)} on {host}:{port} (Ctrl-C to stop)", flush=True)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        stamp = human_time.clock()
        if raw:
            print(f"{stamp} {msg.topic} {msg.payload.decode(errors='replace')}", flush=True)
            return
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
            line = describe(msg.topic, payload, last_seq) if isinstance(payload, dict) else msg.topic
        except ValueError:
            line = f"{msg.topic} (not JSON: {len(msg.payload)} bytes)"
        print(f"{stamp} {line}", flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_message = on_message
    if tls and any(tls.values()):
        client.tls_set(ca_certs=tls.get("ca") or None, certfile=tls.get("cert") or None,
                       keyfile=tls.get("key") or None)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        print(f"error: cannot reach the broker at {host}:{port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        done.wait(duration) if duration else done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
