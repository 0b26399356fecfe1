"""Device readings that are numbers for a dashboard, not events: bus -> Prometheus gauges."""
from __future__ import annotations

import logging
import math

from examroom.agent.metrics import Metrics
from examroom.contract.vocabulary import AudioFeed
from examroom.drivers.bus import Bus
from examroom.drivers.events import AudioLevels, AudioStateChanged, ClockState, ReaderGarbage

log = logging.getLogger(__name__)


class MetricsBridge:
    def __init__(self, bus: Bus, metrics: Metrics) -> None:
        self._bus = bus
        self._metrics = metrics

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
        self._metrics.garbage.labels(device=ev.device).inc(ev.count)
        log.warning("reader %s sent data we refused (%s, %d)", ev.device, ev.reason, ev.count)
