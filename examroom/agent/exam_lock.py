"""The exam lock: nothing remote or routine disturbs a room while a session is open.

While a session's entry or a listening window is open, the disruptive actions (a
relay switch on command, acting self-test steps, a restart or stop by install.sh)
are refused unless someone forces them with a reason. A forced action is on
record: a ``forced`` event (what, who, why, which lock) and a log line. The
automatic switch to the backup source on a loss is not an action of anyone's and
stays automatic.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from examroom.agent.control import RequestError
from examroom.agent.schedule import Schedule
from examroom.contract.vocabulary import EventKind

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
MAX_REASON = 300


class ExamLock:
    def __init__(self, schedule: Schedule | None, clock: Callable[[], float], emit: Emit,
                 scrub: Callable[[str], str]) -> None:
        self._schedule = schedule
        self._clock = clock
        self._emit = emit
        self._scrub = scrub

    def why(self) -> str | None:
        return self._schedule.lock_at(self._clock()) if self._schedule is not None else None

    def state(self) -> dict[str, Any]:
        why = self.why()
        return {"locked": why is not None, "why": why}

    def check(self, action: str, args: dict[str, Any], by: str) -> None:
        """Let ``action`` through, or refuse it (RequestError) while the room is locked; with
        ``force`` and a ``reason`` it goes through and is recorded."""
        why = self.why()
        if why is None:
            return
        force, reason = args.get("force", False), args.get("reason")
        if force is not True:
            raise RequestError(f"{action} refused: {why}; the room may not be disturbed now "
                               "(force it with force=true and a reason, which goes on the record)")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise RequestError(f"{action} forced without a reason: give 'reason' "
                               f"(1-{MAX_REASON} characters, it goes on the record)")
        reason = self._scrub(reason.strip())
        log.warning("FORCED during an open session: %s by %s: %s (%s)", action, by, reason, why)
        self._emit(EventKind.FORCED, {"action": action, "by": by, "reason": reason, "lock": why})
