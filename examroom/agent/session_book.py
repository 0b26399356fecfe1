"""The one owner of every session's record: journal, state, incidents, attendance, record.

The check-in station, the audio and clock watchers and the trial listening all
write here, so an incident reaches its session's record whether or not the
room checks candidates in (a room without a seat plan still keeps its audio
losses and clock steps, and writes a record with them at the session's end).

Restart safety: each state change is appended to a JSON-lines journal (fsync)
after it was emitted, and ``start()`` replays it. A crash between the two can at
worst make a later action re-publish an event; it can never lose one.

Times: the state and the journal keep epoch seconds (floats), as every journal
ever written does; ``publish`` emits the contract's copy (``contract/times.py``:
ISO 8601 in the exam's zone, ``"v": 2``), so a journal from before that change
replays unchanged and the wire format is decided in one place.

One lock (``lock``, re-entrant) orders everything that reads or changes the
book; the station takes the same lock for its own decisions, so a verdict, its
journal line and the attendance that counts it can never interleave.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from datetime import tzinfo
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple
from zoneinfo import ZoneInfo

from examroom.agent import session_record as rec
from examroom.agent.events import Event
from examroom.agent.human_time import DEFAULT_ZONE
from examroom.agent.schedule import Schedule, Session
from examroom.agent.seatplan import SeatPlan
from examroom.contract.times import to_wire
from examroom.contract.vocabulary import EventKind, Incident, Phase

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], "Event | None"]  # None: refused telemetry (or a test's list)
SessionEnd = Callable[[Session, rec.SessionState, float], None]
SessionTick = Callable[[Session, rec.SessionState, float], None]


class IncidentError(ValueError):
    """An incident that cannot be kept (not JSON); the caller's request fails with the text."""


class Published(NamedTuple):
    """What ``publish`` sent: the event's id (None when not stored) and its data as published,
    times as the contract writes them, for a reply that must say what the site was told."""

    id: str | None
    data: dict[str, Any]


class SessionBook:
    def __init__(self, schedule: Schedule, plan: SeatPlan, emit: Emit, clock: Callable[[], float],
                 record_dir: str | Path, scrub: Callable[[str], str],
                 journal_path: str | Path | None = None, zone: tzinfo | None = None) -> None:
        """``zone``: the exam's (``[procedure] timezone``), the offset of every published time."""
        self.zone = zone if zone is not None else ZoneInfo(DEFAULT_ZONE)
        self.schedule = schedule
        self.plan = plan
        self._emit = emit
        self._clock = clock
        self._record_dir = Path(record_dir)
        self._scrub = scrub
        self._journal = Path(journal_path) if journal_path else None
        self.lock = threading.RLock()
        self._states: dict[str, rec.SessionState] = {}
        self._started_at: float | None = None
        self._at_end: list[SessionEnd] = []
        self._at_tick: list[SessionTick] = []
        self._printouts: list[rec.Printout] = []
        self.journal_skipped = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Replay the journal so a restart mid-session keeps what was published and recorded."""
        with self.lock:
            self._started_at = self._clock()
            if self._journal is None or not self._journal.exists():
                return
            with open(self._journal, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    try:
                        entry = json.loads(line)
                        self._apply(entry["session"], entry["kind"], entry["data"])
                    except (ValueError, KeyError, TypeError) as e:  # a torn last line after power loss
                        self.journal_skipped += 1
                        log.warning("session journal %s line %d skipped: %s", self._journal, n, e)

    def at_session_end(self, hook: SessionEnd) -> None:
        """``hook`` runs under the lock once per session, just before its record is written
        (the station closes the sweeps still pending there)."""
        self._at_end.append(hook)

    def at_tick(self, hook: SessionTick) -> None:
        """``hook`` runs under the lock on every tick for each session whose entry has opened
        and whose record is not written yet, before its attendance and record: procedure steps
        due by the timetable (the exam signals, the proctor check at entry) are journalled with
        their session, so they happen once, restarts included, and the record lists them."""
        self._at_tick.append(hook)

    def add_printout(self, printout: rec.Printout) -> None:
        """One more file written from each record's JSON document beside it (the printed room
        record card), its SHA-256 in the record's ``files`` like the JSON's and the CSV's."""
        self._printouts.append(printout)

    # -- state --------------------------------------------------------------------------------

    def _apply(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "_observe":
            self._states.setdefault(session_id, rec.SessionState(session_id, data["from"]))
        else:
            self._states[session_id].apply(kind, data)

    def commit(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        """Journal one change (``_``-kinds are journal-only), then apply it."""
        if self._journal is not None:
            line = json.dumps({"session": session_id, "kind": kind, "data": data},
                              ensure_ascii=False, separators=(",", ":")) + "\n"
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            with open(self._journal, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        self._apply(session_id, kind, data)

    def publish(self, session_id: str | None, kind: EventKind, data: dict[str, Any]) -> Published:
        """Emit the contract's copy of ``data``, then journal ``data`` itself (floats, like every
        journal line before it); returns the event's id, so a later event can point at it, and
        the data as published."""
        wire = to_wire(kind, data, self.zone)
        event = self._emit(kind, wire)
        if session_id is not None:
            self.commit(session_id, kind, data)
        return Published(event.id if event is not None else None, wire)

    def observe(self, session: Session) -> rec.SessionState:
        """The session's state, opened (and journalled) the first time the room sees it."""
        if self._started_at is None:
            raise RuntimeError("SessionBook.start() must run first (it replays the journal)")
        if session.id not in self._states:
            self.commit(session.id, "_observe", {"from": self._started_at})
        return self._states[session.id]

    def get(self, session_id: str) -> rec.SessionState | None:
        return self._states.get(session_id)

    def open_at(self, t: float) -> Session | None:
        """The session whose entry has opened and which has not ended at ``t``; None between sessions."""
        session, phase = self.schedule.phase(t)
        return session if session is not None and phase not in (Phase.BEFORE_ENTRY, Phase.ENDED) else None

    def forget_before(self, t: float) -> int:
        """Drop sessions that ended before ``t`` from the journal and the memory (retention);
        the journal is rewritten whole, atomically. Returns how many sessions went."""
        with self.lock:
            old = {s.id for s in self.schedule.sessions if s.end < t and s.id in self._states}
            old |= {sid for sid in self._states if self.schedule.get(sid) is None}  # gone from the timetable
            old = {sid for sid in old if self._states[sid].record_written or self.schedule.get(sid) is None}
            if not old:
                return 0
            for sid in old:
                del self._states[sid]
            if self._journal is not None and self._journal.exists():
                keep = []
                with open(self._journal, encoding="utf-8") as f:
                    for line in f:
                        try:
                            if json.loads(line)["session"] in old:
                                continue
                        except (ValueError, KeyError, TypeError):
                            continue  # a torn line: nothing to keep
                        keep.append(line)
                tmp = self._journal.with_name(self._journal.name + ".tmp")
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(keep)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._journal)
            return len(old)

    # -- incidents ----------------------------------------------------------------------------

    def add_incident(self, incident: Incident, *, during: Iterable[float] | None = None) -> str | None:
        """Note an incident on a session's record; returns that session's id, None when no record took it.

        Without ``during``: the session the incident names, else the one the room is in or
        waiting for (a trial listening before entry belongs to the session it prepares).
        With ``during`` (instants): only a session open (entry opened, not ended) at one of
        them takes it, so a clock step between sessions never lands on the next day's record.
        A session whose record is written takes nothing more.
        """
        with self.lock:
            now = self._clock()
            try:
                data = json.loads(json.dumps({**incident.as_dict(), "recorded_at": now}, ensure_ascii=False))
            except (TypeError, ValueError) as e:
                raise IncidentError(f"incident: expected JSON-serialisable fields ({e})") from e
            if during is not None:
                session = next((s for t in during if (s := self.open_at(t)) is not None), None)
            else:
                session = self.schedule.get(incident.session or "") or self.schedule.phase(now)[0]
            if session is None or self.observe(session).record_written:
                return None
            self.commit(session.id, "_incident", data)
            return session.id

    # -- attendance and record ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """The ``at_tick`` steps from entry opening, attendance at the cutoff (rooms with a seat
        plan) and the record at the end, the last two exactly once per session.

        A session that ended before this book started and left nothing in the journal was
        never observed: no attendance or record is invented for it.
        """
        with self.lock:
            for s in self.schedule.sessions:
                if now < s.entry_opens:
                    continue
                if s.id not in self._states and self._started_at is not None and s.end <= self._started_at:
                    continue
                state = self.observe(s)
                if not state.record_written:
                    for step in self._at_tick:
                        step(s, state, now)
                if now < s.cutoff:
                    continue
                if self.plan.candidates and not state.attendance_sent:
                    self.publish(s.id, EventKind.ATTENDANCE, rec.attendance(state, s, self.plan, now))
                if now >= s.end and not state.record_written:
                    for hook in self._at_end:
                        hook(s, state, now)
                    files = rec.write_record(state, s, self.plan, self._record_dir, now, self._printouts)
                    self.publish(s.id, EventKind.SESSION_RECORD, {
                        "session": s.id, "room": self.plan.room, "subject": s.subject,
                        "start": s.start, "end": s.end, "time": now,
                        "seatplan_sha256": self.plan.sha256 or None, "files": files,
                        **rec.published(state, s, self.plan, self._scrub)})
