"""Handheld metal detector on GPIO: alarm line, "clear"/"recheck" buttons, armed line.

The detector's alarm output, the two proctor buttons and the optional
"detector present/armed" line are plain digital inputs read through gpiozero
(imported in ``start()`` so a machine without GPIO still runs the agent).

Debounce is done here, not by gpiozero's ``bounce_time``: MockPin stores
``bounce_time`` without honouring it and each real pin library debounces
differently, so relying on it would make tests and boxes disagree. Every edge
(re)arms a one-shot timer of ``debounce_ms``; only when the timer expires with
no newer edge is the line read and compared with the last stable state. A
bounce shorter than ``debounce_ms`` therefore never reaches the bus, and a level
held longer does, once. The timer is injectable (``timer=``) so tests advance
virtual time instead of sleeping, and it does not matter whether gpiozero calls
back synchronously (mock pins) or from its own thread (real pins).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, ClassVar

from examroom.drivers.bus import Bus
from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceStatus, Driver, Option,
                          SelftestResult, SelftestStep, SimulationError)
from examroom.drivers.events import DetectorArmed, MetalAlarm, SweepButton

# timer(delay_s, callback) starts a one-shot timer and returns a function that cancels it.
Timer = Callable[[float, Callable[[], None]], Callable[[], None]]


def thread_timer(delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
    timer = threading.Timer(delay_s, callback)
    timer.daemon = True
    timer.start()
    return timer.cancel


def _is_pin(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and value.strip() != "")


def _pin(required: bool = False, help: str = "") -> Option:
    return Option((int, str), required=required, check=_is_pin,
                  expected="a GPIO number (17) or a gpiozero pin name (\"GPIO17\", \"BOARD11\")",
                  help=help)


class _DebouncedLine:
    """One input whose stable changes (after ``debounce_s`` without edges) are reported."""

    def __init__(self, label: str, device: Any, debounce_s: float, timer: Timer,
                 on_change: Callable[[bool], None]) -> None:
        self.label = label
        self.device = device
        self.state: bool = bool(device.is_active)
        self.active_high = not device.pull_up  # every line is opened with a pull resistor
        self._debounce_s = debounce_s
        self._timer = timer
        self._on_change = on_change
        self._lock = threading.Lock()
        self._generation = 0  # a settle check only acts if no edge came after it was armed
        self._cancel: Callable[[], None] | None = None
        device.when_activated = self._edge
        device.when_deactivated = self._edge

    def _edge(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self._cancel is not None:
                self._cancel()
            self._cancel = self._timer(self._debounce_s, lambda: self._settle(generation))

    def _settle(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._cancel = None
            state = bool(self.device.is_active)
            if state == self.state:
                return  # a bounce that came back before the debounce time
            self.state = state
        self._on_change(state)

    def adopt(self) -> None:
        """Take the present level as the stable state without reporting a change."""
        with self._lock:
            self._generation += 1
            if self._cancel is not None:
                self._cancel()
                self._cancel = None
            self.state = bool(self.device.is_active)

    def describe(self) -> str:
        level = "high" if self.device.pin.state else "low"
        polarity = "active-high" if self.active_high else "active-low"
        return f"{self.label} on {self.device.pin} reads {level} ({polarity})"

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            if self._cancel is not None:
                self._cancel()
                self._cancel = None
        self.device.close()


class GpioMetalDetector(Driver):
    """Detector wired to the Pi's GPIO header (pins numbered as gpiozero understands them)."""

    kind: ClassVar[str] = "metal_detector"
    backend: ClassVar[str] = "gpio"
    options: ClassVar[dict[str, Option]] = {
        "alarm_pin": _pin(required=True, help="detector alarm output"),
        "alarm_active_low": Option(bool, default=True,
                                   help="alarm pulls the line low (open collector; pull-up enabled)"),
        "debounce_ms": Option(int, default=50, check=lambda v: 0 <= v <= 5000,
                              expected="0..5000 milliseconds",
                              help="a line must hold a level this long to count"),
        "clear_pin": _pin(help="\"clear\" (sweep done) button to ground"),
        "recheck_pin": _pin(help="\"recheck\" button to ground"),
        "armed_pin": _pin(help="\"detector present/armed\" line"),
        "armed_active_low": Option(bool, default=True, help="armed line is active when low"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *, timer: Timer = thread_timer) -> None:
        super().__init__(name, config, bus, clock)
        self._make_timer = timer
        self._alarm: _DebouncedLine | None = None
        self._armed: _DebouncedLine | None = None
        self._buttons: dict[str, _DebouncedLine] = {}
        self._alarms = 0
        self._presses = {"clear": 0, "recheck": 0}

    def _pin_factory(self) -> Any:
        """None means gpiozero's default factory (the board's); the sim returns its own."""
        return None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._state != STOPPED:
                return
            try:
                self._open()
            except Exception as exc:  # absent or broken GPIO must not stop the agent
                self._close_lines()
                self._set_state(*self._classify(exc))
                return
            self._set_state(OK, "" if self._armed is None or self._armed.state else "not armed")
        if self._alarm is not None and self._alarm.state:
            self._on_alarm(True)  # an alarm already sounding at start is news, not history
        if self._armed is not None:
            self.emit(DetectorArmed(self.name, armed=self._armed.state, ts=self.clock()))

    @staticmethod
    def _classify(exc: Exception) -> tuple[str, str]:
        # gpiozero's BadPinFactory is an ImportError, like a missing gpiozero itself.
        if isinstance(exc, (ImportError, OSError)):
            return ABSENT, f"no GPIO: {exc}"
        return FAULT, f"{type(exc).__name__}: {exc}"

    def _open(self) -> None:
        from gpiozero import Button, DigitalInputDevice
        factory = self._pin_factory()
        debounce_s = self._opt("debounce_ms") / 1000.0

        def line(label: str, device: Any, on_change: Callable[[bool], None]) -> _DebouncedLine:
            return _DebouncedLine(label, device, debounce_s, self._make_timer, on_change)

        self._alarm = line("alarm", DigitalInputDevice(
            self._opt("alarm_pin"), pull_up=self._opt("alarm_active_low"), pin_factory=factory),
            self._on_alarm)
        if self._opt("armed_pin") is not None:
            self._armed = line("armed", DigitalInputDevice(
                self._opt("armed_pin"), pull_up=self._opt("armed_active_low"),
                pin_factory=factory), self._on_armed)
        for button in ("clear", "recheck"):
            pin = self._opt(f"{button}_pin")
            if pin is not None:
                self._buttons[button] = line(
                    f"{button} button", Button(pin, pull_up=True, pin_factory=factory),
                    lambda pressed, b=button: self._on_button(b, pressed))

    def stop(self) -> None:
        with self._lock:
            if self._state == STOPPED:
                return
            self._close_lines()
            self._set_state(STOPPED, "")

    def _close_lines(self) -> None:
        for line in (self._alarm, self._armed, *self._buttons.values()):
            if line is not None:
                line.close()
        self._alarm = self._armed = None
        self._buttons = {}

    # -- line callbacks (gpiozero's thread, a timer thread or the simulating thread) -----

    def _on_alarm(self, active: bool) -> None:
        with self._lock:
            if active:
                self._alarms += 1
        self.emit(MetalAlarm(self.name, active=active, ts=self.clock()))

    def _on_armed(self, armed: bool) -> None:
        with self._lock:
            if self._state == OK:
                self._set_state(OK, "" if armed else "not armed")
        self.emit(DetectorArmed(self.name, armed=armed, ts=self.clock()))

    def _on_button(self, button: str, pressed: bool) -> None:
        if not pressed:
            return  # the press is the event; the release only ends the bounce
        with self._lock:
            self._presses[button] += 1
        self.emit(SweepButton(self.name, button=button, ts=self.clock()))

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> DeviceStatus:
        with self._lock:
            details: dict[str, Any] = {"alarms": self._alarms, "presses": dict(self._presses)}
            if self._state == OK:
                assert self._alarm is not None
                details["alarm_active"] = self._alarm.state
                details["armed"] = None if self._armed is None else self._armed.state
            return DeviceStatus(self._state, self._reason, details)

    def selftest(self) -> SelftestResult:
        """Like gpiozero's pintest: say what is checked, read every line once, judge the levels."""
        with self._lock:
            if self._state != OK:
                why = self._reason or "not started"  # a faulty detector fails; only an absent one is skipped
                return SelftestResult(self.name, self.kind, ok=False, skipped=self._state in (ABSENT, STOPPED),
                                      steps=(SelftestStep("gpio", False, why),))
            assert self._alarm is not None
            steps = [SelftestStep("plan", True,
                                  "reads each configured line once: the alarm line must be idle, "
                                  "the detector armed and no button held; sweep a key past the "
                                  "detector afterwards to see an alarm event")]
            alarm = self._alarm
            steps.append(SelftestStep("alarm line idle", not alarm.device.is_active,
                                      alarm.describe() + (" = ALARM" if alarm.device.is_active
                                                          else " = idle")))
            if self._armed is not None:
                armed = self._armed.device.is_active
                steps.append(SelftestStep("detector armed", armed, self._armed.describe()
                                          + (" = armed" if armed else " = NOT armed")))
            for button, line in self._buttons.items():
                held = line.device.is_active
                steps.append(SelftestStep(f"{button} button released", not held,
                                          line.describe() + (" = HELD (stuck?)" if held
                                                             else " = released")))
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps),
                              steps=tuple(steps))


class SimMetalDetector(GpioMetalDetector):
    """The same device logic on a private gpiozero MockFactory whose pins ``simulate`` drives."""

    backend: ClassVar[str] = "sim"
    options: ClassVar[dict[str, Option]] = {
        **GpioMetalDetector.options,
        "alarm_pin": dataclasses.replace(GpioMetalDetector.options["alarm_pin"],
                                         required=False, default=17),
        "clear_pin": dataclasses.replace(GpioMetalDetector.options["clear_pin"], default=27),
        "recheck_pin": dataclasses.replace(GpioMetalDetector.options["recheck_pin"], default=22),
        "armed_pin": dataclasses.replace(GpioMetalDetector.options["armed_pin"], default=23),
    }

    _factory: Any = None

    def _pin_factory(self) -> Any:
        # A private factory, never gpiozero's global one: other drivers and tests may own that.
        from gpiozero.pins.mock import MockFactory
        self._factory = MockFactory()
        return self._factory

    def _open(self) -> None:
        super()._open()
        if self._armed is not None:
            # Opening drives mock inputs to their pull level (= detector absent); the
            # simulated detector starts present and armed, as on exam morning.
            self._drive(self._armed, True)
            self._armed.adopt()

    def _close_lines(self) -> None:
        super()._close_lines()
        if self._factory is not None:
            self._factory.close()
            self._factory = None

    @staticmethod
    def _drive(line: _DebouncedLine, active: bool) -> str:
        """Set the electrical level that means ``active`` for this line's polarity."""
        high = active == line.active_high
        line.device.pin.drive_high() if high else line.device.pin.drive_low()
        return "high" if high else "low"

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        """``alarm on|off``, ``armed on|off``: set the line; ``button clear|recheck``: a press.

        A press holds the button for twice the debounce time (at least 0.1 s, a quick real
        press) and releases it on the driver's timer, so it passes the same debounce as
        a real press does.
        """
        value = args[0] if len(args) == 1 else None
        with self._lock:
            if self._state != OK:
                raise SimulationError(f"device {self.name!r} is {self._state}, not started")
            if action in ("alarm", "armed") and value in ("on", "off"):
                line = self._alarm if action == "alarm" else self._armed
                if line is None:
                    raise SimulationError(f"device {self.name!r} has no {action}_pin configured")
                level = self._drive(line, value == "on")
                return {"action": action, "value": value, "pin": str(line.device.pin),
                        "level": level}
            if action == "button" and value in ("clear", "recheck"):
                button = self._buttons.get(value)
                if button is None:
                    raise SimulationError(f"device {self.name!r} has no {value}_pin configured")
                self._drive(button, True)
                hold_s = max(2 * self._opt("debounce_ms") / 1000.0, 0.1)
                self._make_timer(hold_s, lambda: self._release(button))
                return {"action": action, "value": value, "pin": str(button.device.pin),
                        "hold_s": hold_s}
        raise SimulationError(
            f"bad sim command {' '.join([action, *args])!r}: expected 'alarm on|off', "
            "'armed on|off' or 'button clear|recheck'")

    def _release(self, button: _DebouncedLine) -> None:
        with self._lock:
            if button in self._buttons.values():  # not if the device stopped meanwhile
                self._drive(button, False)
