"""MQTT v5 uplink to the site aggregator: knows topics and QoS, not the exam.

Two threads. The network thread owns the paho client: it connects with a fresh
``session`` number and a matching retained Last Will, runs paho's loop, and
reconnects with capped exponential back-off and jitter. The sender thread
moves events from the spool to the broker in ``seq`` order, keeping at most
``inflight`` unacknowledged, and acks the spool only on PUBACK.

The spool, not paho, is the source of truth: paho keeps its queue in memory
only, so on every (re)connect its leftover queue is dropped and sending starts
again from the oldest unacknowledged event. A duplicate after a lost PUBACK is
possible (the aggregator de-duplicates by ``id``); a loss or a reordering is not.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.metrics import Metrics
from agent.spool import Spool

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes, Any], None]


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class Uplink:
    def __init__(self, mqtt_cfg: dict[str, Any], base_topic: str, broadcast_topic: str,
                 spool: Spool, metrics: Metrics,
                 birth: Callable[[int], dict[str, Any]],
                 will: Callable[[int], dict[str, Any]],
                 on_command: CommandHandler | None = None) -> None:
        self.cfg = mqtt_cfg
        self.base = base_topic
        self.broadcast = broadcast_topic
        self.spool = spool
        self.metrics = metrics
        self.birth = birth
        self.will = will
        self.on_command = on_command
        self.session = 0
        self.rtt_ms: float | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._client: mqtt.Client | None = None
        self._threads: list[threading.Thread] = []
        self._restart_from_spool = True
        self._probe: dict[int, float] = {}  # heartbeat mid -> publish time, for the round trip
        self._send_lock = threading.Lock()
        self.rejected = 0  # events the broker refused this run (ACL, size): a person must look

    # -- public -------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def start(self) -> None:
        self.session = self.spool.last_session()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=self.base.replace("/", "-"))
        client.suppress_exceptions = True  # a raising callback must never kill the loop
        client.max_inflight_messages_set(self.cfg["inflight"])
        client.max_queued_messages_set(0)
        if self.cfg["username"]:
            client.username_pw_set(self.cfg["username"], self.cfg["password"] or None)
        if self.cfg["tls_ca"] or self.cfg["tls_cert"]:
            client.tls_set(ca_certs=self.cfg["tls_ca"] or None,
                           certfile=self.cfg["tls_cert"] or None,
                           keyfile=self.cfg["tls_key"] or None,
                           cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._guard(self._on_connect)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_publish = self._guard(self._on_publish)
        client.on_message = self._guard(self._on_message)
        self._client = client
        for target, name in ((self._network_loop, "uplink-net"), (self._send_loop, "uplink-send")):
            t = threading.Thread(target=self._forever(target), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 3.0) -> None:
        """Say goodbye (retained offline status) if connected, then close. Idempotent."""
        if self._stop.is_set():
            return
        client = self._client
        if client is not None and self.connected:
            info = client.publish(self.topic("status"), _dumps(self.will(self.session) | {"clean": True}),
                                  qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
            client.disconnect()
        self._stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)

    def notify(self) -> None:
        """Something was spooled: wake the sender."""
        with self._wake:
            self._wake.notify_all()

    def publish_live(self, suffix: str, payload: dict[str, Any], retain: bool = False,
                     probe: bool = False) -> bool:
        """Publish state that is only worth having now (heartbeat, replies); not spooled."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(self.topic(suffix), _dumps(payload), qos=1, retain=retain)
        if probe and info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._probe[info.mid] = time.monotonic()
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def publish_reply(self, topic: str, payload: dict[str, Any],
                      correlation: bytes | None = None) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        try:
            client.publish(topic, _dumps(payload), qos=1, properties=props)
        except ValueError:  # a Response Topic with wildcards: answer where the contract says
            log.warning("unusable response topic %r; replying on reply/%s", topic, payload.get("command"))
            client.publish(self.topic(f"reply/{payload.get('command')}"), _dumps(payload), qos=1,
                           properties=props)

    # -- threads ------------------------------------------------------------
    def _forever(self, body: Callable[[], None]) -> Callable[[], None]:
        """Keep a thread alive through unexpected errors (a spool that cannot be read for a
        moment must not end delivery for good); ``alive`` tells the watchdog otherwise."""
        def run() -> None:
            while not self._stop.is_set():
                try:
                    body()
                except Exception:
                    self.metrics.callback_errors.inc()
                    log.exception("uplink thread %s failed; restarting it in 1 s", threading.current_thread().name)
                    self._stop.wait(1.0)
        return run

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def _network_loop(self) -> None:
        client = self._client
        assert client is not None
        delay = float(self.cfg["reconnect_min_s"])
        while not self._stop.is_set():
            self.session = self.spool.next_session()
            client.will_set(self.topic("status"), _dumps(self.will(self.session)), qos=1, retain=True)
            try:
                client.connect(self.cfg["host"], self.cfg["port"], keepalive=self.cfg["keepalive_s"],
                               clean_start=True)
            except (OSError, ssl.SSLError) as e:
                log.warning("broker %s:%s unreachable: %s; retry in %.1f s",
                            self.cfg["host"], self.cfg["port"], e, delay)
                self.metrics.connect_failures.inc()
                self._stop.wait(delay * random.uniform(0.5, 1.0))  # jitter spreads a site's rooms
                delay = min(delay * 2, float(self.cfg["reconnect_max_s"]))
                continue
            while not self._stop.is_set():
                rc = client.loop(timeout=0.2)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self.connected:
                    delay = float(self.cfg["reconnect_min_s"])
            self._set_connected(False)
            if not self._stop.is_set():
                self.metrics.reconnects.inc()
                self._stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, float(self.cfg["reconnect_max_s"]))
        client.loop(timeout=0.1)  # flush the DISCONNECT of a clean stop

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
        with self._send_lock:  # no batch of the old connection may slip out on the new one
            client.drop_out_messages()  # the spool resends in order; paho's copy would duplicate
            self._restart_from_spool = True
        self._probe.clear()
        client.publish(self.topic("status"), _dumps(self.birth(self.session)), qos=1, retain=True)
        client.subscribe([(self.topic("cmd/+"), 1), (f"{self.broadcast}/cmd/+", 1)])
        log.info("connected to %s:%s, session %d", self.cfg["host"], self.cfg["port"], self.session)
        self._set_connected(True)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:
        if self.connected:
            log.warning("disconnected from broker: %s", reason)
        self._set_connected(False)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        sent = self._probe.pop(mid, None)
        if sent is not None:
            self.rtt_ms = round((time.monotonic() - sent) * 1000, 2)
        ok = not (reason is not None and getattr(reason, "is_failure", False))
        self._acks.put((mid, ok))
        self.notify()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            self.on_command(msg.topic, msg.payload, msg.properties)

    def _set_connected(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        self.metrics.connected.set(1 if up else 0)
        self.notify()

    # -- sender thread ------------------------------------------------------
    def _send_loop(self) -> None:
        inflight: dict[int, tuple[int, float]] = {}  # mid -> (seq, handed at)
        last = 0
        acked: list[int] = []
        while not self._stop.is_set():
            acked += self._collect_acks(inflight)
            # Deletes are batched: one transaction per ~half window instead of per PUBACK.
            # An acked row still in the spool is never re-read (reads start after `last`);
            # a crash before the delete only resends it, and the aggregator de-duplicates.
            if acked and (len(acked) >= self.cfg["inflight"] // 2 or not inflight):
                self.spool.ack(acked)
                acked = []
                self.metrics.spool_depth.set(self.spool.depth()["events"])
            with self._send_lock:
                if self._restart_from_spool and self.connected:
                    if acked:  # rereading from the start must not resend what was acknowledged
                        self.spool.ack(acked)
                        acked = []
                    self._restart_from_spool = False
                    inflight.clear()
                    last = 0
                room = self.cfg["inflight"] - len(inflight)
                batch = self.spool.read_batch(last, room) if self.connected and room > 0 else []
                sent = 0
                for ev in batch:
                    info = self._client.publish(self.topic(f"event/{ev.kind}"),
                                                ev.payload(self.session), qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break  # the connection went mid-batch: resume from the spool on reconnect
                    inflight[info.mid] = (ev.seq, time.monotonic())
                    last = ev.seq
                    sent += 1
                    self.metrics.published.labels(kind=ev.kind).inc()
            if sent:
                continue
            with self._wake:
                if self._acks.empty() and not self._stop.is_set():
                    self._wake.wait(0.5)

    def _collect_acks(self, inflight: dict[int, tuple[int, float]]) -> list[int]:
        done: list[int] = []
        now = time.monotonic()
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                return done
            entry = inflight.pop(mid, None)
            if entry is None:
                continue  # status/heartbeat/reply, or dropped at reconnect
            seq, handed = entry
            if ok:
                done.append(seq)
                self.metrics.publish_latency.observe(now - handed)
            else:
                # The broker refused it (e.g. ACL): it stays spooled and is retried
                # on the next connection; the metric and the log make it visible.
                self.metrics.publish_rejected.inc()
                self.rejected += 1
                log.error("broker refused event seq %d; kept in the spool", seq)
