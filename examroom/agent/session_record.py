"""What happened in one session, rebuilt from the events the check-in station emitted.

State is a fold over (kind, data) pairs so that the live path and a journal
replay after a restart run the very same code: what was emitted is what is
remembered. Kinds starting with "_" are journal-only (alarm counts, incidents,
observation start); the others are the published events themselves, with their
times as epoch seconds: the session book publishes the contract's copy (ISO 8601,
``contract/times.py``) and journals these, so the record, the attendance and
``published`` compute with floats and leave the wire format to the book.

The record files are for the room record card (考场记事卡): the proctor prints
them, so they carry names, but ID numbers stay masked even there. The published
record (``published``) has the same rows without names: the site sees who sat
where, when and how each was checked and swept, and every incident, from the
event alone; what is in it is built field by field, so nothing typed into a
free-form incident rides along.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from examroom.agent.schedule import Session
from examroom.agent.seatplan import SeatPlan
from examroom.contract.times import epoch
from examroom.contract.vocabulary import (OPEN_SUSPECTS, PRESENT, AttendanceStatus, EventKind, Lookup, Method,
                                          SeatStatus, SweepResult, Verdict, VerificationOutcome)

# a seat's status after a verdict that moves the candidate out of (or back to) the door's way
STATUS_AFTER = {Verdict.LEFT: SeatStatus.OUT, Verdict.HANDED_IN: SeatStatus.HANDED_IN,
                Verdict.SENT_TO_VERIFICATION: SeatStatus.AT_VERIFICATION,
                Verdict.IDENTITY_REFUSED: SeatStatus.IDENTITY_REFUSED}
# a seat's line on the record: a suspect still at the verification point is an open suspect
ROW_STATUS = {SeatStatus.ABSENT: AttendanceStatus.ABSENT, SeatStatus.SUSPECT: AttendanceStatus.SUSPECT,
              SeatStatus.AT_VERIFICATION: AttendanceStatus.SUSPECT, SeatStatus.HANDED_IN: AttendanceStatus.HANDED_IN,
              SeatStatus.IDENTITY_REFUSED: AttendanceStatus.IDENTITY_REFUSED}
# verdicts that turn nobody away: not in a candidate's ``refusals`` on the printed card
NOT_REFUSALS = (Verdict.ADMITTED, Verdict.LEFT, Verdict.SUSPECT, Verdict.DUPLICATE, Verdict.HANDED_IN,
                Verdict.SENT_TO_VERIFICATION)


@dataclass
class PendingSweep:
    seat: str
    started: float
    alarms: int = 0
    rechecks: int = 0


@dataclass
class SeatState:
    status: str = SeatStatus.ABSENT
    before_suspect: str = SeatStatus.ABSENT
    confirmations: list[str] = field(default_factory=list)


@dataclass
class SessionState:
    session_id: str
    observed_from: float
    seats: dict[str, SeatState] = field(default_factory=dict)
    pending: list[PendingSweep] = field(default_factory=list)  # FIFO: the order they entered
    checkins: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    confirms: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)  # exam_signal data, as due
    time_checks: list[dict[str, Any]] = field(default_factory=list)
    clock_confirms: list[dict[str, Any]] = field(default_factory=list)
    proctors: list[str] = field(default_factory=list)  # roster ids signed in, in order
    proctor_checks: list[dict[str, Any]] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)  # violation data (violations.py), in order
    attendance_sent: bool = False
    record_written: bool = False

    def seat(self, seat: str) -> SeatState:
        return self.seats.setdefault(seat, SeatState())

    def pending_for(self, seat: str) -> PendingSweep | None:
        return next((p for p in self.pending if p.seat == seat), None)

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        seat = data.get("seat")
        if kind == EventKind.CHECKIN:
            self.checkins.append(data)
            verdict = data["verdict"]
            if verdict == Verdict.ADMITTED:
                st = self.seat(seat)
                st.status, st.confirmations = SeatStatus.ADMITTED, []
                if data.get("sweep_required") and self.pending_for(seat) is None:
                    self.pending.append(PendingSweep(seat, data["time"]))
            elif verdict == Verdict.SUSPECT:
                st = self.seat(seat)
                st.before_suspect, st.status, st.confirmations = st.status, SeatStatus.SUSPECT, []
            elif verdict in STATUS_AFTER:
                self.seat(seat).status = STATUS_AFTER[verdict]
        elif kind == EventKind.SUSPECT_CONFIRM:
            self.confirms.append(data)
            self.seat(seat).confirmations.append(data["proctor"])
        elif kind == EventKind.SWEEP:
            self.sweeps.append(data)
            if not data.get("unassociated"):
                self.pending = [p for p in self.pending if p.seat != seat]
        elif kind in ("_alarm", "_recheck"):
            p = self.pending_for(seat)
            if p is not None:
                if kind == "_alarm":
                    p.alarms += 1
                else:
                    p.rechecks += 1
        elif kind == "_incident":
            self.incidents.append(data)
        elif kind == EventKind.EXAM_SIGNAL:
            self.signals.append(data)
        elif kind == EventKind.TIME_CHECK:
            self.time_checks.append(data)
        elif kind == EventKind.CLOCK_CONFIRM:
            self.clock_confirms.append(data)
        elif kind == EventKind.PROCTOR_SIGNIN:
            if data["proctor"] not in self.proctors:
                self.proctors.append(data["proctor"])
        elif kind == EventKind.PROCTOR_CHECK:
            self.proctor_checks.append(data)
        elif kind == EventKind.VIOLATION:
            self.violations.append(data)
        elif kind == EventKind.ATTENDANCE:
            self.attendance_sent = True
        elif kind == EventKind.SESSION_RECORD:
            self.record_written = True

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.seats.values() if s.status in statuses)

    def seats_in(self, order: Iterable[str], *statuses: str) -> list[str]:
        """The seats now in one of ``statuses``, in ``order`` (the seat plan's)."""
        return [s for s in order if s in self.seats and self.seats[s].status in statuses]

    def with_verdict(self, verdict: str, lookup: str | None = None) -> list[str]:
        """The seats that got ``verdict`` (and ``lookup``) at least once, in the order they first did."""
        return _unique(c["seat"] for c in self.checkins if c["verdict"] == verdict and c.get("seat")
                       and (lookup is None or c.get("lookup") == lookup))

    def late_refused(self) -> list[str]:
        return self.with_verdict(Verdict.LATE_REFUSED)

    def manual_admissions(self) -> int:
        return sum(1 for c in self.checkins if c["verdict"] == Verdict.ADMITTED and c["method"] == Method.MANUAL)


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def attendance(state: SessionState, session: Session, plan: SeatPlan, now: float) -> dict[str, Any]:
    """The 缺考 list at the late cutoff: who is in, who is not, who was turned away."""
    seats = plan.seats()
    return {
        "session": session.id, "room": plan.room, "time": now, "cutoff": session.cutoff,
        "total": len(seats),
        "present": sum(1 for s in seats if state.seat(s).status in PRESENT),
        "absent": [s for s in seats if state.seat(s).status == SeatStatus.ABSENT],
        "late_refused": state.late_refused(),
        "manual_admissions": state.manual_admissions(),
        "suspects": state.seats_in(seats, *OPEN_SUSPECTS),
        "handed_in": state.seats_in(seats, SeatStatus.HANDED_IN),
        "identity_refused": state.seats_in(seats, SeatStatus.IDENTITY_REFUSED),
        "pending_sweep": [p.seat for p in state.pending],
        "complete": state.observed_from <= session.entry_opens,
        "seatplan_sha256": plan.sha256,
    }


class _SeatFacts(NamedTuple):
    seat: str
    candidate: Any
    mine: list[dict[str, Any]]      # the seat's check-in events
    admitted: list[dict[str, Any]]  # of which admissions
    sweeps: list[dict[str, Any]]
    status: AttendanceStatus


def _seat_facts(state: SessionState, plan: SeatPlan) -> Iterator[_SeatFacts]:
    """What both the printed card and the published record say of each seat, gathered once."""
    for seat in plan.seats():
        c = plan.by_seat(seat)
        assert c is not None
        mine = [e for e in state.checkins if e.get("seat") == seat]
        yield _SeatFacts(seat, c, mine, [e for e in mine if e["verdict"] == Verdict.ADMITTED],
                         [s for s in state.sweeps if s.get("seat") == seat and not s.get("unassociated")],
                         ROW_STATUS.get(state.seat(seat).status, AttendanceStatus.PRESENT))


def _verifications(mine: list[dict[str, Any]], iso: Callable[[float], str]) -> list[dict[str, Any]]:
    """Each trip of a suspect to the identity-verification point, for the printed card: who sent
    them when, and the outcome (``None`` while they are still there, or if it never came)."""
    trips: list[dict[str, Any]] = []
    for e in mine:
        refused = e["verdict"] == Verdict.IDENTITY_REFUSED
        if e["verdict"] == Verdict.SENT_TO_VERIFICATION:
            trips.append({"sent_at": iso(e["time"]), "sent_by": e["proctor"], "outcome": None, "point": None,
                          "proctor": None, "time": None})
        elif trips and (refused or (e["verdict"] == Verdict.ADMITTED and e.get("lookup") == Lookup.VERIFICATION)):
            trips[-1].update(outcome=VerificationOutcome.REFUSED if refused else VerificationOutcome.CONFIRMED,
                             point=e["point"], proctor=e["proctor"], time=iso(e["time"]))
    return trips


def _candidate_rows(state: SessionState, session: Session, plan: SeatPlan) -> list[dict[str, Any]]:
    rows = []
    for seat, c, mine, admitted, sweeps, status in _seat_facts(state, plan):
        rows.append({
            "seat": seat, "ticket": c.ticket, "name": c.name, "id_masked": c.id_masked,
            "status": status,
            "admitted_at": session.iso(admitted[0]["time"]) if admitted else "",
            "handed_in_at": next((session.iso(e["time"]) for e in mine if e["verdict"] == Verdict.HANDED_IN), ""),
            "method": admitted[0]["method"] if admitted else "",
            "reentries": sum(1 for e in admitted if e.get("reentry")),
            "left": sum(1 for e in mine if e["verdict"] == Verdict.LEFT),
            "medical_metal": c.medical_metal,
            "special_items": list(c.special_items),
            "sweep_results": [s["result"] for s in sweeps],
            "alarms": sum(s["alarms"] for s in sweeps),
            "rechecks": sum(s["rechecks"] for s in sweeps),
            "refusals": [f'{e["verdict"]} {session.iso(e["time"])}' for e in mine
                         if e["verdict"] not in NOT_REFUSALS],
            "suspect_confirmed_by": [f["proctor"] for f in state.confirms if f["seat"] == seat],
            "verifications": _verifications(mine, session.iso),
            "violations": [v["code"] for v in state.violations if v["seat"] == seat],
        })
    return rows


def summary(state: SessionState, session: Session, plan: SeatPlan) -> dict[str, Any]:
    att = attendance(state, session, plan, session.end)
    closed = [s for s in state.sweeps if not s.get("unassociated")]
    return {
        "total": att["total"], "present": att["present"], "absent": att["absent"],
        "late_refused": att["late_refused"], "suspects": att["suspects"],
        "manual_admissions": att["manual_admissions"], "checkin_events": len(state.checkins),
        "handed_in": att["handed_in"], "reentry_refused": state.with_verdict(Verdict.REENTRY_REFUSED),
        "verified": state.with_verdict(Verdict.ADMITTED, Lookup.VERIFICATION),
        "identity_refused": att["identity_refused"],
        "sweeps": {"closed": len(closed),
                   "with_alarm": sum(1 for s in closed if s["alarms"] > 0),
                   "medical_metal_exempt": sum(1 for s in closed if s["medical_metal_exempt"]),
                   "not_cleared": sum(1 for s in closed if s["result"] in (SweepResult.NOT_CLEARED, SweepResult.LEFT_BEFORE_CLEAR)),
                   "unassociated": sum(1 for s in state.sweeps if s.get("unassociated"))},
        "incidents": len(state.incidents), "complete": att["complete"],
    }


# what an incident may show beyond its times; type-specific, absent when not given
INCIDENT_FIELDS = ("device", "cause", "stepped_s", "synced", "offset_s", "source", "pass", "problems",
                   "mean_dbfs", "peak_dbfs", "silences", "silent_s", "clipping_s", "file",
                   "seatplan_sha256", "expected_sha256", "verified", "entry_blocked", "photos_missing",
                   "seat", "code")


def _public_incident(inc: dict[str, Any], scrub: Callable[[str], str]) -> dict[str, Any]:
    """type, start, end, duration_s; an incident given with only a time and no duration (a
    clock step) is an instant: end = start, 0 s."""
    start = epoch(inc.get("start", inc.get("time", inc["recorded_at"])))
    duration = inc.get("duration_s")
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        duration = None
    if "end" in inc:
        end = epoch(inc["end"])
    else:
        end = None if start is None else round(start + (duration or 0.0), 3)
    if duration is None and start is not None and end is not None:
        duration = round(end - start, 3)
    out: dict[str, Any] = {"type": scrub(str(inc.get("type", "unknown"))), "start": start, "end": end,
                           "duration_s": duration, "recorded_at": inc["recorded_at"]}
    for k in INCIDENT_FIELDS:
        v = inc.get(k)
        if isinstance(v, str):
            out[k] = scrub(v)
        elif isinstance(v, (bool, int, float)) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            out[k] = [scrub(x) for x in v] if isinstance(v, list) else v
    return out


def _public_seats(state: SessionState, plan: SeatPlan) -> list[dict[str, Any]]:
    """One row per seat as the printed card has it, minus the name (id_masked identifies)."""
    rows = []
    for seat, c, mine, admitted, sweeps, status in _seat_facts(state, plan):
        rows.append({
            "seat": seat, "ticket": c.ticket, "id_masked": c.id_masked,
            "status": status,
            "admitted_at": admitted[0]["time"] if admitted else None,
            "method": admitted[0]["method"] if admitted else None,
            "checkins": [{"verdict": e["verdict"], "time": e["time"], "method": e["method"]} for e in mine],
            "reentries": sum(1 for e in admitted if e.get("reentry")),
            "sweeps": [{k: s[k] for k in ("result", "alarms", "rechecks", "started", "cleared",
                                          "medical_metal_exempt")} for s in sweeps],
            "rechecks": sum(s["rechecks"] for s in sweeps),
            "suspect_confirmed_by": [f["proctor"] for f in state.confirms if f["seat"] == seat],
            **({"violations": codes} if (codes := [v["code"] for v in state.violations if v["seat"] == seat]) else {}),
        })
    return rows


def published(state: SessionState, session: Session, plan: SeatPlan,
              scrub: Callable[[str], str]) -> dict[str, Any]:
    """The ``session_record`` event's body: the summary, every seat's row, the check-ins that
    matched no seat, the unassociated sweeps and the incident list. No names, no full IDs."""
    return {
        **summary(state, session, plan),
        "seats": _public_seats(state, plan),
        "unmatched_checkins": [{k: e.get(k) for k in ("verdict", "time", "method", "device", "id_masked")}
                               for e in state.checkins if not e.get("seat")],
        "unassociated_sweeps": [{k: s[k] for k in ("trigger", "device", "time")}
                                for s in state.sweeps if s.get("unassociated")],
        "incidents": [_public_incident(i, scrub) for i in state.incidents],
        "violations": [{**{k: v[k] for k in ("seat", "ticket", "code", "text", "by", "escalated")},
                        "time": epoch(v["time"]), **({"note": v["note"]} if "note" in v else {})}
                       for v in state.violations],
        **procedure(state),
    }


def procedure(state: SessionState) -> dict[str, Any]:
    """The exam-day procedure on the record: the signals as they fell due, the clock checks
    and who was on duty. Field by field, roster ids only: a proctor's name, unit or sex, and
    a confirmation's note, stay in the room."""
    return {
        "signals": [{k: s[k] for k in ("signal", "at", "delay_s")} for s in state.signals],
        "clock_checks": {
            "time_checks": [{k: c[k] for k in ("box_time", "site_time", "offset_s", "ok")} for c in state.time_checks],
            "confirmations": [{k: c[k] for k in ("by", "at")} for c in state.clock_confirms]},
        "proctors": {"signed_in": list(state.proctors),
                     "checks": [{k: c[k] for k in ("trigger", "at", "ok", "problems")} for c in state.proctor_checks]},
    }


CSV_COLUMNS = ("record", "seat", "ticket", "name", "id_masked", "status", "admitted_at", "handed_in_at", "method",
               "reentries", "sweep_results", "alarms", "rechecks", "medical_metal", "special_items", "time",
               "detail")


def _csv(rows: list[dict[str, Any]], state: SessionState, session: Session) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        detail = "; ".join(r["refusals"] + ([f"left {r['left']}x"] if r["left"] else [])
                           + ([f"confirmed by {', '.join(r['suspect_confirmed_by'])}"]
                              if r["suspect_confirmed_by"] else [])
                           + [_trip_text(v) for v in r["verifications"]])
        w.writerow({**r, "record": "candidate", "sweep_results": " ".join(r["sweep_results"]),
                    "medical_metal": "yes" if r["medical_metal"] else "",
                    "special_items": "; ".join(r["special_items"]), "detail": detail})
    for s in state.sweeps:
        if s.get("unassociated"):
            w.writerow({"record": "unassociated_sweep", "time": session.iso(s["time"]),
                        "detail": f'{s["trigger"]} on {s.get("device") or "?"} with no candidate pending'})
    for inc in state.incidents:
        t = inc.get("time", inc["recorded_at"])
        w.writerow({"record": "incident", "time": session.iso(t) if isinstance(t, (int, float)) else t,
                    "detail": json.dumps({k: v for k, v in inc.items() if k not in ("time", "recorded_at")},
                                         ensure_ascii=False, sort_keys=True)})
    for v in state.violations:
        w.writerow({"record": "violation", "seat": v["seat"], "ticket": v["ticket"] or "", "time": v["time"],
                    "detail": "; ".join([f'{v["code"]} {v["text"]}', *([v["note"]] if "note" in v else []),
                                         f'by {v["by"]}', *(["reported to the site office"] if v["escalated"] else [])])})
    steps = [("signal", s["at"], s["signal"]) for s in state.signals]
    steps += [("time_check", c["box_time"], f'offset {c["offset_s"]:+.3f} s, {"ok" if c["ok"] else "WRONG"}')
              for c in state.time_checks]
    steps += [("clock_confirm", c["at"], f'wall clock checked by {c["by"]}') for c in state.clock_confirms]
    steps += [("proctor_check", c["at"], "ok" if c["ok"] else "; ".join(c["problems"])) for c in state.proctor_checks]
    for record, at, detail in sorted(steps, key=lambda r: datetime.fromisoformat(r[1])):
        w.writerow({"record": record, "time": at, "detail": detail})
    return out.getvalue()


def _trip_text(v: dict[str, Any]) -> str:
    """One trip to the verification point, as the printed card says it (times already ISO)."""
    sent = f"sent to identity verification {v['sent_at']} by {v['sent_by']}"
    if v["outcome"] is None:
        return f"{sent}, no outcome"
    return f"{sent}, {v['outcome']} {v['time']} at {v['point']} by {v['proctor']}"


Printout = Callable[[dict[str, Any]], tuple[str, str]]  # the record's JSON document -> (file suffix, text)


def _write_atomic(path: Path, text: str) -> str:
    blob = text.encode("utf-8-sig" if path.suffix == ".csv" else "utf-8")  # BOM: Excel opens it right
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return hashlib.sha256(blob).hexdigest()


def write_record(state: SessionState, session: Session, plan: SeatPlan, record_dir: Path,
                 now: float, printouts: Iterable[Printout] = ()) -> list[dict[str, str]]:
    """Write ``<session>-<room>.json`` and ``.csv``, and a file per printout made from the JSON
    document (the printed card); returns name and SHA-256 of each file."""
    record_dir.mkdir(parents=True, exist_ok=True)
    rows = _candidate_rows(state, session, plan)
    doc = {
        "room": plan.room,
        "session": {"id": session.id, "subject": session.subject, "start": session.iso(session.start),
                    "end": session.iso(session.end), "entry_opens": session.iso(session.entry_opens),
                    "cutoff": session.iso(session.cutoff),
                    "listening": [{"start": session.iso(w.start), "end": session.iso(w.end)}
                                  for w in session.listening]},
        "seatplan": {"file": Path(plan.file).name, "sha256": plan.sha256} if plan.file else None,
        "observed_from": session.iso(state.observed_from),
        "written_at": session.iso(now),
        "summary": summary(state, session, plan),
        "candidates": rows,
        "checkins": state.checkins, "sweeps": state.sweeps,
        "suspect_confirmations": state.confirms, "incidents": state.incidents,
        "signals": state.signals, "time_checks": state.time_checks, "clock_confirmations": state.clock_confirms,
        "proctors": state.proctors, "proctor_checks": state.proctor_checks,
        "violations": state.violations,
    }
    base = record_name(session.id, plan.room)
    files = []
    for path, text in ((record_dir / f"{base}.json", json.dumps(doc, ensure_ascii=False, indent=1)),
                       (record_dir / f"{base}.csv", _csv(rows, state, session)),
                       *((record_dir / f"{base}{suffix}", text) for suffix, text in (p(doc) for p in printouts))):
        files.append({"file": path.name, "sha256": _write_atomic(path, text)})
    return files


def record_name(session_id: str, room: str) -> str:
    """``<session>-<room>``, the record files' name without the suffix (the room made file-safe)."""
    return f"{session_id}-{re.sub(r'[^A-Za-z0-9_-]', '_', room)}"
