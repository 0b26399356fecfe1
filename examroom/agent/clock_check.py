"""The room clock against the site's time, and the proctor's word that the wall clock was checked.

"每科开考前15分钟, 由考点统一发布时间, 监考人员须在考场核对考场时钟的显示时间": before
each session the site publishes its standard time to every room at once (the
broadcast ``time_check`` command, ``site_time`` ISO 8601 with offset). Each room
answers how far its own clock is from it, corrected by nothing: ``offset_s`` is
box time minus site time when the command is handled (the network's latency is
in it, which is why the tolerance is a second, not a millisecond), next to the
clock driver's own NTP view when the box has a clock device. ``ok`` is
``|offset_s| <= [procedure] clock_tolerance_s``.

A proctor then confirms the room's wall clock was checked (``examroom-agent
clock confirm --by ID``). Both are evidence events and go on the record of the
session the room is in or waiting for (the one they prepare); with no session
ahead they are the event alone.
"""
from __future__ import annotations

import logging
from datetime import datetime, tzinfo
from typing import Any, Callable

from examroom.agent.control import CALLER, Handler, RequestError
from examroom.agent.session_book import SessionBook
from examroom.contract.vocabulary import EventKind

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
MAX_NOTE = 300


def _site_time(args: dict[str, Any]) -> datetime:
    v = args.get("site_time")
    try:
        t = datetime.fromisoformat(v.strip()) if isinstance(v, str) and len(v) <= 64 else None
    except ValueError:
        t = None
    if t is None or t.utcoffset() is None:
        raise RequestError("'site_time': expected the site's time, ISO 8601 with a UTC offset, "
                           'e.g. "2026-06-07T08:45:00.000+08:00"')
    return t


class ClockCheck:
    def __init__(self, emit: Emit, clock: Callable[[], float], tolerance_s: float,
                 ntp: Callable[[], dict[str, Any] | None], sign: Callable[[Any], str],
                 scrub: Callable[[str], str], tz: tzinfo) -> None:
        """``ntp``: the first clock device's status entry with its ``device`` name, None without
        one; ``sign``: who signs, as the roster allows (``Roster.signature``); ``scrub``: for
        the free-text note, which leaves the room."""
        self._emit = emit
        self._clock = clock
        self._tolerance = float(tolerance_s)
        self._ntp = ntp
        self._sign = sign
        self._scrub = scrub
        self._tz = tz
        self._book: SessionBook | None = None

    def attach(self, book: SessionBook | None) -> None:
        self._book = book

    def commands(self) -> dict[str, Handler]:
        return {"time_check": self.time_check, "clock_confirm": self.confirm}

    def time_check(self, args: dict[str, Any]) -> dict[str, Any]:
        """The site's time against the box's, at receipt. The reply is the event's data with its
        ``ok`` as ``clock_ok``: a reply's ``ok`` says the request ran (a clock that is off is
        an answer, not a failed command)."""
        now = self._clock()
        site = _site_time(args)
        offset = round(now - site.timestamp(), 3)
        data = {"session": None, "site_time": site.isoformat(timespec="milliseconds"), "box_time": self._iso(now),
                "offset_s": offset, "tolerance_s": self._tolerance, "ok": abs(offset) <= self._tolerance,
                "ntp": self._ntp_view(), "by": str(args.get(CALLER) or "unknown")}
        self._publish(now, EventKind.TIME_CHECK, data)
        if data["ok"]:
            log.info("time check: the room clock is %+.3f s off the site's time", offset)
        else:
            log.warning("time check: the room clock is %+.3f s off the site's time (tolerance %g s): "
                        "set the clock right and check the wall clock", offset, self._tolerance)
        return {**{k: v for k, v in data.items() if k != "ok"}, "clock_ok": data["ok"]}

    def confirm(self, args: dict[str, Any]) -> dict[str, Any]:
        """A proctor checked the room's wall clock against the site's time."""
        by = self._sign(args.get("by"))
        note = args.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
            raise RequestError(f"'note': expected text of at most {MAX_NOTE} characters")
        now = self._clock()
        data: dict[str, Any] = {"session": None, "by": by, "user": str(args.get(CALLER) or "unknown"),
                                "at": self._iso(now)}
        if note and note.strip():
            data["note"] = self._scrub(note.strip())
        self._publish(now, EventKind.CLOCK_CONFIRM, data)
        log.info("wall clock checked, confirmed by %s (session %s)", by, data["session"])
        return data

    def _publish(self, now: float, kind: EventKind, data: dict[str, Any]) -> None:
        """On the record of the session the room is in or waiting for (``data["session"]`` says
        which); the event alone when no session is ahead."""
        book = self._book
        if book is not None:
            with book.lock:
                session = book.schedule.upcoming(now)
                if session is not None:
                    book.observe(session)
                    data["session"] = session.id
                    book.publish(session.id, kind, data)
                    return
        self._emit(kind, data)

    def _ntp_view(self) -> dict[str, Any] | None:
        """The clock driver's own view (chrony, the kernel, the sim); its fields are null when its
        time source could not be read."""
        entry = self._ntp()
        if entry is None:
            return None
        return {"device": entry["device"], "synced": entry.get("synced"), "offset_s": entry.get("offset_s"),
                "source": entry.get("source")}

    def _iso(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self._tz).isoformat(timespec="milliseconds")
