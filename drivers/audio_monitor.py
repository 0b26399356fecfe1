"""What both audio monitor backends share: wall time, events, relay, trial listening.

A source thread (ALSA capture, or a synthesiser in the sim; see
``drivers.audio``) hands PCM blocks to the sample-time core in
``drivers.audio_levels``; this class maps frames to wall time, emits events,
drives the primary/backup relay and runs trial listenings. Exam meaning (a
silence during the listening window is an incident) is the agent's.

AudioLevels is emitted once per ``levels_every_s`` (default 1 s), not per
100 ms block: the agent forwards levels to MQTT and metrics, ten messages a
second per room would be noise, and nothing is lost because state changes are
emitted at once with the exact start of the new state.
"""
from __future__ import annotations

import math
import subprocess
import tempfile
import threading
import wave
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from drivers.audio_levels import (NO_INPUT, Block, LevelAnalyzer, LevelWindow,
                                  Thresholds, TrialRecorder, Transition)
from drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceError, DeviceStatus, Driver,
                          Option, SelftestResult, SelftestStep)
from drivers.events import AudioLevels, AudioSourceSwitched, AudioStateChanged, DeviceStateChanged

SOURCES = ("primary", "backup")  # relay released = primary, so a dead box falls back to it
REASONS = ("command", "auto", "selftest")
MAX_TRIAL_S = 3600.0
TRIAL_SLACK_S = 2.0   # a real-time feed delivers N seconds in N seconds; beyond that it stalled
LAG_REANCHOR_S = 1.0  # samples this far behind the wall clock were lost (overrun, suspend)
DTYPES = {"S16_LE": "<i2", "S32_LE": "<i4"}


def _is_pin(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and value.strip() != "")


def _positive(v: Any) -> bool:
    return v > 0


class AudioMonitor(Driver):
    """What both backends share; subclasses supply the source thread (``_run``)."""

    kind: ClassVar[str] = "audio"
    options: ClassVar[dict[str, Option]] = {
        "device": Option(str, default="default", help="ALSA capture PCM name"),
        "rate": Option(int, default=48000, check=lambda v: 8000 <= v <= 192000,
                       expected="8000-192000 Hz"),
        "channels": Option(int, default=1, check=lambda v: 1 <= v <= 8, expected="1-8"),
        "sample_format": Option(str, default="S16_LE", check=lambda v: v in DTYPES,
                                expected="S16_LE or S32_LE"),
        "block_ms": Option(int, default=100, check=lambda v: 10 <= v <= 1000,
                           expected="10-1000 ms"),
        "levels_every_s": Option((int, float), default=1.0, check=lambda v: 0.01 <= v <= 60,
                                 expected="0.01-60 seconds", help="AudioLevels period"),
        "silence_floor_dbfs": Option((int, float), default=-50.0, check=lambda v: -120 < v < 0,
                                     expected="between -120 and 0 dBFS"),
        "silence_hold_s": Option((int, float), default=2.0, check=_positive, expected="> 0 s"),
        "clip_dbfs": Option((int, float), default=-0.1, check=lambda v: -20 <= v <= 0,
                            expected="between -20 and 0 dBFS"),
        "clip_samples": Option(int, default=3, check=_positive,
                               expected=">= 1 sample per block at or above clip_dbfs"),
        "relay_pin": Option((int, str), default=None, check=_is_pin,
                            expected="a GPIO number (17) or a gpiozero pin name (\"GPIO17\")",
                            help="relay switching primary (released) / backup (energised)"),
        "relay_active_high": Option(bool, default=True),
        "retry_s": Option((int, float), default=2.0, check=_positive, expected="> 0 s",
                          help="how often an absent capture device is looked for again"),
        "output_device": Option(str, default="default", help="ALSA playback PCM for loopback"),
        "loopback_test": Option(bool, default=False,
                                help="selftest plays a tone and expects it back on the input"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = STOPPED  # DeviceStatus state of the capture side
        self._reason = ""
        self._analyzer: LevelAnalyzer | None = None
        self._window: LevelWindow | None = None
        self._last: Block | None = None
        self._since = 0.0
        self._t0 = 0.0   # wall time of frame _f0
        self._f0 = 0
        self._recorders: list[tuple[TrialRecorder, threading.Event]] = []
        self._relay: Any = None
        self._relay_error = ""
        self._source = "unknown"

    # -- configuration ----------------------------------------------------------------

    def _opt(self, key: str) -> Any:
        return self.config.get(key, self.options[key].default)

    @property
    def rate(self) -> int:
        return int(self._opt("rate"))

    @property
    def block_frames(self) -> int:
        return max(1, self.rate * int(self._opt("block_ms")) // 1000)

    def thresholds(self) -> Thresholds:
        return Thresholds(float(self._opt("silence_floor_dbfs")), float(self._opt("silence_hold_s")),
                          float(self._opt("clip_dbfs")), int(self._opt("clip_samples")))

    def _pin_factory(self) -> Any:
        """None means gpiozero's default factory (the board's); the sim returns its own."""
        return None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._state != STOPPED:
                return
            self._stop.clear()
            self._analyzer = LevelAnalyzer(self.rate, int(self._opt("channels")), self.thresholds())
            self._window = LevelWindow(round(float(self._opt("levels_every_s")) * self.rate))
            self._last, self._since = None, self.clock()
            self._state, self._reason = ABSENT, "not opened yet"
            self._open_relay()
        # The first open is synchronous so status() is right as soon as start() returns.
        thread = threading.Thread(target=self._run, args=(self._open_source(),),
                                  name=f"audio-{self.name}", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join()
        with self._lock:
            self._finish_recorders()
            if self._relay is not None:
                self._relay.close()
                self._relay = None
            self._state, self._reason, self._source = STOPPED, "", "unknown"

    def _open_relay(self) -> None:
        pin = self._opt("relay_pin")
        self._relay, self._relay_error, self._source = None, "", "unknown"
        if pin is None:
            return
        try:
            from gpiozero import OutputDevice
            # Start on primary: the line is released whenever the agent exits, so
            # "keep the previous position" cannot be kept anyway; be explicit instead.
            self._relay = OutputDevice(pin, active_high=bool(self._opt("relay_active_high")),
                                       initial_value=False, pin_factory=self._pin_factory())
            self._source = "primary"
        except Exception as exc:  # no GPIO must not stop the audio monitor
            self._relay_error = f"{type(exc).__name__}: {exc}"

    # -- called from the source thread -----------------------------------------------

    @abstractmethod
    def _open_source(self) -> Any:
        """Open the source and report it present (returns its handle) or absent (None)."""

    @abstractmethod
    def _run(self, handle: Any) -> None:
        """Feed ``_process`` until ``_stop`` is set, reopening the source as needed."""

    def _wall(self, frame: int) -> float:
        return self._t0 + (frame - self._f0) / self.rate

    def _opened(self) -> None:
        """Samples start flowing now: frame time is anchored to the wall clock here."""
        with self._lock:
            assert self._analyzer is not None
            self._t0, self._f0 = self.clock(), self._analyzer.frames
            changed = self._state != OK
            self._state, self._reason = OK, ""
        if changed:
            self.emit(DeviceStateChanged(self.name, state=OK, ts=self.clock()))

    def _lost(self, state: str, reason: str) -> None:
        with self._lock:
            assert self._analyzer is not None
            changed = (self._state, self._reason) != (state, reason)
            self._state, self._reason = state, reason
            self._last = None
            self._finish_recorders()
            tr = self._analyzer.lose_input()
            if tr is not None:
                self._since = self.clock()
        if changed:
            self.emit(DeviceStateChanged(self.name, state=state, reason=reason, ts=self.clock()))
        if tr is not None:
            self.emit(AudioStateChanged(self.name, state=tr.state, previous=tr.previous,
                                        since=self._since, ts=self.clock()))

    def _finish_recorders(self) -> None:
        for _, done in self._recorders:
            done.set()

    def _process(self, pcm: np.ndarray) -> None:
        events: list[AudioLevels | AudioStateChanged] = []
        with self._lock:
            assert self._analyzer is not None and self._window is not None
            block, tr = self._analyzer.feed(pcm)
            now = self.clock()
            if now - self._wall(block.end) > LAG_REANCHOR_S:
                self._t0, self._f0 = now, block.end
            self._last = block
            if tr is not None:
                events.append(self._state_event(tr))
            reading = self._window.add(block)
            if reading is not None:
                events.append(AudioLevels(self.name, rms_dbfs=round(reading[0], 2),
                                          peak_dbfs=round(reading[1], 2),
                                          state=self._analyzer.state, ts=now))
            for rec, done in self._recorders:
                if not rec.done and rec.add(block):
                    done.set()
            self._cond.notify_all()
        for event in events:
            self.emit(event)

    def _state_event(self, tr: Transition) -> AudioStateChanged:
        self._since = self._wall(tr.start)
        return AudioStateChanged(self.name, state=tr.state, previous=tr.previous, since=self._since,
                                 rms_dbfs=tr.rms_dbfs, peak_dbfs=tr.peak_dbfs, ts=self.clock())

    # -- what the agent calls ---------------------------------------------------------

    def levels(self) -> dict[str, Any]:
        with self._lock:
            last = self._last
            return {
                "state": self._analyzer.state if self._analyzer is not None else NO_INPUT,
                "since": self._since,
                "rms_dbfs": round(last.rms_dbfs, 2) if last is not None else None,
                "peak_dbfs": round(last.peak_dbfs, 2) if last is not None else None,
                "source": self._source,
            }

    def status(self) -> DeviceStatus:
        with self._lock:
            lv = self.levels()
            details = {"feed": lv["state"], **{k: lv[k] for k in ("rms_dbfs", "peak_dbfs", "source")}}
            if self._state != OK:
                return DeviceStatus(self._state, self._reason, details)
            if self._relay_error:
                return DeviceStatus(FAULT, f"relay: {self._relay_error}", details)
            return DeviceStatus(OK, "", details)

    def switch_source(self, source: str, reason: str = "command") -> dict[str, Any]:
        """Drive the primary/backup relay; the decision to switch is the caller's."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        with self._lock:
            if self._opt("relay_pin") is None:
                raise DeviceAbsent(f"audio device {self.name!r} has no relay_pin configured")
            if self._relay is None:
                raise DeviceAbsent(f"relay unavailable: {self._relay_error or 'device not started'}")
            previous = self._source
            if source == "backup":
                self._relay.on()
            else:
                self._relay.off()
            self._source = source
        if source != previous:
            self.emit(AudioSourceSwitched(self.name, source=source, reason=reason, ts=self.clock()))
        return {"source": source, "previous": previous, "reason": reason,
                "changed": source != previous}

    def trial(self, seconds: float) -> dict[str, Any]:
        """Trial listening (试听): measure the live feed for ``seconds`` and judge it.

        Blocks the caller only; the capture thread keeps feeding every listener.
        """
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_TRIAL_S:
            raise ValueError(f"trial length must be 0-{MAX_TRIAL_S:.0f} seconds, got {seconds!r}")
        rec, complete = self._record(float(seconds))
        with self._lock:
            report = rec.report(self._wall, complete)
            report.update(device=self.name, source=self._source, state=self.levels()["state"])
            return report

    def _record(self, seconds: float) -> tuple[TrialRecorder, bool]:
        done = threading.Event()
        with self._lock:
            start = self._analyzer.frames if self._analyzer is not None else 0
            rec = TrialRecorder(self.rate, self.thresholds(), max(1, round(seconds * self.rate)), start)
            if self._state != OK:
                return rec, False
            self._recorders.append((rec, done))
        try:
            done.wait(seconds + TRIAL_SLACK_S)
        finally:
            with self._lock:
                self._recorders.remove((rec, done))
        return rec, rec.done

    @classmethod
    def selftest_actions(cls, config: dict[str, Any]) -> list[str]:
        acts = []
        if config.get("relay_pin", cls.options["relay_pin"].default) is not None:
            acts.append("switch the audio relay to the other source for about half a second, "
                        "then back to the source it was on")
        if config.get("loopback_test"):
            acts.append(f"play a 1 kHz test tone for 1.5 s on playback device "
                        f"{config.get('output_device', 'default')!r} (audible in the room)")
        return acts

    def selftest(self, act: bool | None = None) -> SelftestResult:
        """Check the input, the relay and (if configured) the loopback.

        ``act`` is about outputs, which a person must agree to: None keeps the
        behaviour callers had before it existed (the loopback tone plays when
        ``loopback_test`` is set, the relay is only looked at); True also
        switches the relay to the other source and back; False touches no
        output and lists those steps as skipped.
        """
        with self._lock:
            state, reason = self._state, self._reason
            frames = self._analyzer.frames if self._analyzer is not None else 0
        if state != OK:
            step = SelftestStep("input", False, reason or "not started")
            return SelftestResult(self.name, self.kind, ok=False, steps=(step,), skipped=True)
        timeout = max(1.0, 5 * self.block_frames / self.rate)
        with self._cond:
            flowing = self._cond.wait_for(
                lambda: self._analyzer is not None and self._analyzer.frames > frames, timeout)
            lv = self.levels()
        steps = [SelftestStep("input", True, str(self._opt("device"))),
                 SelftestStep("samples", flowing, f"{lv['state']}, rms {lv['rms_dbfs']} dBFS"
                              if flowing else f"no samples within {timeout:.1f} s")]
        if self._opt("relay_pin") is not None:
            steps.append(SelftestStep("relay", self._relay is not None,
                                      f"source {self._source}" if self._relay is not None
                                      else self._relay_error or "not open"))
            if act is False:
                steps.append(_not_confirmed("relay switch"))
            elif act and self._relay is not None:
                steps.append(self._relay_switch())
        if self._opt("loopback_test") and flowing:
            steps.append(_not_confirmed("loopback") if act is False else self._loopback())
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps), steps=tuple(steps))

    def _relay_switch(self) -> SelftestStep:
        """Switch to the other source and back; its level is reported, not judged.

        Whether the other feed carries sound depends on what the broadcast room
        plays at that moment, so only the switching itself can fail here.
        """
        original = self._source
        other = "backup" if original == "primary" else "primary"
        try:
            self.switch_source(other, "selftest")
            heard, complete = self._record(0.5)
            level = heard.report(self._wall, complete)["mean_dbfs"]
        except (DeviceError, OSError) as exc:
            return SelftestStep("relay switch", False, f"{type(exc).__name__}: {exc}")
        finally:
            self.switch_source(original, "selftest")
        return SelftestStep("relay switch", True,
                            f"{original} -> {other} -> {original}; {other} feed mean {level} dBFS")

    def _loopback(self) -> SelftestStep:
        """Play a 1 kHz tone with aplay and expect the input level to rise by 10 dB."""
        base, _ = self._record(0.5)
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            t = np.arange(int(1.5 * self.rate)) / self.rate
            tone = (0.1 * 32767 * np.sin(2 * math.pi * 1000.0 * t)).astype("<i2")
            with wave.open(f.name, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(self.rate)
                w.writeframes(tone.tobytes())
            try:
                proc = subprocess.Popen(["aplay", "-q", "-D", str(self._opt("output_device")), f.name],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                return SelftestStep("loopback", False, f"cannot run aplay: {exc}")
            heard, _ = self._record(1.0)
            try:
                _, err = proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return SelftestStep("loopback", False, "aplay did not finish")
        if proc.returncode != 0:
            return SelftestStep("loopback", False, f"aplay failed: {err.decode(errors='replace').strip()}")
        before = base.report(self._wall, True)["mean_dbfs"]
        during = heard.report(self._wall, True)["mean_dbfs"]
        ok = during >= before + 10.0 and during > self.thresholds().silence_floor_dbfs
        return SelftestStep("loopback", ok, f"input {before} dBFS before, {during} dBFS with the tone")


def _not_confirmed(step: str) -> SelftestStep:
    return SelftestStep(step, True, "skipped: acts on an output and was not confirmed", skipped=True)
