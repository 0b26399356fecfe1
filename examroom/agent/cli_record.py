"""CLI subcommands for the room record card (考场记事卡): ``violation`` and ``record card``.

``violation`` goes to the running agent (the violation is evidence on the session's
record, and an escalated one reaches the site office at once). ``record card`` needs
no agent: it prints the card again from a record's JSON on the box's disk, e.g. after
the paper copy was lost, and works after the exam with the service stopped.

Exit codes as elsewhere: 0 done; 1 refused (the reason is printed), no agent, or no
such record; 2 usage or config error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from examroom.agent import human_time
from examroom.agent.cli_verdicts import answer

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # [[exam]] id: also keeps the path inside record_dir


def violation_text(d: dict[str, Any]) -> tuple[str, int]:
    at = human_time.clock(d.get("time"))
    lines = [f"VIOLATION {d.get('code')} ({d.get('text')}) recorded for seat {d.get('seat')}"
             + (f", ticket {d['ticket']}" if d.get("ticket") else "")
             + f" at {at} by {d.get('by')}, session {d.get('session')}"]
    if d.get("escalated"):
        lines.append("reported to the site office at once: an incident is raised and the room shows an alert "
                     "until the session ends")
    return "\n".join(lines), 0


def cmd_card(args: argparse.Namespace, load: Callable[[str], Any]) -> int:
    """Render the card from ``<record_dir>/<session>-<room>.json``. Without ``--out`` it goes
    beside the record; an existing card there is evidence (its SHA-256 went out in the
    session record) and is never replaced by a different one."""
    from examroom.agent.record_card import RecordCard
    from examroom.agent.session_record import record_name

    cfg = load(args.config)
    if not SESSION_ID.fullmatch(args.session):
        print(f"error: {args.session!r} is not a session id (1-64 of A-Z a-z 0-9 _ -)", file=sys.stderr)
        return 2
    source = Path(cfg.checkin["record_dir"]) / f"{record_name(args.session, cfg.room['id'])}.json"
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: no record of session {args.session} in {source.parent} (written at the session's end)",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {source}: cannot read the record: {e}", file=sys.stderr)
        return 1
    blob = RecordCard.for_config(cfg).html(doc).encode("utf-8")
    out = Path(args.out) if args.out else source.with_suffix(".html")
    digest = hashlib.sha256(blob).hexdigest()
    if not args.out and out.exists():
        if out.read_bytes() == blob:
            print(f"{out} is already this card (sha256 {digest})")
            return 0
        print(f"error: {out} differs from the card the record gives now (the config's site or room label, "
              "or the record, changed?); it is the card the session record listed, so it is kept: "
              "print to another file with --out FILE", file=sys.stderr)
        return 1
    try:
        out.write_bytes(blob)
    except OSError as e:
        print(f"error: {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (sha256 {digest}); open it in a browser and print on A4")
    return 0


def add_commands(sub: Any, with_config: Callable, call: Callable, reply: Callable,
                 load: Callable[[str], Any]) -> None:
    sp = with_config(sub.add_parser(
        "violation", help="record a violation by the province's fact code (考场记事卡 违纪/违规)",
        description="The code is one of the list named by [procedure] violation_codes (default: the shipped "
                    "example, config/violation-codes.csv); an unknown code is refused with the closest ones. "
                    "A code marked escalate is also reported to the site office at once."))
    sp.add_argument("--seat", required=True, help="the candidate's seat number")
    sp.add_argument("--code", required=True, help="the violation fact code, e.g. Z04")
    sp.add_argument("--note", help="what was seen (scrubbed of names and ID numbers)")
    sp.add_argument("--by", required=True, help="who records it: your proctor id (signed on the record)")
    sp.add_argument("--json", action="store_true", help="print the agent's reply as JSON")

    sp.set_defaults(fn=lambda a: answer(call, reply, a, "violation",
                                        {"seat": a.seat, "code": a.code, "note": a.note, "by": a.by}, violation_text))
    rec = sub.add_parser("record", help="the session records on this box")
    recs = rec.add_subparsers(dest="record_command", required=True)
    sp = with_config(recs.add_parser(
        "card", help="print the room record card (考场记事卡) of a session again, as A4 HTML",
        description="Reads <record_dir>/<session>-<room>.json; needs no running agent."))
    sp.add_argument("session", help="the session id ([[exam]] id)")
    sp.add_argument("--out", help="write here (default: beside the record, unless a different card is there)")
    sp.set_defaults(fn=lambda a: cmd_card(a, load))
