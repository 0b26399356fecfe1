"""What both audio monitor backends share: the device, its threads and what the agent calls.

A source thread (ALSA capture, or a synthesiser in the sim; see
``drivers.audio.backends``) hands PCM blocks to the monitor, which measures them
in a ``Feed`` (``drivers.audio.feed``: the sample-time core of
``drivers.audio.levels`` placed in wall time) and publishes its events. Around
that, the monitor holds the primary/backup relay (``drivers.audio.relay``), the
recordings of trial listenings (``drivers.audio.listening``) and runs the
self-test (``drivers.audio.selftest``). Exam meaning (a silence during the
listening window is an incident) is the agent's.

Those helpers are handed values, never the config: every option is read here or in
a backend, where tests/test_audio_options.py holds each key read to ``options``
(declared in ``drivers.audio.options``).

A watchdog thread declares the capture stalled when no block has arrived for the
silence hold: a read blocked inside the sound driver cannot say so itself.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from examroom.drivers.audio import selftest
from examroom.drivers.audio.feed import Feed, label
from examroom.drivers.audio.levels import Thresholds, TrialRecorder
from examroom.drivers.audio.listening import Listening
from examroom.drivers.audio.options import OPTIONS
from examroom.drivers.audio.relay import SourceRelay, check_switch
from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceStatus, Driver, Option,
                                   SelftestResult, SelftestStep)
from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.events import NO_INPUT, AudioSourceSwitched, AudioStateChanged, DeviceStateChanged

MAX_TRIAL_S = 3600.0
STALL_BLOCKS = 3      # a stall is never declared within this many block periods (block_ms > hold)
STOP_WAIT_S = 2.0     # how long stop() waits for a capture read to return

log = logging.getLogger(__name__)


class AudioMonitor(Driver):
    """What both backends share; subclasses supply the source thread (``_run``)."""

    kind: ClassVar[str] = "audio"
    can_stall: ClassVar[bool] = True  # a capture can stop delivering without an error: watch it
    options: ClassVar[dict[str, Option]] = OPTIONS  # the [[device]] keys: drivers.audio.options

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._cond = threading.Condition(self._lock)  # notified each block
        # Two threads publish (capture and watchdog): the bus keeps a driver's events in
        # order only if one publishes at a time, in the order the state changed.
        self._publishing = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []  # the source thread, then its watchdog if any
        self._feed: Feed | None = None  # None until the first start()
        self._stalled = False           # the current FAULT is a stalled capture
        self._listening = Listening(self._lock, self._begin_recording)
        self._relay = SourceRelay()

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
            if self._threads or self._state != STOPPED:
                return
            self._stop.clear()
            self._feed = Feed(self.name, self.rate, int(self._opt("channels")), self.thresholds(),
                              round(float(self._opt("levels_every_s")) * self.rate), self.clock, self.monotonic)
            self._stalled = False
            self._state, self._reason = ABSENT, "not opened yet"
            self._relay.open(self._opt("relay_pin"), bool(self._opt("relay_active_high")), self._pin_factory)
        # The first open is synchronous so status() is right as soon as start() returns.
        threads = [threading.Thread(target=self._run, args=(self._open_source(),),
                                    name=f"audio-{self.name}", daemon=True)]
        if self.can_stall:
            threads.append(threading.Thread(target=self._watch, name=f"audio-{self.name}-watchdog", daemon=True))
        with self._lock:
            self._threads = threads
        for t in threads:
            t.start()

    def stop(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
            self._stop.set()
        for t in threads:
            t.join(STOP_WAIT_S)
            if t.is_alive():  # a read blocked inside the sound driver: it ends with the read
                log.warning("%s: %s did not end within %g s (capture blocked in the sound "
                            "driver); going on without it", self.name, t.name, STOP_WAIT_S)
        with self._lock:
            self._listening.finish()
            self._relay.close()
            self._state, self._reason = STOPPED, ""

    # -- called from the source thread -----------------------------------------------

    @abstractmethod
    def _open_source(self) -> Any:
        """Open the source and report it present (returns its handle) or absent (None)."""

    @abstractmethod
    def _run(self, handle: Any) -> None:
        """Feed ``_process`` until ``_stop`` is set, reopening the source as needed."""

    def _opened(self) -> None:
        """Samples start flowing now: frame time is anchored to the monotonic clock here."""
        with self._lock:
            assert self._feed is not None
            self._feed.anchor()
            self._stalled = False
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
        """No samples from the last one on: open recordings end, the feed goes ``no_input``."""
        assert self._feed is not None
        self._listening.finish()
        return self._feed.lose_input()

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
                        assert self._feed is not None
                        idle = self._feed.idle()
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

    def _process(self, pcm: np.ndarray) -> None:
        with self._publishing:
            for event in self._measure(pcm):
                self.emit(event)

    def _measure(self, pcm: np.ndarray) -> list[DeviceEvent]:
        with self._lock:
            assert self._feed is not None
            block, now, events = self._feed.add(pcm, reanchor=self._stalled)
            if self._stalled:  # blocks again after a stall: the capture works
                self._stalled, self._state, self._reason = False, OK, ""
                events.insert(0, DeviceStateChanged(self.name, state=OK, ts=now))
            self._listening.add(block)
            self._cond.notify_all()
        return events

    # -- what the agent calls ---------------------------------------------------------

    def levels(self) -> dict[str, Any]:
        with self._lock:
            if self._feed is None:  # never started: no input since the monotonic clock's origin
                feed = {"state": NO_INPUT, "since": label(0.0, self.clock, self.monotonic),
                        "rms_dbfs": None, "peak_dbfs": None}
            else:
                feed = self._feed.levels()
            return {**feed, "source": self._relay.source}

    def status(self) -> DeviceStatus:
        with self._lock:
            lv = self.levels()
            details = {"feed": lv["state"], **{k: lv[k] for k in ("rms_dbfs", "peak_dbfs", "source")}}
            if self._state != OK:
                return DeviceStatus(self._state, self._reason, details)
            if self._relay.error:
                return DeviceStatus(FAULT, f"relay: {self._relay.error}", details)
            return DeviceStatus(OK, "", details)

    def switch_source(self, source: str, reason: str = "command") -> dict[str, Any]:
        """Drive the primary/backup relay; the decision to switch is the caller's."""
        check_switch(source, reason)
        with self._lock:
            if self._opt("relay_pin") is None:
                raise DeviceAbsent(f"audio device {self.name!r} has no relay_pin configured")
            previous = self._relay.switch(source)
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
        rec, complete = self._listening.record(float(seconds))
        with self._lock:
            report = rec.report(self._wall, complete)
            report.update(device=self.name, source=self._relay.source, state=self.levels()["state"])
            return report

    def _begin_recording(self, seconds: float) -> tuple[TrialRecorder, bool]:
        """A recording from the current frame on, and whether samples flow (lock held)."""
        start = self._feed.frames if self._feed is not None else 0
        rec = TrialRecorder(self.rate, self.thresholds(), max(1, round(seconds * self.rate)), start)
        return rec, self._state == OK

    def _wall(self, frame: int) -> float:
        assert self._feed is not None  # a recording that heard frames was fed by a started feed
        return self._feed.wall(frame)

    @classmethod
    def selftest_actions(cls, config: dict[str, Any]) -> list[str]:
        return selftest.actions(config.get("relay_pin", cls.options["relay_pin"].default) is not None,
                                bool(config.get("loopback_test")), config.get("output_device", "default"))

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
            frames = self._feed.frames if self._feed is not None else 0
        if state != OK:
            # skipped (absent) only when there is no card: a card that is there and stalls or
            # refuses the format is a failure, or --allow-absent would pass a hung card
            step = SelftestStep("input", False, reason or "not started")
            return SelftestResult(self.name, self.kind, ok=False, steps=(step,), skipped=state in (ABSENT, STOPPED))
        timeout = max(1.0, 5 * self.block_frames / self.rate)
        with self._cond:
            flowing = self._cond.wait_for(lambda: self._feed is not None and self._feed.frames > frames, timeout)
            lv = self.levels()
        steps = [SelftestStep("input", True, str(self._opt("device"))),
                 SelftestStep("samples", flowing, f"{lv['state']}, rms {lv['rms_dbfs']} dBFS"
                              if flowing else f"no samples within {timeout:.1f} s")]
        if self._opt("relay_pin") is not None:
            steps += selftest.relay_steps(self._relay, act, self.switch_source, self._listening.record)
        if self._opt("loopback_test") and flowing:
            steps.append(selftest.not_confirmed("loopback") if act is False else selftest.loopback(
                self._listening.record, self.rate, str(self._opt("output_device")),
                self.thresholds().silence_floor_dbfs))
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps), steps=tuple(steps))
