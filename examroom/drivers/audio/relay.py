"""The relay that picks the feed of the unified audio source: primary or backup.

Released means primary, so a dead box falls back to it. The relay only switches; when to
switch is the caller's decision (the agent's command, an operator, the self-test).
"""
from __future__ import annotations

from typing import Any, Callable

from examroom.contract.vocabulary import AudioSource, SwitchReason
from examroom.drivers.base import DeviceAbsent

SOURCES = tuple(AudioSource)  # relay released = primary, so a dead box falls back to it
REASONS = tuple(SwitchReason)


def check_switch(source: str, reason: str) -> None:
    """Refuse (ValueError) a source or a reason for switching that is not one of ours."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")


class SourceRelay:
    """A gpiozero output driving the primary/backup relay, and the source it selects.

    Not locked: the monitor calls it holding its own lock. A relay that cannot be opened
    is kept as ``error`` rather than raised, because no GPIO must not stop the audio
    monitor; the monitor reports it in its status.
    """

    def __init__(self) -> None:
        self._device: Any = None
        self.error = ""
        self.source = "unknown"

    @property
    def is_open(self) -> bool:
        return self._device is not None

    def open(self, pin: int | str | None, active_high: bool, pin_factory: Callable[[], Any]) -> None:
        """Open the relay on ``pin`` (None: no relay configured), on primary.

        ``pin_factory`` is called only when a relay is opened: None means gpiozero's
        default factory (the board's), and making a mock one has a cost.
        """
        self._device, self.error, self.source = None, "", "unknown"
        if pin is None:
            return
        try:
            from gpiozero import OutputDevice
            # Start on primary: the line is released whenever the agent exits, so
            # "keep the previous position" cannot be kept anyway; be explicit instead.
            self._device = OutputDevice(pin, active_high=active_high, initial_value=False,
                                        pin_factory=pin_factory())
            self.source = "primary"
        except Exception as exc:  # no GPIO must not stop the audio monitor
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Release the GPIO line; which source is on is unknown until the next ``open``."""
        if self._device is not None:
            self._device.close()
            self._device = None
        self.source = "unknown"

    def switch(self, source: str) -> str:
        """Select ``source`` (one of ``SOURCES``); returns the source selected before."""
        if self._device is None:
            raise DeviceAbsent(f"relay unavailable: {self.error or 'device not started'}")
        previous = self.source
        if source == "backup":
            self._device.on()
        else:
            self._device.off()
        self.source = source
        return previous
