"""Unified audio source (统一音源) monitor backends: ALSA capture and a real-time synthesiser.

Both feed the same ``AudioMonitor`` (``drivers.audio.monitor``) and so the same
sample-time core; only where the PCM comes from differs.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import numpy as np

from examroom.drivers.audio.levels import DB_FLOOR
from examroom.drivers.audio.monitor import AudioMonitor
from examroom.drivers.audio.options import DTYPES
from examroom.drivers.base import ABSENT, FAULT, DeviceAbsent, DeviceError, Option, SimulationError

__all__ = ["AlsaAudioMonitor", "SimAudioMonitor"]


class AlsaAudioMonitor(AudioMonitor):
    """Captures the room's line input with pyalsaaudio; an absent card is retried forever."""

    backend: ClassVar[str] = "alsa"

    def _open(self) -> Any:
        try:
            import alsaaudio
        except ImportError as exc:
            raise DeviceAbsent(f"pyalsaaudio not installed: {exc}") from exc
        device = str(self._opt("device"))
        fmt = str(self._opt("sample_format"))
        try:
            pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device=device,
                                rate=self.rate, channels=int(self._opt("channels")),
                                format=getattr(alsaaudio, f"PCM_FORMAT_{fmt}"),
                                periodsize=self.block_frames)
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceAbsent(f"cannot open capture device {device!r}: {exc}") from exc
        info = pcm.info()
        if info["rate"] != self.rate or info["channels"] != int(self._opt("channels")):
            pcm.close()  # levels would be right but every duration wrong
            raise DeviceError(f"{device!r} gives {info['rate']} Hz x {info['channels']}, "
                              f"configured {self.rate} Hz x {self._opt('channels')}")
        return pcm

    def _open_source(self) -> Any:
        try:
            pcm = self._open()
        except DeviceError as exc:
            self._lost(ABSENT if isinstance(exc, DeviceAbsent) else FAULT, str(exc))
            return None
        self._opened()
        return pcm

    def _run(self, pcm: Any) -> None:
        dtype = np.dtype(DTYPES[str(self._opt("sample_format"))])
        channels = int(self._opt("channels"))
        while not self._stop.is_set():
            if pcm is None:
                if not self._stop.wait(float(self._opt("retry_s"))):
                    pcm = self._open_source()
                continue
            try:
                self._capture(pcm, dtype, channels)
            except Exception as exc:  # ALSAAudioError: card unplugged, driver error
                if not self._stop.is_set():
                    self._lost(ABSENT, f"capture failed: {exc}")
            finally:
                pcm.close()
                pcm = None

    def _capture(self, pcm: Any, dtype: np.dtype, channels: int) -> None:
        """Read until stopped or the card fails. A read that blocks, or keeps returning no
        frames, raises nothing: the monitor's watchdog turns that into a stalled capture."""
        idle = self.block_frames / self.rate / 4
        while True:
            frames, data = pcm.read()
            if self._stop.is_set():
                return
            if frames > 0:  # negative: overrun, alsa re-prepared; the lag check re-anchors
                self._process(np.frombuffer(data, dtype=dtype, count=frames * channels))
            elif frames == 0:  # nothing to read yet: do not spin a core waiting for it
                self._stop.wait(idle)


class SimAudioMonitor(AudioMonitor):
    """The same core fed in real time by a synthesiser: a tone, silence or a clipped tone."""

    backend: ClassVar[str] = "sim"
    can_stall: ClassVar[bool] = False  # its own thread makes the feed: a pause under load is no stall
    options: ClassVar[dict[str, Option]] = {
        **AudioMonitor.options,
        # A mock relay by default, so ``switch_source`` works in a sim room out of the box.
        "relay_pin": dataclasses.replace(AudioMonitor.options["relay_pin"], default=27),
    }

    TONE_HZ: ClassVar[float] = 1000.0
    pin_factory: Any = None  # the private MockFactory, for tests that look at the relay pin

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signal: tuple[str, float] = ("tone", -20.0)
        self._phase = 0

    def _pin_factory(self) -> Any:
        # A private factory, never gpiozero's global one: other drivers and tests may own that.
        if self.pin_factory is None:
            from gpiozero.pins.mock import MockFactory
            self.pin_factory = MockFactory()
        return self.pin_factory

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        if action == "level":
            if len(args) > 1:
                raise SimulationError("usage: level [dBFS]")
            try:
                dbfs = float(args[0]) if args else -20.0
            except ValueError:
                raise SimulationError(f"level needs a number of dBFS, got {args[0]!r}") from None
            if not (math.isfinite(dbfs) and DB_FLOOR < dbfs <= 0.0):
                raise SimulationError(f"level must be between {DB_FLOOR:.0f} and 0 dBFS, got {dbfs}")
            signal = ("tone", dbfs)
        elif action in ("silence", "clip"):
            if args:
                raise SimulationError(f"{action} takes no arguments")
            signal = (action, 6.0 if action == "clip" else DB_FLOOR)
        else:
            raise SimulationError(f"unknown audio action {action!r} (level [dBFS] | silence | clip)")
        with self._lock:
            self._signal = signal
        return {"signal": signal[0], "level_dbfs": signal[1]}

    def _synth(self, frames: int) -> np.ndarray:
        with self._lock:
            kind, dbfs = self._signal
        channels = int(self._opt("channels"))
        if kind == "silence":
            return np.zeros(frames * channels, dtype="<i2")
        n = self._phase + np.arange(frames)
        self._phase += frames
        wave_ = (10.0 ** (dbfs / 20.0) * 32768.0) * np.sin((2 * math.pi * self.TONE_HZ / self.rate) * n)
        mono = np.clip(np.rint(wave_), -32768, 32767).astype("<i2")
        return np.repeat(mono, channels) if channels > 1 else mono

    def _open_source(self) -> None:
        self._opened()

    def _run(self, handle: None) -> None:
        period = self.block_frames / self.rate
        due = time.monotonic() + period
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._process(self._synth(self.block_frames))
            due += period
