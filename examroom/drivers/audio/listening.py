"""Listening to the live feed on demand: trial listenings (试听) and the self-test's checks.

A listener waits for its own recording only. The capture thread adds each block to every
open recording and never waits for a listener, so a listening blocks its caller and no
one else, however many run at once.
"""
from __future__ import annotations

import threading
from typing import Callable

from examroom.drivers.audio.levels import Block, TrialRecorder

TRIAL_SLACK_S = 2.0  # a real-time feed delivers N seconds in N seconds; beyond that it stalled


class Listening:
    """The recordings in progress, guarded by the monitor's lock.

    ``begin(seconds)`` is the monitor's: called with the lock held, it returns a recorder
    starting at the current frame and whether samples are flowing into it now.
    """

    def __init__(self, lock: threading.RLock,
                 begin: Callable[[float], tuple[TrialRecorder, bool]]) -> None:
        self._lock = lock
        self._begin = begin
        self._open: list[tuple[TrialRecorder, threading.Event]] = []

    def record(self, seconds: float) -> tuple[TrialRecorder, bool]:
        """Record the next ``seconds`` of the feed; returns the recording and whether it is
        complete (False at once when no samples flow, or if the feed stops or stalls)."""
        done = threading.Event()
        with self._lock:
            rec, flowing = self._begin(seconds)
            if not flowing:
                return rec, False
            self._open.append((rec, done))
        try:
            done.wait(seconds + TRIAL_SLACK_S)
        finally:
            with self._lock:
                self._open.remove((rec, done))
        return rec, rec.done

    def add(self, block: Block) -> None:
        """Add a block to every open recording (the caller holds the lock)."""
        for rec, done in self._open:
            if not rec.done and rec.add(block):
                done.set()

    def finish(self) -> None:
        """End every open recording now: no more samples will come (the caller holds the lock)."""
        for _, done in self._open:
            done.set()
