"""``examroom-site``: the site office's command (aggregator and board, joint testing,
command push, exports). Exit codes: 0 done/passed, 1 a check failed (a room failed the
joint test, a push unacknowledged), 2 bad usage or configuration, 3 the broker unreachable.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Callable

from examroom.agent.errors import ConfigError
from examroom.site import jointtest_cli, push_cli, timecheck_cli
from examroom.site.config import SiteConfig, load

EXIT_CODES = ("exit codes: 0 done or every room passed; 1 a check failed (a room failed, a push "
              "unacknowledged); 2 bad usage or configuration; 3 broker unreachable")
Command = Callable[[argparse.Namespace, SiteConfig], int]


def cmd_run(args: argparse.Namespace, cfg: SiteConfig) -> int:
    from examroom.site.app import SiteApp

    app = SiteApp(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app.start()
    if app.board is not None:
        print(f"examroom-site: board on {app.board.url}", flush=True)
    if app.subscriber.wait_connected(10):
        print(f"examroom-site: following {cfg.prefix}/{cfg.site['id']}/# on "
              f"{cfg.mqtt['host']}:{cfg.mqtt['port']}", flush=True)
    else:
        print(f"examroom-site: broker {cfg.mqtt['host']}:{cfg.mqtt['port']} not reachable yet; "
              "retrying in the background", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        app.stop()
    return 0


def cmd_export(args: argparse.Namespace, cfg: SiteConfig) -> int:
    from examroom.site.exports import export

    return export(cfg, args.out, exam=args.exam, rooms=args.room)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="examroom-site", description="Exam site aggregator, board and joint testing",
                                epilog=EXIT_CODES)
    p.add_argument("--config", "-c", default="/etc/examroom/site.toml", help="site.toml")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("run", help="the aggregator and the live board (the site office's service)")
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("export", help="attendance, check-ins (masked), sweeps, incidents and records "
                                       "per exam session and room, as CSV and JSON")
    sp.add_argument("--out", required=True, help="directory to write into")
    sp.add_argument("--exam", help="one exam session id (default: every one)")
    sp.add_argument("--room", action="append", help="only this room (repeatable)")
    sp.set_defaults(func=cmd_export)
    jointtest_cli.add_parsers(sub)
    push_cli.add_parsers(sub)
    timecheck_cli.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"examroom-site: configuration not usable:\n{e}", file=sys.stderr)
        return 2
    func: Command = args.func
    return func(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
