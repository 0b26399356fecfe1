"""The site's command client: requests to rooms over MQTT v5, each matched to its answer.

Its own paho connection, apart from the aggregator's durable subscription: a clean
session with a random client id, so a joint test, a ``ping`` and the board can run
beside the aggregator without taking over its session, and a command is never
delivered late from a queue (a room does not queue commands either).

A request goes to ``{prefix}/{site}/{room}/cmd/{name}`` with the MQTT v5 Response
Topic ``{prefix}/{site}/{room}/reply/{name}`` (the broker lets a room write only its
own ``reply/#``) and the request id as Correlation Data. A broadcast goes to
``{prefix}/{site}/broadcast/cmd/{name}`` without a Response Topic (no one topic lies
inside every room's tree): each room answers on its own ``reply/{name}`` with the
broadcast's id, so one reply per room is collected.

A room runs at most 4 commands at once and answers a 5th with ``busy``; this client
keeps at most 4 of its own outstanding per room (a broadcast counts for every room it
waits for) and sends again after a ``busy`` caused by someone else's commands.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from examroom.agent.uplink import use_credentials
from examroom.contract.topics import BROADCAST, Topics
from examroom.site.config import SiteConfig

log = logging.getLogger(__name__)

MAX_OUTSTANDING = 4  # the room's MAX_REMOTE_RUNNING (examroom/agent/remote_commands.py)
BUSY_RETRY_S = 0.2  # longest wait before sending again after "busy", if no reply frees a slot sooner
OnEvent = Callable[[str, str, dict[str, Any]], None]  # (room, kind, event payload)


class BrokerUnreachable(ConnectionError):
    """The broker did not accept us (or did not answer) in time: the site tools exit 3."""


@dataclass
class Answer:
    """One room's answer to one request; ``reply`` None means no answer in time."""

    room: str
    command: str
    sent_at: float  # wall clock, for the reports
    reply: dict[str, Any] | None = None
    rtt_ms: float | None = None  # monotonic, from the (last) send to the reply
    timeout_s: float = 0.0

    @property
    def answered(self) -> bool:
        return self.reply is not None

    @property
    def ok(self) -> bool:
        return self.reply is not None and self.reply.get("ok") is True

    @property
    def error(self) -> str | None:
        if self.reply is None:
            return f"no answer within {self.timeout_s:g} s"
        return None if self.ok else str(self.reply.get("error") or "refused")


@dataclass
class _Waiter:
    """An outstanding request: the rooms whose answer counts, and what came."""

    name: str
    rooms: frozenset[str]  # for a broadcast, the rooms waited for (others are collected too)
    broadcast: bool
    got: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)  # room -> (reply, monotonic)

    def done(self) -> bool:
        """A broadcast waiting for no room in particular collects until its deadline."""
        return bool(self.rooms) and self.rooms <= set(self.got)


class CommandClient:
    def __init__(self, cfg: SiteConfig, events: Iterable[str] = (), on_event: OnEvent | None = None) -> None:
        """``events``: event kinds to watch besides the replies (``push_ack``), handed to
        ``on_event`` on paho's thread."""
        self.cfg = cfg
        self.site = cfg.site["id"]
        self._events = tuple(events)
        self._on_event = on_event
        self._tag = uuid.uuid4().hex[:10]
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: dict[str, _Waiter] = {}
        self._slots: defaultdict[str, int] = defaultdict(int)  # room -> our commands outstanding
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._client = self._make_client()

    # -- connection -------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        mq = self.cfg.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"examroom-site-cmd-{self._tag}")
        client.suppress_exceptions = True  # a bad payload must not end the network loop
        use_credentials(client, mq)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def connect(self, timeout: float = 5.0) -> "CommandClient":
        """Connect and subscribe; BrokerUnreachable if that does not happen within ``timeout``.
        Requests are sent only after the SUBACK, so no answer can come before we listen."""
        mq = self.cfg.mqtt
        self._client.connect_timeout = timeout
        try:  # the first connection in the caller's thread: a refusal is said at once
            self._client.connect(mq["host"], mq["port"], keepalive=mq["keepalive_s"], clean_start=True)
        except (OSError, ValueError) as e:
            raise BrokerUnreachable(f"broker {mq['host']}:{mq['port']} unreachable: {e}") from None
        self._client.loop_start()  # and paho reconnects by itself after that
        if not self._subscribed.wait(timeout) or self._refused:
            self.close()
            why = self._refused or f"no connection within {timeout:g} s"
            raise BrokerUnreachable(f"broker {mq['host']}:{mq['port']} unreachable: {why}")
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> "CommandClient":
        return self.connect()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {reason}"
            self._subscribed.set()  # connect() gives up at once rather than at its timeout
            return
        base = f"{self.cfg.prefix}/{self.site}"
        client.subscribe([(f"{base}/+/reply/#", 1)] + [(f"{base}/+/event/{kind}", 1) for kind in self._events])

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, _mid: int, codes: list[Any], _props: Any) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        if failed:
            self._refused = f"subscription refused: {', '.join(failed)}"
        self._subscribed.set()

    # -- paho's thread ----------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        topic = Topics.parse(msg.topic)
        if topic is None or topic.site != self.site or topic.broadcast:
            return
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            log.warning("not JSON on %s", msg.topic)
            return
        if not isinstance(payload, dict):
            return
        if topic.channel == "event" and self._on_event is not None:
            self._on_event(topic.room, str(topic.name), payload)
        elif topic.channel == "reply":
            self._on_reply(topic.room, str(topic.name), payload, getattr(msg.properties, "CorrelationData", None))

    def _on_reply(self, room: str, name: str, reply: dict[str, Any], correlation: bytes | None) -> None:
        """Matched by Correlation Data, else by ``request_id``: replies to others are skipped."""
        try:
            key = correlation.decode() if correlation else str(reply.get("request_id"))
        except UnicodeDecodeError:
            return
        with self._cond:
            waiter = self._waiting.get(key)
            if waiter is None or waiter.name != name or (room not in waiter.rooms and not waiter.broadcast):
                return
            waiter.got.setdefault(room, (reply, time.monotonic()))
            self._cond.notify_all()

    # -- requests ---------------------------------------------------------------
    def request(self, room: str, name: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Answer:
        """One command to one room, answered or not within ``timeout`` seconds (slot waiting
        and ``busy`` retries included)."""
        return self._send([room], name, args or {}, timeout, broadcast=False)[room]

    def broadcast(self, name: str, args: dict[str, Any] | None = None, rooms: Iterable[str] = (),
                  timeout: float = 10.0) -> dict[str, Answer]:
        """One command to every room of the site; waits for ``rooms`` (until the timeout) and
        returns their answers, plus those of any other room that answered meanwhile."""
        return self._send(sorted(set(rooms)), name, args or {}, timeout, broadcast=True)

    def _send(self, rooms: list[str], name: str, args: dict[str, Any], timeout: float,
              broadcast: bool) -> dict[str, Answer]:
        deadline = time.monotonic() + timeout
        answers = {r: Answer(r, name, time.time(), timeout_s=timeout) for r in rooms}
        if not self._take_slots(rooms, deadline):
            return answers  # the rooms never answered our earlier commands: no answer
        try:
            busy = self._record(answers, name, self._once(set(rooms), name, args, deadline, broadcast), timeout)
            for room in sorted(busy):  # someone else's commands fill the room: send to it again
                while self._wait_for_room_reply(deadline):
                    if not self._record(answers, name, self._once({room}, name, args, deadline, False), timeout):
                        break
            return answers
        finally:
            self._give_slots(rooms)

    @staticmethod
    def _record(answers: dict[str, Answer], name: str, sent: tuple[dict[str, tuple[dict[str, Any], float]], float, float],
                timeout: float) -> set[str]:
        """Keep each answer of one send (a busy one too: the truth if time runs out); returns
        the rooms that were busy."""
        got, sent_mono, sent_wall = sent
        busy = set()
        for room, (reply, at) in got.items():
            answers[room] = Answer(room, name, sent_wall, reply,
                                   round((at - sent_mono) * 1000, 1), timeout)
            if _busy(reply):
                busy.add(room)
        return busy

    def _once(self, rooms: set[str], name: str, args: dict[str, Any], deadline: float,
              broadcast: bool) -> tuple[dict[str, tuple[dict[str, Any], float]], float, float]:
        """Publish one request and wait for its answers until the deadline."""
        rid = f"{self._tag}-{next(self._ids)}"
        base = f"{self.cfg.prefix}/{self.site}"
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = rid.encode()
        if broadcast:
            topic = f"{base}/{BROADCAST}/cmd/{name}"
        else:
            (room,) = rooms
            topic = f"{base}/{room}/cmd/{name}"
            props.ResponseTopic = f"{base}/{room}/reply/{name}"
        waiter = _Waiter(name, frozenset(rooms), broadcast)
        with self._cond:
            self._waiting[rid] = waiter
        try:
            sent_wall, sent_mono = time.time(), time.monotonic()
            self._client.publish(topic, json.dumps({"id": rid, "args": args}, ensure_ascii=False),
                                 qos=1, properties=props)
            with self._cond:
                self._cond.wait_for(lambda: waiter.done(), max(0.0, deadline - time.monotonic()))
                return dict(waiter.got), sent_mono, sent_wall
        finally:
            with self._cond:
                del self._waiting[rid]

    def _wait_for_room_reply(self, deadline: float) -> bool:
        """After a ``busy``: wait until some reply frees a slot in a room (or a short while),
        then send again; False when the time is up."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        with self._cond:
            self._cond.wait(min(BUSY_RETRY_S, left))
        return time.monotonic() < deadline

    def _take_slots(self, rooms: list[str], deadline: float) -> bool:
        """Wait until each room has fewer than MAX_OUTSTANDING of our commands, then count this
        one for every room at once (all or none: no broadcast holds half the slots)."""
        with self._cond:
            free = self._cond.wait_for(lambda: all(self._slots[r] < MAX_OUTSTANDING for r in rooms),
                                       max(0.0, deadline - time.monotonic()))
            if not free:
                return False
            for r in rooms:
                self._slots[r] += 1
            return True

    def _give_slots(self, rooms: list[str]) -> None:
        with self._cond:
            for r in rooms:
                self._slots[r] -= 1
            self._cond.notify_all()


def _busy(reply: dict[str, Any]) -> bool:
    return reply.get("ok") is False and str(reply.get("error", "")).startswith("busy:")
