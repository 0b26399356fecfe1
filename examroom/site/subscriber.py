"""The aggregator's durable subscription: store first, then acknowledge.

An MQTT v5 persistent session (fixed client id, ``clean_start`` false, a session
expiry of days) keeps the site's messages at the broker while the aggregator is
down. paho's **manual acknowledgement** holds each PUBACK until the message is
committed to the store: paho's thread only queues what arrives; one writer thread
takes batches, stores each batch in one transaction and only then acknowledges its
messages, in the order they came (MQTT 5 wants PUBACKs in order). Killed between
the two, the aggregator gets the unacknowledged messages again from the broker on
its next connect, and the store's de-duplication by event ``id`` makes the second
copy harmless. Nothing the broker delivered is lost; nothing is stored twice.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from examroom.agent.uplink import Backoff, use_credentials
from examroom.contract.topics import Topics
from examroom.site.config import SiteConfig
from examroom.site.ingest import Ingest
from examroom.site.store import Store

log = logging.getLogger(__name__)

BATCH = 500  # messages per transaction at most
TICK_S = 1.0  # liveness and gap decisions run this often


class _Msg(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int


class Subscriber:
    def __init__(self, cfg: SiteConfig, store: Store, ingest: Ingest,
                 on_change: Callable[[set[str]], None] = lambda rooms: None) -> None:
        self.cfg = cfg
        self.store = store
        self.ingest = ingest
        self.on_change = on_change
        self._queue: queue.Queue[_Msg] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self.stored = 0  # messages committed and acknowledged this run

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        mq = self.cfg.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=self.cfg.client_id, manual_ack=True)
        use_credentials(client, mq)
        client.reconnect_delay_set(0.5, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._writer = threading.Thread(target=self._write_forever, name="site-writer", daemon=True)
        self._writer.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(mq["session_expiry_s"])
        client.connect_async(mq["host"], mq["port"], keepalive=mq["keepalive_s"], clean_start=False,
                             properties=props)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect keeping the session (what arrives meanwhile waits at the broker)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._writer is not None:
            self._writer.join(10)

    # -- paho's thread: only queue -----------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the aggregator: %s", reason)
            return
        resumed = bool(getattr(flags, "session_present", False))
        log.info("aggregator connected to %s:%s (session %s)", self.cfg.mqtt["host"], self.cfg.mqtt["port"],
                 "resumed" if resumed else "new")
        client.subscribe(Topics.site_filter(self.cfg.prefix, self.cfg.site["id"]), qos=1)
        self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("aggregator disconnected from the broker; paho reconnects")
        self._connected.clear()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(_Msg(msg.topic, msg.payload, msg.mid, msg.qos))

    # -- the writer ---------------------------------------------------------------
    def _write_forever(self) -> None:
        next_tick = time.monotonic() + TICK_S
        backoff = Backoff(0.2, 5.0)
        batch: list[_Msg] = []
        while not (self._stop.is_set() and self._queue.empty() and not batch):
            if not batch:
                batch = self._take(max(0.0, next_tick - time.monotonic()))
            try:
                if batch:
                    self._store(batch)
                    self._ack(batch)
                    batch = []
                if time.monotonic() >= next_tick:
                    with self.store.batch():
                        self.ingest.tick()
                    next_tick = time.monotonic() + TICK_S
                backoff.reset()
            except Exception:
                # the store refused (a full disk, a locked file): nothing of the batch was
                # acknowledged, so nothing is lost; try the same batch again
                log.exception("aggregator store failed; retrying the batch of %d", len(batch))
                self._stop.wait(backoff.next())
                if self._stop.is_set():
                    return
            self._tell()

    def _take(self, wait: float) -> list[_Msg]:
        try:
            batch = [self._queue.get(timeout=max(wait, 0.01))]
        except queue.Empty:
            return []
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store(self, batch: list[_Msg]) -> None:
        with self.store.batch():
            for m in batch:
                try:
                    self.ingest.handle(m.topic, m.payload)
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    # a payload the rules did not foresee: keep it, flagged, and go on
                    log.exception("message on %s not understood", m.topic)
                    self.store.add_reject(None, m.topic, m.payload, [f"not understood: {e!r}"], time.time())

    def _ack(self, batch: list[_Msg]) -> None:
        client = self._client
        for m in batch:
            if m.qos > 0 and client is not None:
                client.ack(m.mid, m.qos)
        self.stored += len(batch)

    def _tell(self) -> None:
        changed, self.ingest.changed = self.ingest.changed, set()
        if changed:
            try:
                self.on_change(changed)
            except Exception:
                log.exception("board listener failed")  # the board is not worth the store
