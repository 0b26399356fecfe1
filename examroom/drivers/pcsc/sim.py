"""The PC/SC backend with no pcscd: card taps acted out by ``simulate``, for work without a reader."""
from __future__ import annotations

import time
from typing import Any, Callable, ClassVar

from examroom.drivers.base import (OK, STOPPED, DeviceStatus, Driver, Option, SelftestResult,
                                   SelftestStep, SimulationError)
from examroom.drivers.bus import Bus
from examroom.drivers.events import CardPresented, CardRemoved
from examroom.drivers.pcsc.reader import PcscReader

# A PC/SC-part-3 contactless storage card ATR, for the simulated backend.
SIM_ATR = "3B8F8001804F0CA000000306030001000000006A"


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
