"""Joint testing (联调): every room's devices and command path checked from the site office.

Before the exam window (and again on exam morning) technicians prove that each
room answers the site and that its devices work: a read-only self-test (over
MQTT a room never acts on outputs, and an absent device fails), a ping, a camera
snapshot and a short trial listening. Rooms run concurrently, each room's steps in
order; a room that leaves a step unanswered is taken as unreachable and its later
steps are not sent (one timeout per offline room, not one per step). The outcome
is an acceptance report (``jointtest_report``) for the 联调验收 record.

Times a person reads are in the site's zone (``[site] timezone``), never the
machine's; machine-facing times are ISO 8601 with that zone's offset.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

from examroom.site.commands import Answer, BrokerUnreachable, CommandClient
from examroom.site.config import SiteConfig
from examroom.site.store import Store

log = logging.getLogger(__name__)

STEPS = ("selftest", "ping", "snapshot", "trial")
TRIAL_SECONDS = 3  # long enough to hear a dead feed, short enough for 80 rooms at once
PINGS = 3  # the ping step's round trips: the report's command round trip per room
MAX_WORKERS = 64  # rooms tested at once; each waits on the network, not the CPU
PASS, FAIL, NO_ANSWER = "pass", "fail", "no-answer"
STEP_DEVICE = {"selftest": "", "ping": "", "snapshot": "camera", "trial": "audio"}  # when no reply names one
Progress = Callable[["Row", int, int], None]  # (a finished room step's worst row, done, total)


@dataclass(frozen=True)
class Row:
    """One line of the report: a room's step, for one device where the step has several."""

    room: str
    step: str
    device: str  # "" for a step about the room as a whole (ping)
    result: str  # pass / fail / no-answer
    value: str  # what was measured, or why it failed, in words
    time: str  # ISO 8601 with the site's offset
    rtt_ms: float | None


def zone_of(cfg: SiteConfig) -> ZoneInfo:
    return ZoneInfo(cfg.site["timezone"])


def iso(ts: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).isoformat(timespec="seconds")


def percentiles(values: Iterable[float]) -> dict[str, float | int | None]:
    """Nearest-rank p50/p99 and max of round trips, in ms (None without any)."""
    xs = sorted(values)
    if not xs:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def rank(p: float) -> float:
        return xs[max(0, math.ceil(p * len(xs)) - 1)]

    return {"n": len(xs), "p50": round(rank(0.50), 1), "p99": round(rank(0.99), 1), "max": round(xs[-1], 1)}


def known_rooms(cfg: SiteConfig, store: Store) -> list[str]:
    """Every room the aggregator has seen, and every room the site expects."""
    return sorted({r["room"] for r in store.rooms()} | set(cfg.rooms["expected"]))


# -- one step: a request and what its reply says -----------------------------------------------

def _request(client: CommandClient, room: str, step: str, timeout: float) -> list[Answer]:
    if step == "selftest":  # over MQTT a self-test only reads; an absent device fails it
        return [client.request(room, "selftest", {"allow_absent": False}, timeout)]
    if step == "ping":  # in turn, so each measures the path and not the room's queue
        answers = [client.request(room, "ping", {}, timeout)]
        while len(answers) < PINGS and answers[-1].answered:
            answers.append(client.request(room, "ping", {}, timeout))
        return answers
    if step == "snapshot":
        return [client.request(room, "snapshot", {"tag": "jointtest"}, timeout)]
    return [client.request(room, "trial_listening", {"seconds": TRIAL_SECONDS}, timeout + TRIAL_SECONDS)]


def _selftest_rows(reply: dict[str, Any], row: Callable[..., Row]) -> list[Row]:
    results = reply.get("results") or []
    if not results:
        return [row("", PASS if reply.get("passed") else FAIL, "no devices configured")]
    out = []
    for r in results:
        bad = [f"{s.get('name')}: {s.get('detail')}" for s in r.get("steps") or []
               if not s.get("ok") and not s.get("skipped")]
        if r.get("skipped"):
            value = "absent" + (f" ({'; '.join(bad)})" if bad else "")
            out.append(row(str(r.get("device")), FAIL, value))
        else:
            value = "; ".join(bad) if bad else f"{len(r.get('steps') or [])} checks ok"
            out.append(row(str(r.get("device")), PASS if r.get("ok") else FAIL, value))
    return out


def _ping_row(answers: list[Answer], row: Callable[..., Row]) -> Row:
    """The pings' round trips: every one must come back (a lost one is a flaky path)."""
    ok = [a for a in answers if a.ok and a.reply and a.reply.get("pong")]
    stats = percentiles(a.rtt_ms for a in ok if a.rtt_ms is not None)
    value = f"{len(ok)} of {PINGS} answered, p50 {stats['p50']} ms, max {stats['max']} ms"
    errors = sorted({str(a.error) for a in answers if not a.ok})
    return row("", PASS if len(ok) == PINGS else FAIL, value + "".join(f"; {e}" for e in errors), stats["p50"])


def step_rows(room: str, step: str, answers: list[Answer], zone: ZoneInfo) -> list[Row]:
    """What the replies to one step mean for the acceptance record."""
    answer = answers[0]
    at = iso(answer.sent_at, zone)

    def row(device: str, result: str, value: str, rtt_ms: float | None = answer.rtt_ms) -> Row:
        return Row(room, step, device, result, value, at, rtt_ms)

    reply = answer.reply
    if reply is None:
        return [row("", NO_ANSWER, answer.error or "no answer")]
    if step == "ping":
        return [_ping_row(answers, row)]
    if not answer.ok:
        return [row(STEP_DEVICE[step], FAIL, answer.error or "refused")]
    if step == "selftest":
        return _selftest_rows(reply, row)
    if step == "snapshot":
        return [row(STEP_DEVICE[step], PASS, f"{reply.get('bytes')} bytes, {Path(str(reply.get('file'))).name}")]
    problems = ", ".join(map(str, reply.get("problems") or []))
    value = (f"mean {reply.get('mean_dbfs')} dBFS, peak {reply.get('peak_dbfs')} dBFS, "
             f"{reply.get('measured_s')} of {reply.get('seconds')} s" + (f"; {problems}" if problems else ""))
    return [row(str(reply.get("device") or STEP_DEVICE[step]), PASS if reply.get("pass") else FAIL, value)]


# -- the campaign ---------------------------------------------------------------------------------

class Campaign:
    """One joint test over a set of rooms; ``progress`` hears of every finished room step
    (the CLI prints a line, the board's run records it in the store)."""

    def __init__(self, cfg: SiteConfig, rooms: list[str], steps: Iterable[str] = STEPS, timeout: float = 30.0,
                 by: str = "", progress: Progress = lambda row, done, total: None) -> None:
        self.cfg = cfg
        self.rooms = sorted(set(rooms))
        self.steps = [s for s in STEPS if s in set(steps)]  # always in the documented order
        self.timeout = timeout
        self.by = by
        self.progress = progress
        self.zone = zone_of(cfg)
        self.run_id = uuid.uuid4().hex[:8]
        self.total = len(self.rooms) * len(self.steps)
        self._done = 0
        self._lock = threading.Lock()

    def run(self) -> dict[str, Any]:
        """Connect (BrokerUnreachable goes up), test every room, return the report."""
        started = time.time()
        with CommandClient(self.cfg) as client:
            with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(self.rooms)))) as pool:
                per_room = list(pool.map(lambda room: self._room(client, room), self.rooms))
        return self._report(per_room, started, time.time())

    def _room(self, client: CommandClient, room: str) -> tuple[list[Row], list[float]]:
        """One room's steps in order: its rows, and the round trips of its pings."""
        rows: list[Row] = []
        rtts: list[float] = []
        silent: str | None = None  # the step a room left unanswered: it is unreachable
        for step in self.steps:
            if silent is None:
                answers = _request(client, room, step, self.timeout)
                got = step_rows(room, step, answers, self.zone)
                if step == "ping":
                    rtts += [a.rtt_ms for a in answers if a.ok and a.rtt_ms is not None]
                if not answers[0].answered:
                    silent = step
            else:
                got = [Row(room, step, "", NO_ANSWER, f"not sent: no answer to {silent}",
                           iso(time.time(), self.zone), None)]
            rows += got
            with self._lock:
                self._done += 1
                done = self._done
            self.progress(_worst(got), done, self.total)
        return rows, rtts

    def _report(self, per_room: list[tuple[list[Row], list[float]]], started: float,
                finished: float) -> dict[str, Any]:
        rooms = []
        for room, (rows, rtts) in zip(self.rooms, per_room):
            rooms.append({"room": room, "passed": all(r.result == PASS for r in rows),
                          "answered": any(r.result != NO_ANSWER for r in rows),
                          "rtt_ms": percentiles(rtts), "rows": [asdict(r) for r in rows]})
        return {
            "site": {"id": self.cfg.site["id"], "name": self.cfg.site["name"], "timezone": self.cfg.site["timezone"]},
            "run": self.run_id, "by": self.by, "started": iso(started, self.zone), "finished": iso(finished, self.zone),
            "steps": self.steps, "timeout_s": self.timeout, "trial_seconds": TRIAL_SECONDS, "pings": PINGS,
            "passed": bool(rooms) and all(r["passed"] for r in rooms),
            "rooms": rooms,
            "failed": [r["room"] for r in rooms if r["answered"] and not r["passed"]],
            "no_answer": [r["room"] for r in rooms if not r["answered"]],
        }


def _worst(rows: list[Row]) -> Row:
    """The row a progress line shows for a step (several devices: a failure if any)."""
    return next((r for r in rows if r.result != PASS), rows[0])


def default_out(cfg: SiteConfig, base: Path) -> Path:
    return base / f"jointtest-{datetime.now(zone_of(cfg)).strftime('%Y%m%d-%H%M%S')}"


# -- from the board: the same campaign in the background ------------------------------------------

_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()


def start_campaign(cfg: SiteConfig, store: Store, rooms: list[str] | None, steps: Iterable[str] = STEPS,
                   timeout: float = 30.0, by: str = "board", out: Path | None = None) -> str:
    """Run a joint test in a background thread (the board's button) and return its run id.
    ``rooms`` None: every known room. Progress goes to the store's log as ``jointtest``
    entries (``state`` running, then done with ``passed`` and the report's path). While a
    campaign runs, a second start returns the running one's id: two at once would halve
    each room's command slots and time both out."""
    with _running_lock:
        for run_id, thread in _running.items():
            if thread.is_alive():
                return run_id
        campaign = Campaign(cfg, known_rooms(cfg, store) if rooms is None else rooms, steps, timeout, by)
        run_id = campaign.run_id
        out_dir = out or default_out(cfg, Path(cfg.store["path"]).parent / "jointtest")

        def record(state: str, done: int, passed: bool | None = None, report: str | None = None) -> None:
            with store.batch():
                store.record("jointtest", {"run": run_id, "state": state, "done": done, "total": campaign.total,
                                           "passed": passed, "report": report})

        campaign.progress = lambda row, done, total: record("running", done)
        record("running", 0)
        thread = threading.Thread(target=_background, args=(campaign, out_dir, record),
                                  name=f"jointtest-{run_id}", daemon=True)
        _running.clear()
        _running[run_id] = thread
        thread.start()
        return run_id


def _background(campaign: Campaign, out_dir: Path, record: Callable[..., None]) -> None:
    from examroom.site.jointtest_report import write_reports

    try:
        report = campaign.run()
        paths = write_reports(report, out_dir)
        record("done", campaign.total, report["passed"], str(paths["html"]))
    except BrokerUnreachable as e:
        log.error("joint test not run: %s", e)
        record("done", 0, False)
    except Exception:  # the board must see the run end, whatever happened
        log.exception("joint test failed")
        record("done", campaign.total, False)
