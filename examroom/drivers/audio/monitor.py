"""What both audio monitor backends share: wall time, events, relay, trial listening.

A source thread (ALSA capture, or a synthesiser in the sim; see
``drivers.audio.backends``) hands PCM blocks to the sample-time core in
``drivers.audio.levels``; this class maps frames to wall time, emits events,
drives the primary/backup relay and runs trial listenings. Exam meaning (a
silence during the listening window is an incident) is the agent's.

AudioLevels is emitted once per ``levels_every_s`` (default 1 s), not per
100 ms block: the agent forwards levels to MQTT and metrics, ten messages a
second per room would be noise, and nothing is lost because state changes are
emitted at once with the exact start of the new state.

Time: frames are the truth for durations, placed on the monotonic clock at
open; the wall clock only labels them, read at the moment a label is made, so
a step of the wall clock (either way) moves labels and never durations. A
watchdog thread declares the capture stalled when no block has arrived for the
silence hold: a read blocked inside the sound driver cannot say so itself.
"""
from __future__ import annotations

import logging
import math
import subprocess
import tempfile
import threading
import time
import wave
from abc import abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from examroom.drivers.audio.levels import Block, LevelAnalyzer, LevelWindow, Thresholds, TrialRecorder, Transition
from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceError, DeviceStatus, Driver,
                          Option, SelftestResult, SelftestStep, positive)
from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.events import NO_INPUT, AudioLevels, AudioSourceSwitched, AudioStateChanged, DeviceStateChanged

SOURCES = ("primary", "backup")  # relay released = primary, so a dead box falls back to it
REASONS = ("command", "auto", "selftest")
MAX_TRIAL_S = 3600.0
TRIAL_SLACK_S = 2.0   # a real-time feed delivers N seconds in N seconds; beyond that it stalled
LAG_REANCHOR_S = 1.0  # samples this far behind the monotonic clock were lost (overrun, suspend)
STALL_BLOCKS = 3      # a stall is never declared within this many block periods (block_ms > hold)
STOP_WAIT_S = 2.0     # how long stop() waits for a capture read to return

log = logging.getLogger(__name__)
DTYPES = {"S16_LE": "<i2", "S32_LE": "<i4"}


def _is_pin(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and value.strip() != "")


class AudioMonitor(Driver):
    """What both backends share; subclasses supply the source thread (``_run``)."""

    kind: ClassVar[str] = "audio"
    can_stall: ClassVar[bool] = True  # a capture can stop delivering without an error: watch it
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
        "silence_hold_s": Option((int, float), default=2.0, check=positive, expected="> 0 s"),
        "clip_dbfs": Option((int, float), default=-0.1, check=lambda v: -20 <= v <= 0,
                            expected="between -20 and 0 dBFS"),
        "clip_samples": Option(int, default=3, check=positive,
                               expected=">= 1 sample per block at or above clip_dbfs"),
        "relay_pin": Option((int, str), default=None, check=_is_pin,
                            expected="a GPIO number (17) or a gpiozero pin name (\"GPIO17\")",
                            help="relay switching primary (released) / backup (energised)"),
        "relay_active_high": Option(bool, default=True),
        "retry_s": Option((int, float), default=2.0, check=positive, expected="> 0 s",
                          help="how often an absent capture device is looked for again"),
        "output_device": Option(str, default="default", help="ALSA playback PCM for loopback"),
        "loopback_test": Option(bool, default=False,
                                help="selftest plays a tone and expects it back on the input"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._cond = threading.Condition(self._lock)
        # Two threads publish (capture and watchdog): the bus keeps a driver's events in
        # order only if one publishes at a time, in the order the state changed.
        self._publishing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._analyzer: LevelAnalyzer | None = None
        self._window: LevelWindow | None = None
        self._last: Block | None = None
        self._since_m = 0.0       # monotonic time the current feed state began
        self._m0 = 0.0            # monotonic time of frame _f0
        self._f0 = 0
        self._last_frame_m = 0.0  # monotonic time the last block arrived (or the source opened)
        self._stalled = False     # the current FAULT is a stalled capture
        self._recorders: list[tuple[TrialRecorder, threading.Event]] = []
        self._relay: Any = None
        self._relay_error = ""
        self._source = "unknown"

    # -- configuration ----------------------------------------------------------------

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
            self._last, self._stalled = None, False
            self._m0, self._f0 = self.monotonic(), 0
            self._since_m = self._last_frame_m = self._m0
            self._state, self._reason = ABSENT, "not opened yet"
            self._open_relay()
        # The first open is synchronous so status() is right as soon as start() returns.
        thread = threading.Thread(target=self._run, args=(self._open_source(),),
                                  name=f"audio-{self.name}", daemon=True)
        watchdog = (threading.Thread(target=self._watch, name=f"audio-{self.name}-watchdog", daemon=True)
                    if self.can_stall else None)
        with self._lock:
            self._thread, self._watchdog = thread, watchdog
        for t in (thread, watchdog):
            if t is not None:
                t.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            watchdog, self._watchdog = self._watchdog, None
            self._stop.set()
        for t in (thread, watchdog):
            if t is not None:
                t.join(STOP_WAIT_S)
                if t.is_alive():  # a read blocked inside the sound driver: it ends with the read
                    log.warning("%s: %s did not end within %g s (capture blocked in the sound "
                                "driver); going on without it", self.name, t.name, STOP_WAIT_S)
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

    def _label(self, mono: float) -> float:
        """Wall time of a monotonic instant, by the wall clock as it reads now."""
        return mono + (self.clock() - self.monotonic())

    def _mono(self, frame: int) -> float:
        return self._m0 + (frame - self._f0) / self.rate

    def _wall(self, frame: int) -> float:
        return self._label(self._mono(frame))

    def _opened(self) -> None:
        """Samples start flowing now: frame time is anchored to the monotonic clock here."""
        with self._lock:
            assert self._analyzer is not None
            self._m0, self._f0 = self.monotonic(), self._analyzer.frames
            self._last_frame_m, self._stalled = self._m0, False
            changed = self._state != OK
            self._state, self._reason = OK, ""
        if changed:
            self.emit(DeviceStateChanged(self.name, state=OK, ts=self.clock()))

    def _lost(self, state: str, reason: str) -> None:
        """The source is gone (absent card, failed read); the retry loop is the caller's."""
        with self._lock:
            changed = (self._state, self._reason) != (state, reason)
            self._state, self._reason, self._stalled = state, reason, False
            tr = self._lose_input()
        if changed:
            self.emit(DeviceStateChanged(self.name, state=state, reason=reason, ts=self.clock()))
        if tr is not None:
            self.emit(tr)

    def _lose_input(self) -> AudioStateChanged | None:
        """No samples from the last one on: ``no_input`` (the analyser's transition)."""
        assert self._analyzer is not None and self._window is not None
        self._last = None
        self._window = LevelWindow(self._window.window)  # no reading mixes both sides of a gap
        self._finish_recorders()
        tr = self._analyzer.lose_input()
        return None if tr is None else self._state_event(tr, self._last_frame_m)

    def _stall_after(self) -> float:
        return max(float(self._opt("silence_hold_s")), STALL_BLOCKS * self.block_frames / self.rate)

    def _watch(self) -> None:
        """Declares the capture stalled after ``_stall_after`` seconds without a block, waking
        when the next block would be that late, so a healthy feed costs one wake-up a hold."""
        limit = self._stall_after()
        wait = limit
        while not self._stop.wait(wait):
            wait = limit
            with self._publishing:
                tr, reason = None, ""
                with self._lock:
                    if self._state == OK and not self._stalled:
                        idle = self.monotonic() - self._last_frame_m
                        if idle > limit:
                            self._stalled = True
                            self._state = FAULT
                            self._reason = reason = f"capture stalled: no samples for over {limit:g} s"
                            tr = self._lose_input()
                        else:
                            wait = max(0.01, limit - idle + 0.01)
                if reason:
                    self.emit(DeviceStateChanged(self.name, state=FAULT, reason=reason, ts=self.clock()))
                if tr is not None:
                    self.emit(tr)

    def _finish_recorders(self) -> None:
        for _, done in self._recorders:
            done.set()

    def _process(self, pcm: np.ndarray) -> None:
        with self._publishing:
            for event in self._measure(pcm):
                self.emit(event)

    def _measure(self, pcm: np.ndarray) -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        with self._lock:
            assert self._analyzer is not None and self._window is not None
            block, tr = self._analyzer.feed(pcm)
            mono, now = self.monotonic(), self.clock()
            if self._stalled or mono - self._mono(block.end) > LAG_REANCHOR_S:
                self._m0, self._f0 = mono, block.end  # samples were lost or held up: place them anew
            self._last_frame_m = mono
            if self._stalled:  # blocks again after a stall: the capture works
                self._stalled, self._state, self._reason = False, OK, ""
                events.append(DeviceStateChanged(self.name, state=OK, ts=now))
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
        return events

    def _state_event(self, tr: Transition, since_m: float | None = None) -> AudioStateChanged:
        """The event of a transition; ``since_m`` (monotonic) overrides its start frame."""
        self._since_m = self._mono(tr.start) if since_m is None else since_m
        return AudioStateChanged(self.name, state=tr.state, previous=tr.previous,
                                 since=self._label(self._since_m), rms_dbfs=tr.rms_dbfs,
                                 peak_dbfs=tr.peak_dbfs, ts=self.clock())

    # -- what the agent calls ---------------------------------------------------------

    def levels(self) -> dict[str, Any]:
        with self._lock:
            last = self._last
            return {
                "state": self._analyzer.state if self._analyzer is not None else NO_INPUT,
                "since": self._label(self._since_m),
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
