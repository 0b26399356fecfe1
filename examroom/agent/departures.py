"""Candidates leaving the room for good or for the identity-verification point: hand-in
(交卷) and the verification point's outcome, decided at the station's desk.

A candidate who handed in may not come back ("交卷退出考场的考生不允许再进入考场"): the
seat is closed, and the station refuses a card or a manual admission on it
(``reentry_refused``). No hand-in before the earliest hand-in time (``[procedure]
handin_not_before_end_min`` before the end signal; 0: none before it, "考试终了信号发出前,
考生不得交卷出场") unless a proctor forces it with a reason (illness), on record.

A suspect may be sent to the site's identity-verification point ("用身份验证系统对发现的
疑似替考考生进行身份验证"); its outcome closes the doubt: ``confirmed`` admits (the candidate
was out of the room: a sweep is due), ``refused`` records an impostor and closes the seat.

The station owns the lock, the record and the verdict; this class only applies the rules,
so every decision still goes through one place (``CheckinStation.verdict``).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from examroom.agent.checkin_errors import CheckinError, HandInTooEarly
from examroom.agent.human_time import clock as hhmmss
from examroom.agent.schedule import Session
from examroom.agent.seatplan import Candidate
from examroom.agent.session_book import SessionBook
from examroom.agent.sweeps import SweepLog
from examroom.contract.vocabulary import (Lookup, Method, Phase, SeatStatus, SweepResult, Verdict,
                                          VerificationOutcome)


class Desk(Protocol):
    """What of the check-in station these rules use (``CheckinStation`` is one)."""

    lock: threading.RLock
    clock: Callable[[], float]
    book: SessionBook
    sweeps: SweepLog
    scrub: Callable[[str], str]

    def verdict(self, verdict: Verdict, session: Session | None, now: float, method: Any, device: str,
                cand: Candidate | None = None, **extra: Any) -> dict[str, Any]: ...

    def signature(self, proctor: str) -> str: ...

    def find(self, seat: Any = None, id_last6: str | None = None, ticket_tail: str | None = None) -> Candidate: ...

    def open_session(self, now: float) -> tuple[Session, Phase]: ...


class Departures:
    def __init__(self, station: Desk, handin_not_before_end_min: float = 0.0) -> None:
        self._station = station
        self._handin_before_end_s = handin_not_before_end_min * 60

    def earliest_handin(self, session: Session) -> float:
        """No hand-in before the start, nor before the province's last minutes (0: the end signal)."""
        return max(session.start, session.end - self._handin_before_end_s)

    def hand_in(self, seat: Any, proctor: str, force: bool = False, reason: str = "",
                by: str = "unknown") -> dict[str, Any]:
        """The candidate hands in and leaves for good: the seat is closed, re-entry is refused.
        Before the earliest hand-in time only ``force`` with a reason (illness) lets it through,
        and the check-in says so (``forced``, ``reason``)."""
        st = self._station
        with st.lock:
            who = st.signature(proctor)
            cand = st.find(seat)
            now = st.clock()
            session, phase = st.book.schedule.phase(now)
            if session is None or phase in (Phase.BEFORE_ENTRY, Phase.ENDED):
                raise CheckinError("no exam session is running (at the end signal every candidate hands in: "
                                   "nothing to record)")
            state = st.book.observe(session)
            status = state.seat(cand.seat).status
            if status != SeatStatus.ADMITTED:
                raise CheckinError(f"seat {cand.seat} is not in the room (status {status}): only a candidate "
                                   "present in the room hands in")
            earliest = self.earliest_handin(session)
            forced = now < earliest  # the exception: only with force and a reason
            if forced and not force:
                raise HandInTooEarly(f"seat {cand.seat}: no hand-in before {hhmmss(earliest)} (the end signal is "
                                     f"at {hhmmss(session.end)}); an exception such as illness is forced with a "
                                     "reason, which goes on the record")
            if forced and not reason.strip():
                raise CheckinError("a forced hand-in needs the reason (it goes on the record)")
            pending = state.pending_for(cand.seat)
            if pending is not None:
                st.sweeps.close(session, pending, now, "manual", SweepResult.LEFT_BEFORE_CLEAR)
            why = {"reason": st.scrub(reason.strip())} if forced else {}
            return st.verdict(Verdict.HANDED_IN, session, now, Method.MANUAL, "manual", cand, proctor=who,
                                 earliest_handin=earliest, forced=forced, **why, by=by)

    def send_to_verification(self, seat: Any, proctor: str, by: str = "unknown") -> dict[str, Any]:
        """A suspect goes to the site's identity-verification point; an open sweep of a candidate
        doubted inside the room is closed (coming back is a new sweep)."""
        st = self._station
        with st.lock:
            who = st.signature(proctor)
            cand = st.find(seat)
            now = st.clock()
            session, _ = st.open_session(now)
            state = st.book.observe(session)
            status = state.seat(cand.seat).status
            if status != SeatStatus.SUSPECT:
                raise CheckinError(f"seat {cand.seat} is not marked suspect (status {status}): "
                                   "only a suspect goes to the identity-verification point")
            pending = state.pending_for(cand.seat)
            if pending is not None:
                st.sweeps.close(session, pending, now, "manual", SweepResult.LEFT_BEFORE_CLEAR)
            return st.verdict(Verdict.SENT_TO_VERIFICATION, session, now, Method.MANUAL, "manual", cand,
                                 proctor=who, by=by)

    def verify(self, seat: Any, outcome: str, point: str, proctor: str, by: str = "unknown") -> dict[str, Any]:
        """The verification point's outcome closes the doubt: ``confirmed`` admits (a sweep is
        due: the candidate was out of the room), ``refused`` records an impostor and closes the seat."""
        st = self._station
        with st.lock:
            who = st.signature(proctor)
            if outcome not in set(VerificationOutcome):
                raise CheckinError(f"outcome: expected {' or '.join(VerificationOutcome)}, got {outcome!r}")
            where = st.scrub((point or "").strip())
            if not where:
                raise CheckinError("point: expected who or where verified the identity (it is recorded)")
            cand = st.find(seat)
            now = st.clock()
            session, _ = st.open_session(now)
            status = st.book.observe(session).seat(cand.seat).status
            if status != SeatStatus.AT_VERIFICATION:
                raise CheckinError(f"seat {cand.seat} was not sent to the identity-verification point "
                                   f"(status {status}): checkin send-to-verification first")
            if outcome == VerificationOutcome.REFUSED:
                return st.verdict(Verdict.IDENTITY_REFUSED, session, now, Method.MANUAL, "manual", cand,
                                     point=where, proctor=who, by=by)
            return st.verdict(Verdict.ADMITTED, session, now, Method.MANUAL, "manual", cand, reentry=False,
                                 sweep_required=True, lookup=Lookup.VERIFICATION, point=where, proctor=who, by=by)
