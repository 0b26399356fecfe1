"""``examroom-site time-check``: the site publishes the standard time before a session
("每科开考前15分钟,由考点统一发布时间,监考人员须在考场核对考场时钟的显示时间") and every
room answers with its clock's offset; each room also records the check as a ``time_check``
event. Exit 0 when every room answered within its tolerance, 1 otherwise, 3 without a broker.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from examroom.site.commands import BrokerUnreachable, CommandClient
from examroom.site.config import SiteConfig
from examroom.site.jointtest_cli import (EXIT_BROKER, EXIT_FAILED, EXIT_USAGE, resolve_rooms, rooms_arg, seconds_arg,
                                        store_or_none)


def cmd_time_check(args: argparse.Namespace, cfg: SiteConfig) -> int:
    store = store_or_none(cfg)
    if store is None:
        return EXIT_USAGE
    try:
        rooms = resolve_rooms(cfg, store, args.rooms)
    finally:
        store.close()
    if not rooms:
        print("error: no rooms known; name them with --rooms", file=sys.stderr)
        return EXIT_USAGE
    zone = ZoneInfo(cfg.site["timezone"])
    site_time = datetime.now(zone)
    print(f"standard time published: {site_time:%Y-%m-%d %H:%M:%S} ({cfg.site['timezone']})")
    try:
        with CommandClient(cfg) as client:
            answers = client.broadcast("time_check", {"site_time": site_time.isoformat(timespec="milliseconds")},
                                       rooms, args.timeout)
    except BrokerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BROKER
    bad = []
    for room in rooms:
        reply: dict[str, Any] | None = answers[room].reply
        if reply is None or not reply.get("ok"):
            bad.append(room)
            why = "no answer" if reply is None else f"error: {reply.get('error')}"
            print(f"{room:<12} {why}")
            continue
        if not reply.get("clock_ok"):
            bad.append(room)
        print(f"{room:<12} offset {reply.get('offset_s'):+.3f} s  "
              f"{'ok' if reply.get('clock_ok') else 'WRONG: check the room clock'}")
    return EXIT_FAILED if bad else 0


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("time-check", help="publish the standard time; each room answers its clock's offset",
                        description="Exit 0 when every room's clock is within its tolerance; 1 otherwise; "
                                    "3 when the broker is unreachable.")
    sp.add_argument("--rooms", type=rooms_arg, default=None, metavar="all|LIST",
                    help="'all' (default: every room the aggregator knows and [rooms] expected) or room101,room102")
    sp.add_argument("--timeout", type=seconds_arg, default=10.0, metavar="S", help="seconds to wait for the answers")
    sp.set_defaults(func=cmd_time_check)
