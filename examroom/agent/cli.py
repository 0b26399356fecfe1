"""``examroom-agent``: the one command sysadmins and technicians use.

Exit codes follow gpiozero's pintest, plus one (EXIT_CODES, also in ``--help``):
0 success; 1 the thing checked failed (self-test failed, command refused), the
running agent could not be reached, or ``run`` failed on something outside the
config (disk, port: it may clear up, so systemd restarts it); 2 usage or
configuration error, including a path the agent cannot write (restarting cannot
fix it: the unit's RestartPreventExitStatus=2); 3 another agent already runs on
this spool or control socket. 3 is not a config error: the config is fine and
the other agent will end (a technician's hand-started ``run``), so systemd keeps
retrying and the service comes up by itself once it has.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from examroom import __version__
from examroom.agent.config import DEFAULT_CONFIG
from examroom.agent.errors import ConfigError

EXIT_ALREADY_RUNNING = 3
EXIT_CODES = ("exit codes: 0 success; 1 check failed, agent unreachable, or run could not start "
              "(disk, port: may clear up); 2 usage or configuration error (the file, or a path "
              "in it the agent cannot write); 3 another agent already runs on this spool or "
              "control socket")


def _load(path: str):
    """The config, and the exam's zone for every time this CLI prints."""
    from examroom.agent.config import load
    from examroom.agent.human_time import use_zone

    cfg = load(path)
    use_zone(cfg.procedure["timezone"])
    return cfg


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected 0-3600 seconds, got {text}")
    return value


def _call(args: argparse.Namespace, cmd: str, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
    from examroom.agent.control import call

    cfg = _load(args.config)
    _trust(cfg.control["socket"], cfg.control["service_user"])
    return call(cfg.control["socket"], cmd, timeout=getattr(args, "timeout", None) or timeout, **kw)


def _trust(socket_path: str, service_user: str) -> None:
    """Talk only to a socket the service user (or root) owns: a proctor's decisions and notes
    must not go to a socket another local user put in its place. Where the service user does
    not exist (a laptop, a test run) there is nobody to check against."""
    import pwd

    from examroom.agent.control import AgentNotRunning

    try:
        want = pwd.getpwnam(service_user).pw_uid
        owner = os.stat(socket_path).st_uid
    except (KeyError, OSError):
        return
    if owner not in (want, 0):
        raise AgentNotRunning(f"{socket_path} is owned by uid {owner}, not by the service user "
                              f"{service_user!r}: refusing to talk to it")


def _with_timeout(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument("--timeout", type=_seconds, metavar="S", help="give up on a hung agent after S s (default 30)")
    return sp


def _preflight(cfg: Any, as_service: bool) -> Any:
    """Everything check-config checks beyond the file itself, as one ConfigError: the paths
    the agent writes, the seat plan and the violation code list. ``run`` passes it before it opens anything, so the
    unit needs no ExecStartPre (whose exit 2 systemd would restart). Returns the seat plan."""
    from examroom.agent.config import check_paths

    problems = check_paths(cfg, as_service=as_service)
    plan = None
    if cfg.checkin["seatplan"]:
        from examroom.agent.seatplan import load_seatplan

        try:
            plan = load_seatplan(cfg.checkin["seatplan"], cfg.room["id"])
        except ConfigError as e:
            problems.extend(e.problems)
    from examroom.agent.violations import load_codes

    try:  # the agent loads it again when it starts: a wrong row must stop it here, with exit 2
        load_codes(cfg.procedure["violation_codes"])
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return plan


def cmd_run(args: argparse.Namespace) -> int:
    from examroom.agent.daemon import run_agent

    cfg = _load(args.config)
    plan = _preflight(cfg, as_service=True)  # run is the service user: no allowance for another one
    level = args.log_level or cfg.log["level"]
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in cfg.warnings:
        logging.getLogger("examroom.agent.config").warning("%s", warning)
    return run_agent(cfg, plan)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    plan = _preflight(cfg, as_service=False)
    devices = ", ".join(f"{d.name} ({d.kind}/{d.backend})" for d in cfg.devices) or "none"
    print(f"{args.config}: OK — room {cfg.room['id']} of site {cfg.site['id']}, "
          f"topics under {cfg.base_topic}/, devices: {devices}")
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.schedule is not None:
        print(f"  exam sessions: {len(cfg.exams)}")
    if plan is not None:
        print(f"  seat plan: {len(plan)} candidates, sha256 {plan.sha256[:16]}…")
        expected = cfg.procedure["seatplan_sha256"]
        if expected and expected != plan.sha256:  # a warning: the site may still correct it (seatplan_expect)
            print(f"warning: the seat plan's sha256 {plan.sha256[:12]} is not the bundle's {expected[:12]}: "
                  "the agent will refuse every admission (plan_unverified)", file=sys.stderr)
    return 0


def _reply(resp: dict[str, Any], human: str | None = None) -> int:
    if not resp.get("ok"):
        print(f"error: {resp.get('error')}", file=sys.stderr)
        return 1
    resp.pop("ok", None)
    print(human if human is not None else json.dumps(resp, ensure_ascii=False, indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    resp = _call(args, "status")
    if args.json or not resp.get("ok"):
        return _reply(resp)
    b, sp = resp["broker"], resp["spool"]
    lines = [
        f"room      {resp['agent']['room']} ({resp['agent']['room_label']}) of site {resp['agent']['site']}",
        f"state     {resp['state']}" + "".join(f"\n  alert   {a}" for a in resp["alerts"]),
        f"broker    {'connected' if b['connected'] else 'NOT connected'} to {b['host']}:{b['port']}, "
        f"session {b['session']}, " + (f"rtt {b['rtt_ms']} ms" if b["rtt_ms"] is not None else "rtt not measured yet"),
        f"spool     {sp['events']} events waiting ({sp['bytes']} bytes), oldest {sp['oldest_age_s']} s"
        + (", OVERFULL" if sp["overfull"] else ""),
        f"heartbeat {resp['last_heartbeat'] or 'none yet'}",
        "devices:",
    ]
    for name, d in resp["devices"].items():
        lines.append(f"  {name:<12} {d['kind']:<15} {d['backend']:<9} {d['state']}"
                     + (f" ({d['reason']})" if d.get("reason") else ""))
    if resp.get("exam"):
        lines.append("exam:      " + json.dumps(resp["exam"], ensure_ascii=False))
    if (resp.get("exam") or {}).get("plan_check"):
        from examroom.agent.plan_check import describe

        lines.append("seat plan " + describe(resp["exam"]["plan_check"]))
    if resp.get("pushes"):
        from examroom.agent.cli_exam import pushes_text

        lines.append(pushes_text(resp["pushes"]))
    return _reply(resp, "\n".join(lines))


def cmd_note(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {"text": " ".join(args.text)}
    if args.author:
        kw["author"] = args.author
    resp = _call(args, "note", **kw)
    return _reply(resp, f"note recorded as event seq {resp.get('seq')}")


def cmd_exam_lock(args: argparse.Namespace) -> int:
    """For install.sh and people: 0 = nothing open, safe to restart; 1 = an entry or listening
    window is open (why on stdout); 3 = no agent answers (nothing running to disturb)."""
    from examroom.agent.control import AgentUnreachable

    try:
        resp = _call(args, "exam_lock", timeout=10.0)
    except AgentUnreachable as e:
        print(f"no agent answers: {e}", file=sys.stderr)
        return 3
    if not resp.get("ok"):
        return _reply(resp)
    if resp["locked"]:
        print(f"locked: {resp['why']}")
        return 1
    print("not locked: no entry or listening window is open")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    return _reply(_call(args, "sim", words=args.words))


def cmd_watch(args: argparse.Namespace) -> int:
    from examroom.agent.watch import watch

    tls = {"ca": args.cafile, "cert": args.cert, "key": args.key}
    if args.config:
        cfg = _load(args.config)
        host, port, prefix = cfg.mqtt["host"], cfg.mqtt["port"], cfg.mqtt["topic_prefix"]
        tls = {"ca": args.cafile or cfg.mqtt["tls_ca"], "cert": args.cert or cfg.mqtt["tls_cert"],
               "key": args.key or cfg.mqtt["tls_key"]}
    else:
        from examroom.agent.human_time import use_zone

        use_zone(args.timezone)
        host, port, prefix = args.host, args.port, args.prefix
    return watch(host, port, prefix, raw=args.raw, duration=args.duration, tls=tls)


def build_parser() -> argparse.ArgumentParser:
    from examroom.agent import selftest_cli

    p = argparse.ArgumentParser(prog="examroom-agent", description="Exam-room edge agent", epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"examroom-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"agent config (default {DEFAULT_CONFIG})")
        return sp

    sp = with_config(sub.add_parser(
        "run", help="run the agent (foreground; systemd runs this)", epilog=EXIT_CODES,
        description="Checks the config and the paths it writes (exit 2), takes the spool's lock "
                    "(exit 3 if another agent holds it), then starts; nothing is opened before."))
    sp.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("check-config", help="check a config file and exit (2 on any problem)",
                        description="Checks the file, its seat plan and that the agent can write the "
                                    "paths it names (a directory systemd creates for the service "
                                    "may be missing; see docs/deployment.md).")
    sp.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    sp.set_defaults(fn=cmd_check)
    sp = _with_timeout(with_config(sub.add_parser("status", help="state of the running agent")))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)
    sp = _with_timeout(with_config(sub.add_parser("note", help="record a note that travels to the aggregator")))
    sp.add_argument("text", nargs="+")
    sp.add_argument("--author")
    sp.set_defaults(fn=cmd_note)
    selftest_cli.add_command(sub, with_config)
    sp = with_config(sub.add_parser("exam-lock", help="is an entry or listening window open? (exit 1 if so)"))
    sp.set_defaults(fn=cmd_exam_lock)
    sp = with_config(sub.add_parser("sim", help="act out hardware on simulated devices",
                                    description="e.g. sim card 410105199001011234 | sim alarm on | "
                                                "sim button clear | sim audio silence | sim camera black"))
    sp.add_argument("words", nargs="+")
    sp.set_defaults(fn=cmd_sim)
    sp = sub.add_parser("watch", help="the aggregator's view: follow every room's topics live")
    sp.add_argument("--config", "-c", help="take broker and prefix from this agent config")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=1883)
    sp.add_argument("--prefix", default="exam")
    sp.add_argument("--raw", action="store_true", help="print topic and payload as received")
    sp.add_argument("--duration", type=float, help="stop after this many seconds")
    sp.add_argument("--timezone", default="Asia/Shanghai",
                    help="the exam's zone for the times printed (with --config: its [procedure] timezone)")
    sp.add_argument("--cafile", help="CA certificate of a TLS broker")
    sp.add_argument("--cert", help="client certificate (aggregator/ops) for a TLS broker")
    sp.add_argument("--key", help="its private key")
    sp.set_defaults(fn=cmd_watch)
    from examroom.agent import cli_exam

    cli_exam.add_commands(sub, with_config, _call, _reply)
    from examroom.agent import cli_procedure

    cli_procedure.add_commands(sub, with_config, _call, _reply)
    from examroom.agent import cli_record

    cli_record.add_commands(sub, with_config, _call, _reply, _load)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from examroom.agent.control import AgentUnreachable
    from examroom.agent.instance import AlreadyRunning, StartFailed

    try:
        return args.fn(args)
    except ConfigError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except AlreadyRunning as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except (AgentUnreachable, StartFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
