"""MQTT v5 uplink to the site aggregator: knows topics and QoS, not the exam.

One thread owns the paho client, through paho's external-loop API (``socket()``,
``loop_read`` / ``loop_write`` / ``loop_misc``, ``want_write``): it connects with
a fresh ``session`` number and a matching retained Last Will, reconnects with
capped exponential back-off and jitter, and moves events from the spool to the
broker in ``seq`` order, keeping at most ``inflight`` unacknowledged, and acks
the spool only on PUBACK. Other threads never call paho: they hand committed
events over (``offer``) or queue live messages (heartbeat, replies) and wake the
thread through a socket pair. With two threads sharing paho (the earlier design)
every publish and every PUBACK fought over paho's mutexes and the GIL, which cost
more than the rest of the send path.

The spool, not paho, is the source of truth: paho keeps its queue in memory
only, so on every (re)connect its leftover queue is dropped and sending starts
again from the oldest unacknowledged event. A duplicate after a lost PUBACK is
possible (the aggregator de-duplicates by ``id``); a loss or a reordering is not.
"""
from __future__ import annotations

import logging
import random
import select
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from examroom.agent.delivery import DeliveryWindow
from examroom.agent.events import Event
from examroom.agent.metrics import Metrics
from examroom.agent.outbox import LiveOutbox, dumps
from examroom.agent.spool import Spool
from examroom.agent.waker import Waker
from examroom.contract.topics import Topics

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes, Any, bool], None]  # topic, payload, properties, retained
IDLE_WAIT_S = 1.0  # the loop's longest sleep: keep-alive checks need a turn now and then
GOODBYE_WAIT_S = 3.0  # how long a clean stop waits for the broker to take the offline status


class Backoff:
    """Capped exponential back-off with jitter: the rooms of a site that lost the broker
    together must not all knock again in the same instant when it returns."""

    def __init__(self, low: float, high: float, rng: Callable[[], float] = random.random) -> None:
        self.low, self.high, self.rng = low, high, rng
        self._delay = low

    def reset(self) -> None:
        self._delay = self.low

    def next(self) -> float:
        """The wait before the next attempt: half to all of the current step, which doubles."""
        wait = self._delay * (0.5 + 0.5 * self.rng())
        self._delay = min(self._delay * 2, self.high)
        return wait


def make_client(cfg: dict[str, Any], topics: Topics) -> mqtt.Client:
    """A paho client as the uplink drives it: its own queue off (the spool is the queue)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=topics.base.replace("/", "-"))
    client.suppress_exceptions = True  # a raising callback must never kill the loop
    client.max_inflight_messages_set(cfg["inflight"])
    client.max_queued_messages_set(0)
    use_credentials(client, cfg)
    return client


def use_credentials(client: mqtt.Client, cfg: dict[str, Any]) -> None:
    """Username/password and TLS (the broker's certificate always verified) from an ``[mqtt]``
    table: the room's uplink and the site's clients connect the same way."""
    if cfg["username"]:
        client.username_pw_set(cfg["username"], cfg["password"] or None)
    if cfg["tls_ca"] or cfg["tls_cert"]:
        client.tls_set(ca_certs=cfg["tls_ca"] or None, certfile=cfg["tls_cert"] or None,
                       keyfile=cfg["tls_key"] or None, cert_reqs=ssl.CERT_REQUIRED)


class Uplink:
    def __init__(self, mqtt_cfg: dict[str, Any], topics: Topics,
                 spool: Spool, metrics: Metrics,
                 birth: Callable[[int], dict[str, Any]],
                 will: Callable[[int], dict[str, Any]],
                 on_command: CommandHandler | None = None) -> None:
        self.cfg = mqtt_cfg
        self.topics = topics
        self.spool = spool
        self.metrics = metrics
        self.birth = birth
        self.will = will
        self.on_command = on_command
        self.session = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._waker = Waker()
        self._window = DeliveryWindow(spool, metrics, topics, int(mqtt_cfg["inflight"]))
        self._outbox = LiveOutbox(topics)
        # loop-thread state
        self._goodbye_mid: int | None = None
        self._goodbye_acked = False

    # -- public -------------------------------------------------------------
    @property
    def rejected(self) -> int:
        """Events the broker refused this run (ACL, size): a person must look."""
        return self._window.rejected

    @property
    def rtt_ms(self) -> float | None:
        """The broker's round trip, measured on the heartbeat."""
        return self._outbox.rtt_ms

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self.session = self.spool.last_session()
        client = make_client(self.cfg, self.topics)
        client.on_connect = self._guard(self._on_connect)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_publish = self._guard(self._on_publish)
        client.on_message = self._guard(self._on_message)
        self._client = client
        self._waker.open()
        self._thread = threading.Thread(target=self._forever, name="uplink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Say goodbye (retained offline status) if connected, then close. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(GOODBYE_WAIT_S + 2)
        self._waker.close()

    def offer(self, ev: Event) -> None:
        """An event was committed to the spool: hand it to the loop, and wake it unless
        something is in flight: then a PUBACK is coming, and the loop fills the window from
        the hand-over when it handles it (a wake per event cost a syscall and a turn each)."""
        if self._window.offer(ev):
            self._waker.wake()

    def publish_live(self, suffix: str, payload: dict[str, Any], retain: bool = False,
                     probe: bool = False) -> bool:
        """Queue state that is only worth having now (heartbeat, status); not spooled.
        False when there is no connection to send it on."""
        if not self.connected:
            return False
        self._outbox.put(suffix, payload, retain, probe)
        self._waker.wake()
        return True

    def publish_reply(self, topic: str, payload: dict[str, Any],
                      correlation: bytes | None = None) -> None:
        if not self.connected:
            return
        self._outbox.put_reply(topic, payload, correlation)
        self._waker.wake()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop thread ----------------------------------------------------
    def _forever(self) -> None:
        """Keep the loop alive through unexpected errors (a spool that cannot be read for a
        moment must not end delivery for good); ``alive`` tells the watchdog otherwise."""
        while not self._stop.is_set():
            try:
                self._connect_loop()
            except Exception:
                self.metrics.callback_errors.inc()
                log.exception("uplink loop failed; restarting it in 1 s")
                self._set_connected(False)
                self._stop.wait(1.0)

    def _connect_loop(self) -> None:
        client = self._client
        assert client is not None
        backoff = Backoff(float(self.cfg["reconnect_min_s"]), float(self.cfg["reconnect_max_s"]))
        while not self._stop.is_set():
            self.session = self.spool.next_session()
            client.will_set(self.topics.status, dumps(self.will(self.session)), qos=1, retain=True)
            try:
                client.connect(self.cfg["host"], self.cfg["port"], keepalive=self.cfg["keepalive_s"],
                               clean_start=True)
            except (OSError, ssl.SSLError) as e:
                wait = backoff.next()
                log.warning("broker %s:%s unreachable: %s; retry in %.1f s",
                            self.cfg["host"], self.cfg["port"], e, wait)
                self.metrics.connect_failures.inc()
                self._stop.wait(wait)
                continue
            if self._serve(client):
                backoff.reset()
            self._set_connected(False)
            if self._stop.is_set():
                break
            self.metrics.reconnects.inc()
            self._stop.wait(backoff.next())
        self._window.flush_acks()

    def _serve(self, client: mqtt.Client) -> bool:
        """Run one connection until it is lost or the agent stops; True if it came up."""
        came_up = False
        deadline: float | None = None
        while True:
            if self._stop.is_set():
                if deadline is None:
                    if not self.connected:
                        return came_up
                    self._say_goodbye(client)
                    deadline = time.monotonic() + GOODBYE_WAIT_S
                if self._goodbye_acked:
                    client.disconnect()
                    self._io(client, 0.1)  # flush the DISCONNECT if it did not go at once
                    return came_up
                if time.monotonic() > deadline:
                    # the offline status may not have arrived: leave with the Will instead
                    client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
                    self._io(client, 0.1)  # flush the DISCONNECT if it did not go at once
                    return came_up
            self._outbox.flush(client, self.connected)
            if self.connected and deadline is None:
                came_up = True
                self._window.fill(client, self.session)
            if not self._io(client, self._wait_s()):
                return came_up
            self._window.flush_acks_if_due()

    def _wait_s(self) -> float:
        """No sleep while the window has room and the spool has more to send."""
        if self._stop.is_set() and self.connected:
            return 0.05
        if self.connected and self._window.has_more:
            return 0.0
        return min(IDLE_WAIT_S, self.cfg["keepalive_s"] / 2)

    def _io(self, client: mqtt.Client, timeout: float) -> bool:
        """One turn of paho's external loop; False when the connection is gone."""
        sock = client.socket()
        wake = self._waker.readable
        if sock is None or wake is None:
            return False
        if getattr(sock, "pending", None) and sock.pending():  # bytes already inside TLS
            timeout = 0.0
        wlist = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select([sock, wake], wlist, [], timeout)
        except (OSError, ValueError, TypeError):  # the socket was closed under us
            return False
        if wake in readable:
            self._waker.drain()
        for ready, step in ((sock in readable, client.loop_read), (bool(writable), client.loop_write),
                            (True, client.loop_misc)):
            if ready and (step() != mqtt.MQTT_ERR_SUCCESS or client.socket() is None):
                return False
        return True

    def _say_goodbye(self, client: mqtt.Client) -> None:
        info = client.publish(self.topics.status, dumps(self.will(self.session) | {"clean": True}),
                              qos=1, retain=True)
        self._goodbye_mid = info.mid
        self._goodbye_acked = info.rc != mqtt.MQTT_ERR_SUCCESS  # nothing to wait for

    # -- paho callbacks (all on the loop thread) ----------------------------
    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                self.metrics.callback_errors.inc()
                log.exception("MQTT callback %s failed", fn.__name__)
        return guarded

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused connection: %s", reason)
            self.metrics.connect_failures.inc()
            return
        client.drop_out_messages()  # the spool resends in order; paho's copy would duplicate
        self._window.restart()
        self._outbox.restart()
        # Subscribe before the birth: the broker handles one connection's packets in order,
        # so whoever sees "online" can send a command and it will not fall on deaf ears.
        # retainHandling 2: a retained command is never sent to us (it would run again at every
        # reconnect); one that slips through anyway is refused by the handler (``retained``)
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(self.topics.commands, opts), (self.topics.site_broadcast.commands, opts)])
        client.publish(self.topics.status, dumps(self.birth(self.session)), qos=1, retain=True)
        log.info("connected to %s:%s, session %d", self.cfg["host"], self.cfg["port"], self.session)
        self._set_connected(True)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:
        if self.connected:
            log.warning("disconnected from broker: %s", reason)
        self._set_connected(False)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        self._outbox.acknowledged(mid)
        if mid == self._goodbye_mid:
            self._goodbye_acked = True
        self._window.acknowledged(mid, reason)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            self.on_command(msg.topic, msg.payload, msg.properties, bool(msg.retain))

    def _set_connected(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        self.metrics.connected.set(1 if up else 0)
