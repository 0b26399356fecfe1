"""The province's exam-day steps around check-in, built from ``[procedure]`` and the
proctor roster: time signals, the clock check, the proctors' sign-in and rules,
violations by code and the printable record card (docs/procedure.md).

One place builds them with what they share (the exam's zone, the roster's signature
and scrub rules), so the daemon wires one component, not five.
"""
from __future__ import annotations

from typing import Any, Callable
from zoneinfo import ZoneInfo

from examroom.agent.clock_check import ClockCheck
from examroom.agent.config import Config
from examroom.agent.control import Handler
from examroom.agent.proctors import Proctors, Roster, Rules
from examroom.agent.record_card import RecordCard
from examroom.agent.session_book import SessionBook
from examroom.agent.time_signals import TimeSignals
from examroom.agent.violations import Violations, load_codes

Emit = Callable[[str, dict[str, Any]], Any]


class Procedure:
    def __init__(self, config: Config, emit: Emit, clock: Callable[[], float], scrub: Callable[[str], str],
                 clock_device: Callable[[], dict[str, Any] | None]) -> None:
        pc, roster = config.procedure, Roster(config.proctors)
        zone = ZoneInfo(pc["timezone"])

        def sign(who: str) -> str:
            return roster.signature(who, scrub)

        def scrub_text(text: str) -> str:
            return roster.scrub(scrub(text))

        self.signals = TimeSignals(pc["end_warning_min"])
        self.proctors = Proctors(roster, Rules(pc["proctors_required"], pc["require_woman"], pc["distinct_units"]),
                                 clock, zone)
        self.clock_check = ClockCheck(emit, clock, pc["clock_tolerance_s"], clock_device, sign, scrub_text, zone)
        self.violations = Violations(load_codes(pc["violation_codes"]), emit, clock, scrub_text, sign, zone)
        self.card = RecordCard.for_config(config)

    def attach(self, book: SessionBook) -> None:
        """The steps keep their facts in the session book, which the room builds at start."""
        for part in (self.signals, self.proctors, self.clock_check, self.violations, self.card):
            part.attach(book)

    def commands(self) -> dict[str, Handler]:
        return {**self.clock_check.commands(), **self.proctors.commands(), **self.violations.commands()}

    def alerts(self) -> list[str]:
        return [*self.proctors.alerts(), *self.violations.alerts()]
