"""Trial listening (试听) reports: the file a technician signs, the event, the record's line.

The audio monitor measures in epoch seconds; the file and the record's line keep them, the
event and the command's reply (what leaves the box) carry the contract's copy: times ISO 8601
in the exam's zone, ``"v": 2`` (``contract/times.py``).
"""
from __future__ import annotations

import json
import logging
from datetime import tzinfo
from pathlib import Path
from typing import Any, Callable

from examroom.agent.events import iso_now
from examroom.contract.times import to_wire
from examroom.contract.vocabulary import EventKind, Incident, IncidentType

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]


class TrialReports:
    def __init__(self, record_dir: str | Path, room_id: str, emit: Emit, clock: Callable[[], float],
                 record: Callable[[Incident], str | None], zone: tzinfo) -> None:
        """``zone``: the exam's (``[procedure] timezone``), the offset of the published times."""
        self._zone = zone
        self._dir = Path(record_dir)
        self._room = room_id
        self._emit = emit
        self._clock = clock
        self._record = record  # the session book's; None when no record took it

    def keep(self, report: dict[str, Any]) -> dict[str, Any]:
        """Write the report file, publish it and note it on the session it prepares."""
        self._dir.mkdir(parents=True, exist_ok=True)
        stamp = iso_now(self._clock()).replace(":", "")[:17]
        path = _create(self._dir, f"trial-listening-{self._room}-{stamp}",
                       json.dumps(report, ensure_ascii=False, indent=2))
        wire = to_wire(EventKind.TRIAL_LISTENING, report, self._zone)
        self._emit(EventKind.TRIAL_LISTENING, {**wire, "file": path.name})
        session = self._record(trial_summary(report, path.name))
        note = (f"kept with the record of session {session}" if session is not None else
                "no session record is open (none scheduled, or the last one's record is already written)")
        if session is None:
            log.warning("trial listening %s is on no session record: %s", path.name, note)
        return {**wire, "file": str(path), "recorded_on": session, "record": note}


def _create(directory: Path, stem: str, text: str) -> Path:
    """A new file, never an existing one: up to four trials run at once, and two ending in
    the same second kept one report when the second overwrote the first."""
    for n in range(1, 1000):
        path = directory / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: 999 trial reports named {stem}")


def trial_summary(report: dict[str, Any], file: str) -> Incident:
    """What the session record keeps of a trial listening: enough to show the room passed,
    with the report file's name for the full detail."""
    silences = report.get("silences") or []
    return Incident(IncidentType.TRIAL_LISTENING, {
        "start": report.get("start"), "end": report.get("end"),
        "duration_s": report.get("measured_s"), "device": report.get("device"),
        "source": report.get("source"), "mean_dbfs": report.get("mean_dbfs"),
        "peak_dbfs": report.get("peak_dbfs"), "silences": len(silences),
        "silent_s": round(sum(x.get("duration_s", 0) for x in silences), 3),
        "clipping_s": (report.get("clipping") or {}).get("seconds"),
        "problems": report.get("problems", []), "pass": report.get("pass"), "file": file})
