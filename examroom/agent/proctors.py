"""The room's proctors (监考员): who is on duty for a session, and whether they meet the rules.

"每个考场至少有一名女性监考员, 并保证同一考场内的两名监考员来自不同的单位": with a
``[[proctor]]`` roster, proctors sign in (``examroom-agent proctor sign-in ID``) for
the session the room is in or waiting for, and the room checks them against
``[procedure]`` (``proctors_required``, ``require_woman``, ``distinct_units``) when
entry opens (once, from the session book's tick), on demand, and again at every
sign-in once a check was made, so a finding clears when the missing proctor
arrives. A failed check is an alert on the room's status (the site sees it) and a
``proctor_check`` event; a passed one is an event too.

Personal data stays in the room: events, alerts and the record carry roster ids
only; a proctor's name, unit and sex never leave the box (the unit rule is a
boolean). Only ``proctor list``, on the control socket, shows names.
"""
from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Callable, Iterable

from examroom.agent.checkin import same_signature
from examroom.agent.control import CALLER, Handler, RequestError
from examroom.agent.privacy import Scrubber, has_id_like_digits
from examroom.agent.schedule import Session
from examroom.agent.session_book import SessionBook
from examroom.agent.session_record import SessionState
from examroom.contract.vocabulary import CheckTrigger, EventKind

log = logging.getLogger(__name__)

MAX_SIGNATURE = 64


@dataclass(frozen=True)
class Proctor:
    id: str
    name: str
    unit: str
    sex: str  # "F", "M", or "" when the roster does not say


class Roster:
    """The ``[[proctor]]`` roster; ids compare as signatures do (P01 = p01 = Ｐ01)."""

    def __init__(self, rows: Iterable[dict[str, str]]) -> None:
        self._by_key = {same_signature(r["id"]): Proctor(r["id"], r["name"], r["unit"], r.get("sex", ""))
                        for r in rows}
        self.scrub = Scrubber(p.name for p in self._by_key.values())  # a note must not carry a proctor's name

    def __bool__(self) -> bool:
        return bool(self._by_key)

    @property
    def proctors(self) -> list[Proctor]:
        return list(self._by_key.values())

    def find(self, who: str) -> Proctor | None:
        return self._by_key.get(same_signature(who))

    def signature(self, who: Any, scrub: Callable[[str], str]) -> str:
        """Who signs a procedure step, as published: with a roster only a roster id (spelt as the
        roster spells it); without one, short text holding no name and no ID number (refused,
        not rewritten: it goes out as typed)."""
        p = who.strip() if isinstance(who, str) else ""
        if not p or len(p) > MAX_SIGNATURE:
            raise RequestError(f"'by': expected who signs (a proctor id), 1-{MAX_SIGNATURE} characters")
        if self:
            found = self.find(p)
            if found is None:
                raise RequestError(f"'by': {p!r} is not on this room's proctor roster; sign with your roster id "
                                   f"({', '.join(sorted(x.id for x in self.proctors))})")
            return found.id
        if has_id_like_digits(p) or scrub(p) != p:
            raise RequestError("'by': the signature holds a name or an ID number, which may not leave the room; "
                               "sign with your staff number or initials")
        return p


@dataclass(frozen=True)
class Rules:
    """``[procedure]``'s proctor rules."""

    required: int
    require_woman: bool
    distinct_units: bool


def _unit_key(unit: str) -> str:
    return "".join(unicodedata.normalize("NFKC", unit).casefold().split())


def judge(signed: list[Proctor], rules: Rules) -> dict[str, Any]:
    """The verdict on who signed in; ``woman`` and ``distinct_units`` are None when the rule is off.
    Problems name roster ids only."""
    enough = len(signed) >= rules.required
    woman = any(p.sex == "F" for p in signed) if rules.require_woman else None
    units = Counter(_unit_key(p.unit) for p in signed)
    distinct = all(n == 1 for n in units.values()) if rules.distinct_units else None
    problems = []
    if not enough:
        problems.append(f"{len(signed)} of {rules.required} required proctors signed in")
    if woman is False:
        unknown = [p.id for p in signed if not p.sex]
        problems.append("no woman among the proctors signed in"
                        + (f" (the roster gives no sex for {', '.join(unknown)})" if unknown else ""))
    if distinct is False:
        same = [p.id for p in signed if units[_unit_key(p.unit)] > 1]
        problems.append(f"proctors from the same unit: {', '.join(same)}")
    return {"ok": not problems, "enough": enough, "woman": woman, "distinct_units": distinct, "problems": problems}


class Proctors:
    """Sign-ins and checks, journalled with their session in the book it is attached to."""

    def __init__(self, roster: Roster, rules: Rules, clock: Callable[[], float], tz: tzinfo) -> None:
        self._roster = roster
        self._rules = rules
        self._clock = clock
        self._tz = tz  # machine-facing times: ISO 8601 in the exam's zone
        self._book: SessionBook | None = None

    def attach(self, book: SessionBook | None) -> None:
        """Without a roster there is nobody to check: no check at entry, no alert."""
        self._book = book
        if book is not None and self._roster:
            book.at_tick(self._at_entry)

    def commands(self) -> dict[str, Handler]:
        return {"proctor_signin": self.signin, "proctor_list": self.listing, "proctor_check": self.check}

    # -- commands (control socket only: they name people) -------------------------------------

    def signin(self, args: dict[str, Any]) -> dict[str, Any]:
        """A roster proctor is on duty for the session the room is in or waiting for."""
        book = self._need_book()
        proctor = self._roster.find(str(args.get("proctor") or ""))
        if proctor is None:
            raise RequestError(f"'proctor': {args.get('proctor')!r} is not on this room's proctor roster "
                               f"({', '.join(sorted(p.id for p in self._roster.proctors))})")
        with book.lock:
            now = self._clock()
            session, state = self._session(book, now)
            if proctor.id in state.proctors:
                return {"session": session.id, "proctor": proctor.id, "signed_in": list(state.proctors),
                        "repeat": True, "check": None}
            book.publish(session.id, EventKind.PROCTOR_SIGNIN, {
                "session": session.id, "proctor": proctor.id, "user": str(args.get(CALLER) or "unknown"),
                "at": self._iso(now)})
            check = self._check(session, state, CheckTrigger.SIGNIN, now) if state.proctor_checks else None
            log.info("proctor %s signed in for session %s", proctor.id, session.id)
            return {"session": session.id, "proctor": proctor.id, "signed_in": list(state.proctors), "check": check}

    def check(self, _args: dict[str, Any]) -> dict[str, Any]:
        """``{"check": ...}``: the check's own ``ok`` would take the place of the reply's."""
        book = self._need_book()
        with book.lock:
            now = self._clock()
            session, state = self._session(book, now)
            return {"check": self._check(session, state, CheckTrigger.DEMAND, now)}

    def listing(self, _args: dict[str, Any]) -> dict[str, Any]:
        """The roster with names, units and sex, for the person at the box; who is signed in
        for the session the room is in or waiting for, and its last check."""
        signed: list[str] = []
        session_id, last = None, None
        book = self._book
        if book is not None:
            with book.lock:
                session = book.schedule.upcoming(self._clock())
                state = book.get(session.id) if session is not None else None
                session_id = session.id if session is not None else None
                if state is not None:
                    signed, last = list(state.proctors), (state.proctor_checks or [None])[-1]
        return {"session": session_id, "check": last,
                "roster": [{"id": p.id, "name": p.name, "unit": p.unit, "sex": p.sex, "signed_in": p.id in signed}
                           for p in self._roster.proctors]}

    # -- the check and its alert --------------------------------------------------------------

    def alerts(self) -> list[str]:
        """The last check of the session the room is in or waiting for, when it failed."""
        book = self._book
        if book is None or not self._roster:
            return []
        with book.lock:
            session = book.schedule.upcoming(self._clock())
            state = book.get(session.id) if session is not None else None
            if session is None or state is None or not state.proctor_checks:
                return []
            last = state.proctor_checks[-1]
        return [] if last["ok"] else [f"proctors: session {session.id}: {'; '.join(last['problems'])}"]

    def _at_entry(self, session: Session, state: SessionState, now: float) -> None:
        if not any(c["trigger"] == CheckTrigger.ENTRY.value for c in state.proctor_checks):
            self._check(session, state, CheckTrigger.ENTRY, now)

    def _check(self, session: Session, state: SessionState, trigger: CheckTrigger, now: float) -> dict[str, Any]:
        assert self._book is not None
        signed = [p for p in map(self._roster.find, state.proctors) if p is not None]
        data = {"session": session.id, "trigger": trigger.value, "at": self._iso(now),
                "signed_in": list(state.proctors), "required": self._rules.required, **judge(signed, self._rules)}
        self._book.publish(session.id, EventKind.PROCTOR_CHECK, data)
        if data["ok"]:
            log.info("proctor check (%s) of session %s passed", trigger, session.id)
        else:
            log.warning("proctor check (%s) of session %s failed: %s", trigger, session.id, "; ".join(data["problems"]))
        return data

    # -- helpers ------------------------------------------------------------------------------

    def _need_book(self) -> SessionBook:
        if not self._roster:
            raise RequestError("no [[proctor]] roster in this room's config: there is nobody to sign in or check")
        if self._book is None or not self._book.schedule.sessions:
            raise RequestError("no exam session is configured ([[exam]]): proctors sign in for a session")
        return self._book

    def _session(self, book: SessionBook, now: float) -> tuple[Session, SessionState]:
        session = book.schedule.upcoming(now)
        if session is None:
            raise RequestError("every exam session of the schedule has ended")
        return session, book.observe(session)  # before its end: its record is not written yet

    def _iso(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self._tz).isoformat(timespec="milliseconds")
