"""The vocabulary drivers speak on the bus.

One module for every event type so the agent depends on the vocabulary, not on
driver modules (which may pull hardware libraries). Events carry hardware facts
only; exam meaning (admitted, late, incident) is the agent's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from examroom.drivers.bus import DeviceEvent
from examroom.drivers.gb11643 import is_valid, mask_id


def iso_now(ts: float) -> str:
    """ISO 8601 with the box's UTC offset, to the millisecond: every time that leaves the box
    (the agent's envelopes, a driver's snapshot or health check) is written this one way."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Identity:
    """Text of a second-generation ID card. Never logged whole: ``repr`` masks it."""

    name: str
    sex: str            # 男, 女, 未知, 未说明 (GB/T 2261.1), decoded from sex_code; "" for an unknown code
    nation: str         # 汉, 蒙古, ... (GB 3304), decoded from nation_code; "" for an unknown code
    birth: str          # YYYYMMDD
    address: str
    id_number: str
    issuer: str
    valid_from: str     # YYYYMMDD
    valid_to: str       # YYYYMMDD or a word such as 长期 (long-term)
    photo_wlt: bytes = field(default=b"", repr=False)  # raw WLT; decoding needs a vendor library
    sex_code: str = ""     # as the card holds it, e.g. "1"
    nation_code: str = ""  # as the card holds it, e.g. "01"

    @property
    def id_valid(self) -> bool:
        """Whether ``id_number``'s GB 11643 check digit is right. Derived, not stored: a stored
        flag is one more thing every decoder must set, and could disagree with the number."""
        return is_valid(self.id_number)

    def __repr__(self) -> str:
        return f"Identity(id={mask_id(self.id_number)}, valid={self.id_valid})"

    __str__ = __repr__


@dataclass(frozen=True)
class DeviceStateChanged(DeviceEvent):
    """A device became present/absent/faulty (e.g. reader unplugged, pcscd restarted)."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class CardPresented(DeviceEvent):
    """A card was read. Contactless cards give ``uid``; ID card readers give ``identity``."""

    uid: str | None = None          # upper-case hex
    atr: str | None = None          # upper-case hex
    identity: Identity | None = None
    app_data: str | None = None     # hex of an application file read by APDU, if configured


@dataclass(frozen=True)
class CardRemoved(DeviceEvent):
    uid: str | None = None


@dataclass(frozen=True)
class ReaderGarbage(DeviceEvent):
    """Bytes the reader sent that we refused to believe (counted, never acted upon)."""

    reason: str
    count: int = 1


@dataclass(frozen=True)
class MetalAlarm(DeviceEvent):
    """Alarm line changed (after debounce). ``active`` True when the detector beeps."""

    active: bool


@dataclass(frozen=True)
class SweepButton(DeviceEvent):
    """A proctor pressed the "clear" (sweep done) or "recheck" button."""

    button: str  # "clear" | "recheck"


@dataclass(frozen=True)
class DetectorArmed(DeviceEvent):
    armed: bool


# Audio feed states, here rather than beside the level maths so the agent can name them
# without importing numpy (10 MB of an idle agent's 45 MB budget).
SIGNAL = "signal"
SILENCE = "silence"
CLIPPING = "clipping"
NO_INPUT = "no_input"


@dataclass(frozen=True)
class AudioLevels(DeviceEvent):
    """One measured block of the broadcast feed."""

    rms_dbfs: float
    peak_dbfs: float
    state: str  # "signal" | "silence" | "clipping" | "no_input"


@dataclass(frozen=True)
class AudioStateChanged(DeviceEvent):
    state: str
    previous: str
    since: float  # wall time the new state began (silence starts when the level dropped, not after the hold)
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None


@dataclass(frozen=True)
class AudioSourceSwitched(DeviceEvent):
    source: str  # "primary" | "backup"
    reason: str  # "command" | "auto"


@dataclass(frozen=True)
class CameraHealth(DeviceEvent):
    state: str   # "normal" | "abnormal" | "absent"
    reason: str  # "", "dark", "frozen", "blurred", "no_frames"
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClockState(DeviceEvent):
    synced: bool
    offset_s: float | None
    source: str
    stepped_s: float | None = None  # set when a step of the wall clock was seen
