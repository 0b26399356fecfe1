"""Exports of what the rooms published, per exam session: attendance, check-ins (masked),
sweeps, incidents and the rooms' session records, as CSV (for a spreadsheet) and JSON (for
a program), with a cross-check of each room's record against the events the site holds
and a manifest of every file's SHA-256.

The cross-check is what makes the export worth signing: a room's session record names
the seat plan (``seatplan_sha256``) and counts its check-in events; the site checks that
every check-in and the attendance of that room name the same seat plan, that it holds as
many check-ins as the record counts, and that attendance and record agree on who was
present. The record files' own SHA-256 (kept on the box, printed on its record card) are
listed so a paper card can be matched to the site's copy.

ID numbers arrive masked; every text field is masked again on the way out all the same,
so a room with a bug cannot leak one through an export.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from examroom.contract.times import epoch
from examroom.contract.vocabulary import EventKind
from examroom.drivers.gb11643 import mask_ids_in_text
from examroom.site.config import SiteConfig
from examroom.site.store import Store

TABLES: dict[str, tuple[str, ...]] = {
    EventKind.CHECKIN: ("room", "seat", "ticket", "id_masked", "verdict", "method", "device", "time",
                        "reentry", "reason", "seq", "id"),
    EventKind.SWEEP: ("room", "seat", "result", "alarms", "rechecks", "started", "cleared", "duration_s",
                      "medical_metal_exempt", "special_items", "device", "seq", "id"),
    EventKind.INCIDENT: ("room", "type", "device", "cause", "phase", "start", "end", "duration_s", "seq", "id"),
    EventKind.ATTENDANCE: ("room", "total", "present", "absent", "late_refused", "suspects", "manual_admissions",
                           "pending_sweep", "complete", "cutoff", "time", "seatplan_sha256", "seq", "id"),
}
TIME_FIELDS = ("time", "started", "cleared", "cutoff")  # rendered in the site's zone, whichever version sent them


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_ids_in_text(value)
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


class Export:
    def __init__(self, store: Store, zone: ZoneInfo) -> None:
        self.store = store
        self.zone = zone

    def _when(self, v: Any) -> Any:
        """A room's time as ISO 8601 in the exam's zone, to the second: an ISO string of contract
        version 2 and the epoch seconds of version 1 (events from boxes not yet upgraded, or
        held from before) read alike, so one export never mixes the two."""
        t = epoch(v)
        return datetime.fromtimestamp(t, self.zone).isoformat(timespec="seconds") if t is not None else v

    def rows(self, exam: str, kind: str, rooms: list[str] | None) -> list[dict[str, Any]]:
        out = []
        for ev in self.store.events(exam=exam, kind=kind, limit=10_000_000):
            if rooms and ev["room"] not in rooms:
                continue
            data = ev.get("data") or {}
            row = {"room": ev["room"], "seq": ev.get("seq"), "id": ev.get("id")}
            row |= {k: self._when(data.get(k)) if k in TIME_FIELDS else data.get(k)
                    for k in TABLES[kind] if k not in row}
            out.append(_masked(row))
        return out

    def records(self, exam: str, rooms: list[str] | None) -> dict[str, dict[str, Any]]:
        """The newest session record of each room (a room re-publishes after a restart)."""
        found: dict[str, dict[str, Any]] = {}
        for ev in self.store.events(exam=exam, kind=EventKind.SESSION_RECORD, limit=100_000):
            if not rooms or ev["room"] in rooms:
                found[ev["room"]] = _masked(ev.get("data") or {})
        return found

    def crosscheck(self, exam: str, records: dict[str, dict[str, Any]],
                   tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        shas = {(ev["room"], ev.get("data", {}).get("seatplan_sha256"))
                for kind in (EventKind.CHECKIN, EventKind.ATTENDANCE)
                for ev in self.store.events(exam=exam, kind=kind, limit=10_000_000)}
        rooms = sorted({r["room"] for rows in tables.values() for r in rows} | set(records))
        for room in rooms:
            rec = records.get(room)
            problems: list[str] = []
            room_shas = {sha for r, sha in shas if r == room}
            checkins = sum(1 for r in tables[EventKind.CHECKIN] if r["room"] == room)
            attendance = [r for r in tables[EventKind.ATTENDANCE] if r["room"] == room]
            if rec is None:
                problems.append("no session record from the room")
            else:
                if room_shas - {rec.get("seatplan_sha256")}:
                    problems.append(f"seat plan differs: record {rec.get('seatplan_sha256')}, "
                                    f"events {sorted(s for s in room_shas if s)}")
                if rec.get("checkin_events") != checkins:
                    problems.append(f"the record counts {rec.get('checkin_events')} check-ins, the site holds {checkins}")
                if attendance and attendance[-1].get("present") != rec.get("present"):
                    problems.append(f"attendance says {attendance[-1].get('present')} present, "
                                    f"the record {rec.get('present')}")
            result[room] = {"ok": not problems, "problems": problems,
                            "seatplan_sha256": rec.get("seatplan_sha256") if rec else None,
                            "record_files": rec.get("files", []) if rec else [],
                            "checkins_held": checkins}
        return result


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})
    return buf.getvalue()


def _write(out: Path, rel: str, text: str, manifest: dict[str, str]) -> None:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)
    manifest[rel] = hashlib.sha256(data).hexdigest()


def export(cfg: SiteConfig, out_dir: str, exam: str | None = None, rooms: list[str] | None = None) -> int:
    """Write the export; returns 0, or 1 when a room's record fails its cross-check."""
    store = Store(cfg.store["path"])
    store.open()
    try:
        ex = Export(store, ZoneInfo(cfg.site["timezone"]))
        out = Path(out_dir)
        manifest: dict[str, str] = {}
        failed = []
        for session in [exam] if exam else store.exams():
            tables = {kind: ex.rows(session, kind, rooms) for kind in TABLES}
            for kind, rows in tables.items():
                _write(out, f"{session}/{kind}.csv", _csv(rows, TABLES[kind]), manifest)
                _write(out, f"{session}/{kind}.json", json.dumps(rows, ensure_ascii=False, indent=1), manifest)
            records = ex.records(session, rooms)
            _write(out, f"{session}/session_records.json", json.dumps(records, ensure_ascii=False, indent=1), manifest)
            check = ex.crosscheck(session, records, tables)
            _write(out, f"{session}/crosscheck.json", json.dumps(check, ensure_ascii=False, indent=1), manifest)
            for room, c in check.items():
                print(f"{session} {room}: {'ok' if c['ok'] else 'MISMATCH: ' + '; '.join(c['problems'])}")
                if not c["ok"]:
                    failed.append((session, room))
        (out / "manifest.json").write_text(json.dumps(
            {"site": cfg.site["id"], "written": datetime.now(ZoneInfo(cfg.site["timezone"])).isoformat(
                timespec="seconds"), "sha256": manifest}, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"export written to {out} ({len(manifest)} files, manifest.json lists their SHA-256)")
        return 1 if failed else 0
    finally:
        store.close()
