"""Level measurement of the broadcast feed, free of any audio library.

Everything here counts time in samples (frames), never in wall time: the same
PCM gives the same states and the same silence start/end whether it came from
a sound card in real time, from a WAV file in a test, or from a synthesiser,
and a silence starts when the level dropped, not when the hold ran out. The
driver maps frames to wall time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from examroom.drivers.events import CLIPPING, NO_INPUT, SIGNAL, SILENCE

DB_FLOOR = -120.0  # digital silence has no logarithm; JSON has no -inf

# Full scale of each integer sample width, so both S16 and S32 read in dBFS
# (a full-scale sine peaks at 0 dBFS and has an RMS of -3.01 dBFS).
_FULL_SCALE = {2: 32768.0, 4: 2147483648.0}


def to_dbfs(ratio: float) -> float:
    """Amplitude ratio (1.0 = full scale) to dBFS, clamped at ``DB_FLOOR``."""
    if ratio <= 0.0:
        return DB_FLOOR
    return max(DB_FLOOR, 20.0 * math.log10(ratio))


def power_to_dbfs(mean_square: float) -> float:
    return to_dbfs(math.sqrt(mean_square)) if mean_square > 0.0 else DB_FLOOR


@dataclass(frozen=True)
class Thresholds:
    silence_floor_dbfs: float = -50.0
    silence_hold_s: float = 2.0
    clip_dbfs: float = -0.1
    clip_samples: int = 3      # samples at/above clip_dbfs that make a block "clipped"
    clip_release_s: float = 1.0  # clipping ends after this long without a clipped block

    def as_dict(self) -> dict[str, Any]:
        return {"silence_floor_dbfs": self.silence_floor_dbfs, "silence_hold_s": self.silence_hold_s,
                "clip_dbfs": self.clip_dbfs, "clip_samples": self.clip_samples}


@dataclass(frozen=True)
class Block:
    """The levels of one block of PCM, placed in the stream by frame index."""

    start: int
    frames: int
    mean_square: float   # of all channels' samples, full scale = 1.0
    peak: float          # largest absolute sample, full scale = 1.0
    clipped_samples: int
    clipped: bool
    quiet: bool          # RMS below the silence floor

    @property
    def end(self) -> int:
        return self.start + self.frames

    @property
    def rms_dbfs(self) -> float:
        return power_to_dbfs(self.mean_square)

    @property
    def peak_dbfs(self) -> float:
        return to_dbfs(self.peak)


@dataclass(frozen=True)
class Transition:
    state: str
    previous: str
    start: int  # frame at which the new state began
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None


class LevelAnalyzer:
    """RMS/peak per block and the signal/silence/clipping/no_input state machine.

    After a gap (start-up, device lost) a quiet input cannot be told from a
    pause until the hold has passed, so quiet blocks leave the state where it
    was (``no_input``) until the hold decides it is silence.
    """

    def __init__(self, rate: int, channels: int, thresholds: Thresholds) -> None:
        self.rate = rate
        self.channels = channels
        self.thresholds = thresholds
        self.frames = 0
        self.state = NO_INPUT
        self.state_start = 0
        self._told = False  # no transition yet: the start-up no_input is a guess, not a finding
        self._hold = round(thresholds.silence_hold_s * rate)
        self._release = round(thresholds.clip_release_s * rate)
        self._floor_ms = 10.0 ** (thresholds.silence_floor_dbfs / 10.0)
        self._clip_level = 10.0 ** (thresholds.clip_dbfs / 20.0)
        self._quiet_since: int | None = None
        self._last_clip_end = 0

    def measure(self, pcm: np.ndarray) -> Block:
        """Levels of one block without touching the state (so each block is measured once)."""
        x = pcm.astype(np.float64) * (1.0 / _FULL_SCALE[pcm.dtype.itemsize])
        mean_square = float(np.dot(x, x) / x.size) if x.size else 0.0
        a = np.abs(x)
        peak = float(a.max()) if x.size else 0.0
        clipped = int(np.count_nonzero(a >= self._clip_level)) if peak >= self._clip_level else 0
        return Block(self.frames, x.size // self.channels, mean_square, peak, clipped,
                     clipped >= self.thresholds.clip_samples, mean_square < self._floor_ms)

    def feed(self, pcm: np.ndarray) -> tuple[Block, Transition | None]:
        """Measure the next block of interleaved samples and advance the state machine."""
        block = self.measure(pcm)
        self.frames = block.end
        if block.clipped:
            self._last_clip_end = block.end
            self._quiet_since = None
            return block, self._enter(CLIPPING, block.start, block)
        if block.quiet:
            if self._quiet_since is None:
                self._quiet_since = block.start
            if block.end - self._quiet_since > self._hold:
                return block, self._enter(SILENCE, self._quiet_since, block)
        else:
            self._quiet_since = None
        if self.state == CLIPPING:
            if block.end - self._last_clip_end >= self._release:
                return block, self._enter(SIGNAL, self._last_clip_end, block)
        elif self.state in (SILENCE, NO_INPUT) and not block.quiet:
            return block, self._enter(SIGNAL, block.start, block)
        return block, None

    def lose_input(self) -> Transition | None:
        """The device went away or stopped delivering: ``no_input`` from the last sample on.

        Also when nothing came since start (``no_input`` -> ``no_input``): the start-up state
        was only assumed, and a listening window that opens on an absent device must be told.
        None when ``no_input`` was already reported.
        """
        self._quiet_since = None
        return self._enter(NO_INPUT, self.frames, None)

    def _enter(self, state: str, start: int, block: Block | None) -> Transition | None:
        if state == self.state and self._told:
            return None
        previous, self.state, self.state_start, self._told = self.state, state, start, True
        return Transition(state, previous, start,
                          None if block is None else block.rms_dbfs,
                          None if block is None else block.peak_dbfs)


class LevelWindow:
    """Folds blocks into one reading per window (energy mean, highest peak)."""

    def __init__(self, frames: int) -> None:
        self.window = max(1, frames)
        self._frames = 0
        self._energy = 0.0
        self._peak = 0.0

    def add(self, block: Block) -> tuple[float, float] | None:
        """Returns (rms_dbfs, peak_dbfs) when a window is full."""
        self._frames += block.frames
        self._energy += block.mean_square * block.frames
        self._peak = max(self._peak, block.peak)
        if self._frames < self.window:
            return None
        reading = power_to_dbfs(self._energy / self._frames), to_dbfs(self._peak)
        self._frames, self._energy, self._peak = 0, 0.0, 0.0
        return reading


@dataclass
class TrialRecorder:
    """What a trial listening (试听) measured over a stretch of the feed."""

    rate: int
    thresholds: Thresholds
    wanted: int   # frames
    start: int    # frame the trial began at
    frames: int = 0
    energy: float = 0.0
    peak: float = 0.0
    clipped_blocks: int = 0
    clipped_samples: int = 0
    clipped_frames: int = 0
    silences: list[tuple[int, int]] = field(default_factory=list)
    _quiet_since: int | None = None

    @property
    def done(self) -> bool:
        return self.frames >= self.wanted

    def add(self, block: Block) -> bool:
        """Record one block; True once the wanted length has been heard."""
        self.frames += block.frames
        self.energy += block.mean_square * block.frames
        self.peak = max(self.peak, block.peak)
        if block.clipped:
            self.clipped_blocks += 1
            self.clipped_samples += block.clipped_samples
            self.clipped_frames += block.frames
        if block.quiet:
            if self._quiet_since is None:
                self._quiet_since = block.start
        elif self._quiet_since is not None:
            if self._long(self._quiet_since, block.start):
                self.silences.append((self._quiet_since, block.start))
            self._quiet_since = None
        return self.done

    @property
    def mean_dbfs(self) -> float:
        """The level of all that was heard (its energy mean), ``DB_FLOOR`` if nothing was."""
        return round(power_to_dbfs(self.energy / self.frames), 2) if self.frames else DB_FLOOR

    def _long(self, start: int, end: int) -> bool:
        return end - start > self.thresholds.silence_hold_s * self.rate

    def report(self, to_wall: Callable[[int], float], complete: bool) -> dict[str, Any]:
        """The trial's verdict; ``to_wall`` maps a frame to wall time."""
        end = self.start + self.frames
        spans = list(self.silences)
        if self._quiet_since is not None and self._long(self._quiet_since, end):
            spans.append((self._quiet_since, end))  # still silent when the trial ended
        silences = [{"start": to_wall(s), "end": to_wall(e),
                     "offset_s": round((s - self.start) / self.rate, 3),
                     "duration_s": round((e - s) / self.rate, 3)} for s, e in spans]
        problems = ([] if complete else ["incomplete"]) + (["silence"] if silences else []) + (
            ["clipping"] if self.clipped_blocks else [])
        return {
            "seconds": round(self.wanted / self.rate, 3),
            "measured_s": round(self.frames / self.rate, 3),
            "complete": complete,
            "start": to_wall(self.start) if self.frames else None,  # None: nothing was heard
            "end": to_wall(end) if self.frames else None,
            "mean_dbfs": self.mean_dbfs,
            "peak_dbfs": round(to_dbfs(self.peak), 2),
            "silences": silences,
            "clipping": {"blocks": self.clipped_blocks, "samples": self.clipped_samples,
                         "seconds": round(self.clipped_frames / self.rate, 3)},
            "thresholds": self.thresholds.as_dict(),
            "problems": problems,
            "pass": not problems,
        }
