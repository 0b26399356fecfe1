"""The pcscd side of the PC/SC driver: one context, and the one reader followed on it.

The monitor talks to pcscd with pyscard's raw ``smartcard.scard`` layer, not
``CardMonitor``: the latter's thread outlives ``deleteObserver`` and hides the
error codes that tell a lost pcscd from a lost reader. One thread blocks in
``SCardGetStatusChange`` on the chosen reader plus the PnP pseudo-reader (so
hot-plug wakes it) and, on any error of the context itself, drops it and
establishes a new one, every ``poll_interval_s``: pcscd restarts and unplugged
readers heal without help. An outage is logged when it starts and when it ends
(with the number of failed attempts), never once per attempt, so a pcscd that
accepts contexts but fails every call cannot flood the log or spin the CPU.

A reader can go two ways. A USB reader leaves pcscd's list (its state turns
UNKNOWN and the list is read again); a serial reader whose cable is pulled stays
listed but stops answering, and pcscd marks it UNAVAILABLE until it answers
again. Both are reported ABSENT and the card on it as removed.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from typing import Any, Callable, ClassVar

from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, Driver, Option
from examroom.drivers.bus import Bus

log = logging.getLogger(__package__)  # the driver's modules log as one, under its package's name

PNP_READER = "\\\\?PnP?\\Notification"     # pcsc-lite's pseudo-reader for reader hot-plug
PCSCD_AWAY = "pcscd unavailable"  # one reason for every way of losing it, so no event flicker
READER_MUTE = "reader not responding"  # listed by pcscd but unreachable (serial cable pulled)


class _ContextLost(Exception):
    """pcscd stopped answering on this context; the monitor must establish a new one."""


class PcscdMonitor(Driver):
    """Keeps a pcscd context and follows the configured reader on it, from its own thread.

    The driver's state says whether pcscd and the reader are there; what a card on the
    reader means is the subclass's: it gets the reader's state changes and is told when a
    card can no longer be known.
    """

    kind: ClassVar[str] = "pcsc"
    options: ClassVar[dict[str, Option]] = {
        "reader": Option(str, default="",
                         help='substring of the PC/SC reader name; "" takes the first reader'),
        "poll_interval_s": Option((int, float), default=0.2, check=lambda v: 0 < v <= 10,
                                  expected="seconds, more than 0 and at most 10",
                                  help="retry period while pcscd or the reader is away"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._scard: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._context: int | None = None
        self._reader_name: str | None = None
        self._errors = 0          # monitor failures, and the subclass's card failures
        self._pcscd_failures = 0  # failed attempts at a working context since pcscd last answered
        self._last_fault = ""     # the monitor error last logged with its traceback

    @abstractmethod
    def _on_reader_state(self, context: int, reader: str, event: int, atr: bytes) -> None:
        """The followed reader answers; ``event`` is its pcsc-lite state, ``atr`` its card's."""

    @abstractmethod
    def _forget_card(self, announce: bool = True) -> None:
        """The card on the reader, if any, can no longer be known; ``announce`` its removal
        (False when stopping: that is not a removal, and a restart reads the card anew)."""

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            try:
                from smartcard import scard
            except ImportError as exc:
                self._set_state(ABSENT, f"pyscard not installed ({exc})")
                return
            self._scard = scard
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"pcsc-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
            if self._context is not None:
                self._scard.SCardCancel(self._context)  # wakes SCardGetStatusChange now
        if thread is not None:
            thread.join(timeout=float(self._opt("poll_interval_s")) + 5.0)
            if thread.is_alive():
                log.error("%s: PC/SC monitor thread did not stop", self.name)
        self._set_state(STOPPED)

    # -- monitor thread ------------------------------------------------------------------

    def _run(self) -> None:
        """Every way out of one context waits ``retry_s`` on the stop event before the next."""
        scard = self._scard
        retry_s = float(self._opt("poll_interval_s"))
        while not self._stopping.is_set():
            hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr != scard.SCARD_S_SUCCESS:
                self._pcscd_failed(f"no pcscd context: {scard.SCardGetErrorMessage(hr)}", retry_s)
                self._stopping.wait(retry_s)
                continue
            with self._lock:
                if self._stopping.is_set():
                    scard.SCardReleaseContext(context)
                    return
                self._context = context
            try:
                self._watch(context)
            except _ContextLost as exc:
                self._pcscd_failed(f"lost pcscd ({exc})", retry_s)
            except Exception as exc:  # a bug here must not end card reading for the exam
                self._monitor_failed(exc)
            finally:
                with self._lock:
                    self._context = None
                scard.SCardReleaseContext(context)
                self._forget_card(announce=not self._stopping.is_set())  # stopping is no removal
                with self._lock:
                    self._reader_name = None
            self._stopping.wait(retry_s)  # a context that fails at once must not spin

    def _pcscd_failed(self, what: str, retry_s: float) -> None:
        """Counts a failed attempt; only the first of an outage is logged."""
        with self._lock:
            self._pcscd_failures += 1
            first = self._pcscd_failures == 1
        if first:
            log.warning("%s: %s; retrying every %s s (repeats are counted, not logged)",
                        self.name, what, retry_s)
        self._set_state(ABSENT, PCSCD_AWAY)

    def _pcscd_answered(self) -> None:
        """pcscd answered a watch on this context: the outage, if any, is over. (The last
        monitor error is kept: a bug that recurs after each good answer must not flood.)"""
        with self._lock:
            failures, self._pcscd_failures = self._pcscd_failures, 0
        if failures:
            log.info("%s: pcscd answers again after %d failed attempt(s)", self.name, failures)

    def _monitor_failed(self, exc: Exception) -> None:
        """A bug in the monitor: counted every time; a traceback only for an error not seen last."""
        reason = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._errors += 1
            repeat, self._last_fault = reason == self._last_fault, reason
        if repeat:
            log.debug("%s: PC/SC monitor failed again: %s", self.name, reason)
        else:
            log.exception("%s: PC/SC monitor failed; restarting it", self.name)
        self._set_state(FAULT, reason)

    def _watch(self, context: int) -> None:
        """Follows the chosen reader (re-chosen on hot-plug) until stop; raises _ContextLost."""
        scard = self._scard
        timeout_ms = max(1, int(float(self._opt("poll_interval_s")) * 1000))
        states: list[tuple[str, int]] = [(PNP_READER, scard.SCARD_STATE_UNAWARE)]
        rescan = True
        while not self._stopping.is_set():
            if rescan:
                states = self._choose_reader(context, states)
                rescan = False
            hr, result = scard.SCardGetStatusChange(context, timeout_ms, states)
            if hr in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
                self._pcscd_answered()  # the watch itself works: listing alone may not mean that
            if hr in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
                rescan = len(states) == 1  # no reader yet: list again, in case PnP stays silent
                continue
            if hr == scard.SCARD_E_UNKNOWN_READER:
                rescan = True  # the reader went between listing and waiting
                continue
            if hr != scard.SCARD_S_SUCCESS:
                raise _ContextLost(scard.SCardGetErrorMessage(hr))
            states = [(reader, event & ~scard.SCARD_STATE_CHANGED) for reader, event, _ in result]
            for reader, event, atr in result:
                if reader == PNP_READER:
                    rescan = rescan or bool(event & scard.SCARD_STATE_CHANGED)
                elif event & scard.SCARD_STATE_UNKNOWN:
                    rescan = True  # pcscd no longer knows it (USB unplug): list the readers again
                elif event & scard.SCARD_STATE_UNAVAILABLE:
                    self._forget_card()  # still listed, not answering: wait for it to change
                    self._set_state(ABSENT, READER_MUTE)
                else:
                    self._set_state(OK, "")
                    self._on_reader_state(context, reader, event, bytes(atr))

    def _choose_reader(self, context: int,
                       states: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Pick the configured reader from the current list; keep its known state if unchanged."""
        scard = self._scard
        hr, readers = scard.SCardListReaders(context, [])
        if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
            readers = []
        elif hr != scard.SCARD_S_SUCCESS:
            raise _ContextLost(scard.SCardGetErrorMessage(hr))
        wanted = self._opt("reader")
        name = next((r for r in readers if wanted in r), None)
        with self._lock:
            previous, self._reader_name = self._reader_name, name
        if name != previous:
            self._forget_card()
        pnp_state = next(s for r, s in states if r == PNP_READER)
        if name is None:
            self._set_state(ABSENT, f"no reader matching {wanted!r}" if wanted else "no reader")
            return [(PNP_READER, pnp_state)]
        known = next((s for r, s in states if r == name), scard.SCARD_STATE_UNAWARE)
        return [(PNP_READER, pnp_state), (name, known)]
