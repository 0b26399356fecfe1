"""Instructions pushed by the site (指令推送) until a person in the room acknowledges them.

Upper levels test before the exam that every room receives an instruction and
responds at once. The site's ``push`` command shows the text on the box (a
WARNING log line, the pending list of ``examroom-agent status`` and ``pushes``)
and is recorded as a ``push`` event; a proctor or technician answers with
``examroom-agent ack``, recorded as a ``push_ack`` event with who and how long
it took. Both are evidence: the site must prove it received and answered.

Pending pushes live in memory only: after a restart the site's record still
shows the push unacknowledged, which is the truth (nobody answered it here).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from examroom.agent.checkin import same_signature
from examroom.agent.control import RequestError
from examroom.agent.events import iso_now
from examroom.contract.vocabulary import EventKind

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
MAX_PENDING = 100  # a site that pushes more without anyone answering is not testing a room
REMEMBERED = 1000  # acknowledged ids kept, so a repeated push is answered, not shown again


@dataclass(frozen=True)
class Pending:
    push_id: str
    text: str
    by: str  # site (<topic>)
    shown_at: float  # wall clock, for people
    shown_mono: float  # monotonic, for after_s: a clock step must not make an answer take -3 s


class Pushes:
    def __init__(self, emit: Emit, scrub: Callable[[str], str], roster: Iterable[str] = (),
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``roster``: the room's proctor ids ([[proctor]]); when given, only they acknowledge."""
        self._emit = emit
        self._scrub = scrub
        self._roster = {same_signature(r): r for r in roster}
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, Pending] = OrderedDict()  # oldest first
        self._acked: OrderedDict[str, str] = OrderedDict()  # push_id -> who acknowledged it

    def show(self, push_id: str, text: str, by: str) -> dict[str, Any]:
        """Show a pushed instruction once; the site repeating the same id (a lost reply, a
        retry) is answered again without a second event or log line."""
        with self._lock:  # held across the event: two copies arriving together make one event
            if push_id in self._pending or push_id in self._acked:
                return {"push_id": push_id, "shown": True, "repeat": True}
            if len(self._pending) >= MAX_PENDING:
                raise RequestError(f"{MAX_PENDING} pushes are waiting for acknowledgement; "
                                   "acknowledge them first (examroom-agent ack)")
            text = self._scrub(text)
            self._emit(EventKind.PUSH, {"push_id": push_id, "text": text, "by": by})
            self._pending[push_id] = Pending(push_id, text, by, self._clock(), self._mono())
        log.warning("INSTRUCTION PUSHED by the site (%s): %s -- acknowledge with: examroom-agent ack %s --by YOUR_ID",
                    push_id, text, push_id)
        return {"push_id": push_id, "shown": True}

    def ack(self, push_id: str | None, who: str, user: str) -> dict[str, Any]:
        """A person in the room answers a push (the oldest waiting one when no id is given)."""
        who = self._signature(who)
        with self._lock:
            if push_id is None:
                if not self._pending:
                    raise RequestError("no pushed instruction is waiting for acknowledgement")
                push_id = next(iter(self._pending))
            elif push_id not in self._pending:
                if push_id in self._acked:
                    raise RequestError(f"push {push_id} was already acknowledged by {self._acked[push_id]}")
                waiting = ", ".join(self._pending) or "none"
                raise RequestError(f"no pushed instruction {push_id!r} is waiting (waiting: {waiting})")
            p = self._pending[push_id]
            after = round(self._mono() - p.shown_mono, 1)
            self._emit(EventKind.PUSH_ACK, {"push_id": push_id, "by": who, "after_s": after, "user": user})
            del self._pending[push_id]
            self._acked[push_id] = who
            while len(self._acked) > REMEMBERED:
                self._acked.popitem(last=False)
        log.info("push %s acknowledged by %s (user %s) after %.1f s", push_id, who, user, after)
        return {"push_id": push_id, "by": who, "after_s": after, "text": p.text}

    def pending(self) -> list[dict[str, Any]]:
        """What waits for a person, oldest first, with its age (status, ``pushes``)."""
        now = self._mono()
        with self._lock:
            return [{"push_id": p.push_id, "text": p.text, "by": p.by, "shown_at": iso_now(p.shown_at),
                     "age_s": round(now - p.shown_mono, 1)} for p in self._pending.values()]

    def _signature(self, who: str) -> str:
        """With a roster only a proctor id of this room answers, spelt as the roster spells it;
        without, the text is scrubbed like a note (it leaves the room)."""
        if not self._roster:
            return self._scrub(who)
        rostered = self._roster.get(same_signature(who))
        if rostered is None:
            raise RequestError(f"by: {who!r} is not on this room's proctor roster; "
                               f"answer with your roster id ({', '.join(sorted(self._roster.values()))})")
        return rostered
