"""Violations (违纪/违规) by the province's fact codes: on the session record, and at the site
office at once when the code says so.

"违规事实代码如实按要求填写在《考场记事卡》上": a proctor records a violation by a code of the
province's list, never by free text alone, so every room's card reads the same for the same
fact and the office can count them. The list is data (``[procedure] violation_codes``, a CSV
``code,text,escalate``; the shipped ``violation-codes.csv`` is an example each province
replaces), checked whole at start like the rest of the config: a wrong row stops the agent
with the file, row and column, not a proctor at the worst moment.

A violation is evidence: a ``violation`` event through the session book (emit, then journal),
so the record at the session's end and a restart both see it. A code marked ``escalate`` also
goes to the site office at once ("应立即通过流动监考员报告考务办公室"): an ``incident``
``started``, a line on the record's incidents (when the office was told), and an alert on the
room's status until the session's record is written, when the incident is published
``ended``. The alerts are derived from the book, never stored, so a restart shows them as before.
"""
from __future__ import annotations

import csv
import difflib
import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Callable

from examroom.agent.control import CALLER, Handler
from examroom.agent.errors import ConfigError, Problem
from examroom.agent.schedule import Session
from examroom.agent.seatplan import SeatPlan, norm_seat
from examroom.agent.session_book import SessionBook
from examroom.agent.session_record import SessionState
from examroom.contract.vocabulary import EventKind, Incident, IncidentPhase, IncidentType

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
SHIPPED = Path(__file__).with_name("violation-codes.csv")  # config/violation-codes.csv links here
COLUMNS = ("code", "text", "escalate")
CODE = re.compile(r"[A-Za-z0-9._-]{1,16}")
SEAT = re.compile(r"[A-Za-z0-9-]{1,16}")  # a seat typed in a room without a seat plan
MAX_TEXT = 200
MAX_NOTE = 500
_YES = {"yes", "y", "true", "1", "是"}
_NO = {"no", "n", "false", "0", "否"}


class ViolationError(ValueError):
    """A violation that cannot be recorded as asked; the control socket replies with the text."""


@dataclass(frozen=True)
class Code:
    code: str
    text: str
    escalate: bool


@dataclass(frozen=True)
class CodeList:
    file: str
    codes: tuple[Code, ...]

    def find(self, typed: str) -> Code:
        """The code a proctor typed, ignoring case (``z04`` is ``Z04``); an unknown one is
        refused with the closest codes and their texts, so the next try is the right one."""
        key = typed.strip().casefold()
        for c in self.codes:
            if c.code.casefold() == key:
                return c
        by_key = {c.code.casefold(): c for c in self.codes}
        close = [by_key[k] for k in difflib.get_close_matches(key, by_key, n=3, cutoff=0.5)]
        if close:
            hint = "closest: " + "; ".join(f"{c.code} ({c.text})" for c in close)
        else:
            hint = "codes of the list: " + ", ".join(c.code for c in self.codes)
        raise ViolationError(f"unknown violation code {typed.strip()!r} in {self.file}; {hint}")


def load_codes(path: str | Path = "") -> CodeList:
    """The province's list (``""``: the shipped example). Every problem is collected and raised
    as one ConfigError naming the file, the row (line number) and the column."""
    file = str(path or SHIPPED)
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError([Problem(file, "(file)", f"cannot read the violation code list: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, "(file)", "expected UTF-8 text")]) from None
    problems: list[Problem] = []
    codes = _parse(text, file, problems)
    if not codes and not problems:
        problems.append(Problem(file, "(file)", "expected at least one code under the header " + ",".join(COLUMNS)))
    if problems:
        raise ConfigError(problems)
    return CodeList(file, tuple(codes))


def _parse(text: str, file: str, problems: list[Problem]) -> list[Code]:
    # comment lines become blank ones, so the reader's line numbers stay those of the file
    lines = ["\n" if line.lstrip().startswith("#") else line for line in io.StringIO(text, newline=None)]
    reader = csv.reader(lines)
    header: list[str] | None = None
    codes: list[Code] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            n = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                if not _header_ok(header, file, n, problems):
                    return []
                continue
            if len(row) != len(header):
                problems.append(Problem(file, f"row {n}",
                                        f"{len(row)} fields where the header has {len(header)} columns"))
                continue
            code = _row(dict(zip(header, (cell.strip() for cell in row), strict=True)), file, n, seen, problems)
            if code is not None:
                codes.append(code)
    except csv.Error as e:  # a stray NUL, an unclosed quote at the end
        problems.append(Problem(file, f"row {reader.line_num}", f"not readable as CSV: {e}"))
    return codes


def _header_ok(header: list[str], file: str, n: int, problems: list[Problem]) -> bool:
    before = len(problems)
    for i, name in enumerate(header):
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(file, f"row {n} (header)", f"unknown column {name!r}{hint}; "
                                    f"expected the columns {', '.join(COLUMNS)}"))
        elif header.index(name) != i:
            problems.append(Problem(file, f"row {n} (header)", f"column {name!r} appears twice"))
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problems.append(Problem(file, f"row {n} (header)", f"missing column(s) {', '.join(missing)}; "
                                "expected the header row " + ",".join(COLUMNS)))
    return len(problems) == before


def _row(row: dict[str, str], file: str, n: int, seen: dict[str, int], problems: list[Problem]) -> Code | None:
    before = len(problems)
    code, text, escalate = row["code"], row["text"], row["escalate"].lower()
    if not CODE.fullmatch(code):
        problems.append(Problem(file, f"row {n}.code", "expected 1-16 of A-Z a-z 0-9 . _ -", code))
    elif code.casefold() in seen:
        problems.append(Problem(file, f"row {n}.code", f"the same code as row {seen[code.casefold()]} "
                                "(codes are compared ignoring case); expected each code once", code))
    else:
        seen[code.casefold()] = n
    if not text or len(text) > MAX_TEXT:
        problems.append(Problem(file, f"row {n}.text", f"expected the fact in words, 1-{MAX_TEXT} characters",
                                text[:40] or None))
    if escalate not in _YES | _NO:
        problems.append(Problem(file, f"row {n}.escalate", "expected yes or no (true/false, 1/0, 是/否)",
                                row["escalate"]))
    return Code(code, text, escalate in _YES) if len(problems) == before else None


def _field(args: dict[str, Any], key: str, limit: int, required: bool = True) -> str:
    v = args.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise ViolationError(f"{key!r} is required")
        return ""
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise ViolationError(f"{key!r} must be a string")
    v = str(v).strip()
    if len(v) > limit:
        raise ViolationError(f"{key!r} is longer than {limit} characters")
    return v


class Violations:
    def __init__(self, codes: CodeList, emit: Emit, clock: Callable[[], float], scrub: Callable[[str], str],
                 sign: Callable[[str], str], zone: tzinfo) -> None:
        """``scrub``: for the note (candidates' and proctors' names, ID numbers); ``sign``: the
        signature as every procedure step takes it (``proctors.Roster.signature``: a roster id
        when the room has a roster); ``zone``: the exam's (``[procedure] timezone``), in which
        the card and the office read the violation's time."""
        self.codes = codes
        self._emit = emit
        self._clock = clock
        self._scrub = scrub
        self._sign = sign
        self._zone = zone
        self._book: SessionBook | None = None

    def attach(self, book: SessionBook | None) -> None:
        """The room's session book, made when the room starts (a room with neither a timetable
        nor a seat plan has none, and records no violation)."""
        self._book = book
        if book is not None:
            book.at_session_end(self._end_escalations)

    def commands(self) -> dict[str, Handler]:
        """For ``Commands``' ``extra``: the command this component owns."""
        return {"violation": self.command}

    def command(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ``violation`` command (control socket only): ``seat``, ``code``, ``by`` and
        ``note``?; the Unix user on the socket is recorded as ``user``."""
        return self.record(_field(args, "seat", 16), _field(args, "code", 16), _field(args, "by", 64),
                           str(args.get(CALLER) or "unknown"), _field(args, "note", MAX_NOTE, required=False))

    def record(self, seat: str, code: str, by: str, user: str, note: str = "") -> dict[str, Any]:
        """Record one violation on the open session's record; escalate it when its code says so."""
        book = self._book
        if book is None:
            raise ViolationError("no exam session is configured on this box ([[exam]]): "
                                 "a violation goes on a session's record")
        found = self.codes.find(code)
        who = self._sign(by)
        with book.lock:  # the violation and the session's end never interleave
            now = self._clock()
            session = book.open_at(now)
            if session is None or book.observe(session).record_written:
                raise ViolationError("no exam session is open (entry opened, not ended): "
                                     "a violation goes on the record of the session it happened in")
            seat, ticket = _seat(book.plan, seat)
            data: dict[str, Any] = {"session": session.id, "seat": seat, "ticket": ticket, "code": found.code,
                                    "text": found.text, "by": who, "user": user,
                                    "time": datetime.fromtimestamp(now, self._zone).isoformat(timespec="milliseconds"),
                                    "escalated": found.escalate}
            if note:
                data["note"] = self._scrub(note)
            book.publish(session.id, EventKind.VIOLATION, data)
            if found.escalate:
                self._emit(EventKind.INCIDENT, {**self._incident(data), "start": data["time"],
                                                "phase": IncidentPhase.STARTED})
                book.add_incident(Incident(IncidentType.VIOLATION, {"session": session.id, "time": data["time"],
                                                                    "seat": seat, "code": found.code}))
        if found.escalate:
            log.warning("violation %s at seat %s (session %s) reported to the site office", found.code, seat,
                        session.id)
        return data

    def alerts(self) -> list[str]:
        """One per escalated violation of a session whose record is not written yet."""
        book = self._book
        if book is None:
            return []
        with book.lock:
            states = [(s, book.get(s.id)) for s in book.schedule.sessions]
            return [f"violation {v['code']} at seat {v['seat']} ({v['text']}) at "
                    f"{datetime.fromisoformat(v['time']).strftime('%H:%M:%S')}, session {s.id}: "
                    "reported to the site office"
                    for s, st in states if st is not None and not st.record_written
                    for v in st.violations if v["escalated"]]

    @staticmethod
    def _incident(v: dict[str, Any]) -> dict[str, Any]:
        """What the office sees: seat and code, no note (free text) and no ticket."""
        return {"type": IncidentType.VIOLATION, "session": v["session"], "seat": v["seat"], "code": v["code"],
                "text": v["text"]}

    def _end_escalations(self, session: Session, state: SessionState, _now: float) -> None:
        """The session's end closes its escalations: the office's alarm and the room's alert go."""
        end = datetime.fromtimestamp(session.end, self._zone)
        for v in state.violations:
            if v["escalated"]:
                start = datetime.fromisoformat(v["time"])
                self._emit(EventKind.INCIDENT, {
                    **self._incident(v), "start": v["time"], "phase": IncidentPhase.ENDED,
                    "end": end.isoformat(timespec="milliseconds"),
                    "duration_s": round(max(0.0, (end - start).total_seconds()), 3)})


def _seat(plan: SeatPlan, seat: str) -> tuple[str, str | None]:
    """The seat as the plan spells it, and its ticket; a room without a plan takes the seat as typed."""
    if plan.candidates:
        c = plan.by_seat(seat)
        if c is None:
            raise ViolationError(f"no seat {seat} in room {plan.room}")
        return c.seat, c.ticket
    s = norm_seat(seat)
    if not SEAT.fullmatch(s):
        raise ViolationError("seat: expected the seat number on the desk label (1-16 of A-Z a-z 0-9 -)")
    return s, None
