"""The spooled events on their way to the broker: which to send next, which are in flight, which
the broker acknowledged. Runs on the uplink's loop thread; only ``offer`` comes from others.

Events just committed are handed over in memory so the loop need not read them back;
that is only a shortcut: the spool stays the truth, and any gap (an outage, a drop,
two producers racing) sends the loop back to it. Acknowledged events leave the spool
in batches, one delete per half window, or once everything sent is acknowledged.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt

from examroom.agent.events import Event
from examroom.agent.metrics import Metrics
from examroom.agent.spool import Spool
from examroom.contract.topics import Topics

log = logging.getLogger(__name__)


class DeliveryWindow:
    def __init__(self, spool: Spool, metrics: Metrics, topics: Topics, size: int) -> None:
        self._spool = spool
        self._metrics = metrics
        self._topics = topics
        self.size = size
        self.rejected = 0  # events the broker refused this run (ACL, size): a person must look
        self._fresh: deque[Event] = deque(maxlen=4 * size)
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (seq, handed at)
        self._acked: list[int] = []
        self._last = 0  # highest seq handed to paho on this connection
        self._published: dict[str, Any] = {}  # kind -> metric child (labels() is not free)

    def offer(self, ev: Event) -> bool:
        """Hand over a committed event; True when the loop should be woken for it: with
        something in flight a PUBACK is coming anyway, and the loop fills the window then."""
        self._fresh.append(ev)
        return not self._inflight

    def restart(self) -> None:
        """A new connection: acknowledged events leave first, then everything unacknowledged
        is sent again from the spool in order (paho's own copies were dropped)."""
        self.flush_acks()
        self._inflight.clear()
        self._last = 0

    @property
    def has_more(self) -> bool:
        """More in the spool and room in the window: the loop must not sleep."""
        return self._last < self._spool.last_seq and len(self._inflight) < self.size

    def fill(self, client: mqtt.Client, session: int) -> None:
        room = self.size - len(self._inflight)
        if room <= 0:
            return
        now = time.monotonic()
        for ev in self._next_batch(room):
            info = client.publish(self._topics.event(ev.kind), ev.payload(session), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection went mid-batch: resume from the spool on reconnect
            self._inflight[info.mid] = (ev.seq, now)
            self._last = ev.seq
            counter = self._published.get(ev.kind)
            if counter is None:
                counter = self._published[ev.kind] = self._metrics.published.labels(kind=ev.kind)
            counter.inc()

    def _next_batch(self, room: int) -> list[Event]:
        """The events after ``_last``, in seq order: from the hand-over while it continues
        ``_last`` without a gap, else from the spool, which is always right."""
        last, fresh = self._last, self._fresh
        while fresh and fresh[0].seq <= last:
            fresh.popleft()
        batch: list[Event] = []
        while fresh and len(batch) < room:
            # pop, then look: a producer's append to the full deque may push out the head
            # between a look and a pop; an event popped out of turn is still in the spool
            ev = fresh.popleft()
            if ev.seq != last + 1 + len(batch):
                break
            batch.append(ev)
        newest = self._spool.last_seq  # read before the batch: all up to it is committed
        if batch or last >= newest:
            return batch
        batch = self._spool.read_batch(last, room)
        if not batch:
            self._last = newest  # what lay between was dropped (spool full): nothing to wait for
        return batch

    def acknowledged(self, mid: int, reason: Any) -> None:
        """A PUBACK; one for a message that is not an event (status, heartbeat, reply) is ignored."""
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        seq, handed = entry
        if reason is not None and getattr(reason, "is_failure", False):
            # The broker refused it (e.g. ACL): it stays spooled and is retried on the
            # next connection; the metric and the log make it visible.
            self._metrics.publish_rejected.inc()
            self.rejected += 1
            log.error("broker refused event seq %d (%s); kept in the spool", seq, reason)
            return
        self._acked.append(seq)
        self._metrics.publish_latency.observe(time.monotonic() - handed)

    def flush_acks_if_due(self) -> None:
        if self._acked and (len(self._acked) >= self.size // 2
                            or (not self._inflight and self._last >= self._spool.last_seq)):
            self.flush_acks()

    def flush_acks(self) -> None:
        if self._acked:
            self._spool.ack(self._acked)
            self._acked = []
            self._metrics.spool_depth.set(self._spool.pending)
