"""CLI subcommands for exam work in the room: check-in fallbacks, audio, camera.

Kept apart from cli.py so each file is about one audience: these are what a
proctor's helper or a technician types during entry and listening.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_commands(sub: Any, with_config: Callable, call: Callable, reply: Callable) -> None:
    def leaf(parent: Any, name: str, help: str, cmd: str,
             build: Callable[[argparse.Namespace], dict[str, Any]],
             setup: Callable[[argparse.ArgumentParser], None]) -> None:
        """One subcommand that sends one control-socket command built from its arguments."""
        sp = with_config(parent.add_parser(name, help=help))
        setup(sp)
        sp.set_defaults(fn=lambda a: reply(call(a, cmd, **{k: v for k, v in build(a).items() if v is not None})))

    ck = sub.add_parser("checkin", help="check-in fallbacks when a card cannot be read, suspects, leaving")
    cks = ck.add_subparsers(dest="checkin_command", required=True)

    def checkin(name: str, help: str, cmd: str, build: Callable, setup: Callable) -> None:
        leaf(cks, name, help, cmd, build, setup)

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
            lambda a: {"seat": a.seat, "proctor": a.proctor}, confirm_args)
    checkin("leave", "a candidate leaves the room (re-entry needs a new sweep)", "checkin_leave",
            lambda a: {"seat": a.seat}, lambda sp: sp.add_argument("seat"))
    checkin("state", "check-in counts, phase and pending sweeps", "checkin_state", lambda a: {},
            lambda sp: None)

    au = sub.add_parser("audio", help="unified audio source: switch source, trial listening")
    aus = au.add_subparsers(dest="audio_command", required=True)
    sp = with_config(aus.add_parser("switch", help="switch the relay to the primary or backup source"))
    sp.add_argument("source", choices=["primary", "backup"])
    sp.add_argument("--device")
    sp.set_defaults(fn=lambda a: reply(call(a, "audio_switch", source=a.source,
                                            **({"device": a.device} if a.device else {}))))
    sp = with_config(aus.add_parser("trial", help="trial listening (试听): measure the feed and report"))
    sp.add_argument("seconds", type=float, nargs="?", default=10.0)
    sp.add_argument("--device")
    sp.set_defaults(fn=lambda a: reply(call(a, "trial_listening", timeout=a.seconds + 30, seconds=a.seconds,
                                            **({"device": a.device} if a.device else {}))))

    leaf(sub, "snapshot", "take a camera snapshot kept on the box", "snapshot",
           lambda a: {"tag": a.tag}, lambda sp: sp.add_argument("tag", nargs="?", default="manual"))
