"""Times on the wire, contract version 2: every time in an event's data is ISO 8601 with the
UTC offset of the exam's zone (``[procedure] timezone``), to the millisecond.

Version 1 published the check-in events and the trial listening with epoch seconds (floats)
while every other time was already ISO 8601: an aggregator had to know, field by field,
which was which. Inside the box the times stay floats: the schedule, the session book's
state and its journal compute with them, and a journal written by an older box must replay
as it is. So only the copy that leaves the box is converted (``to_wire``), where each kind is
emitted, and that copy carries ``"v": 2`` in its data: the marker travels with the data it
describes, so an event spooled by the old version before an upgrade still arrives without
it (version 1: numbers are epoch seconds), never under a marker that lies about it.

``TIMES`` names each time field of each converted kind; the tests hold it equal to the
``date-time`` fields of the schemas in docs/, so the code and the contract cannot drift.
"""
from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any, Union

from examroom.contract.vocabulary import EventKind

CONTRACT_VERSION = 2
VERSION_KEY = "v"

# A spec: TIME marks a time field; a dict maps keys to specs; a one-element list applies its
# spec to every item of a list.
TIME = "time"
Spec = Union[str, dict[str, "Spec"], list["Spec"]]

_SWEEP_TIMES: dict[str, Spec] = {"started": TIME, "cleared": TIME}
TIMES: dict[str, dict[str, Spec]] = {
    EventKind.CHECKIN: {"time": TIME, "cutoff": TIME, "earliest_handin": TIME},
    EventKind.SWEEP: {**_SWEEP_TIMES, "time": TIME},
    EventKind.SUSPECT_CONFIRM: {"time": TIME},
    EventKind.ATTENDANCE: {"time": TIME, "cutoff": TIME},
    EventKind.SESSION_RECORD: {
        "start": TIME, "end": TIME, "time": TIME,
        "seats": [{"admitted_at": TIME, "checkins": [{"time": TIME}], "sweeps": [_SWEEP_TIMES]}],
        "unmatched_checkins": [{"time": TIME}],
        "unassociated_sweeps": [{"time": TIME}],
        "incidents": [{"start": TIME, "end": TIME, "recorded_at": TIME}],
        "violations": [{"time": TIME}],
    },
    EventKind.TRIAL_LISTENING: {"start": TIME, "end": TIME, "silences": [{"start": TIME, "end": TIME}]},
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def iso(t: float, zone: tzinfo) -> str:
    """Epoch seconds as the contract writes a time: ``2026-06-07T09:00:00.123+08:00``."""
    return datetime.fromtimestamp(t, zone).isoformat(timespec="milliseconds")


def epoch(v: Any) -> float | None:
    """Epoch seconds from either form a time may arrive in: a number (version 1, or a box's
    own float) or an ISO 8601 string with offset (version 2). None for anything else, a
    string without an offset included: its instant is unknown."""
    if _number(v):
        return float(v)
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            return None
        return d.timestamp() if d.utcoffset() is not None else None
    return None


def _convert(value: Any, spec: Spec, zone: tzinfo) -> Any:
    """``value`` with the times ``spec`` names as ISO strings; containers on the way are copied,
    never changed in place (the caller keeps its floats), and what is not a number stays."""
    if spec == TIME:
        return iso(value, zone) if _number(value) else value
    if isinstance(spec, list):
        return [_convert(x, spec[0], zone) for x in value] if isinstance(value, list) else value
    if isinstance(spec, dict) and isinstance(value, dict):
        return {k: _convert(v, spec[k], zone) if k in spec else v for k, v in value.items()}
    return value


def to_wire(kind: str, data: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """The copy of ``data`` that is published: its times ISO 8601 in ``zone`` and the version
    marker first. A kind without times of its own is returned as it is.

    Also what an aggregator does with version-1 data it still holds: the numbers are epoch
    seconds, so converting them makes it version 2 (in the zone it chooses)."""
    spec = TIMES.get(kind)
    if spec is None:
        return data
    return {VERSION_KEY: CONTRACT_VERSION, **_convert(data, spec, zone)}


def version(data: Any) -> int:
    """The contract version of an event's data: 1 when it carries no marker."""
    v = data.get(VERSION_KEY) if isinstance(data, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else 1
