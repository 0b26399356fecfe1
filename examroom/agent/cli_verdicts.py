"""How a check-in verdict reads for the proctor who typed the command: a few lines in the
exam's zone, exit 1 when nobody was admitted. Shared by cli_exam.py (the door's fallbacks)
and cli_handin_verify.py (hand-in, the verification point).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from examroom.agent import human_time
from examroom.contract.vocabulary import Verdict

Human = Callable[[dict[str, Any]], tuple[str, int]]  # reply -> (text, exit code)

REFUSED = {
    Verdict.DUPLICATE: "already checked in (status {status}); this second admission is flagged",
    Verdict.LATE_REFUSED: "late: entry closed at {cutoff}",
    Verdict.OUTSIDE_WINDOW: "outside the entry window (phase {phase})",
    Verdict.REENTRY_REFUSED: "the seat is closed (status {status}): no re-entry this session",
}


def _clock(ts: Any) -> str:
    """A time a proctor compares with the wall clock: in the exam's zone, not the box's. A reply
    carries it as the contract writes it (ISO 8601 with offset; epoch seconds from an agent
    older than contract version 2): either reads the same."""
    return human_time.clock(ts)


def checkin_text(d: dict[str, Any]) -> tuple[str, int]:
    """One check-in verdict as the proctor needs it; exit 1 when nobody was admitted."""
    verdict = d.get("verdict")
    who = f"seat {d.get('seat')}, ticket {d.get('ticket')}, ID {d.get('id_masked')}"
    at = _clock(d.get("time"))
    by = (f"confirmed by {', '.join(d['proctors'])}" if d.get("proctors")
          else f"by {d['proctor']}" if d.get("proctor") else f"by {d.get('device')}")
    photo = d.get("snapshot")
    tail = [f"photo requested ({photo['tag']})"] if isinstance(photo, dict) and photo.get("tag") else []
    if verdict == Verdict.ADMITTED:
        head = f"ADMITTED {who} at {at}, {by}" + (" (re-entry)" if d.get("reentry") else "")
        if d.get("sweep_required"):
            tail.insert(0, "next: metal-detector sweep (press clear when done)")
        return "\n".join([head, *tail]), 0
    if verdict == Verdict.SUSPECT:
        reason = f": {d['reason']}" if d.get("reason") else ""
        return "\n".join([f"SUSPECT (存疑) {who} at {at}, {by}{reason}", *tail,
                          f"two different proctors must confirm: checkin confirm {d.get('seat')} "
                          "--proctor NAME"]), 0
    if verdict == Verdict.LEFT:
        return f"LEFT {who} at {at}; coming back needs a new check-in and sweep", 0
    why = REFUSED.get(str(verdict), "{verdict}").format(
        cutoff=_clock(d.get("cutoff")), status=d.get("status"), phase=d.get("phase"), verdict=verdict)
    return "\n".join([f"NOT ADMITTED {who} at {at}, {by}: {why}", *tail]), 1


def answer(call: Callable[..., dict[str, Any]], reply: Callable[..., int], a: argparse.Namespace, cmd: str,
           args: dict[str, Any], human: Human, timeout: float = 30.0) -> int:
    """Send one control-socket command and print its reply for a person (``--json``: as is);
    the exit code is the reply's: 1 for a refusal, or what ``human`` says of the result."""
    resp = call(a, cmd, timeout=timeout, **{k: v for k, v in args.items() if v is not None})
    if not resp.get("ok"):
        return reply(resp)
    text, code = human(resp)
    return reply(resp, None if a.json else text) or code
