"""``examroom-agent selftest``: the technician's device check, through the daemon or offline.

Shaped like gpiozero's pintest: say what will be tested, ask before anything
drives an output (the audio relay, a test tone in the room), act, put the
output back (the driver restores the relay in ``finally``), and exit 0 when
everything passed, 1 when something failed, 2 on a usage or config error.

A configured device that is absent fails: on exam morning the room needs it.
``--allow-absent`` accepts absence, e.g. during joint testing before every
device is installed. The daemon records each run as a ``selftest`` event; an
offline run (``--offline``, while the service is stopped during installation)
opens the devices itself and records nothing, since the spool is the daemon's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from examroom import drivers
from examroom.agent.config import Config, DeviceConfig

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_command(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    sp = with_config(sub.add_parser(
        "selftest", help="self-test the devices (joint testing, exam morning)",
        description="Exit 0: all passed; 1: a device failed or is absent; 2: usage or config error."))
    sp.add_argument("devices", nargs="*", help="device names (default: all)")
    sp.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    sp.add_argument("--offline", action="store_true",
                    help="the agent is stopped: open the configured devices here (refused while it runs)")
    sp.add_argument("--yes", "-y", action="store_true",
                    help="do the steps that act on outputs (audio relay, test tone) without asking")
    sp.add_argument("--allow-absent", action="store_true",
                    help="an absent device does not fail the self-test (it does by default)")
    sp.add_argument("--force", metavar="REASON",
                    help="act on outputs even while an entry or listening window is open (recorded)")
    sp.set_defaults(fn=cmd_selftest)


def _error(msg: str, code: int) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def cmd_selftest(args: argparse.Namespace) -> int:
    from examroom.agent.config import load
    from examroom.agent.control import AgentNotRunning, call

    cfg = load(args.config)
    known = [d.name for d in cfg.devices]
    unknown = [n for n in args.devices if n not in known]
    if unknown:
        return _error(f"no device named {', '.join(map(repr, unknown))} in {args.config}; "
                      f"devices: {', '.join(known) or 'none'}", EXIT_USAGE)
    chosen = [d for d in cfg.devices if not args.devices or d.name in args.devices]
    socket = cfg.control["socket"]
    try:
        call(socket, "ping", timeout=5.0)
        running = True
    except AgentNotRunning:
        running = False
    if args.offline and running:
        return _error(f"the agent is running ({socket}) and owns the hardware: "
                      "run the self-test without --offline", EXIT_USAGE)
    if not args.offline and not running:
        return _error(f"the agent is not running (no daemon listening on {socket}); to test the "
                      f"devices without it: examroom-agent selftest --offline -c {args.config}", EXIT_FAILED)
    act = _confirm(chosen, args.yes)
    if args.offline:
        why = cfg.schedule.lock_at(time.time()) if cfg.schedule is not None else None
        if act and why is not None:  # no agent to record a forced action: never forced offline
            return _error(f"{why}: the self-test will not switch the relay or play a tone now; "
                          "run it without --yes", EXIT_FAILED)
        resp = _offline(cfg, chosen, act, args.allow_absent)
    else:
        forced = {"force": True, "reason": args.force} if args.force else {}
        resp = call(socket, "selftest", timeout=120.0, devices=args.devices or None, act=act,
                    allow_absent=args.allow_absent, **forced)
        if not resp.pop("ok"):
            return _error(str(resp.get("error")), EXIT_FAILED)
    resp["offline"] = args.offline
    if args.json:
        print(json.dumps(resp, ensure_ascii=False, indent=2))
    else:
        _report(resp)
    return EXIT_PASSED if resp["passed"] else EXIT_FAILED


def _confirm(chosen: list[DeviceConfig], yes: bool) -> bool:
    """Explain the output-driving steps and ask; without a terminal and --yes they are skipped.

    Messages go to stderr so ``--json`` keeps stdout for the machine.
    """
    actions = [(d.name, a) for d in chosen
               for a in drivers.driver_class(d.kind, d.backend).selftest_actions(d.options)]
    if not actions:
        return False
    say = sys.stderr
    print("These self-test steps act on outputs (not while entry or listening is open):", file=say)
    for name, action in actions:
        print(f"  {name}: {action}", file=say)
    if yes:
        return True
    if not sys.stdin.isatty():
        print("note: no terminal to confirm and no --yes: these steps are skipped", file=say)
        return False
    print("Do them now? [y/N] ", end="", file=say, flush=True)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    print("note: not confirmed: these steps are skipped", file=say)
    return False


def _offline(cfg: Config, chosen: list[DeviceConfig], act: bool, allow_absent: bool) -> dict[str, Any]:
    """Open only the devices under test, on a private bus; always close them again."""
    from examroom.drivers.bus import Bus
    from examroom.agent.devices import Devices, selftest_verdict
    from examroom.agent.metrics import Metrics

    devices = Devices(tuple(chosen), Bus(), Metrics())
    try:
        devices.start()
        results = [r.as_dict() for r in devices.selftest(act=act)]
    finally:
        devices.stop()
    return {**selftest_verdict(results, allow_absent), "results": results, "act": act}


def _report(resp: dict[str, Any]) -> None:
    """One verdict line per device, its steps beneath, then the counts."""
    allow = resp["allow_absent"]
    for r in resp["results"]:
        if r["skipped"]:
            verdict = "SKIPPED (absent)" if allow else "FAIL (absent)"
        else:
            verdict = "PASS" if r["ok"] else "FAIL"
        print(f"{r['device']} ({r['kind']}): {verdict}")
        for s in r["steps"]:
            mark = "skip" if s.get("skipped") else ("ok" if s["ok"] else "BAD")
            print(f"   {mark:<4} {s['name']}" + (f": {s['detail']}" if s["detail"] else ""))
    absent, failed = len(resp["absent"]), len(resp["failed"])
    passed = len(resp["results"]) - absent - failed
    where = " (offline)" if resp["offline"] else ""
    counts = (f"{passed} passed, {failed} failed, {absent} absent"
              + (" (allowed)" if allow and absent else ""))
    hint = "" if allow or not absent else "; absent devices fail (--allow-absent to accept them)"
    print(f"self-test{where} {'passed' if resp['passed'] else 'FAILED'}: {counts}{hint}")
