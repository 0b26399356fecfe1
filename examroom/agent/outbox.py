"""Live messages of the uplink (heartbeat, status, command replies): worth sending only
now, so never spooled, and dropped rather than sent late after a reconnect.

Other threads queue them; the uplink's loop thread is the only one that publishes.
The heartbeat is also the probe that measures the broker's round trip (``rtt_ms``).
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from examroom.contract.topics import Topics

log = logging.getLogger(__name__)


def dumps(payload: dict[str, Any]) -> bytes:
    """UTF-8 JSON; text that UTF-8 cannot carry (a lone surrogate typed into an argument)
    goes out \\u-escaped rather than making the message unsendable."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode()


class _Live(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    probe: bool
    command: str = ""


class LiveOutbox:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.rtt_ms: float | None = None
        self._queue: deque[_Live] = deque()
        self._probe: dict[int, float] = {}  # heartbeat mid -> publish time (loop thread only)

    def put(self, suffix: str, payload: dict[str, Any], retain: bool, probe: bool) -> None:
        self._queue.append(_Live(self.topics.suffix(suffix), dumps(payload), retain, None, probe))

    def put_reply(self, topic: str, payload: dict[str, Any], correlation: bytes | None) -> None:
        self._queue.append(_Live(topic, dumps(payload), False, correlation, False,
                                 str(payload.get("command"))))

    def flush(self, client: mqtt.Client, connected: bool) -> None:
        """Publish what is queued; without a connection it is dropped (worth nothing later)."""
        while self._queue:
            msg = self._queue.popleft()
            if not connected:
                continue
            props = None
            if msg.correlation is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = msg.correlation
            try:
                info = client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain, properties=props)
            except ValueError:  # a Response Topic with wildcards: answer where the contract says
                log.warning("unusable response topic %r; replying on reply/%s", msg.topic, msg.command)
                info = client.publish(self.topics.reply(msg.command), msg.payload, qos=1,
                                      properties=props)
            if msg.probe and info.rc == mqtt.MQTT_ERR_SUCCESS:
                self._probe[info.mid] = time.monotonic()

    def restart(self) -> None:
        """A new connection: the old one's probes will never be acknowledged."""
        self._probe.clear()

    def acknowledged(self, mid: int) -> None:
        sent = self._probe.pop(mid, None)
        if sent is not None:
            self.rtt_ms = round((time.monotonic() - sent) * 1000, 2)
