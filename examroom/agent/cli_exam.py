"""CLI subcommands for exam work in the room: check-in fallbacks, audio, camera, and the
answer to an instruction the site pushed (``ack``, ``pushes``).

Kept apart from cli.py so each file is about one audience: these are what a
proctor's helper or a technician types during entry and listening. Each prints
a few lines a person reads at the door (local clock times, the masked ID, what
to do next); ``--json`` prints the agent's reply instead. A manual admission
that does not admit (duplicate, late, outside the entry window) and a failed
trial listening exit 1, like a failed self-test: the verdict is recorded, but
whoever typed the command (or a script) must not take it for a success.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from examroom.agent import cli_handin_verify
from examroom.agent.cli_verdicts import Human, _clock, answer, checkin_text

def confirm_text(d: dict[str, Any]) -> tuple[str, int]:
    if "verdict" in d:  # the second confirmation: the reply is the admission
        return checkin_text(d)
    return (f"seat {d.get('seat')}: confirmation {d.get('confirmations')} of {d.get('required')} "
            f"by {d.get('proctor')} at {_clock(d.get('time'))}; a different proctor must confirm "
            "before the candidate is admitted"), 0


def _seats(xs: Any) -> str:
    return ", ".join(map(str, xs or [])) or "none"


def state_text(d: dict[str, Any]) -> tuple[str, int]:
    lines = [f"room {d.get('room')}, session {d.get('session') or 'none'}, phase {d.get('phase')}"
             + (", listening now" if d.get("listening") else ""),
             f"present {d.get('present')} of {d.get('total')} (admitted {d.get('admitted')}, "
             f"suspect {d.get('suspect')}, stepped out {d.get('out')}), absent {d.get('absent')}",
             f"waiting for a sweep: {_seats(d.get('pending_sweep'))}",
             f"late refused: {_seats(d.get('late_refused'))}",
             f"handed in: {d.get('handed_in', 0)} (hand-in from {_clock(d.get('handin_from'))}); "
             f"at the identity-verification point: {_seats(d.get('at_verification'))}; "
             f"identity refused: {_seats(d.get('identity_refused'))}",
             f"attendance sent: {'yes' if d.get('attendance_sent') else 'no'}, "
             f"session record written: {'yes' if d.get('record_written') else 'no'}"]
    if d.get("journal_skipped"):
        lines.append(f"WARNING: {d['journal_skipped']} unreadable journal lines were skipped at start-up")
    return "\n".join(lines), 0


def snapshot_text(d: dict[str, Any]) -> tuple[str, int]:
    return (f"snapshot kept on the box: {d.get('file')} ({d.get('bytes')} bytes, "
            f"sha256 {str(d.get('sha256'))[:16]}…) at {d.get('ts')}"), 0


def switch_text(d: dict[str, Any]) -> tuple[str, int]:
    if not d.get("changed"):
        return f"audio source already {d.get('source')}", 0
    return f"audio source switched from {d.get('previous')} to {d.get('source')}", 0


def trial_text(d: dict[str, Any]) -> tuple[str, int]:
    ok = bool(d.get("pass"))
    silences = d.get("silences") or []
    clip = (d.get("clipping") or {}).get("seconds")
    lines = [f"trial listening on {d.get('device')} ({d.get('source')} source): {'PASS' if ok else 'FAIL'}",
             f"  {d.get('measured_s')} of {d.get('seconds')} s measured, mean {d.get('mean_dbfs')} dBFS, "
             f"peak {d.get('peak_dbfs')} dBFS",
             f"  silences: {len(silences)}" + "".join(
                 f"\n    at +{s.get('offset_s')} s for {s.get('duration_s')} s" for s in silences),
             f"  clipping: {f'{clip} s' if clip else 'none'}"]
    if d.get("problems"):
        lines.append(f"  problems: {', '.join(map(str, d['problems']))}")
    lines.append(f"report {d.get('file')}; {d.get('record')}")
    return "\n".join(lines), 0 if ok else 1


def pushes_text(pending: list[dict[str, Any]]) -> str:
    """Pushed instructions waiting for a person, oldest first (status and ``pushes``)."""
    if not pending:
        return "no pushed instruction is waiting for acknowledgement"
    lines = [f"{len(pending)} pushed instruction(s) waiting; answer with: examroom-agent ack [PUSH_ID] --by YOUR_ID"]
    for p in pending:
        lines.append(f"  {p.get('push_id')}  {p.get('age_s')} s ago  {p.get('text')}")
    return "\n".join(lines)


def ack_text(d: dict[str, Any]) -> tuple[str, int]:
    return (f"push {d.get('push_id')} acknowledged by {d.get('by')}, {d.get('after_s')} s after it was shown: "
            f"{d.get('text')}"), 0


def add_commands(sub: Any, with_config: Callable, call: Callable, reply: Callable) -> None:
    def run(a: argparse.Namespace, cmd: str, args: dict[str, Any], human: Human,
            timeout: float = 30.0) -> int:
        return answer(call, reply, a, cmd, args, human, timeout)

    def leaf(parent: Any, name: str, help: str, cmd: str,
             build: Callable[[argparse.Namespace], dict[str, Any]],
             setup: Callable[[argparse.ArgumentParser], None], human: Human) -> None:
        """One subcommand that sends one control-socket command built from its arguments."""
        sp = with_config(parent.add_parser(name, help=help))
        setup(sp)
        sp.add_argument("--json", action="store_true", help="print the agent's reply as JSON")
        sp.set_defaults(fn=lambda a: run(a, cmd, build(a), human))

    ck = sub.add_parser("checkin", help="check-in fallbacks when a card cannot be read, suspects, leaving, "
                                        "hand-in, the identity-verification point",
                        description="Exit 0: done as asked; 1: refused (the reason is printed; an admission "
                                    "that does not admit is still recorded); 2: usage or config error.")
    cks = ck.add_subparsers(dest="checkin_command", required=True)

    def checkin(name: str, help: str, cmd: str, build: Callable, setup: Callable,
                human: Human = checkin_text) -> None:
        leaf(cks, name, help, cmd, build, setup, human)

    def admit_args(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--seat", help="seat number")
        g.add_argument("--id-last6", help="last 6 characters of the ID number")
        g.add_argument("--ticket-tail", help="last digits of the admission ticket")
        sp.add_argument("--proctor", required=True, help="who admits (recorded)")

    checkin("admit", "admit a candidate whose card cannot be read (manual check-in)", "checkin_admit",
            lambda a: {"seat": a.seat, "id_last6": a.id_last6, "ticket_tail": a.ticket_tail,
                       "proctor": a.proctor}, admit_args)

    def suspect_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seat")
        sp.add_argument("--proctor", required=True)
        sp.add_argument("--reason", default="")

    checkin("suspect", "mark a candidate's identity as in doubt (存疑); a snapshot is taken", "checkin_suspect",
            lambda a: {"seat": a.seat, "proctor": a.proctor, "reason": a.reason}, suspect_args)

    def confirm_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seat")
        sp.add_argument("--proctor", required=True, help="two different proctors must confirm")

    checkin("confirm", "confirm a suspect's identity (two different proctors admit)", "checkin_confirm",
            lambda a: {"seat": a.seat, "proctor": a.proctor}, confirm_args, confirm_text)
    checkin("leave", "a candidate leaves the room (re-entry needs a new sweep)", "checkin_leave",
            lambda a: {"seat": a.seat}, lambda sp: sp.add_argument("seat"))
    checkin("state", "check-in counts, phase and pending sweeps", "checkin_state", lambda a: {},
            lambda sp: None, state_text)

    cli_handin_verify.add_commands(checkin)

    au = sub.add_parser("audio", help="unified audio source: switch source, trial listening")
    aus = au.add_subparsers(dest="audio_command", required=True)

    def switch_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("source", choices=["primary", "backup"])
        sp.add_argument("--device")
        sp.add_argument("--force", metavar="REASON",
                        help="switch even while an entry or listening window is open (recorded)")

    leaf(aus, "switch", "switch the relay to the primary or backup source", "audio_switch",
         lambda a: {"source": a.source, "device": a.device,
                    **({"force": True, "reason": a.force} if a.force else {})}, switch_args, switch_text)

    def trial_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("seconds", type=float, nargs="?", default=10.0)
        sp.add_argument("--device")

    sp = with_config(aus.add_parser("trial", help="trial listening (试听): measure the feed and report",
                                    description="Exit 0: the feed passed; 1: it failed (silence, "
                                                "clipping, incomplete) or the agent refused."))
    trial_args(sp)
    sp.add_argument("--json", action="store_true", help="print the agent's report as JSON")
    sp.set_defaults(fn=lambda a: run(a, "trial_listening", {"seconds": a.seconds, "device": a.device},
                                     trial_text, timeout=a.seconds + 30))

    def ack_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("push_id", nargs="?", help="which push (default: the oldest waiting)")
        sp.add_argument("--by", required=True, help="who answers: your proctor id (recorded, sent to the site)")

    leaf(sub, "ack", "acknowledge an instruction pushed by the site (指令推送)", "push_ack",
         lambda a: {"push_id": a.push_id, "by": a.by}, ack_args, ack_text)
    def pushes(a: argparse.Namespace) -> int:
        resp = call(a, "status")
        if not resp.get("ok"):
            return reply(resp)
        pending = resp.get("pushes") or []
        return reply({"ok": True, "pushes": pending}, None if a.json else pushes_text(pending))

    sp = with_config(sub.add_parser("pushes", help="pushed instructions waiting for acknowledgement, with their age"))
    sp.add_argument("--json", action="store_true", help="print the list as JSON")
    sp.set_defaults(fn=pushes)
    leaf(sub, "snapshot", "take a camera snapshot kept on the box", "snapshot",
         lambda a: {"tag": a.tag}, lambda sp: sp.add_argument("tag", nargs="?", default="manual"),
         snapshot_text)
