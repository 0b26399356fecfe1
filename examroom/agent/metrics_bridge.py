"""Device readings that are numbers for a dashboard, not events: bus -> Prometheus gauges."""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Callable

from examroom.agent.metrics import Metrics
from examroom.contract.vocabulary import AudioFeed
from examroom.drivers.bus import Bus
from examroom.drivers.events import AudioLevels, AudioStateChanged, ClockState, ReaderGarbage

log = logging.getLogger(__name__)


GARBAGE_LOG_EVERY_S = 60.0


class MetricsBridge:
    def __init__(self, bus: Bus, metrics: Metrics, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._bus = bus
        self._metrics = metrics
        self._monotonic = monotonic
        # device -> (when its garbage was last logged, refusals since, by reason)
        self._garbage_log: dict[str, tuple[float, Counter[str]]] = {}

    def start(self) -> None:
        self._bus.subscribe(AudioLevels, self._on_levels)
        self._bus.subscribe(AudioStateChanged, self._on_audio_state)
        self._bus.subscribe(ClockState, self._on_clock)
        self._bus.subscribe(ReaderGarbage, self._on_garbage)

    def _on_levels(self, ev: AudioLevels) -> None:
        self._metrics.audio_rms.labels(device=ev.device).set(ev.rms_dbfs)
        self._metrics.audio_peak.labels(device=ev.device).set(ev.peak_dbfs)

    def _on_audio_state(self, ev: AudioStateChanged) -> None:
        """No input, no level: NaN, or a dashboard keeps showing the last reading of a lost feed."""
        if ev.state == AudioFeed.NO_INPUT:
            self._metrics.audio_rms.labels(device=ev.device).set(math.nan)
            self._metrics.audio_peak.labels(device=ev.device).set(math.nan)

    def _on_clock(self, ev: ClockState) -> None:
        if ev.offset_s is not None:
            self._metrics.clock_offset.labels(device=ev.device).set(ev.offset_s)

    def _on_garbage(self, ev: ReaderGarbage) -> None:
        """Counted always; logged once, then at most once a minute with what came since: line
        noise on a reader sent 240,654 WARNING lines (23 MB) in 60 s when each was logged."""
        self._metrics.garbage.labels(device=ev.device).inc(ev.count)
        now = self._monotonic()
        last = self._garbage_log.get(ev.device)
        if last is None:
            log.warning("reader %s sent data we refused (%s, %d); more is counted in "
                        "examroom_reader_garbage_total and summed here once a minute", ev.device, ev.reason, ev.count)
            self._garbage_log[ev.device] = (now, Counter())
            return
        logged_at, since = last
        since[ev.reason] += ev.count
        if now - logged_at >= GARBAGE_LOG_EVERY_S:
            log.warning("reader %s: %d more refused in the last %.0f s (%s)", ev.device, sum(since.values()),
                        now - logged_at, ", ".join(f"{r} {n}" for r, n in since.most_common()))
            self._garbage_log[ev.device] = (now, Counter())
