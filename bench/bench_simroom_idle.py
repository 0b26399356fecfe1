"""Idle RSS and CPU of the demo's full *simulated* room (config/demo.toml's devices), not real hardware.

bench_core's idle number is the agent with no devices. The demo room runs every
device on its sim backend, and two of them do work a real room does not do in
the agent process: the sim audio monitor synthesises 48 kHz PCM, and the sim
camera renders frames for its health check every ``interval_s`` (1 s in the
demo). So this number is the cost of the demo, an upper bound, reported apart.

Measured the way bench_core measures idle (a separate ``agent.cli run`` process,
/proc CPU ticks over the window after 3 s of start-up), with the demo's device
tables, seat plan and exam, and the bench's own spool/socket/heartbeat settings.

Run: .venv/bin/python bench/bench_simroom_idle.py [--seconds 60]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import BROKER_CONF, idle  # noqa: E402

from devkit.localbroker import Broker  # noqa: E402


def demo_room_extra(tmp: Path) -> str:
    """The demo's [[device]] and [[exam]] tables, its seat plan, and state paths inside ``tmp``."""
    demo = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8")
    tables = demo[demo.index("[[device]]"):]
    tables = tables.replace('"/tmp/examroom-demo-snapshots"', f'"{tmp}/snapshots"')
    plan = tmp / "seatplan.csv"  # the demo's candidates, in bench_core.idle's room "idle"
    demo_plan = (ROOT / "config" / "demo-seatplan.csv").read_text(encoding="utf-8")
    plan.write_text(re.sub(r"(?m)^room101,", "idle,", demo_plan), encoding="utf-8")
    return (f'[checkin]\nseatplan = "{plan}"\n'
            f'record_dir = "{tmp}/records"\njournal = "{tmp}/checkin.journal"\n'
            f'[listening]\nauto_switch_backup = true\n{tables}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp / "broker", extra_conf=BROKER_CONF).start()
        try:
            rss, cpu = idle(tmp, broker.port, a.seconds, demo_room_extra(tmp))
        finally:
            broker.kill()
    print(f"SIM ROOM (demo devices, all sim) idle agent  RSS {rss:.1f} MB  CPU {cpu:.2f}% of a core "
          f"over {a.seconds:.0f} s  (includes audio synthesis and sim camera rendering)")


if __name__ == "__main__":
    main()
