"""The one state rule every driver inherits from ``Driver._set_state``.

A ``DeviceStateChanged`` goes out when the state or the reason changes, never for a
repeat, and it leaves after the driver's lock is released: the bus calls listeners in
the publishing thread, so a listener that waits for another thread's ``status()`` would
otherwise wait forever.
"""
from __future__ import annotations

import logging
import threading
from typing import ClassVar, Iterator

import pytest

from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceStatus, Driver, Option,
                                   SelftestResult, positive)
from examroom.drivers.bus import Bus
from examroom.drivers.events import DeviceStateChanged


class Plain(Driver):
    """A driver with nothing but the base's state: ``poke`` stands in for the hardware."""

    kind: ClassVar[str] = "plain"
    backend: ClassVar[str] = "sim"
    options: ClassVar[dict[str, Option]] = {"period_s": Option(float, default=2.0, check=positive)}

    def start(self) -> None:
        self._set_state(OK)

    def stop(self) -> None:
        self._set_state(STOPPED)

    def poke(self, state: str, reason: str = "") -> None:
        self._set_state(state, reason)

    def status(self) -> DeviceStatus:
        with self._lock:
            return DeviceStatus(self._state, self._reason)

    def selftest(self) -> SelftestResult:
        return SelftestResult(self.name, self.kind, ok=self.status().state == OK)


@pytest.fixture
def bus() -> Bus:
    return Bus()


def published(bus: Bus) -> list[DeviceStateChanged]:
    events: list[DeviceStateChanged] = []
    bus.subscribe(DeviceStateChanged, events.append)
    return events


def test_state_or_reason_change_is_news_a_repeat_is_not(bus: Bus) -> None:
    events = published(bus)
    drv = Plain("p", {}, bus, clock=lambda: 1000.0)
    assert drv.status() == DeviceStatus(STOPPED, "")
    drv.stop()  # already stopped: nothing to say
    drv.start()
    drv.poke(FAULT, "dark")
    drv.poke(FAULT, "dark")
    drv.poke(FAULT, "frozen")  # same state, new reason: a different fix, so news
    drv.poke(ABSENT, "frozen")  # new state, same reason
    drv.stop()
    drv.stop()
    assert [(e.device, e.state, e.reason, e.ts) for e in events] == [
        ("p", OK, "", 1000.0), ("p", FAULT, "dark", 1000.0), ("p", FAULT, "frozen", 1000.0),
        ("p", ABSENT, "frozen", 1000.0), ("p", STOPPED, "", 1000.0)]
    assert drv.status() == DeviceStatus(STOPPED, "")


def test_event_leaves_after_the_lock_is_released(bus: Bus) -> None:
    drv = Plain("p", {}, bus)
    seen: list[DeviceStatus] = []

    def ask_from_another_thread(_: DeviceStateChanged) -> None:
        asker = threading.Thread(target=lambda: seen.append(drv.status()))
        asker.start()
        asker.join(5)  # returns at once unless the lock is held; the bound only ends a failing run
        assert not asker.is_alive(), "status() from another thread blocked: emitted under the lock"

    bus.subscribe(DeviceStateChanged, ask_from_another_thread)
    drv.poke(FAULT, "dark")
    assert bus.listener_errors == 0
    assert seen == [DeviceStatus(FAULT, "dark")]  # and the state is recorded before it is published


def test_changes_are_logged_by_severity(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="examroom.drivers.base")
    drv = Plain("p", {}, bus)
    drv.start()
    drv.poke(FAULT, "dark")
    drv.poke(FAULT, "dark")
    drv.stop()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "p: ok"), ("WARNING", "p: fault (dark)"), ("INFO", "p: stopped")]


def test_option_defaults_and_positive(bus: Bus) -> None:
    assert Plain("p", {}, bus)._opt("period_s") == 2.0
    assert Plain("p", {"period_s": 0.5}, bus)._opt("period_s") == 0.5
    assert positive(1) and positive(0.01)
    assert not any(positive(v) for v in (0, -1, float("nan"), float("inf")))


def test_monotonic_clock_is_injectable(bus: Bus) -> None:
    ticks: Iterator[float] = iter([5.0, 7.5])
    drv = Plain("p", {}, bus, monotonic=lambda: next(ticks))
    assert (drv.monotonic(), drv.monotonic()) == (5.0, 7.5)
