"""The live feed in wall time: PCM blocks in, audio events out.

``drivers.audio.levels`` counts time in frames; this places frames on the clocks. Frames
are the truth for durations, placed on the monotonic clock when samples start flowing;
the wall clock only labels them, read at the moment a label is made, so a step of the
wall clock (either way) moves labels and never durations.

AudioLevels is emitted once per levels window (``levels_every_s``), not per block: the
agent forwards levels to MQTT and metrics, ten messages a second per room would be noise,
and nothing is lost because state changes are emitted at once with the exact start of
the new state.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from examroom.drivers.audio.levels import Block, LevelAnalyzer, LevelWindow, Thresholds, Transition
from examroom.drivers.bus import DeviceEvent
from examroom.drivers.events import AudioLevels, AudioStateChanged

LAG_REANCHOR_S = 1.0  # samples this far behind the monotonic clock were lost (overrun, suspend)


def label(mono: float, clock: Callable[[], float], monotonic: Callable[[], float]) -> float:
    """Wall time of a monotonic instant, by the wall clock as it reads now."""
    return mono + (clock() - monotonic())


class Feed:
    """One capture run of an audio monitor (``start()`` to the next ``start()``).

    Not locked: the monitor calls it holding its own lock, since the capture thread, the
    watchdog and the agent's calls all reach it. Whether the device works is the monitor's
    to say; this only knows what the samples that came mean.
    """

    def __init__(self, name: str, rate: int, channels: int, thresholds: Thresholds, levels_frames: int,
                 clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self.name = name
        self.rate = rate
        self.clock = clock
        self.monotonic = monotonic
        self._analyzer = LevelAnalyzer(rate, channels, thresholds)
        self._window = LevelWindow(levels_frames)
        self._last: Block | None = None
        self._m0 = monotonic()  # monotonic time of frame _f0
        self._f0 = 0
        self._since_m = self._m0      # monotonic time the current feed state began
        self._last_frame_m = self._m0  # monotonic time the last block arrived (or the source opened)

    @property
    def frames(self) -> int:
        """Frames measured so far in this run."""
        return self._analyzer.frames

    @property
    def state(self) -> str:
        return self._analyzer.state

    def label(self, mono: float) -> float:
        return label(mono, self.clock, self.monotonic)

    def _mono(self, frame: int) -> float:
        return self._m0 + (frame - self._f0) / self.rate

    def wall(self, frame: int) -> float:
        return self.label(self._mono(frame))

    def anchor(self) -> None:
        """Samples start flowing now: frame time is anchored to the monotonic clock here."""
        self._m0, self._f0 = self.monotonic(), self._analyzer.frames
        self._last_frame_m = self._m0

    def idle(self) -> float:
        """Seconds since the last block arrived (or the source opened)."""
        return self.monotonic() - self._last_frame_m

    def add(self, pcm: np.ndarray, reanchor: bool) -> tuple[Block, float, list[DeviceEvent]]:
        """Measure one block: returns it, the wall time it arrived at, and its events.

        ``reanchor`` places the block anew on the monotonic clock (blocks are back after a
        stall); so does a lag past ``LAG_REANCHOR_S``, as samples were lost or held up.
        """
        block, tr = self._analyzer.feed(pcm)
        mono, now = self.monotonic(), self.clock()
        if reanchor or mono - self._mono(block.end) > LAG_REANCHOR_S:
            self._m0, self._f0 = mono, block.end
        self._last_frame_m = mono
        self._last = block
        events: list[DeviceEvent] = []
        if tr is not None:
            events.append(self._state_event(tr))
        reading = self._window.add(block)
        if reading is not None:
            events.append(AudioLevels(self.name, rms_dbfs=round(reading[0], 2), peak_dbfs=round(reading[1], 2),
                                      state=self._analyzer.state, ts=now))
        return block, now, events

    def lose_input(self) -> AudioStateChanged | None:
        """No samples from the last one on: ``no_input`` (the analyser's transition)."""
        self._last = None
        self._window = LevelWindow(self._window.window)  # no reading mixes both sides of a gap
        tr = self._analyzer.lose_input()
        return None if tr is None else self._state_event(tr, self._last_frame_m)

    def _state_event(self, tr: Transition, since_m: float | None = None) -> AudioStateChanged:
        """The event of a transition; ``since_m`` (monotonic) overrides its start frame."""
        self._since_m = self._mono(tr.start) if since_m is None else since_m
        return AudioStateChanged(self.name, state=tr.state, previous=tr.previous,
                                 since=self.label(self._since_m), rms_dbfs=tr.rms_dbfs,
                                 peak_dbfs=tr.peak_dbfs, ts=self.clock())

    def levels(self) -> dict[str, Any]:
        """The feed's state and since when, and the last block's levels (None without input)."""
        last = self._last
        return {
            "state": self._analyzer.state,
            "since": self.label(self._since_m),
            "rms_dbfs": round(last.rms_dbfs, 2) if last is not None else None,
            "peak_dbfs": round(last.peak_dbfs, 2) if last is not None else None,
        }
