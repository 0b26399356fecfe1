"""``examroom-site jointtest`` and ``examroom-site ping``: the joint test (联调) from a terminal.

``jointtest`` prints one line per finished room step while the rooms run, writes
the acceptance report (JSON, CSV, printable HTML) and exits 0 only when every room
passed. ``ping`` measures the command round trip per room (p50/p99/max), the
number a site reports when it shows it answers instructions at once.
Exit codes as ``examroom-site``: 1 a room failed or never answered, 2 usage, 3 the
broker unreachable.
"""
from __future__ import annotations

import argparse
import getpass
import os
import re
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from examroom.contract.topics import is_room_id
from examroom.site.commands import BrokerUnreachable, CommandClient
from examroom.site.config import SiteConfig
from examroom.site.jointtest import MAX_WORKERS, STEPS, Campaign, Row, default_out, known_rooms, percentiles
from examroom.site.jointtest_report import write_reports
from examroom.site.store import Store

ALL = "all"
EXIT_FAILED, EXIT_USAGE, EXIT_BROKER = 1, 2, 3


def rooms_arg(text: str) -> list[str] | None:
    """``all`` (None: every room the site knows) or a comma-separated list of room ids."""
    if text.strip() == ALL:
        return None
    rooms = [r for r in re.split(r"[,\s]+", text.strip()) if r]
    bad = [r for r in rooms if not is_room_id(r)]
    if not rooms or bad:
        raise argparse.ArgumentTypeError(f"expected 'all' or room ids of [A-Za-z0-9_-] (not 'broadcast') "
                                         f"separated by commas, "
                                         f"got {text!r}")
    return rooms


def steps_arg(text: str) -> list[str]:
    steps = [s for s in re.split(r"[,\s]+", text.strip()) if s]
    bad = [s for s in steps if s not in STEPS]
    if not steps or bad:
        raise argparse.ArgumentTypeError(f"expected steps among {','.join(STEPS)}, got {text!r}")
    return steps


def seconds_between(low: float, high: float, zero_ok: bool = False) -> Callable[[str], float]:
    """An argparse type for a number of seconds in (low, high], or [low, high] with ``zero_ok``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (low <= v if zero_ok else low < v) or not v <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g}-{high:g} seconds, got {text}")
        return v
    return parse


seconds_arg = seconds_between(0, 3600)


def who_runs() -> str:
    """The default ``--by``: the Unix user at the terminal (a name, or ``uid N``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def count_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= 1000:
        raise argparse.ArgumentTypeError(f"expected 1-1000, got {text}")
    return v


def open_store(cfg: SiteConfig) -> Store:
    """The aggregator's store, opened beside the running service (WAL, busy timeout)."""
    store = Store(cfg.store["path"], cfg.store["sync"])
    store.open()
    return store


def resolve_rooms(cfg: SiteConfig, store: Store, rooms: list[str] | None) -> list[str]:
    return known_rooms(cfg, store) if rooms is None else rooms


def store_or_none(cfg: SiteConfig) -> Store | None:
    try:
        return open_store(cfg)
    except (OSError, sqlite3.Error) as e:
        print(f"error: cannot open the site's store {cfg.store['path']}: {e}", file=sys.stderr)
        return None


# -- jointtest -----------------------------------------------------------------------------------

def cmd_jointtest(args: argparse.Namespace, cfg: SiteConfig) -> int:
    store = store_or_none(cfg)
    if store is None:
        return EXIT_USAGE
    try:
        rooms = resolve_rooms(cfg, store, args.rooms)
        if not rooms:
            print("error: no rooms known: none seen by the aggregator and none in [rooms] expected; "
                  "name them with --rooms", file=sys.stderr)
            return EXIT_USAGE
        out = Path(args.out) if args.out else default_out(cfg, Path.cwd())
        lock = threading.Lock()

        def progress(row: Row, done: int, total: int) -> None:
            with store.batch():
                store.record("jointtest", {"run": campaign.run_id, "state": "running", "done": done,
                                           "total": total, "passed": None, "report": None})
            with lock:
                print(f"[{done:>{len(str(total))}}/{total}] {row.room:<12} {row.step:<9} {row.result.upper():<9} "
                      f"{(row.device + ': ') if row.device else ''}{row.value}", flush=True)

        campaign = Campaign(cfg, rooms, args.steps, args.timeout, args.by or who_runs(), progress)
        print(f"joint test of {len(campaign.rooms)} rooms: {', '.join(campaign.steps)} "
              f"(timeout {args.timeout:g} s per step)", flush=True)
        try:
            report = campaign.run()
        except BrokerUnreachable as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BROKER
        paths = write_reports(report, out)
        with store.batch():
            store.record("jointtest", {"run": campaign.run_id, "state": "done", "done": campaign.total,
                                       "total": campaign.total, "passed": report["passed"],
                                       "report": str(paths["html"])})
    finally:
        store.close()
    _summary(report, paths)
    return 0 if report["passed"] else EXIT_FAILED


def _summary(report: dict[str, Any], paths: dict[str, Path]) -> None:
    rooms = report["rooms"]
    print(f"{sum(r['passed'] for r in rooms)} of {len(rooms)} rooms passed")
    if report["failed"]:
        print(f"FAILED: {', '.join(report['failed'])}")
    if report["no_answer"]:
        print(f"NEVER ANSWERED: {', '.join(report['no_answer'])}")
    print(f"report: {paths['html']} ({paths['json'].name}, {paths['csv'].name} beside it)")


# -- ping ------------------------------------------------------------------------------------------

def cmd_ping(args: argparse.Namespace, cfg: SiteConfig) -> int:
    rooms = args.rooms
    if args.all or rooms is None:  # --all, or --rooms all
        store = store_or_none(cfg)
        if store is None:
            return EXIT_USAGE
        try:
            rooms = resolve_rooms(cfg, store, None)
        finally:
            store.close()
    if not rooms:
        print("error: no rooms known; name them with --rooms", file=sys.stderr)
        return EXIT_USAGE
    try:
        with CommandClient(cfg) as client:
            def pings(room: str) -> list[float]:
                """In turn, so each measures the path and not the room's queue."""
                answers = (client.request(room, "ping", {}, args.timeout) for _ in range(args.count))
                return [a.rtt_ms for a in answers if a.ok and a.rtt_ms is not None]

            with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(rooms)))) as pool:
                rtts = dict(zip(rooms, pool.map(pings, rooms)))
    except BrokerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BROKER
    width = max(len(r) for r in rooms)
    print(f"{'room':<{width}}  answered      p50 ms   p99 ms   max ms")
    for room, xs in rtts.items():
        p = percentiles(xs)
        cells = "".join(f"{'-' if p[k] is None else p[k]:>9}" for k in ("p50", "p99", "max"))
        print(f"{room:<{width}}  {len(xs):>3} of {args.count:<3} {cells}")
    silent = [room for room, xs in rtts.items() if not xs]
    if silent:
        print(f"never answered: {', '.join(silent)}")
    return EXIT_FAILED if silent else 0


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("jointtest", help="joint test (联调): self-test, ping, snapshot, trial listening per room, "
                                          "with an acceptance report",
                        description="Exit 0 when every room passed every step; 1 when one failed or never "
                                    "answered; 3 when the broker is unreachable.")
    sp.add_argument("--rooms", type=rooms_arg, default=None, metavar="all|LIST",
                    help="'all' (default: every room the aggregator knows and [rooms] expected) or room101,room102")
    sp.add_argument("--steps", type=steps_arg, default=list(STEPS), metavar="LIST",
                    help=f"some of {','.join(STEPS)} (default: all four, in that order)")
    sp.add_argument("--out", metavar="DIR", help="report directory (default ./jointtest-<time>)")
    sp.add_argument("--timeout", type=seconds_arg, default=30.0, metavar="S",
                    help="seconds to wait for each step's answer (default 30; the trial adds its own length)")
    sp.add_argument("--by", metavar="NAME", help="who runs it (on the report; default: the Unix user)")
    sp.set_defaults(func=cmd_jointtest)

    sp = sub.add_parser("ping", help="command round trip per room: p50/p99/max in ms",
                        description="Exit 1 when a room never answered; 3 when the broker is unreachable.")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true", help="every room the aggregator knows and [rooms] expected")
    g.add_argument("--rooms", type=rooms_arg, metavar="LIST", help="room101,room102")
    sp.add_argument("--count", type=count_arg, default=5, help="pings per room (default 5)")
    sp.add_argument("--timeout", type=seconds_arg, default=5.0, metavar="S", help="per ping (default 5)")
    sp.set_defaults(func=cmd_ping)
