"""Entry check of one exam room: identity verdicts, metal-detector sweeps, attendance, record.

Every decision is published through ``emit`` as evidence; published data never
holds a candidate's name or full ID number (only ``id_masked``), and free text a
proctor types (a suspect's reason, the proctor's own signature) is scrubbed of
every full ID number and of every name in the seat plan, not only the
candidate's: a proctor types what is in front of them, often the neighbour's
card too.

Sweep association rule: candidates are swept in the order they were admitted
at the door. Each admission (including a re-entry) opens a pending sweep at the
back of a FIFO queue; a metal alarm, a "recheck" and a "clear" always apply to
the sweep at the head of the queue, and "clear" closes it. With nothing pending,
the press or alarm is still published, as ``sweep`` with ``unassociated: true``,
and kept on the record of the session whose entry is open or exam running (a
proctor testing the detector as entry opens is on that session's record), or
on none, with ``session: null``, outside every session.

Re-entry: a candidate who left (``leave``) is admitted again by card or by
hand, even after the late cutoff (they are not late), and must be swept again.

Photos: with a camera, each verdict but ``left`` is photographed *after* it is
published, never before: the ``checkin`` carries ``snapshot: {"pending": true,
"tag": ...}`` and the ``snapshot`` callable gets the request with ``about``,
which names the check-in (its event id). The callable only queues it (the room
takes the photo on its own thread and emits a ``snapshot`` event whose ``for``
is ``about``), so the door, the metal detector and the sweep buttons never wait
for capture + JPEG + fsync under the station lock.

Restart safety: each state change is appended to a JSON-lines journal (fsync)
after it was emitted, and ``start()`` replays it. A crash between the two can
at worst make a later tap re-publish an admission; it can never lose one.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from examroom.agent import session_record as rec
from examroom.agent.events import Event
from examroom.agent.schedule import Phase, Schedule, Session
from examroom.agent.seatplan import Candidate, SeatPlan
from examroom.drivers.events import CardPresented, MetalAlarm, SweepButton
from examroom.drivers.gb11643 import is_valid, mask_id, mask_ids_in_text

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], "Event | None"]  # None: refused telemetry (or a test's list)
Snapshot = Callable[[str, dict[str, Any]], None]  # (tag, about): fire and forget
REQUIRED_CONFIRMATIONS = 2


class CheckinError(ValueError):
    """A proctor's request that cannot be carried out; the control socket replies with the text."""


class UnknownSeat(CheckinError):
    pass


class AmbiguousCandidate(CheckinError):
    def __init__(self, what: str, seats: list[str]) -> None:
        self.seats = seats
        super().__init__(f"{what} matches seats {', '.join(seats)}: admit by seat instead")


class SameProctor(CheckinError):
    pass


class CheckinStation:
    def __init__(self, seatplan: SeatPlan, schedule: Schedule, emit: Emit,
                 clock: Callable[[], float], record_dir: str | Path,
                 snapshot: Snapshot | None = None, journal_path: str | Path | None = None) -> None:
        self._plan = seatplan
        self._schedule = schedule
        self._emit = emit
        self._clock = clock
        self._record_dir = Path(record_dir)
        self._snapshot = snapshot
        self._journal = Path(journal_path) if journal_path else None
        self._lock = threading.RLock()
        self._states: dict[str, rec.SessionState] = {}
        self._alarm_active: dict[str, bool] = {}
        self._started_at: float | None = None
        self.journal_skipped = 0
        # longest first, so a name that contains another is blanked whole
        self._names = sorted({c.name for c in seatplan.candidates if c.name}, key=len, reverse=True)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Replay the journal so a restart mid-entry keeps who is in and what was published."""
        with self._lock:
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
                        log.warning("checkin journal %s line %d skipped: %s", self._journal, n, e)

    def _apply(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "_observe":
            self._states.setdefault(session_id, rec.SessionState(session_id, data["from"]))
        else:
            self._states[session_id].apply(kind, data)

    def _commit(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        if self._journal is not None:
            line = json.dumps({"session": session_id, "kind": kind, "data": data},
                              ensure_ascii=False, separators=(",", ":")) + "\n"
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            with open(self._journal, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        self._apply(session_id, kind, data)

    def _publish(self, session_id: str | None, kind: str, data: dict[str, Any]) -> str | None:
        """Emit, then journal; returns the event's id so a later event can point at it."""
        event = self._emit(kind, data)
        if session_id is not None:
            self._commit(session_id, kind, data)
        return event.id if event is not None else None

    def _state(self, session: Session) -> rec.SessionState:
        if self._started_at is None:
            raise RuntimeError("CheckinStation.start() must run first (it replays the journal)")
        if session.id not in self._states:
            self._commit(session.id, "_observe", {"from": self._started_at})
        return self._states[session.id]

    def _now(self) -> tuple[float, Session | None, Phase]:
        now = self._clock()
        session, phase = self._schedule.phase(now)
        return now, session, phase

    def _open_at(self, t: float) -> Session | None:
        """The session whose entry has opened and which has not ended at ``t``; None between sessions."""
        session, phase = self._schedule.phase(t)
        return session if session is not None and phase not in (Phase.BEFORE_ENTRY, Phase.ENDED) else None

    def scrub(self, text: str) -> str:
        """Free text leaving the box: full ID numbers masked, every seat-plan name blanked."""
        out = mask_ids_in_text(str(text or ""))
        for name in self._names:
            out = out.replace(name, "***")
        return out

    # -- identity ---------------------------------------------------------------------------

    def _checkin(self, verdict: str, session: Session | None, now: float, method: str,
                 device: str, cand: Candidate | None = None, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "session": session.id if session else None, "verdict": verdict,
            "seat": cand.seat if cand else None, "ticket": cand.ticket if cand else None,
            "id_masked": cand.id_masked if cand else extra.pop("id_masked", None),
            "method": method, "device": device, "time": now,
            "seatplan_sha256": self._plan.sha256, **extra,
        }
        snapshot = self._snapshot if verdict != "left" else None
        tag = f"{verdict}-{data['session'] or 'none'}-{data['seat'] or 'unknown'}"
        if snapshot is not None:
            data["snapshot"] = {"pending": True, "tag": tag}
        if session is not None:
            self._state(session)
        event_id = self._publish(session.id if session else None, "checkin", data)
        if snapshot is not None:
            about = {"kind": "checkin", "id": event_id, "session": data["session"], "seat": data["seat"],
                     "verdict": verdict}
            try:
                snapshot(tag, about)
            except Exception as e:  # the verdict is out: a camera problem costs the photo, not the door
                log.warning("snapshot %s not requested: %s", tag, e)
        return data

    def _admit(self, cand: Candidate, session: Session | None, phase: Phase, now: float,
               method: str, device: str, **extra: Any) -> dict[str, Any]:
        """The rules shared by card and manual admission, in the order a proctor applies them."""
        if session is None or phase in (Phase.BEFORE_ENTRY, Phase.ENDED):
            return self._checkin("outside_window", session, now, method, device, cand, phase=phase.value, **extra)
        st = self._state(session).seat(cand.seat)
        if st.status in ("admitted", "suspect"):
            return self._checkin("duplicate", session, now, method, device, cand, status=st.status, **extra)
        if st.status == "out":
            return self._checkin("admitted", session, now, method, device, cand, reentry=True,
                                 sweep_required=True, **extra)
        if phase == Phase.CUTOFF_PASSED:
            return self._checkin("late_refused", session, now, method, device, cand,
                                 cutoff=session.cutoff, **extra)
        return self._checkin("admitted", session, now, method, device, cand, reentry=False,
                             sweep_required=True, **extra)

    def on_card(self, ev: CardPresented) -> dict[str, Any]:
        with self._lock:
            now, session, phase = self._now()
            ident = ev.identity
            if ident is None:
                if not ev.uid:
                    return self._checkin("unknown_card", session, now, "uid", ev.device,
                                         reason="card gave neither a UID nor an identity")
                cand = self._plan.by_uid(ev.uid)
                if cand is None:
                    return self._checkin("unknown_card", session, now, "uid", ev.device, uid=ev.uid)
                return self._admit(cand, session, phase, now, "uid", ev.device, uid=ev.uid)
            masked = mask_id(ident.id_number)
            if not ident.id_valid or not is_valid(ident.id_number):
                return self._checkin("invalid_id", session, now, "card", ev.device, id_masked=masked,
                                     reason="GB 11643 check digit does not match")
            cand = self._plan.by_id(ident.id_number)
            if cand is None:
                return self._checkin("not_in_room", session, now, "card", ev.device, id_masked=masked)
            if session is not None and phase not in (Phase.BEFORE_ENTRY, Phase.ENDED):
                expired = self._expired(ident.valid_to, session, now)
                if expired is not None:
                    return self._checkin(expired[0], session, now, "card", ev.device, cand,
                                         valid_to=ident.valid_to, reason=expired[1])
            return self._admit(cand, session, phase, now, "card", ev.device)

    @staticmethod
    def _expired(valid_to: str, session: Session, now: float) -> tuple[str, str] | None:
        """"长期" never expires; a card valid to a date is still good on that date (exam-local day)."""
        v = valid_to.strip()
        if v == "长期":
            return None
        if not (len(v) == 8 and v.isdigit()):
            return "invalid_id", "valid_to is neither a YYYYMMDD date nor 长期"
        if v < session.local_date(now).strftime("%Y%m%d"):
            return "expired_card", f"card expired {v}"
        return None

    # -- proctor fallbacks --------------------------------------------------------------------

    def _find(self, seat: Any = None, id_last6: str | None = None,
              ticket_tail: str | None = None) -> Candidate:
        given = [x for x in (seat, id_last6, ticket_tail) if x not in (None, "")]
        if len(given) != 1:
            raise CheckinError("give exactly one of seat, id_last6, ticket_tail")
        if seat not in (None, ""):
            cand = self._plan.by_seat(seat)
            if cand is None:
                raise UnknownSeat(f"no seat {seat!s} in room {self._plan.room}")
            return cand
        if id_last6:
            if not re.fullmatch(r"\d{5}[\dXx]", str(id_last6).strip()):
                raise CheckinError("id_last6: expected the last 6 characters of the ID number")
            found, what = self._plan.by_id_last6(id_last6), "ID ending"
        else:
            found, what = self._plan.by_ticket_tail(str(ticket_tail)), "ticket ending"
        if not found:
            raise UnknownSeat(f"no candidate with {what} {id_last6 or ticket_tail} in room {self._plan.room}")
        if len(found) > 1:
            raise AmbiguousCandidate(f"{what} {id_last6 or ticket_tail}", [c.seat for c in found])
        return found[0]

    def _proctor(self, proctor: str) -> str:
        """A signature goes on the record and to the aggregator as typed, so one that holds a
        candidate's name or a full ID number is refused, not rewritten: scrubbed, two proctors
        signing with names would both read *** and count as one."""
        p = (proctor or "").strip()
        if not p:
            raise CheckinError("proctor: expected who is doing this (it is signed on the record)")
        if self.scrub(p) != p:
            raise CheckinError("proctor: the signature contains a candidate's name or an ID number, "
                               "which may not leave the room; sign with your staff number or initials")
        return p

    def _open_session(self, now: float) -> tuple[Session, Phase]:
        session, phase = self._schedule.phase(now)
        if session is None or phase in (Phase.BEFORE_ENTRY, Phase.ENDED):
            raise CheckinError("no exam session is open for entry")
        return session, phase

    def manual_admit(self, seat: Any = None, id_last6: str | None = None, proctor: str = "",
                     ticket_tail: str | None = None) -> dict[str, Any]:
        """Admission when no card can be read; window and late rules still apply."""
        with self._lock:
            who = self._proctor(proctor)
            cand = self._find(seat, id_last6, ticket_tail)
            now, session, phase = self._now()
            via = "seat" if seat not in (None, "") else "id_last6" if id_last6 else "ticket_tail"
            return self._admit(cand, session, phase, now, "manual", "manual", proctor=who, lookup=via)

    def mark_suspect(self, seat: Any, proctor: str, reason: str) -> dict[str, Any]:
        """存疑: photographed and held until two different proctors confirm."""
        with self._lock:
            who = self._proctor(proctor)
            cand = self._find(seat)
            now = self._clock()
            session, phase = self._open_session(now)
            status = self._state(session).seat(cand.seat).status
            if status == "suspect":
                raise CheckinError(f"seat {cand.seat} is already marked suspect")
            if status == "absent" and phase == Phase.CUTOFF_PASSED:
                raise CheckinError(f"seat {cand.seat}: the late cutoff has passed")
            return self._checkin("suspect", session, now, "manual", "manual", cand, proctor=who,
                                 reason=self.scrub(reason))

    def confirm(self, seat: Any, proctor: str) -> dict[str, Any]:
        """One proctor's signature; the second, from another proctor, admits the candidate."""
        with self._lock:
            who = self._proctor(proctor)
            cand = self._find(seat)
            now = self._clock()
            session, _ = self._open_session(now)
            st = self._state(session).seat(cand.seat)
            if st.status != "suspect":
                raise CheckinError(f"seat {cand.seat} is not marked suspect (status {st.status})")
            if who in st.confirmations:
                raise SameProctor(f"seat {cand.seat}: {who} has already confirmed; "
                                  "a second, different proctor must confirm")
            proctors = [*st.confirmations, who]
            data = {"session": session.id, "seat": cand.seat, "proctor": who, "time": now,
                    "confirmations": len(proctors), "required": REQUIRED_CONFIRMATIONS,
                    "passed": len(proctors) >= REQUIRED_CONFIRMATIONS}
            self._publish(session.id, "suspect_confirm", data)
            if data["passed"]:  # a candidate doubted after being swept in the room is not swept again
                return self._checkin("admitted", session, now, "manual", "manual", cand, reentry=False,
                                     sweep_required=st.before_suspect != "admitted",
                                     proctors=proctors, lookup="suspect_confirm")
            return data

    def leave(self, seat: Any) -> dict[str, Any]:
        """The candidate goes out; coming back is a new check (card or manual) and a new sweep."""
        with self._lock:
            cand = self._find(seat)
            now = self._clock()
            session, _ = self._open_session(now)
            state = self._state(session)
            if state.seat(cand.seat).status != "admitted":
                raise CheckinError(f"seat {cand.seat} is not in the room "
                                   f"(status {state.seat(cand.seat).status})")
            pending = state.pending_for(cand.seat)
            if pending is not None:
                self._close_sweep(session, pending, now, "manual", "left_before_clear")
            return self._checkin("left", session, now, "manual", "manual", cand)

    # -- sweeps -----------------------------------------------------------------------------

    def _head(self, now: float) -> tuple[Session | None, rec.PendingSweep | None]:
        session, _ = self._schedule.phase(now)
        if session is None or session.id not in self._states:
            return session, None
        pending = self._states[session.id].pending
        return session, (pending[0] if pending else None)

    def _unassociated(self, trigger: str, device: str, now: float) -> dict[str, Any]:
        """Published always; ``session`` names the record that keeps it (None: outside every session)."""
        session = self._open_at(now)
        if session is not None:
            self._state(session)
        data = {"session": session.id if session else None, "seat": None, "unassociated": True,
                "trigger": trigger, "device": device, "time": now}
        self._publish(session.id if session else None, "sweep", data)
        return data

    def _close_sweep(self, session: Session, p: rec.PendingSweep, now: float, device: str,
                     result: str | None = None) -> dict[str, Any]:
        cand = self._plan.by_seat(p.seat)
        exempt = bool(cand and cand.medical_metal and p.alarms > 0)
        if result is None:
            result = ("clear" if p.alarms == 0 else "alarm_expected_medical" if exempt
                      else "alarm_cleared_after_recheck" if p.rechecks else "alarm_cleared_without_recheck")
        data = {
            "session": session.id, "seat": p.seat, "unassociated": False, "device": device,
            "alarms": p.alarms, "rechecks": p.rechecks, "started": p.started, "cleared": now,
            "duration_s": round(now - p.started, 3), "medical_metal_exempt": exempt,
            "result": result, "time": now}
        self._publish(session.id, "sweep", data)
        return data

    def on_metal_alarm(self, ev: MetalAlarm) -> dict[str, Any] | None:
        """Counts rising edges only: a detector that repeats "active" is still one alarm."""
        with self._lock:
            was = self._alarm_active.get(ev.device, False)
            self._alarm_active[ev.device] = ev.active
            if not ev.active or was:
                return None
            now = self._clock()
            session, head = self._head(now)
            if session is None or head is None:
                return self._unassociated("alarm", ev.device, now)
            self._commit(session.id, "_alarm", {"seat": head.seat, "time": now, "device": ev.device})
            return None

    def on_sweep_button(self, ev: SweepButton) -> dict[str, Any] | None:
        with self._lock:
            if ev.button not in ("clear", "recheck"):
                raise CheckinError(f'sweep button: expected "clear" or "recheck", got {ev.button!r}')
            now = self._clock()
            session, head = self._head(now)
            if session is None or head is None:
                return self._unassociated(ev.button, ev.device, now)
            if ev.button == "recheck":
                self._commit(session.id, "_recheck", {"seat": head.seat, "time": now, "device": ev.device})
                return None
            return self._close_sweep(session, head, now, ev.device)

    # -- cutoff, end, status ----------------------------------------------------------------

    def add_incident(self, incident: dict[str, Any], *, during: Iterable[float] | None = None) -> str | None:
        """Note an incident on a session's record; returns that session's id, None when no record took it.

        Without ``during``: the session the incident names, else the one the room is in or
        waiting for (a trial listening before entry belongs to the session it prepares).
        With ``during`` (instants): only a session open (entry opened, not ended) at one of
        them takes it, so a clock step between sessions never lands on the next day's record.
        A session whose record is written takes nothing more.
        """
        with self._lock:
            now = self._clock()
            try:
                data = json.loads(json.dumps({**incident, "recorded_at": now}, ensure_ascii=False))
            except (TypeError, ValueError) as e:
                raise CheckinError(f"incident: expected JSON-serialisable fields ({e})") from e
            if during is not None:
                session = next((s for t in during if (s := self._open_at(t)) is not None), None)
            else:
                session = self._schedule.get(str(incident.get("session", ""))) or self._schedule.phase(now)[0]
            if session is None or self._state(session).record_written:
                return None
            self._commit(session.id, "_incident", data)
            return session.id

    def tick(self, now: float) -> None:
        """Attendance at the cutoff and the record at the end, each exactly once per session.

        A session that ended before this station started and left nothing in the
        journal was never observed: no attendance or record is invented for it.
        """
        with self._lock:
            for s in self._schedule.sessions:
                if now < s.cutoff:
                    continue
                if s.id not in self._states and self._started_at is not None and s.end <= self._started_at:
                    continue
                state = self._state(s)
                if not state.attendance_sent:
                    self._publish(s.id, "attendance", rec.attendance(state, s, self._plan, now))
                if now >= s.end and not state.record_written:
                    for p in list(state.pending):
                        self._close_sweep(s, p, now, "end", "not_cleared")
                    files = rec.write_record(state, s, self._plan, self._record_dir, now)
                    self._publish(s.id, "session_record", {
                        "session": s.id, "room": self._plan.room, "subject": s.subject,
                        "start": s.start, "end": s.end, "time": now,
                        "seatplan_sha256": self._plan.sha256, "files": files,
                        **rec.published(state, s, self._plan, self.scrub)})

    def state(self) -> dict[str, Any]:
        with self._lock:
            now, session, phase = self._now()
            st = self._states.get(session.id) if session else None
            out: dict[str, Any] = {
                "room": self._plan.room, "session": session.id if session else None,
                "phase": phase.value, "total": len(self._plan), "seatplan_sha256": self._plan.sha256,
                "listening": self._schedule.listening_at(now) is not None,
                "admitted": 0, "suspect": 0, "out": 0, "present": 0, "absent": len(self._plan),
                "pending_sweep": [], "late_refused": [], "attendance_sent": False,
                "record_written": False, "journal_skipped": self.journal_skipped}
            if st is not None:
                out.update(admitted=st.count("admitted"), suspect=st.count("suspect"), out=st.count("out"),
                           present=st.count(*rec.PRESENT), absent=len(self._plan) - st.count(*rec.PRESENT),
                           pending_sweep=[p.seat for p in st.pending], late_refused=st.late_refused(),
                           attendance_sent=st.attendance_sent, record_written=st.record_written)
            return out
