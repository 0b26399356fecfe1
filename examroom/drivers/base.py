"""The contract every hardware driver keeps.

Drivers know hardware, not MQTT and not the exam: they turn what a device does
into typed events on the agent's bus and answer ``status()`` and ``selftest()``.
The shape follows gpiozero: the device's meaning lives apart from the backend
that talks to the hardware, constructors only store what they are given
(``start()`` opens the hardware), ``stop()`` is idempotent, and errors also
subclass the matching built-in so callers can catch ``OSError``/``ValueError``.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from examroom.drivers.bus import Bus, DeviceEvent


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


# Device states, as reported in status() and the heartbeat.
OK = "ok"            # present and working
ABSENT = "absent"    # not found: no hardware, no library, no service
FAULT = "fault"      # present but not working right (needs a person)
STOPPED = "stopped"  # not started yet, or stopped


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


class Driver(ABC):
    """One device of the room. Subclasses set ``kind``, ``backend`` and ``options``."""

    kind: ClassVar[str]
    backend: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config  # already validated against ``options``, defaults filled
        self.bus = bus
        self.clock = clock
        self._lock = threading.RLock()

    def emit(self, event: DeviceEvent) -> None:
        self.bus.publish(event)

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
