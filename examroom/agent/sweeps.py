"""The metal-detector sweep log of the door: which candidate each alarm and button belongs to.

Sweep association rule: candidates are swept in the order they were admitted
at the door. Each admission (including a re-entry) opens a pending sweep at the
back of a FIFO queue; a metal alarm, a "recheck" and a "clear" always apply to
the sweep at the head of the queue, and "clear" closes it. With nothing pending,
the press or alarm is still published, as ``sweep`` with ``unassociated: true``,
and kept on the record of the session whose entry is open or exam running (a
proctor testing the detector as entry opens is on that session's record), or
on none, with ``session: null``, outside every session.
"""
from __future__ import annotations

from typing import Any, Callable

from examroom.agent import session_record as rec
from examroom.agent.checkin_errors import CheckinError
from examroom.agent.schedule import Session
from examroom.agent.session_book import SessionBook
from examroom.contract.vocabulary import EventKind, SweepResult, SweepTrigger
from examroom.drivers.events import MetalAlarm, SweepButton


class SweepLog:
    def __init__(self, book: SessionBook, clock: Callable[[], float]) -> None:
        self._book = book
        self._plan = book.plan
        self._schedule = book.schedule
        self._clock = clock
        self._lock = book.lock  # the station's too: an admission and the sweep it opens are one step
        self._alarm_active: dict[str, bool] = {}
        book.at_session_end(self._close_pending)

    def _head(self, now: float) -> tuple[Session | None, rec.PendingSweep | None]:
        session, _ = self._schedule.phase(now)
        state = self._book.get(session.id) if session is not None else None
        if state is None:
            return session, None
        return session, (state.pending[0] if state.pending else None)

    def _unassociated(self, trigger: SweepTrigger, device: str, now: float) -> dict[str, Any]:
        """Published always; ``session`` names the record that keeps it (None: outside every session)."""
        session = self._book.open_at(now)
        if session is not None:
            self._book.observe(session)
        data = {"session": session.id if session else None, "seat": None, "unassociated": True,
                "trigger": trigger, "device": device, "time": now}
        return self._book.publish(session.id if session else None, EventKind.SWEEP, data).data

    def close(self, session: Session, p: rec.PendingSweep, now: float, device: str,
                     result: SweepResult | None = None) -> dict[str, Any]:
        cand = self._plan.by_seat(p.seat)
        exempt = bool(cand and cand.medical_metal and p.alarms > 0)
        if result is None:
            result = (SweepResult.CLEAR if p.alarms == 0 else SweepResult.ALARM_EXPECTED_MEDICAL if exempt
                      else SweepResult.ALARM_CLEARED_AFTER_RECHECK if p.rechecks
                      else SweepResult.ALARM_CLEARED_WITHOUT_RECHECK)
        data = {
            "session": session.id, "seat": p.seat, "unassociated": False, "device": device,
            "alarms": p.alarms, "rechecks": p.rechecks, "started": p.started, "cleared": now,
            "duration_s": round(now - p.started, 3), "medical_metal_exempt": exempt,
            "special_items": len(cand.special_items) if cand else 0, "result": result, "time": now}
        return self._book.publish(session.id, EventKind.SWEEP, data).data

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
                return self._unassociated(SweepTrigger.ALARM, ev.device, now)
            self._book.commit(session.id, "_alarm", {"seat": head.seat, "time": now, "device": ev.device})
            return None

    def on_sweep_button(self, ev: SweepButton) -> dict[str, Any] | None:
        with self._lock:
            if ev.button not in (SweepTrigger.CLEAR, SweepTrigger.RECHECK):
                raise CheckinError(f'sweep button: expected "clear" or "recheck", got {ev.button!r}')
            button = SweepTrigger(ev.button)
            now = self._clock()
            session, head = self._head(now)
            if session is None or head is None:
                return self._unassociated(button, ev.device, now)
            if button == SweepTrigger.RECHECK:
                self._book.commit(session.id, "_recheck", {"seat": head.seat, "time": now, "device": ev.device})
                return None
            return self.close(session, head, now, ev.device)

    def _close_pending(self, session: Session, state: rec.SessionState, now: float) -> None:
        """At the session's end a sweep still open is closed as not cleared, on the record."""
        for p in list(state.pending):
            self.close(session, p, now, "end", SweepResult.NOT_CLEARED)
