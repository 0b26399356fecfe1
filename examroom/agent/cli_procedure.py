"""CLI subcommands for the exam-day procedure at the box: ``clock confirm`` and ``proctor``.

Kept apart from cli_exam.py (check-in and audio at the door): these are what a
proctor types before entry opens. Times print in the exam's zone (``[procedure]
timezone``, through ``human_time``), never the shell's or the box's. ``proctor
check`` exits 1 when the rules are not met, like a failed self-test, so a
script cannot take a finding for a pass.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from examroom.agent import human_time
from examroom.agent.cli_verdicts import Human, answer



def _where(session: Any) -> str:
    return f"on the record of session {session}" if session else "no session ahead: kept as an event only"


def confirm_text(d: dict[str, Any]) -> tuple[str, int]:
    return f"wall clock check confirmed by {d.get('by')} at {human_time.clock(d.get('at'))}; {_where(d.get('session'))}", 0


def check_text(d: dict[str, Any]) -> tuple[str, int]:
    """One proctor check: the verdict and each problem, exit 1 on a finding."""
    on_duty = ", ".join(d.get("signed_in") or []) or "nobody"
    head = (f"proctor check of session {d.get('session')} at {human_time.clock(d.get('at'))}: "
            f"{'PASS' if d.get('ok') else 'FAIL'} (signed in: {on_duty}; {d.get('required')} required)")
    return "\n".join([head, *(f"  {p}" for p in d.get("problems") or [])]), 0 if d.get("ok") else 1


def signin_text(d: dict[str, Any]) -> tuple[str, int]:
    verb = "was already signed in" if d.get("repeat") else "signed in"
    lines = [(f"{d.get('proctor')} {verb} for session {d.get('session')}; "
              f"on duty: {', '.join(d.get('signed_in') or [])}")]
    if d.get("check"):
        lines.append(check_text(d["check"])[0])
    return "\n".join(lines), 0


def list_text(d: dict[str, Any]) -> tuple[str, int]:
    """The roster as the person at the box needs it: names and units stay on this screen."""
    lines = [f"session {d.get('session') or 'none ahead'}; * = signed in"]
    for p in d.get("roster") or []:
        lines.append(f"  {'*' if p.get('signed_in') else ' '} {p.get('id'):<10} {p.get('name')}  "
                     f"{p.get('unit')}  {p.get('sex') or '?'}")
    if d.get("check"):
        lines.append("last " + check_text(d["check"])[0])
    return "\n".join(lines), 0


def add_commands(sub: Any, with_config: Callable, call: Callable, reply: Callable) -> None:
    def leaf(parent: Any, name: str, help: str, cmd: str, build: Callable[[argparse.Namespace], dict[str, Any]],
             setup: Callable[[argparse.ArgumentParser], None], human: Human) -> None:
        sp = with_config(parent.add_parser(name, help=help))
        setup(sp)
        sp.add_argument("--json", action="store_true", help="print the agent's reply as JSON")

        sp.set_defaults(fn=lambda a: answer(call, reply, a, cmd, build(a), human))

    ck = sub.add_parser("clock", help="the room clock: confirm the wall clock was checked (开考前核对时钟)")
    cks = ck.add_subparsers(dest="clock_command", required=True)

    def confirm_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--by", required=True, help="who checked: your proctor id (recorded, sent to the site)")
        sp.add_argument("--note", help="what was seen or done (scrubbed of names, sent to the site)")

    leaf(cks, "confirm", "confirm the room's wall clock was checked against the site's time", "clock_confirm",
         lambda a: {"by": a.by, "note": a.note}, confirm_args, confirm_text)

    pr = sub.add_parser("proctor", help="the room's proctors: sign in, list, check the rules",
                        description="Proctors of the [[proctor]] roster sign in for the session the room is in "
                                    "or waiting for; the rules of [procedure] are checked when entry opens.")
    prs = pr.add_subparsers(dest="proctor_command", required=True)
    leaf(prs, "sign-in", "sign a roster proctor in for the current or next session", "proctor_signin",
         lambda a: {"proctor": a.id}, lambda sp: sp.add_argument("id", help="the proctor's roster id"), signin_text)
    leaf(prs, "list", "the roster, who is signed in, and the last check", "proctor_list",
         lambda a: {}, lambda sp: None, list_text)
    leaf(prs, "check", "check the signed-in proctors against the rules now (exit 1 if not met)", "proctor_check",
         lambda a: {}, lambda sp: None, lambda d: check_text(d["check"]))
