"""Readings the agent turns into gauges and counters, and a reader's garbage logged without a flood."""
from __future__ import annotations

import logging

from examroom.agent.metrics import Metrics
from examroom.agent.metrics_bridge import GARBAGE_LOG_EVERY_S, MetricsBridge
from examroom.drivers.bus import Bus
from examroom.drivers.events import ReaderGarbage


def test_reader_garbage_is_counted_always_and_logged_once_a_minute(caplog):
    bus, metrics, now = Bus(), Metrics(), [0.0]
    MetricsBridge(bus, metrics, monotonic=lambda: now[0]).start()
    caplog.set_level(logging.INFO, logger="examroom.agent.metrics_bridge")
    for i in range(10_000):  # line noise: a refusal every few ms
        now[0] = i * 0.02
        bus.publish(ReaderGarbage("idreader", reason="garbage" if i % 3 else "bad_checksum", count=2))
    assert metrics.registry.get_sample_value("examroom_reader_garbage_total", {"device": "idreader"}) == 20_000
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 + int(10_000 * 0.02 // GARBAGE_LOG_EVERY_S)  # the first, then one per minute
    assert "idreader" in lines[0] and "more refused in the last 60 s" in lines[-1] and "garbage" in lines[-1]
