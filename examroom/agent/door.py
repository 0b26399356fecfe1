"""Door feedback: each check-in verdict as a light and a beep the proctor at the door sees.

Admitted: green; refused (not in the room, late, unknown or invalid card, seat
plan not verified...): red with beeps; suspect or duplicate: amber blinking. The
lights follow the *emitted* ``checkin`` events (``Agent.emit`` fans each stored
event out to its listeners), not the hardware bus: the door shows what went on
the record, including manual admissions typed at the box.

Never in check-in's way: ``on_event`` only queues (it runs inside ``emit``,
under the station's lock); a worker thread plays the patterns, and a newer
verdict cuts the current one short (the proctor looks at the candidate in front
of them). A GPIO that cannot be opened or driven is logged, published once as a
``device`` event (``device: "door"``) and shown in the alerts; it is never raised
into check-in, and the door page still shows every verdict.

Pins come from gpiozero like the metal detector's (``backend = "gpio"``:
``GPIOZERO_PIN_FACTORY`` or the board's own; ``"sim"``: private mock pins,
and ``EXAMROOM_BACKEND=sim`` forces that, loudly). The outputs are driven on
and off here, not with gpiozero's ``blink``, so a pattern's timing is one
thread's and a test can read it off the pins.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable

from examroom.agent.door_page import DoorPage, label
from examroom.contract.vocabulary import DeviceState, EventKind

log = logging.getLogger(__name__)

OUTPUTS = ("green", "red", "amber", "buzzer")
ADMITTED, REFUSED, ATTENTION = "green", "red", "amber"  # the page's colours name the patterns
NAME = "door"
Emit = Callable[[str, dict[str, Any]], Any]
Step = tuple[frozenset[str], float]  # outputs on, for seconds
_STOP = object()


def signal_for(verdict: str) -> str | None:
    """The pattern of a verdict; None: nothing to show at the door (left, handed in)."""
    colour = label(verdict)[2]
    return colour if colour in (ADMITTED, REFUSED, ATTENTION) else None


def pattern(signal: str, opts: dict[str, Any], wired: frozenset[str]) -> list[Step]:
    """The steps of one verdict's pattern, from the [door] durations."""
    if signal == ADMITTED:
        return [(frozenset({"green"}), opts["admitted_s"])]
    if signal == REFUSED:
        red, beep = frozenset({"red"}), frozenset({"red", "buzzer"})
        steps = [s for _ in range(opts["beeps"]) for s in ((beep, opts["beep_s"]), (red, opts["beep_s"]))]
        rest = opts["refused_s"] - 2 * opts["beeps"] * opts["beep_s"]
        return steps + ([(red, rest)] if rest > 0 else [])
    warn = frozenset({"amber" if "amber" in wired else "red"})
    blinks = max(1, round(opts["attention_s"] / (2 * opts["blink_s"])))
    return [(warn, opts["blink_s"]), (frozenset(), opts["blink_s"])] * blinks


class DoorSignals:
    """The LEDs and the buzzer, played on their own thread."""

    def __init__(self, options: dict[str, Any], emit: Emit) -> None:
        self._opts = options
        self._emit = emit
        self._pins = {o: options[f"{o}_pin"] for o in OUTPUTS if options.get(f"{o}_pin") is not None}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outputs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._state, self._reason = DeviceState.STOPPED, ""
        self._faults: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._factory: Any = None  # the sim backend's private MockFactory

    def _backend(self) -> str:
        forced = os.environ.get("EXAMROOM_BACKEND", "")
        if forced == "sim" and self._opts["backend"] != "sim":
            log.warning("EXAMROOM_BACKEND=sim: the door lights run on simulated pins; nothing lights at the door")
            return "sim"
        return self._opts["backend"]

    def start(self) -> None:
        """Each output on its own: one pin that cannot be opened is a fault, the others still work."""
        try:
            from gpiozero import LED, Buzzer

            self._factory = self._pin_factory(self._backend())
        except ImportError as e:  # no gpiozero at all
            self._report(DeviceState.ABSENT, f"no GPIO: {e}")
            return
        for name, pin in self._pins.items():
            try:
                self._outputs[name] = (Buzzer if name == "buzzer" else LED)(pin, pin_factory=self._factory)
            except ImportError as e:  # gpiozero's BadPinFactory: no pin library works on this machine
                self._close_outputs()
                self._report(DeviceState.ABSENT, f"no GPIO: {e}")
                return
            except Exception as e:  # a pin in use, a pin this board does not have
                with self._lock:
                    self._faults[name] = f"{type(e).__name__}: {e}"
                self._report(DeviceState.FAULT, f"{name} output on {pin} cannot be opened: {type(e).__name__}: {e}")
        if not self._faults:
            with self._lock:
                self._state, self._reason = DeviceState.OK, ""
        if self._outputs:
            self._thread = threading.Thread(target=self._run, name="door-signals", daemon=True)
            self._thread.start()
            log.info("door signals on %s", ", ".join(f"{o} {self._pins[o]}" for o in self._outputs))

    @staticmethod
    def _pin_factory(backend: str) -> Any:
        """None: gpiozero's own choice (GPIOZERO_PIN_FACTORY, else the board's), as for the detector."""
        if backend != "sim":
            return None
        from gpiozero.pins.mock import MockFactory

        log.warning("door lights on simulated pins (backend sim): nothing lights at the door")
        return MockFactory()

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Queue the verdict's pattern; never blocks, never raises into ``emit``."""
        if kind == EventKind.CHECKIN and self._thread is not None:
            signal = signal_for(str(data.get("verdict")))
            if signal is not None:
                self._queue.put(signal)

    def _run(self) -> None:
        item: Any = None
        while True:
            if item is None:
                item = self._queue.get()
            if item is _STOP:
                return
            steps, item = pattern(item, self._opts, frozenset(self._outputs)), None
            for on, seconds in steps:
                self._drive(on)
                try:
                    item = self._queue.get(timeout=seconds)  # a newer verdict pre-empts this one
                    break
                except queue.Empty:
                    pass
            else:
                self._drive(frozenset())

    def _drive(self, on: frozenset[str]) -> None:
        for name, device in list(self._outputs.items()):
            try:
                if name in on and not device.value:
                    device.on()
                elif name not in on and device.value:
                    device.off()
            except Exception as e:  # a shorted pin, a driver error: that output is out, the others go on
                self._outputs.pop(name, None)
                with self._lock:
                    self._faults[name] = f"{type(e).__name__}: {e}"
                self._report(DeviceState.FAULT, f"{name} output on {self._pins[name]} failed: {type(e).__name__}: {e}")

    def _report(self, state: DeviceState, reason: str) -> None:
        """Loud, once per problem: the log, the alerts, and a ``device`` event for the site."""
        with self._lock:
            self._state, self._reason = state, reason
        log.error("door signals %s: %s", state, reason)
        try:
            self._emit(EventKind.DEVICE, {"device": NAME, "kind": NAME, "state": state, "reason": reason})
        except Exception:
            log.exception("door signals: the device event could not be stored")

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self._state, "reason": self._reason, "outputs": sorted(self._outputs),
                    "faults": dict(self._faults)}

    def alerts(self) -> list[str]:
        with self._lock:
            if self._state in (DeviceState.OK, DeviceState.STOPPED):
                return []
            return [f"door: lights/buzzer {self._state}: {self._reason}; the door page still shows every verdict"]

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(5)
            self._thread = None
            self._drive(frozenset())
        self._close_outputs()
        with self._lock:
            if self._state == DeviceState.OK:
                self._state = DeviceState.STOPPED

    def _close_outputs(self) -> None:
        for device in self._outputs.values():
            try:
                device.close()
            except Exception:
                log.exception("door signals: closing an output failed")
        self._outputs = {}
        if self._factory is not None:
            self._factory.close()
            self._factory = None


class Door:
    """What the daemon wires: the lights and the page, both fed by the emitted events."""

    def __init__(self, signals: DoorSignals | None, page: DoorPage | None) -> None:
        self.signals = signals
        self.page = page

    @classmethod
    def from_config(cls, config: Any, emit: Emit, clock: Callable[[], float],
                    exam_state: Callable[[], dict[str, Any]], entry_shut: Callable[[], str | None]) -> "Door":
        """Without a ``[door]`` table, a door of neither part: no table, no door feedback (no port opened)."""
        if not isinstance(config.raw.get("door"), dict):
            return cls(None, None)
        opts = config.door
        signals = DoorSignals(opts, emit) if any(opts.get(f"{o}_pin") is not None for o in OUTPUTS) else None

        def banners() -> list[str]:
            shut = entry_shut()
            return ([f"入场已关闭 / entry shut — {shut}"] if shut else []) + (signals.alerts() if signals else [])

        page = (DoorPage(opts["page_listen"], config.procedure["timezone"], config.room["id"], config.room["label"],
                         exam_state, banners, clock, config.file) if opts["page_listen"] else None)
        return cls(signals, page)

    def start(self) -> None:
        for part in (self.signals, self.page):
            if part is not None:
                part.start()

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        for part in (self.signals, self.page):
            if part is not None:
                part.on_event(kind, data)

    def alerts(self) -> list[str]:
        return [*(self.signals.alerts() if self.signals else []), *(self.page.alerts() if self.page else [])]

    def stop(self) -> None:
        for part in (self.page, self.signals):
            if part is not None:
                part.stop()
