"""In-process typed event bus between drivers and the agent.

It lives with the drivers because they publish on it: drivers depend on nothing
in examroom/agent/, so a driver can be used (and tested) without the daemon.

Modelled on zigbee2mqtt's event bus: listeners subscribe to an event type (and
get its subclasses too), dispatch is synchronous in the publishing thread so
ordering is the driver's own, and a listener that raises is logged and counted,
never allowed to break the driver that published or the other listeners.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceEvent:
    """Base of every event a driver emits. ``device`` is the configured device name."""

    device: str
    ts: float = field(default_factory=time.time, kw_only=True)


E = TypeVar("E", bound=DeviceEvent)
Listener = Callable[[Any], None]


class Bus:
    def __init__(self) -> None:
        self._listeners: list[tuple[type, Listener]] = []
        self._lock = threading.Lock()
        self.listener_errors = 0

    def subscribe(self, event_type: type[E], listener: Callable[[E], None]) -> Callable[[], None]:
        """Register; returns a function that unsubscribes."""
        entry = (event_type, listener)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def publish(self, event: DeviceEvent) -> None:
        with self._lock:
            targets = [fn for t, fn in self._listeners if isinstance(event, t)]
        for fn in targets:
            try:
                fn(event)
            except Exception:  # a failing listener must never break a driver
                self.listener_errors += 1
                log.exception("bus listener %r failed on %s", fn, type(event).__name__)
