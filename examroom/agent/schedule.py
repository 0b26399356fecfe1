"""Exam sessions of the room and the phase of the exam at a given instant.

Every question is asked with an explicit ``now`` (epoch seconds) so the daemon
decides the clock (and tests move a fake one); nothing here reads the time.
Times must carry a UTC offset: a box whose local zone is wrong must still open
entry at the right instant, and a naive time in the config would hide that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from typing import Any

from examroom.agent.errors import ConfigError, Problem
from examroom.contract.vocabulary import Phase

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYS = {"id", "subject", "start", "end", "entry_before_min", "late_cutoff_min", "listening"}


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    def contains(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class Session:
    id: str
    subject: str
    start: float
    end: float
    entry_before_min: float
    late_cutoff_min: float
    listening: tuple[Window, ...]
    tz: tzinfo  # the offset the schedule was written in: the exam's local day for card expiry

    @property
    def entry_opens(self) -> float:
        return self.start - self.entry_before_min * 60

    @property
    def cutoff(self) -> float:
        return self.start + self.late_cutoff_min * 60

    def phase(self, now: float) -> Phase:
        if now >= self.end:
            return Phase.ENDED
        if now >= self.cutoff:
            return Phase.CUTOFF_PASSED
        if now >= self.start:
            return Phase.IN_PROGRESS
        if now >= self.entry_opens:
            return Phase.ENTRY
        return Phase.BEFORE_ENTRY

    def entry_allowed(self, now: float) -> bool:
        return self.phase(now) in (Phase.ENTRY, Phase.IN_PROGRESS)

    def local_date(self, now: float) -> date:
        return datetime.fromtimestamp(now, self.tz).date()

    def iso(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self.tz).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Schedule:
    sessions: tuple[Session, ...]  # sorted by start; entry windows never overlap

    def get(self, session_id: str) -> Session | None:
        return next((s for s in self.sessions if s.id == session_id), None)

    def phase(self, now: float) -> tuple[Session | None, Phase]:
        """The session the room is in or waiting for; after the last one, that one as ENDED.

        Between two sessions the room is waiting for the next (BEFORE_ENTRY): the one
        that ended has already closed its record. An empty schedule gives (None, ENDED).
        """
        for s in self.sessions:
            if now < s.end:
                return s, s.phase(now)
        return (self.sessions[-1], Phase.ENDED) if self.sessions else (None, Phase.ENDED)

    def upcoming(self, now: float) -> Session | None:
        """The session the room is in or waiting for; None after the last one. What a step taken
        before the exam (a clock check, a proctor's sign-in) belongs to: the session it prepares."""
        session, phase = self.phase(now)
        return None if phase == Phase.ENDED else session

    def lock_at(self, now: float) -> str | None:
        """Why the room must not be disturbed now, in words; None when nothing is open.

        Locked while a session's entry is open (entry opens -> late cutoff: candidates at the
        door, readers and detector in use) and while a listening window is open (the
        broadcast on the speakers)."""
        for s in self.sessions:
            if s.entry_opens <= now < s.cutoff:
                return f"entry of session {s.id} is open until {s.iso(s.cutoff)}"
        found = self.listening_at(now)
        if found is not None:
            session, window = found
            return f"the listening window of session {session.id} is open until {session.iso(window.end)}"
        return None

    def listening_at(self, now: float) -> tuple[Session, Window] | None:
        for s in self.sessions:
            for w in s.listening:
                if w.contains(now):
                    return s, w
        return None


def _when(v: Any, file: str, key: str, problems: list[Problem]) -> datetime | None:
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.strip())
        except ValueError:
            problems.append(Problem(file, key, 'expected an ISO 8601 time such as '
                                    '"2026-06-08T15:00:00+08:00"', v))
            return None
    if not isinstance(v, datetime):
        problems.append(Problem(file, key, "expected a date-time with a UTC offset", v))
        return None
    if v.tzinfo is None or v.utcoffset() is None:
        problems.append(Problem(file, key, "expected a UTC offset (e.g. +08:00): "
                                "a naive time depends on the box's time zone", v.isoformat()))
        return None
    return v


def _minutes(t: dict[str, Any], key: str, default: float, file: str, where: str,
             problems: list[Problem]) -> float | None:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        problems.append(Problem(file, f"{where}.{key}", "expected a number of minutes", v))
        return None
    return float(v)


def _session(i: int, t: Any, file: str, problems: list[Problem]) -> Session | None:
    where = f"exam[{i}]"
    if not isinstance(t, dict):
        problems.append(Problem(file, where, "expected an [[exam]] table", t))
        return None
    before = len(problems)
    for k in sorted(set(t) - _KEYS):
        problems.append(Problem(file, f"{where}.{k}", "unknown key; expected one of "
                                + ", ".join(sorted(_KEYS)), t[k]))
    sid, subject = t.get("id"), t.get("subject")
    if not isinstance(sid, str) or not _ID.match(sid):
        problems.append(Problem(file, f"{where}.id", "expected 1-64 of [A-Za-z0-9_-] "
                                "(it becomes part of MQTT topics and file names)", sid))
    if not isinstance(subject, str) or not subject.strip():
        problems.append(Problem(file, f"{where}.subject", "expected a non-empty string", subject))
    start = _when(t.get("start"), file, f"{where}.start", problems)
    end = _when(t.get("end"), file, f"{where}.end", problems)
    entry = _minutes(t, "entry_before_min", 30, file, where, problems)
    cutoff = _minutes(t, "late_cutoff_min", 15, file, where, problems)
    if entry is not None and entry < 0:
        problems.append(Problem(file, f"{where}.entry_before_min", "expected 0 or more minutes", entry))
    if start and end and end <= start:
        problems.append(Problem(file, f"{where}.end", f"expected after start {start.isoformat()}",
                                end.isoformat()))
    windows: list[Window] = []
    raw_windows = t.get("listening", [])
    if not isinstance(raw_windows, list):
        problems.append(Problem(file, f"{where}.listening", "expected a list of {start=..., end=...}",
                                raw_windows))
        raw_windows = []
    for j, w in enumerate(raw_windows):
        wk = f"{where}.listening[{j}]"
        if not isinstance(w, dict) or set(w) != {"start", "end"}:
            problems.append(Problem(file, wk, "expected {start=..., end=...}", w))
            continue
        ws = _when(w["start"], file, f"{wk}.start", problems)
        we = _when(w["end"], file, f"{wk}.end", problems)
        if not (ws and we):
            continue
        if we <= ws:
            problems.append(Problem(file, f"{wk}.end", f"expected after {ws.isoformat()}", we.isoformat()))
        elif start and end and not (start <= ws and we <= end):
            problems.append(Problem(file, wk, f"expected inside the session {start.isoformat()} .. "
                                    f"{end.isoformat()}", f"{ws.isoformat()} .. {we.isoformat()}"))
        else:
            windows.append(Window(ws.timestamp(), we.timestamp()))
    if len(problems) > before or not (start and end) or entry is None or cutoff is None:
        return None
    s = Session(id=sid, subject=subject.strip(), start=start.timestamp(), end=end.timestamp(),
                entry_before_min=entry, late_cutoff_min=cutoff,
                listening=tuple(sorted(windows, key=lambda w: w.start)), tz=start.tzinfo or timezone.utc)
    if s.cutoff <= s.entry_opens:
        problems.append(Problem(file, f"{where}.late_cutoff_min",
                                f"entry would close before it opens ({entry:g} min before start)", cutoff))
    if s.cutoff >= s.end:
        problems.append(Problem(file, f"{where}.late_cutoff_min", "expected the cutoff before the end",
                                cutoff))
    return None if len(problems) > before else s


def parse_sessions(tables: list[dict[str, Any]], file: str) -> Schedule:
    """Check every [[exam]] table; raise ConfigError with every problem found."""
    problems: list[Problem] = []
    if not isinstance(tables, list):
        raise ConfigError([Problem(file, "exam", "expected [[exam]] tables", tables)])
    parsed = [(i, _session(i, t, file, problems)) for i, t in enumerate(tables)]
    seen: dict[str, int] = {}
    for i, s in parsed:
        if s is None:
            continue
        first = seen.setdefault(s.id, i)
        if first != i:
            problems.append(Problem(file, f"exam[{i}].id", f"duplicate id, already used by exam[{first}]", s.id))
    good = sorted(((i, s) for i, s in parsed if s is not None), key=lambda p: p[1].start)
    for (i, a), (j, b) in zip(good, good[1:]):
        if b.entry_opens < a.end:
            problems.append(Problem(file, f"exam[{j}].start",
                                    f"overlaps exam[{i}] ({a.id}): its entry ({b.entry_before_min:g} min "
                                    f"before start) must open at or after {a.iso(a.end)}", b.iso(b.start)))
    if problems:
        raise ConfigError(problems)
    return Schedule(tuple(s for _, s in good))
