"""Entry check of one exam room: identity verdicts, metal-detector sweeps, attendance, record.

Every decision is published through ``emit`` as evidence (the replies are the data as
published: times ISO 8601, ``contract/times.py``); published data never
holds a candidate's name or full ID number (only ``id_masked``), and free text a
proctor types (a suspect's reason, the proctor's own signature) is scrubbed of
every full ID number and of every name in the seat plan, not only the
candidate's: a proctor types what is in front of them, often the neighbour's
card too.

Sweeps: each admission (a re-entry too) opens a pending sweep on the room's
``SweepLog`` (``sweeps.py``), which matches detector alarms and buttons to it.

Re-entry: a candidate who left (``leave``, a temporary exit) is admitted again
by card or by hand, even after the late cutoff (they are not late), and must be
swept again. A candidate who handed in (``hand_in``, 交卷) may not come back: the
seat is closed, and a card or a manual admission on it is ``reentry_refused``,
at any time. No hand-in before the earliest hand-in time (``[procedure]
handin_not_before_end_min`` before the end signal; 0: none before it) unless a
proctor forces it with a reason (illness), on record.

Identity verification: a suspect may be sent to the site's identity-verification
point (``send_to_verification``) and its outcome closes the doubt (``verify``):
``confirmed`` admits (and, having been out of the room, needs a sweep),
``refused`` records an impostor (替考) and closes the seat like a hand-in.

Photos: with a camera, each verdict but ``left`` is photographed *after* it is
published, never before: the ``checkin`` carries ``snapshot: {"pending": true,
"tag": ...}`` and the ``snapshot`` callable gets the request with ``about``,
which names the check-in (its event id). The callable only queues it (the room
takes the photo on its own thread and emits a ``snapshot`` event whose ``for``
is ``about``), so the door, the metal detector and the sweep buttons never wait
for capture + JPEG + fsync under the station lock.

State: every decision goes through the room's ``SessionBook`` (emit, then journal),
and the station decides under the book's lock, so a restart replays exactly what
was published.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any, Callable, Iterable

from examroom.agent.checkin_errors import AmbiguousCandidate, CheckinError, SameProctor, UnknownSeat
from examroom.agent.departures import Departures
from examroom.agent.privacy import has_id_like_digits
from examroom.agent.schedule import Schedule, Session
from examroom.agent.seatplan import Candidate, SeatPlan
from examroom.agent.session_book import SessionBook
from examroom.agent.sweeps import SweepLog
from examroom.contract.times import iso
from examroom.contract.vocabulary import (CLOSED, OPEN_SUSPECTS, PRESENT, EventKind, Lookup, Method, Phase,
                                          SeatStatus, SweepResult, Verdict)
from examroom.drivers.events import CardPresented
from examroom.drivers.gb11643 import mask_id

log = logging.getLogger(__name__)

Snapshot = Callable[[str, dict[str, Any]], None]  # (tag, about): fire and forget
REQUIRED_CONFIRMATIONS = 2
# the candidate is not at the door (going out, or at the verification point): nothing to photograph
NO_PHOTO = frozenset({Verdict.LEFT, Verdict.HANDED_IN, Verdict.SENT_TO_VERIFICATION, Verdict.IDENTITY_REFUSED})


def same_signature(signature: str) -> str:
    """What makes two signatures one proctor: compared after NFKC (full-width Ｐ01 is P01),
    case folding (p03 is P03) and without whitespace, so one proctor cannot confirm twice
    by typing their id two ways."""
    return "".join(unicodedata.normalize("NFKC", signature).casefold().split())


def find_candidate(plan: SeatPlan, seat: Any = None, id_last6: str | None = None,
                   ticket_tail: str | None = None) -> Candidate:
    """One candidate by exactly one of seat, last 6 ID characters or the ticket's last digits."""
    given = [x for x in (seat, id_last6, ticket_tail) if x not in (None, "")]
    if len(given) != 1:
        raise CheckinError("give exactly one of seat, id_last6, ticket_tail")
    if seat not in (None, ""):
        cand = plan.by_seat(seat)
        if cand is None:
            raise UnknownSeat(f"no seat {seat!s} in room {plan.room}")
        return cand
    if id_last6:
        if not re.fullmatch(r"\d{5}[\dXx]", str(id_last6).strip()):
            raise CheckinError("id_last6: expected the last 6 characters of the ID number")
        found, what = plan.by_id_last6(id_last6), "ID ending"
    else:
        found, what = plan.by_ticket_tail(str(ticket_tail)), "ticket ending"
    if not found:
        raise UnknownSeat(f"no candidate with {what} {id_last6 or ticket_tail} in room {plan.room}")
    if len(found) > 1:
        raise AmbiguousCandidate(f"{what} {id_last6 or ticket_tail}", [c.seat for c in found])
    return found[0]


class CheckinStation:
    def __init__(self, book: SessionBook, clock: Callable[[], float], scrub: Callable[[str], str],
                 snapshot: Snapshot | None = None, roster: Iterable[str] = (),
                 handin_not_before_end_min: float = 0.0, gate: Callable[[], str | None] | None = None) -> None:
        """``gate``: why entry is shut (the seat plan is not the site's: plan_check.py), None when open."""
        self._gate = gate
        self.book = book  # the record this station writes: the room's one session book
        self._plan: SeatPlan = book.plan
        self._schedule: Schedule = book.schedule
        self.clock = self._clock = clock
        self.scrub = scrub
        self._snapshot = snapshot
        self.lock = self._lock = book.lock  # one lock for the decision and its record
        self.sweeps = SweepLog(book, clock)
        self._roster = {same_signature(r): r for r in roster}  # the room's proctor ids, if configured
        self.departures = Departures(self, handin_not_before_end_min)  # hand-in and the verification point

    def _now(self) -> tuple[float, Session | None, Phase]:
        now = self._clock()
        session, phase = self._schedule.phase(now)
        return now, session, phase

    # -- identity ---------------------------------------------------------------------------

    def verdict(self, verdict: Verdict, session: Session | None, now: float, method: Method,
                 device: str, cand: Candidate | None = None, **extra: Any) -> dict[str, Any]:
        if verdict == Verdict.ADMITTED and self._gate is not None and (shut := self._gate()) is not None:
            # every way in (card, by hand, confirmed suspect) ends here: one place to shut them all
            verdict, extra = Verdict.PLAN_UNVERIFIED, {**extra, "reason": shut}
            extra.pop("sweep_required", None)
        data: dict[str, Any] = {
            "session": session.id if session else None, "verdict": verdict,
            "seat": cand.seat if cand else None, "ticket": cand.ticket if cand else None,
            "id_masked": cand.id_masked if cand else extra.pop("id_masked", None),
            "method": method, "device": device, "time": now,
            "seatplan_sha256": self._plan.sha256, **extra,
        }
        snapshot = self._snapshot if verdict not in NO_PHOTO else None
        tag = f"{verdict}-{data['session'] or 'none'}-{data['seat'] or 'unknown'}"
        if snapshot is not None:
            data["snapshot"] = {"pending": True, "tag": tag}
        if session is not None:
            self.book.observe(session)
        published = self.book.publish(session.id if session else None, EventKind.CHECKIN, data)
        if snapshot is not None:
            about = {"kind": EventKind.CHECKIN, "id": published.id, "session": data["session"],
                     "seat": data["seat"], "verdict": verdict}
            try:
                snapshot(tag, about)
            except Exception as e:  # the verdict is out: a camera problem costs the photo, not the door
                log.warning("snapshot %s not requested: %s", tag, e)
        return published.data

    def _admit(self, cand: Candidate, session: Session | None, phase: Phase, now: float,
               method: Method, device: str, **extra: Any) -> dict[str, Any]:
        """The rules shared by card and manual admission, in the order a proctor applies them."""
        if session is None or phase in (Phase.BEFORE_ENTRY, Phase.ENDED):
            return self.verdict(Verdict.OUTSIDE_WINDOW, session, now, method, device, cand, phase=phase.value, **extra)
        st = self.book.observe(session).seat(cand.seat)
        if st.status in CLOSED:
            return self.verdict(Verdict.REENTRY_REFUSED, session, now, method, device, cand, status=st.status,
                                 **extra)
        if st.status in (SeatStatus.ADMITTED, *OPEN_SUSPECTS):
            return self.verdict(Verdict.DUPLICATE, session, now, method, device, cand, status=st.status, **extra)
        if st.status == SeatStatus.OUT:
            return self.verdict(Verdict.ADMITTED, session, now, method, device, cand, reentry=True,
                                 sweep_required=True, **extra)
        if phase == Phase.CUTOFF_PASSED:
            return self.verdict(Verdict.LATE_REFUSED, session, now, method, device, cand,
                                 cutoff=session.cutoff, **extra)
        return self.verdict(Verdict.ADMITTED, session, now, method, device, cand, reentry=False,
                             sweep_required=True, **extra)

    def on_card(self, ev: CardPresented) -> dict[str, Any]:
        with self._lock:
            now, session, phase = self._now()
            ident = ev.identity
            if ident is None:
                if not ev.uid:
                    return self.verdict(Verdict.UNKNOWN_CARD, session, now, Method.UID, ev.device,
                                         reason="card gave neither a UID nor an identity")
                cand = self._plan.by_uid(ev.uid)
                if cand is None:
                    return self.verdict(Verdict.UNKNOWN_CARD, session, now, Method.UID, ev.device, uid=ev.uid)
                return self._admit(cand, session, phase, now, Method.UID, ev.device, uid=ev.uid)
            masked = mask_id(ident.id_number)
            if not ident.id_valid:  # the GB 11643 check digit, derived from the number in Identity
                return self.verdict(Verdict.INVALID_ID, session, now, Method.CARD, ev.device, id_masked=masked,
                                     reason="GB 11643 check digit does not match")
            cand = self._plan.by_id(ident.id_number)
            if cand is None:
                return self.verdict(Verdict.NOT_IN_ROOM, session, now, Method.CARD, ev.device, id_masked=masked)
            if session is not None and phase not in (Phase.BEFORE_ENTRY, Phase.ENDED):
                expired = self._expired(ident.valid_to, session, now)
                if expired is not None:
                    return self.verdict(expired[0], session, now, Method.CARD, ev.device, cand,
                                         valid_to=ident.valid_to, reason=expired[1])
            return self._admit(cand, session, phase, now, Method.CARD, ev.device)

    @staticmethod
    def _expired(valid_to: str, session: Session, now: float) -> tuple[Verdict, str] | None:
        """"长期" never expires; a card valid to a date is still good on that date (exam-local day)."""
        v = valid_to.strip()
        if v == "长期":
            return None
        if not (len(v) == 8 and v.isdigit()):
            return Verdict.INVALID_ID, "valid_to is neither a YYYYMMDD date nor 长期"
        if v < session.local_date(now).strftime("%Y%m%d"):
            return Verdict.EXPIRED_CARD, f"card expired {v}"
        return None

    # -- proctor fallbacks --------------------------------------------------------------------

    def find(self, seat: Any = None, id_last6: str | None = None, ticket_tail: str | None = None) -> Candidate:
        return find_candidate(self._plan, seat, id_last6, ticket_tail)

    def signature(self, proctor: str) -> str:
        """A signature goes on the record and to the aggregator as typed, so one that holds a
        candidate's name or a full ID number is refused, not rewritten: scrubbed, two proctors
        signing with names would both read *** and count as one. With a roster, only a roster
        id signs, and it is recorded as the roster spells it."""
        p = (proctor or "").strip()
        if not p:
            raise CheckinError("proctor: expected who is doing this (it is signed on the record)")
        if has_id_like_digits(p) or self.scrub(p) != p:
            raise CheckinError("proctor: the signature contains a candidate's name or an ID number, "
                               "which may not leave the room; sign with your staff number or initials")
        if self._roster:
            rostered = self._roster.get(same_signature(p))
            if rostered is None:
                raise CheckinError(f"proctor: {p!r} is not on this room's proctor roster; "
                                   f"sign with your roster id ({', '.join(sorted(self._roster.values()))})")
            return rostered
        return p

    def open_session(self, now: float) -> tuple[Session, Phase]:
        session, phase = self._schedule.phase(now)
        if session is None or phase in (Phase.BEFORE_ENTRY, Phase.ENDED):
            raise CheckinError("no exam session is open for entry")
        return session, phase

    def manual_admit(self, seat: Any = None, id_last6: str | None = None, proctor: str = "",
                     ticket_tail: str | None = None, by: str = "unknown") -> dict[str, Any]:
        """Admission when no card can be read; window and late rules still apply."""
        with self._lock:
            who = self.signature(proctor)
            cand = self.find(seat, id_last6, ticket_tail)
            now, session, phase = self._now()
            via = Lookup.SEAT if seat not in (None, "") else Lookup.ID_LAST6 if id_last6 else Lookup.TICKET_TAIL
            return self._admit(cand, session, phase, now, Method.MANUAL, "manual", proctor=who, lookup=via, by=by)

    def mark_suspect(self, seat: Any, proctor: str, reason: str, by: str = "unknown") -> dict[str, Any]:
        """存疑: photographed and held until two different proctors confirm."""
        with self._lock:
            who = self.signature(proctor)
            cand = self.find(seat)
            now = self._clock()
            session, phase = self.open_session(now)
            status = self.book.observe(session).seat(cand.seat).status
            if status in OPEN_SUSPECTS:
                raise CheckinError(f"seat {cand.seat} is already marked suspect (status {status})")
            if status in CLOSED:
                raise CheckinError(f"seat {cand.seat} is closed (status {status})")
            if status == SeatStatus.ABSENT and phase == Phase.CUTOFF_PASSED:
                raise CheckinError(f"seat {cand.seat}: the late cutoff has passed")
            return self.verdict(Verdict.SUSPECT, session, now, Method.MANUAL, "manual", cand, proctor=who,
                                 reason=self.scrub(reason), by=by)

    def confirm(self, seat: Any, proctor: str, by: str = "unknown") -> dict[str, Any]:
        """One proctor's signature; the second, from another proctor, admits the candidate."""
        with self._lock:
            who = self.signature(proctor)
            cand = self.find(seat)
            now = self._clock()
            session, _ = self.open_session(now)
            st = self.book.observe(session).seat(cand.seat)
            if st.status == SeatStatus.AT_VERIFICATION:
                raise CheckinError(f"seat {cand.seat} is at the identity-verification point: "
                                   "its outcome decides (checkin verify)")
            if st.status != SeatStatus.SUSPECT:
                raise CheckinError(f"seat {cand.seat} is not marked suspect (status {st.status})")
            if same_signature(who) in {same_signature(c) for c in st.confirmations}:
                raise SameProctor(f"seat {cand.seat}: {who} has already confirmed; "
                                  "a second, different proctor must confirm")
            proctors = [*st.confirmations, who]
            shut = self._gate() if self._gate is not None else None
            if shut is not None and len(proctors) >= REQUIRED_CONFIRMATIONS:  # it would admit: not recorded
                raise CheckinError(f"{shut}: entry is shut, the confirmation that would admit is refused")
            data = {"session": session.id, "seat": cand.seat, "proctor": who, "time": now,
                    "confirmations": len(proctors), "required": REQUIRED_CONFIRMATIONS,
                    "passed": len(proctors) >= REQUIRED_CONFIRMATIONS, "by": by}
            published = self.book.publish(session.id, EventKind.SUSPECT_CONFIRM, data)
            if data["passed"]:  # a candidate doubted after being swept in the room is not swept again
                return self.verdict(Verdict.ADMITTED, session, now, Method.MANUAL, "manual", cand, reentry=False,
                                     sweep_required=st.before_suspect != SeatStatus.ADMITTED,
                                     proctors=proctors, lookup=Lookup.SUSPECT_CONFIRM, by=by)
            return published.data

    def leave(self, seat: Any, by: str = "unknown") -> dict[str, Any]:
        """The candidate goes out; coming back is a new check (card or manual) and a new sweep."""
        with self._lock:
            cand = self.find(seat)
            now = self._clock()
            session, _ = self.open_session(now)
            state = self.book.observe(session)
            if state.seat(cand.seat).status != SeatStatus.ADMITTED:
                raise CheckinError(f"seat {cand.seat} is not in the room "
                                   f"(status {state.seat(cand.seat).status})")
            pending = state.pending_for(cand.seat)
            if pending is not None:
                self.sweeps.close(session, pending, now, "manual", SweepResult.LEFT_BEFORE_CLEAR)
            return self.verdict(Verdict.LEFT, session, now, Method.MANUAL, "manual", cand, by=by)

    # -- status ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            now, session, phase = self._now()
            st = self.book.get(session.id) if session else None
            out: dict[str, Any] = {
                "room": self._plan.room, "session": session.id if session else None,
                "phase": phase.value, "total": len(self._plan), "seatplan_sha256": self._plan.sha256,
                "listening": self._schedule.listening_at(now) is not None,
                "admitted": 0, "suspect": 0, "out": 0, "handed_in": 0, "present": 0, "absent": len(self._plan),
                "at_verification": [], "identity_refused": [], "handin_from": None,
                "pending_sweep": [], "late_refused": [], "attendance_sent": False,
                "record_written": False, "journal_skipped": self.book.journal_skipped}
            if session is not None:  # machine-facing (the heartbeat's exam): as the contract writes times
                out["handin_from"] = iso(self.departures.earliest_handin(session), self.book.zone)
            if st is not None:
                out.update(admitted=st.count(SeatStatus.ADMITTED), suspect=st.count(SeatStatus.SUSPECT),
                           out=st.count(SeatStatus.OUT), handed_in=st.count(SeatStatus.HANDED_IN),
                           present=st.count(*PRESENT),
                           absent=len(self._plan) - st.count(*PRESENT, SeatStatus.IDENTITY_REFUSED),
                           at_verification=st.seats_in(self._plan.seats(), SeatStatus.AT_VERIFICATION),
                           identity_refused=st.seats_in(self._plan.seats(), SeatStatus.IDENTITY_REFUSED),
                           pending_sweep=[p.seat for p in st.pending], late_refused=st.late_refused(),
                           attendance_sent=st.attendance_sent, record_written=st.record_written)
            return out
