"""The contract every hardware driver keeps.

Drivers know hardware, not MQTT and not the exam: they turn what a device does
into typed events on the agent's bus and answer ``status()`` and ``selftest()``.
The shape follows gpiozero: the device's meaning lives apart from the backend
that talks to the hardware, constructors only store what they are given
(``start()`` opens the hardware), ``stop()`` is idempotent, and errors also
subclass the matching built-in so callers can catch ``OSError``/``ValueError``.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from examroom.contract.vocabulary import DeviceState
from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.events import DeviceStateChanged

log = logging.getLogger(__name__)


class DeviceError(Exception):
    """Base of every driver error."""


class DeviceAbsent(DeviceError, OSError):
    """The hardware (or its library, or its service) is not there."""


class DeviceTimeout(DeviceError, TimeoutError):
    """The hardware did not answer in time."""


class ProtocolError(DeviceError, ValueError):
    """The hardware said something we cannot believe (bad frame, checksum...)."""


class SimulationError(DeviceError, ValueError):
    """A ``sim`` command the simulated backend does not understand."""


# Device states, as reported in status() and the heartbeat (the contract's words)
OK, ABSENT, FAULT, STOPPED = DeviceState.OK, DeviceState.ABSENT, DeviceState.FAULT, DeviceState.STOPPED


@dataclass(frozen=True)
class DeviceStatus:
    """What the heartbeat says about one device."""

    state: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        # details never override the device's state and reason (the aggregator keys on them)
        return {**self.details, "state": self.state, "reason": self.reason}


@dataclass(frozen=True)
class SelftestStep:
    """One check; ``skipped`` marks a step left out on purpose (an output nobody confirmed)."""

    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False


@dataclass(frozen=True)
class SelftestResult:
    """Outcome of ``selftest()``; ``skipped`` means nothing could be tested (device absent)."""

    device: str
    kind: str
    ok: bool
    steps: tuple[SelftestStep, ...] = ()
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "kind": self.kind,
            "ok": self.ok,
            "skipped": self.skipped,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail, "skipped": s.skipped}
                      for s in self.steps],
        }


@dataclass(frozen=True)
class Option:
    """One key of a config table: a driver's ``[[device]]`` options and the agent's own
    sections are described (and checked by examroom/agent/config.py) the same way."""

    type: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    check: Callable[[Any], bool] | None = None
    expected: str = ""  # words for the error message when ``check`` fails
    help: str = ""
    path: bool = False  # a file path: resolved relative to the config file


def positive(value: float) -> bool:
    """The check of a count, rate or duration option. Finite too: TOML spells inf and nan,
    and a poll every nan seconds never comes. (The config checks the type first, so a
    bool never gets here.)"""
    return math.isfinite(value) and value > 0


class Driver(ABC):
    """One device of the room. Subclasses set ``kind``, ``backend`` and ``options``."""

    kind: ClassVar[str]
    backend: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.config = config  # already validated against ``options``, defaults filled
        self.bus = bus
        self.clock = clock  # labels events and status with wall time
        self.monotonic = monotonic  # measures durations: must not jump when the wall clock is set
        self._lock = threading.RLock()
        self._state = STOPPED  # what status() reports; see _set_state
        self._reason = ""

    def _opt(self, key: str) -> Any:
        """An option, or its declared default: a driver built by hand (tests, tools) gets a
        config the loader did not fill."""
        return self.config.get(key, self.options[key].default)

    def emit(self, event: DeviceEvent) -> None:
        self.bus.publish(event)

    def _set_state(self, state: str, reason: str = "") -> None:
        """Record the device's state; publish and log it when the state or the reason changed.

        One rule for every driver, so the agent can rely on it: the same state and reason
        again is no news, a new reason in the same state is (a camera frozen after being
        dark needs a different fix). A reason therefore names the condition, never measures
        it: a number that moves with every poll belongs in status() details, or every poll
        becomes an event. The comparison and the assignment hold the lock, so two threads
        cannot both see one change; the event leaves after the lock is released, because
        the bus calls listeners in this thread and one that waits for another thread's
        status() must not wait for this lock. (A caller that holds the lock across the call,
        to check and set as one step against a concurrent stop(), publishes under its own
        hold.) A driver that changes state from two threads orders them itself (one poll
        thread, or a lock of its own that status() never takes).
        """
        with self._lock:
            if (state, reason) == (self._state, self._reason):
                return
            self._state, self._reason = state, reason
        # STOPPED is asked for, not suffered: only ABSENT and FAULT need a person.
        log.log(logging.INFO if state in (OK, STOPPED) else logging.WARNING, "%s: %s%s",
                self.name, state, f" ({reason})" if reason else "")
        self.emit(DeviceStateChanged(device=self.name, state=state, reason=reason, ts=self.clock()))

    @abstractmethod
    def start(self) -> None:
        """Open the hardware. Must not raise for absent hardware: report ABSENT instead."""

    @abstractmethod
    def stop(self) -> None:
        """Release the hardware. Idempotent."""

    @abstractmethod
    def status(self) -> DeviceStatus:
        ...

    @abstractmethod
    def selftest(self) -> SelftestResult:
        ...

    @classmethod
    def selftest_actions(cls, config: dict[str, Any]) -> list[str]:
        """What ``selftest(act=True)`` would do to outputs (relay, speaker), in words for a person.

        Empty for drivers whose self-test only reads. A driver that returns
        something accepts ``selftest(act=...)``, so the caller can explain and
        confirm first, as gpiozero's pintest does before it drives a pin.
        """
        return []

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        """Act out a hardware happening (sim backends only)."""
        raise SimulationError(f"device {self.name!r} ({self.kind}/{self.backend}) has no simulation")

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "Driver":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
