"""A subscriber that plays the aggregator in tests: records everything, waits on conditions."""
from __future__ import annotations

import json
import threading
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Message:
    def __init__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.topic = topic
        self.raw = payload
        self.retain = retain
        try:
            self.json: Any = json.loads(payload) if payload else None
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"<{self.topic} {self.raw[:200]!r}>"


class Watcher:
    def __init__(self, port: int, topic: str = "#", persistent: bool = False) -> None:
        """``persistent``: a durable session (as a real aggregator has), so messages published
        while the watcher reconnects after a broker restart are queued for it, not lost."""
        self.port = port
        self.topic = topic
        self.persistent = persistent
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"watcher-{id(self)}" if persistent else "")
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def __enter__(self) -> "Watcher":
        props = None
        if self.persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=not self.persistent, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(5), "watcher could not subscribe"
        return self

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, msg.retain))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Message]], Any], timeout: float = 10.0) -> Any:
        """Wait until ``pred(messages)`` is truthy and return its value."""
        with self._cond:
            result = self._cond.wait_for(lambda: pred(self.messages), timeout)
        if not result:
            tail = "\n".join(repr(m) for m in self.messages[-10:])
            raise AssertionError(f"condition not met in {timeout}s; last messages:\n{tail}")
        return result

    def events(self, kind: str | None = None) -> list[dict]:
        with self._cond:
            return [m.json for m in self.messages
                    if "/event/" in m.topic and (kind is None or m.topic.endswith("/event/" + kind))]

    def on(self, suffix: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]
