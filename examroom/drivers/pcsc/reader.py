"""The card side of the PC/SC driver: the card on the followed reader, read by APDU.

pcsc-lite counts each reader's insertions and removals; a card is read once per
count, so one placement gives one ``CardPresented`` however often pcscd wakes
the monitor, and a swap faster than one wake-up is still a removal and a new
card. The UID comes from PC/SC part 3's GET DATA; the configured APDUs follow,
and the data of the last answer becomes ``app_data``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from examroom.drivers.base import OK, DeviceStatus, Option, SelftestResult, SelftestStep
from examroom.drivers.bus import Bus
from examroom.drivers.events import CardPresented, CardRemoved, ReaderGarbage
from examroom.drivers.pcsc.monitor import PcscdMonitor

log = logging.getLogger(__package__)  # the driver's modules log as one, under its package's name

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]  # PC/SC part 3 GET DATA: the card's UID
SW_OK = (0x90, 0x00)


def _is_apdu_list(value: Any) -> bool:
    def is_apdu(item: Any) -> bool:
        try:
            return isinstance(item, str) and len(bytes.fromhex(item)) >= 4
        except ValueError:
            return False
    return isinstance(value, list) and all(is_apdu(v) for v in value)


@dataclass
class _Card:
    uid: str | None
    counter: int      # pcsc-lite's per-reader card event counter when we read it
    announced: bool   # CardPresented was emitted, so removal is news too


@dataclass(frozen=True)
class _Reading:
    uid: str | None
    app_data: str | None


class PcscReader(PcscdMonitor):
    """Reads each card placed on the reader the monitor follows, and reports it gone."""

    backend: ClassVar[str] = "pcsc"
    options: ClassVar[dict[str, Option]] = {
        **PcscdMonitor.options,
        "app_apdus": Option(list, default=[], check=_is_apdu_list,
                            expected="a list of hex command APDUs (at least 4 bytes each)",
                            help="APDUs sent after the UID (e.g. SELECT, READ BINARY); "
                                 "the last response's data becomes app_data"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._card: _Card | None = None
        self._cards_read = 0

    # -- the card (monitor thread) -------------------------------------------------------

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

    def _forget_card(self, announce: bool = True) -> None:
        card, self._card = self._card, None
        if announce and card is not None and card.announced:
            self.emit(CardRemoved(self.name, uid=card.uid, ts=self.clock()))

    def _read_card(self, context: int, reader: str, counter: int, atr: str) -> None:
        scard = self._scard
        hr, handle, protocol = _connect(scard, context, reader)
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
        uid_data, sw = _transmit(self._scard, handle, protocol, GET_UID)
        if sw is None:
            self._garbage("the card did not answer the UID request")
            return None
        uid = bytes(uid_data).hex().upper() if sw == SW_OK and uid_data else None
        if uid is None:
            self._garbage(f"no UID from the card (status {_sw_hex(sw)})")
            return _Reading(None, None)
        app_data: str | None = None
        for text in self._opt("app_apdus"):
            data, sw = _transmit(self._scard, handle, protocol, list(bytes.fromhex(text)))
            if sw != SW_OK:
                log.warning("%s: card %s answered %s to APDU %s; no app_data",
                            self.name, uid, _sw_hex(sw), text)
                with self._lock:
                    self._errors += 1
                return _Reading(uid, None)
            app_data = bytes(data).hex().upper()
        return _Reading(uid, app_data)

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
        hr, handle, protocol = _connect(scard, context, reader)
        if hr != scard.SCARD_S_SUCCESS:
            steps.append(SelftestStep("uid read", False, scard.SCardGetErrorMessage(hr)))
            return steps
        try:
            data, sw = _transmit(scard, handle, protocol, GET_UID)
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        ok = sw == SW_OK and bool(data)
        steps.append(SelftestStep("uid read", ok, bytes(data).hex().upper() if ok
                                  else f"status {_sw_hex(sw)}"))
        return steps


def _connect(scard: Any, context: int, reader: str) -> tuple[int, int, int]:
    """(result, card handle, protocol). Shared, so the self-test's private context and the
    monitor's do not lock each other out of the card."""
    return scard.SCardConnect(context, reader, scard.SCARD_SHARE_SHARED,
                              scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)


def _transmit(scard: Any, handle: int, protocol: int,
              apdu: list[int]) -> tuple[list[int], tuple[int, int] | None]:
    """Data and status word; a failed exchange gives status None, so callers see a bad SW."""
    hr, response = scard.SCardTransmit(handle, protocol, apdu)
    if hr != scard.SCARD_S_SUCCESS or len(response) < 2:
        return [], None
    return response[:-2], (response[-2], response[-1])


def _sw_hex(sw: tuple[int, int] | None) -> str:
    return "none (exchange failed)" if sw is None else f"{sw[0]:02X}{sw[1]:02X}"
