"""Metal detector driver on gpiozero mock pins, with debounce driven by a virtual timer."""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers import driver_class
from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, SimulationError
from examroom.drivers.events import DetectorArmed, DeviceStateChanged, MetalAlarm, SweepButton
from examroom.drivers.metal_detector import GpioMetalDetector, SimMetalDetector


class FakeTimer:
    """Virtual time: ``advance`` runs the one-shot timers that fall due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._seq = itertools.count()
        self._pending: list[list[Any]] = []  # [due, seq, callback, alive]

    def __call__(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        entry = [self.now + delay, next(self._seq), callback, True]
        self._pending.append(entry)
        return lambda: entry.__setitem__(3, False)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [e for e in self._pending if e[3] and e[0] <= end + 1e-9]
            if not due:
                break
            entry = min(due, key=lambda e: (e[0], e[1]))
            entry[3] = False
            self.now = entry[0]
            entry[2]()
        self.now = end
        self._pending = [e for e in self._pending if e[3]]


@pytest.fixture
def factory():
    """gpiozero's global factory as a mock, reset afterwards so pins are free for the next test."""
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = previous


@pytest.fixture
def bus_events():
    bus = Bus()
    events: list[DeviceEvent] = []
    bus.subscribe(DeviceEvent, events.append)
    return bus, events


def of(events: list[DeviceEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def make(bus: Bus, timer: FakeTimer, cls: type = GpioMetalDetector, **config: Any):
    return cls("detector", {"alarm_pin": 17, **config}, bus, timer=timer)


def test_registry_names():
    assert driver_class("metal_detector", "gpio") is GpioMetalDetector
    assert driver_class("metal_detector", "sim") is SimMetalDetector


def test_active_low_alarm_after_debounce(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer)
    det.start()
    assert det.status().state == OK
    assert of(events, DeviceStateChanged)[-1].state == OK
    pin = factory.pin(17)
    assert pin.state == 1  # pull-up: idle high
    pin.drive_low()
    timer.advance(0.049)
    assert of(events, MetalAlarm) == []
    timer.advance(0.002)
    assert [e.active for e in of(events, MetalAlarm)] == [True]
    assert det.status().details["alarm_active"] is True
    pin.drive_high()
    timer.advance(0.1)
    assert [e.active for e in of(events, MetalAlarm)] == [True, False]
    assert det.status().details == {"alarms": 1, "presses": {"clear": 0, "recheck": 0},
                                    "alarm_active": False, "armed": None}
    det.stop()


def test_active_high_alarm(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer, alarm_active_low=False, debounce_ms=20)
    det.start()
    pin = factory.pin(17)
    assert pin.state == 0  # pull-down: idle low
    pin.drive_high()
    timer.advance(0.03)
    pin.drive_low()
    timer.advance(0.03)
    assert [e.active for e in of(events, MetalAlarm)] == [True, False]
    det.stop()


def test_bounce_shorter_than_debounce_is_no_alarm(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer)
    det.start()
    pin = factory.pin(17)
    for _ in range(5):  # contact chatter: 10 ms pulses
        pin.drive_low()
        timer.advance(0.01)
        pin.drive_high()
        timer.advance(0.01)
    timer.advance(1.0)
    assert of(events, MetalAlarm) == []
    # chatter that ends low: one alarm, debounce_ms after the last edge
    pin.drive_low()
    timer.advance(0.02)
    pin.drive_high()
    timer.advance(0.02)
    pin.drive_low()
    timer.advance(0.045)
    assert of(events, MetalAlarm) == []
    timer.advance(0.01)
    assert [e.active for e in of(events, MetalAlarm)] == [True]
    assert det.status().details["alarms"] == 1
    det.stop()


def test_buttons_need_a_press_longer_than_debounce(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer, clear_pin=27, recheck_pin=22)
    det.start()
    clear, recheck = factory.pin(27), factory.pin(22)
    clear.drive_low()  # a 10 ms bounce: not a press
    timer.advance(0.01)
    clear.drive_high()
    timer.advance(0.2)
    assert of(events, SweepButton) == []
    for pin in (clear, recheck, clear):
        pin.drive_low()
        timer.advance(0.12)
        pin.drive_high()
        timer.advance(0.12)
    assert [e.button for e in of(events, SweepButton)] == ["clear", "recheck", "clear"]
    assert det.status().details["presses"] == {"clear": 2, "recheck": 1}
    det.stop()


def test_armed_line(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer, armed_pin=23)
    det.start()
    # nothing pulls the active-low line down: the detector is not there / not armed
    assert [e.armed for e in of(events, DetectorArmed)] == [False]
    status = det.status()
    assert (status.state, status.reason, status.details["armed"]) == (OK, "not armed", False)
    factory.pin(23).drive_low()
    timer.advance(0.06)
    assert [e.armed for e in of(events, DetectorArmed)] == [False, True]
    assert det.status().reason == ""
    assert det.status().details["armed"] is True
    det.stop()


def test_no_gpio_is_absent_not_an_exception(monkeypatch, bus_events):
    bus, events = bus_events
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")  # -> BadPinFactory
    det = GpioMetalDetector("detector", {"alarm_pin": 17}, bus)
    det.start()
    status = det.status()
    assert status.state == ABSENT
    assert "no-such-factory" in status.reason
    assert [(e.state, e.reason) for e in of(events, DeviceStateChanged)] == [(ABSENT, status.reason)]
    result = det.selftest()
    assert result.skipped and not result.ok
    det.stop()
    det.stop()
    assert of(events, DeviceStateChanged)[-1].state == STOPPED


def test_pin_in_use_is_a_fault(factory, bus_events):
    bus, _ = bus_events
    first = make(bus, FakeTimer())
    first.start()
    second = make(bus, FakeTimer())
    second.start()
    assert second.status().state == FAULT
    assert "GPIOPinInUse" in second.status().reason
    second.stop()
    first.stop()


def test_selftest_reads_lines(factory, bus_events):
    bus, _ = bus_events
    timer = FakeTimer()
    det = make(bus, timer, armed_pin=23, clear_pin=27)
    assert det.selftest().skipped  # not started
    det.start()
    result = det.selftest()
    names = {s.name: s for s in result.steps}
    assert not result.ok
    assert names["alarm line idle"].ok
    assert "reads high (active-low)" in names["alarm line idle"].detail
    assert not names["detector armed"].ok
    assert names["clear button released"].ok
    factory.pin(23).drive_low()
    timer.advance(0.06)
    assert det.selftest().ok
    factory.pin(17).drive_low()  # alarm stuck on: a fault the technician must see
    result = det.selftest()
    assert not result.ok
    assert "ALARM" in {s.name: s for s in result.steps}["alarm line idle"].detail
    assert result.as_dict()["steps"][0]["name"] == "plan"
    det.stop()


def test_stop_is_idempotent_and_cancels_pending_debounce(factory, bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    det = make(bus, timer, clear_pin=27)
    det.stop()  # never started
    det.start()
    factory.pin(17).drive_low()
    det.stop()
    det.stop()
    timer.advance(1.0)
    assert of(events, MetalAlarm) == []
    assert [e.state for e in of(events, DeviceStateChanged)] == [OK, STOPPED]
    assert det.status().state == STOPPED
    again = make(bus, timer, clear_pin=27)  # pins were released
    again.start()
    assert again.status().state == OK
    again.stop()


def test_sim_actions_on_private_mock_pins(bus_events):
    bus, events = bus_events
    timer = FakeTimer()
    sim = SimMetalDetector("detector", {}, bus, timer=timer)
    sim.start()
    assert sim._factory is not None and sim._factory is not Device.pin_factory
    assert [e.armed for e in of(events, DetectorArmed)] == [True]
    assert sim.status().details["armed"] is True
    assert sim.simulate("alarm", ["on"]) == {"action": "alarm", "value": "on", "pin": "GPIO17",
                                            "level": "low"}
    timer.advance(0.06)
    sim.simulate("alarm", ["off"])
    timer.advance(0.06)
    assert [e.active for e in of(events, MetalAlarm)] == [True, False]
    sim.simulate("button", ["clear"])
    timer.advance(0.5)
    sim.simulate("button", ["recheck"])
    timer.advance(0.5)
    assert [e.button for e in of(events, SweepButton)] == ["clear", "recheck"]
    sim.simulate("armed", ["off"])
    timer.advance(0.06)
    sim.simulate("armed", ["on"])
    timer.advance(0.06)
    assert [e.armed for e in of(events, DetectorArmed)] == [True, False, True]
    assert sim.selftest().ok
    sim.stop()
    sim.stop()


@pytest.mark.parametrize("action,args", [
    ("alarm", []), ("alarm", ["maybe"]), ("alarm", ["on", "off"]), ("button", ["panic"]),
    ("armed", ["1"]), ("explode", []),
])
def test_sim_bad_args(bus_events, action, args):
    bus, _ = bus_events
    sim = SimMetalDetector("detector", {}, bus, timer=FakeTimer())
    sim.start()
    with pytest.raises(SimulationError, match="expected 'alarm on|off'"):
        sim.simulate(action, args)
    sim.stop()


def test_sim_refuses_unconfigured_lines_and_stopped_device(bus_events):
    bus, _ = bus_events
    sim = SimMetalDetector("detector", {"armed_pin": None, "recheck_pin": None}, bus,
                           timer=FakeTimer())
    with pytest.raises(SimulationError, match="not started"):
        sim.simulate("alarm", ["on"])
    sim.start()
    with pytest.raises(SimulationError, match="no armed_pin"):
        sim.simulate("armed", ["on"])
    with pytest.raises(SimulationError, match="no recheck_pin"):
        sim.simulate("button", ["recheck"])
    sim.stop()


def test_sim_with_real_timer_thread(bus_events):
    """The default timer debounces on its own thread: wait for the event, never sleep."""
    bus, _ = bus_events
    got = {MetalAlarm: threading.Event(), SweepButton: threading.Event()}
    bus.subscribe(MetalAlarm, lambda e: e.active and got[MetalAlarm].set())
    bus.subscribe(SweepButton, lambda e: got[SweepButton].set())
    sim = SimMetalDetector("detector", {"debounce_ms": 10}, bus)
    sim.start()
    sim.simulate("alarm", ["on"])
    sim.simulate("button", ["clear"])
    assert got[MetalAlarm].wait(5)
    assert got[SweepButton].wait(5)
    sim.stop()
