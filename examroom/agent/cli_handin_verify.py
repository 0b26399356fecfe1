"""CLI for the two exit paths of a check-in: hand-in (交卷) and the identity-verification point.

``checkin handin`` closes a seat for good (no re-entry); ``checkin send-to-verification``
and ``checkin verify`` carry a suspect to the site's verification point and back. Apart
from cli_exam.py so that file stays about the door; registered on its ``checkin`` group.
Each prints what the proctor needs at the door, with times in the exam's zone; a refusal
(too early, not present, not a suspect) is the agent's error and exits 1.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from examroom.agent import human_time
from examroom.agent.cli_verdicts import checkin_text
from examroom.contract.vocabulary import Verdict


def _who(d: dict[str, Any]) -> str:
    return f"seat {d.get('seat')}, ticket {d.get('ticket')}, ID {d.get('id_masked')}"


def handin_text(d: dict[str, Any]) -> tuple[str, int]:
    head = f"HANDED IN {_who(d)} at {human_time.clock(d.get('time'))}, by {d.get('proctor')}"
    lines = [head]
    if d.get("forced"):
        lines.append(f"FORCED before the earliest hand-in at {human_time.clock(d.get('earliest_handin'))}: "
                     f"{d.get('reason')} (on the record)")
    lines.append("the seat is closed: the candidate may not come back this session")
    return "\n".join(lines), 0


def sent_text(d: dict[str, Any]) -> tuple[str, int]:
    return (f"SENT TO IDENTITY VERIFICATION {_who(d)} at {human_time.clock(d.get('time'))}, by {d.get('proctor')}\n"
            f"when the point answers: checkin verify {d.get('seat')} --outcome confirmed|refused "
            "--point TEXT --proctor ID"), 0


def verify_text(d: dict[str, Any]) -> tuple[str, int]:
    if d.get("verdict") == Verdict.IDENTITY_REFUSED:
        return (f"IDENTITY REFUSED (替考) {_who(d)} at {human_time.clock(d.get('time'))}, by {d.get('point')} "
                f"(recorded by {d.get('proctor')}): not admitted; the seat is closed"), 0
    text, code = checkin_text(d)
    return f"IDENTITY CONFIRMED by {d.get('point')}\n{text}", code


Checkin = Callable[..., None]  # cli_exam's registrar: (name, help, cmd, build, setup, human)


def add_commands(checkin: Checkin) -> None:
    def handin_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seat")
        sp.add_argument("--proctor", required=True, help="who takes the papers (recorded)")
        sp.add_argument("--force", metavar="REASON",
                        help="hand in before the earliest hand-in time, e.g. illness (the reason is recorded)")

    checkin("handin", "the candidate hands in and leaves for good (交卷; no re-entry)", "checkin_handin",
            lambda a: {"seat": a.seat, "proctor": a.proctor,
                       **({"force": True, "reason": a.force} if a.force else {})}, handin_args, handin_text)

    def seat_and_proctor(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seat")
        sp.add_argument("--proctor", required=True, help="who sends the candidate (recorded)")

    checkin("send-to-verification", "send a suspect to the site's identity-verification point",
            "checkin_send_to_verification", lambda a: {"seat": a.seat, "proctor": a.proctor}, seat_and_proctor,
            sent_text)

    def verify_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seat")
        sp.add_argument("--outcome", required=True, choices=["confirmed", "refused"],
                        help="confirmed: admitted (a sweep follows); refused: an impostor, never admitted")
        sp.add_argument("--point", required=True, help="who or where verified the identity (recorded)")
        sp.add_argument("--proctor", required=True, help="who records the outcome")

    checkin("verify", "the identity-verification point's outcome for a suspect sent there", "checkin_verify",
            lambda a: {"seat": a.seat, "outcome": a.outcome, "point": a.point, "proctor": a.proctor},
            verify_args, verify_text)
