"""PC/SC contactless card reader (campus and admission cards) through pcscd.

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
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from examroom.drivers.bus import Bus

from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceStatus, Driver, Option,
                          SelftestResult, SelftestStep, SimulationError)
from examroom.drivers.events import CardPresented, CardRemoved, ReaderGarbage

log = logging.getLogger(__name__)

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]  # PC/SC part 3 GET DATA: the card's UID
PNP_READER = "\\\\?PnP?\\Notification"     # pcsc-lite's pseudo-reader for reader hot-plug
SW_OK = (0x90, 0x00)
PCSCD_AWAY = "pcscd unavailable"  # one reason for every way of losing it, so no event flicker
READER_MUTE = "reader not responding"  # listed by pcscd but unreachable (serial cable pulled)
# A PC/SC-part-3 contactless storage card ATR, for the simulated backend.
SIM_ATR = "3B8F8001804F0CA000000306030001000000006A"


def _is_apdu_list(value: Any) -> bool:
    def is_apdu(item: Any) -> bool:
        try:
            return isinstance(item, str) and len(bytes.fromhex(item)) >= 4
        except ValueError:
            return False
    return isinstance(value, list) and all(is_apdu(v) for v in value)


class _ContextLost(Exception):
    """pcscd stopped answering on this context; the monitor must establish a new one."""


@dataclass
class _Card:
    uid: str | None
    counter: int      # pcsc-lite's per-reader card event counter when we read it
    announced: bool   # CardPresented was emitted, so removal is news too


@dataclass(frozen=True)
class _Reading:
    uid: str | None
    app_data: str | None


class PcscReader(Driver):
    kind: ClassVar[str] = "pcsc"
    backend: ClassVar[str] = "pcsc"
    options: ClassVar[dict[str, Option]] = {
        "reader": Option(str, default="",
                         help='substring of the PC/SC reader name; "" takes the first reader'),
        "poll_interval_s": Option((int, float), default=0.2, check=lambda v: 0 < v <= 10,
                                  expected="seconds, more than 0 and at most 10",
                                  help="retry period while pcscd or the reader is away"),
        "app_apdus": Option(list, default=[], check=_is_apdu_list,
                            expected="a list of hex command APDUs (at least 4 bytes each)",
                            help="APDUs sent after the UID (e.g. SELECT, READ BINARY); "
                                 "the last response's data becomes app_data"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._scard: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._context: int | None = None
        self._reader_name: str | None = None
        self._card: _Card | None = None
        self._cards_read = 0
        self._errors = 0
        self._pcscd_failures = 0  # failed attempts at a working context since pcscd last answered
        self._last_fault = ""     # the monitor error last logged with its traceback

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
                if self._stopping.is_set():
                    self._card = None  # stopping is not a removal; a restart reads the card anew
                else:
                    self._forget_card()
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

    def _on_reader_state(self, context: int, reader: str, event: int, atr: bytes) -> None:
        scard = self._scard
        counter = event >> 16  # pcsc-lite counts insertions and removals in the high word
        present = bool(event & scard.SCARD_STATE_PRESENT)
        card = self._card
        if present and (card is None or card.counter != counter):
            if card is not None:
                self._forget_card()  # swapped faster than one wake-up: the old card left
            if event & scard.SCARD_STATE_MUTE:
                return  # pcscd will report again when the card answers (or leaves)
            self._read_card(context, reader, counter, atr.hex().upper())
        elif not present and card is not None:
            self._forget_card()

    def _forget_card(self) -> None:
        card, self._card = self._card, None
        if card is not None and card.announced:
            self.emit(CardRemoved(self.name, uid=card.uid, ts=self.clock()))

    def _read_card(self, context: int, reader: str, counter: int, atr: str) -> None:
        scard = self._scard
        hr, handle, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr != scard.SCARD_S_SUCCESS:
            if hr in (scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD):
                return  # gone before we could talk to it; the removal wake-up follows
            self._garbage(f"cannot connect to the card: {scard.SCardGetErrorMessage(hr)}")
            self._card = _Card(None, counter, announced=False)
            return
        try:
            reading = self._talk(handle, protocol)
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        if reading is None:
            self._card = _Card(None, counter, announced=False)
            return
        with self._lock:
            if reading.uid is not None:
                self._cards_read += 1
        self._card = _Card(reading.uid, counter, announced=True)
        self.emit(CardPresented(self.name, uid=reading.uid, atr=atr, app_data=reading.app_data,
                                ts=self.clock()))

    def _talk(self, handle: int, protocol: int) -> _Reading | None:
        """None when the card did not answer at all (left mid-read, or broken): nothing to tell."""
        uid_data, sw = self._transmit(handle, protocol, GET_UID)
        if sw is None:
            self._garbage("the card did not answer the UID request")
            return None
        uid = bytes(uid_data).hex().upper() if sw == SW_OK and uid_data else None
        if uid is None:
            self._garbage(f"no UID from the card (status {_sw_hex(sw)})")
            return _Reading(None, None)
        app_data: str | None = None
        for text in self._opt("app_apdus"):
            data, sw = self._transmit(handle, protocol, list(bytes.fromhex(text)))
            if sw != SW_OK:
                log.warning("%s: card %s answered %s to APDU %s; no app_data",
                            self.name, uid, _sw_hex(sw), text)
                with self._lock:
                    self._errors += 1
                return _Reading(uid, None)
            app_data = bytes(data).hex().upper()
        return _Reading(uid, app_data)

    def _transmit(self, handle: int, protocol: int,
                  apdu: list[int]) -> tuple[list[int], tuple[int, int] | None]:
        """Data and status word; a failed exchange gives status None, so callers see a bad SW."""
        scard = self._scard
        hr, response = scard.SCardTransmit(handle, protocol, apdu)
        if hr != scard.SCARD_S_SUCCESS or len(response) < 2:
            return [], None
        return response[:-2], (response[-2], response[-1])

    def _garbage(self, reason: str) -> None:
        log.warning("%s: %s", self.name, reason)
        with self._lock:
            self._errors += 1
        self.emit(ReaderGarbage(self.name, reason=reason, ts=self.clock()))

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> DeviceStatus:
        with self._lock:
            return DeviceStatus(self._state, self._reason, {
                "reader": self._reader_name, "cards_read": self._cards_read,
                "errors": self._errors,
                "card_present": self._card is not None})

    def selftest(self) -> SelftestResult:
        """Checks pcscd and the reader on a private context, so the monitor is left alone."""
        with self._lock:
            state, reason, reader = self._state, self._reason, self._reader_name
        if state != OK or reader is None:
            return SelftestResult(self.name, self.kind, ok=False, skipped=True,
                                  steps=(SelftestStep("reader", False, reason or state),))
        scard = self._scard
        hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        steps = [SelftestStep("pcscd context", hr == scard.SCARD_S_SUCCESS,
                              scard.SCardGetErrorMessage(hr))]
        if hr != scard.SCARD_S_SUCCESS:
            return SelftestResult(self.name, self.kind, ok=False, steps=tuple(steps))
        try:
            steps.extend(self._selftest_reader(context, reader))
        finally:
            scard.SCardReleaseContext(context)
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps),
                              steps=tuple(steps))

    def _selftest_reader(self, context: int, reader: str) -> list[SelftestStep]:
        scard = self._scard
        hr, readers = scard.SCardListReaders(context, [])
        present = hr == scard.SCARD_S_SUCCESS and reader in readers
        steps = [SelftestStep("reader present", present, reader)]
        if not present:
            return steps
        hr, result = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if hr != scard.SCARD_S_SUCCESS or not result[0][1] & scard.SCARD_STATE_PRESENT:
            steps.append(SelftestStep("card", True, "no card on the reader: UID read not tried"))
            return steps
        hr, handle, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr != scard.SCARD_S_SUCCESS:
            steps.append(SelftestStep("uid read", False, scard.SCardGetErrorMessage(hr)))
            return steps
        try:
            data, sw = self._transmit(handle, protocol, GET_UID)
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        ok = sw == SW_OK and bool(data)
        steps.append(SelftestStep("uid read", ok, bytes(data).hex().upper() if ok
                                  else f"status {_sw_hex(sw)}"))
        return steps


def _sw_hex(sw: tuple[int, int] | None) -> str:
    return "none (exchange failed)" if sw is None else f"{sw[0]:02X}{sw[1]:02X}"


class SimPcscReader(Driver):
    """A reader with no pcscd: ``card <uid-hex> [app-data-hex]`` and ``remove`` act out taps.

    It takes the real backend's options so a config can switch backends untouched.
    """

    kind: ClassVar[str] = "pcsc"
    backend: ClassVar[str] = "sim"
    options: ClassVar[dict[str, Option]] = PcscReader.options

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._uid: str | None = None
        self._cards_read = 0

    def start(self) -> None:
        self._set_state(OK)

    def stop(self) -> None:
        with self._lock:
            self._uid = None
        self._set_state(STOPPED)

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        with self._lock:
            if self._state != OK:
                raise SimulationError(f"device {self.name!r} is not started")
            if action == "card":
                return self._tap(args)
            if action == "remove":
                if args:
                    raise SimulationError(f"'remove' takes no arguments, got {args!r}")
                if self._uid is None:
                    raise SimulationError(f"no card on {self.name!r} to remove")
                uid, self._uid = self._uid, None
                self.emit(CardRemoved(self.name, uid=uid, ts=self.clock()))
                return {"removed": uid}
        raise SimulationError(f"unknown action {action!r} for {self.name!r}: "
                              "use 'card <uid-hex> [app-data-hex]' or 'remove'")

    def _tap(self, args: list[str]) -> dict[str, Any]:
        if not 1 <= len(args) <= 2:
            raise SimulationError(f"'card' needs <uid-hex> [app-data-hex], got {args!r}")
        uid = _hex_arg("uid", args[0], 4, 10)
        app_data = _hex_arg("app data", args[1], 1, 4096) if len(args) == 2 else None
        if self._uid is not None:
            self.emit(CardRemoved(self.name, uid=self._uid, ts=self.clock()))
        self._uid = uid
        self._cards_read += 1
        self.emit(CardPresented(self.name, uid=uid, atr=SIM_ATR, app_data=app_data,
                                ts=self.clock()))
        return {"uid": uid, "atr": SIM_ATR, "app_data": app_data}

    def status(self) -> DeviceStatus:
        with self._lock:
            return DeviceStatus(self._state, self._reason, {"reader": "simulated",
                                                  "cards_read": self._cards_read, "errors": 0,
                                                  "card_present": self._uid is not None})

    def selftest(self) -> SelftestResult:
        ok = self._state == OK
        return SelftestResult(self.name, self.kind, ok=ok, skipped=not ok,
                              steps=(SelftestStep("simulated reader", ok, self._state),))


def _hex_arg(what: str, text: str, min_bytes: int, max_bytes: int) -> str:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise SimulationError(f"{what} {text!r} is not hex (e.g. 04A1B2C3)") from None
    if not min_bytes <= len(raw) <= max_bytes:
        raise SimulationError(f"{what} {text!r} must be {min_bytes} to {max_bytes} bytes, "
                              f"got {len(raw)}")
    return raw.hex().upper()
