"""The exam signals as events: entry, start, the end warning and the end, once each per session.

People ring the bell (or the site's broadcast does); the room box records when
each signal fell due by its own clock, so the session record and the site's
board show the timetable as the room lived it ("考试终了前15分钟, 监考员甲应当众提醒
考生": the end warning is one of them, ``[procedure] end_warning_min``).

The session book's tick drives this (``SessionBook.at_tick``): a signal is
published and journalled with its session, so a restart never sends it twice,
and the end signal is on the record the same tick writes. A signal whose time
passed while the agent was down is sent when the agent is back, ``delay_s``
saying how late the box noticed it; a session that ended before the agent
started and left no journal gets nothing invented.
"""
from __future__ import annotations

import logging
from datetime import datetime

from examroom.agent.schedule import Session
from examroom.agent.session_book import SessionBook
from examroom.agent.session_record import SessionState
from examroom.contract.vocabulary import EventKind, ExamSignal

log = logging.getLogger(__name__)


def due_times(session: Session, end_warning_min: float) -> list[tuple[ExamSignal, float]]:
    """When each signal of ``session`` falls due, in order. The end warning never falls before
    the start: a session shorter than the warning gets it with the start signal."""
    return [(ExamSignal.ENTRY, session.entry_opens), (ExamSignal.START, session.start),
            (ExamSignal.END_WARNING, max(session.start, session.end - end_warning_min * 60)),
            (ExamSignal.END, session.end)]


class TimeSignals:
    """Publishes through the book it is attached to: the book holds ``emit`` and the clock,
    and its journal is what makes each signal once."""

    def __init__(self, end_warning_min: float) -> None:
        self._warning_min = end_warning_min
        self._book: SessionBook | None = None

    def attach(self, book: SessionBook | None) -> None:
        """A room without a schedule or seat plan has no book, and so no signals."""
        if book is not None:
            self._book = book
            book.at_tick(self._tick)

    def _tick(self, session: Session, state: SessionState, now: float) -> None:
        assert self._book is not None
        sent = {str(s["signal"]) for s in state.signals}
        for signal, at in due_times(session, self._warning_min):
            if at > now or signal.value in sent:
                continue
            delay, due = round(now - at, 1), datetime.fromtimestamp(at, session.tz).isoformat(timespec="milliseconds")
            self._book.publish(session.id, EventKind.EXAM_SIGNAL, {
                "session": session.id, "signal": signal.value, "at": due, "delay_s": delay})
            log.info("exam signal %s of session %s (due %s, %.1f s ago)", signal, session.id, due, delay)
