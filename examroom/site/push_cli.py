"""``examroom-site push "TEXT"``: the push instruction test (推送指令测试).

Upper levels test before the exam that every room receives an instruction and
answers at once. The push is recorded in the aggregator's store first (the site's
own log: what was sent, to whom, when, by whom), then sent as the rooms' ``push``
command (a broadcast when it goes to every room). Each room's reply says it was
delivered and shown; a person in the room then acknowledges it on the box
(``examroom-agent ack``), which arrives as the room's ``push_ack`` event. The
command prints both per room as they come and waits up to ``--wait`` seconds for
the acknowledgements. Exit 0 when every room acknowledged (with ``--wait 0``: when
every room had it delivered), 1 otherwise, 2 usage, 3 the broker unreachable.
"""
from __future__ import annotations

import argparse
import queue
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from examroom.site.commands import Answer, BrokerUnreachable, CommandClient
from examroom.site.config import SiteConfig
from examroom.site.jointtest import zone_of
from examroom.site.jointtest_cli import (EXIT_BROKER, EXIT_FAILED, EXIT_USAGE, resolve_rooms, rooms_arg,
                                        seconds_arg, seconds_between, store_or_none, who_runs)

MAX_TEXT = 500  # the room's limit (examroom/agent/commands.py MAX_PUSH)


def text_arg(text: str) -> str:
    if not text.strip() or len(text) > MAX_TEXT:
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_TEXT} characters of instruction text")
    return text


wait_arg = seconds_between(0, 24 * 3600, zero_ok=True)


def cmd_push(args: argparse.Namespace, cfg: SiteConfig) -> int:
    store = store_or_none(cfg)
    if store is None:
        return EXIT_USAGE
    acks: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    push_id = uuid.uuid4().hex[:12]

    def on_event(room: str, _kind: str, event: dict[str, Any]) -> None:
        data = event.get("data")
        if isinstance(data, dict) and data.get("push_id") == push_id:
            acks.put((room, data))

    try:
        broadcast = args.rooms is None
        rooms = resolve_rooms(cfg, store, args.rooms)
        client = CommandClient(cfg, events=("push_ack",), on_event=on_event)
        try:
            client.connect()
        except BrokerUnreachable as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BROKER
        try:
            sent = time.monotonic()
            with store.batch():  # recorded before it is sent: the site's log is the evidence
                store.record("push", {"push_id": push_id, "text": args.text, "rooms": rooms,
                                      "sent_at": datetime.now(zone_of(cfg)).isoformat(timespec="seconds"),
                                      "by": args.by or who_runs()})
            print(f"push {push_id} to {'every room' if broadcast else ', '.join(rooms)}: {args.text}", flush=True)
            answers = _send(client, rooms, broadcast, push_id, args.text, args.timeout)
            delivered = _print_delivery(answers, rooms)
            acked = _wait_acks(acks, set(delivered), args.wait, sent) if args.wait > 0 else {}
        finally:
            client.close()
    finally:
        store.close()
    targets = sorted(set(rooms) | set(delivered))
    if args.wait == 0:
        missing = [r for r in targets if r not in delivered]
        print(f"delivered to {len(delivered)} of {len(targets)} rooms"
              + (f"; NOT delivered: {', '.join(missing)}" if missing else ""))
        return EXIT_FAILED if missing or not targets else 0
    missing = [r for r in targets if r not in acked]
    print(f"acknowledged by {len(acked)} of {len(targets)} rooms"
          + (f"; NOT acknowledged: {', '.join(missing)}" if missing else ""))
    return EXIT_FAILED if missing or not targets else 0


def _send(client: CommandClient, rooms: list[str], broadcast: bool, push_id: str, text: str,
          timeout: float) -> dict[str, Answer]:
    args = {"push_id": push_id, "text": text}
    if broadcast:
        return client.broadcast("push", args, rooms, timeout)
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(rooms)))) as pool:
        return dict(zip(rooms, pool.map(lambda r: client.request(r, "push", args, timeout), rooms)))


def _print_delivery(answers: dict[str, Answer], rooms: list[str]) -> list[str]:
    """One line per room; returns the rooms the push was delivered to (shown there)."""
    delivered = []
    for room in sorted(set(rooms) | set(answers)):
        a = answers.get(room)
        if a is not None and a.ok:
            delivered.append(room)
            print(f"  {room}: delivered, shown in the room ({a.rtt_ms:.0f} ms)", flush=True)
        else:
            why = a.error if a is not None else "no answer"
            print(f"  {room}: NOT delivered: {why}", flush=True)
    return delivered


def _wait_acks(acks: queue.Queue[tuple[str, dict[str, Any]]], waiting: set[str], wait: float,
               sent: float) -> dict[str, dict[str, Any]]:
    """Print each acknowledgement as it comes, until every delivered room answered or
    ``wait`` seconds after sending; an undelivered room that answers anyway counts too."""
    deadline = sent + wait
    got: dict[str, dict[str, Any]] = {}
    if waiting:
        print(f"waiting up to {wait:g} s for acknowledgement in the rooms (examroom-agent ack)", flush=True)
    while not waiting <= set(got):
        try:
            room, data = acks.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if room in got:
            continue  # the event again after a lost PUBACK
        got[room] = data
        print(f"  {room}: acknowledged by {data.get('by')} (user {data.get('user')}) "
              f"{data.get('after_s')} s after it was shown, {time.monotonic() - sent:.1f} s after sending", flush=True)
    return got


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("push", help="push instruction test (推送指令测试): send TEXT to the rooms and wait "
                                     "for their acknowledgement",
                        description="Exit 0 when every room acknowledged (--wait 0: every room had it "
                                    "delivered); 1 otherwise; 3 when the broker is unreachable.")
    sp.add_argument("text", type=text_arg, help=f"the instruction (1-{MAX_TEXT} characters)")
    sp.add_argument("--rooms", type=rooms_arg, default=None, metavar="all|LIST",
                    help="'all' (default: a broadcast; the rooms the site knows are waited for) or room101,room102")
    sp.add_argument("--wait", type=wait_arg, default=300.0, metavar="S",
                    help="seconds to wait for acknowledgements (default 300; 0: delivery only)")
    sp.add_argument("--timeout", type=seconds_arg, default=10.0, metavar="S",
                    help="seconds to wait for each room's delivery reply (default 10)")
    sp.add_argument("--by", metavar="NAME", help="who pushes (recorded; default: the Unix user)")
    sp.set_defaults(func=cmd_push)
