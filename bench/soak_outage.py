"""Soak: 36,000 events spooled during a broker outage, then drained: time, order, RSS.

Run: .venv/bin/python bench/soak_outage.py [--events 36000]
Targets (docs/reliability.md): 0 lost, 0 reordered, drain within 60 s, RSS under 45 MB.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from soaklib import BROKER_CONF, Agent, Subscriber, config, tally

from devkit.localbroker import Broker
from examroom.agent.control import call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=36_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak") as d, ExitStack() as cleanup:
        tmp = Path(d)
        broker = Broker(tmp / "broker", persistence=True, extra_conf=BROKER_CONF).start()
        cleanup.callback(broker.kill)  # whatever fails, nothing is left running
        sub = Subscriber(broker.port).start()
        agent = Agent(config(tmp, broker.port), tmp)
        cleanup.callback(agent.kill)
        agent.start()
        broker.stop()
        t0 = time.monotonic()
        acknowledged = {call(agent.sock, "note", text=f"outage {i}")["seq"] for i in range(a.events)}
        spool_s = time.monotonic() - t0
        rss_backlog = agent.rss_mb()
        peak = [rss_backlog]
        done = threading.Event()

        def watch_rss() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], agent.rss_mb())

        watcher = threading.Thread(target=watch_rss)
        watcher.start()
        broker.start()
        drain = sub.wait_for(acknowledged, timeout=600)
        done.set()
        watcher.join()
        depth = call(agent.sock, "status")["spool"]
        agent.stop()
        sub.close()
        broker.kill()
        t = tally(acknowledged, sub.seqs)
        print(f"outage of {a.events} events: spooled in {spool_s:.1f} s ({a.events / spool_s:.0f} ev/s through "
              f"the control socket); RSS with the backlog {rss_backlog:.1f} MB, peak while draining {peak[0]:.1f} MB")
        print(f"  drained in {drain:.2f} s ({a.events / drain:.0f} ev/s); lost {t['lost']}, duplicated "
              f"{t['duplicated']}, reordered {t['reordered']}; spool after: {depth['events']} events; "
              f"tracebacks {agent.tracebacks()}")


if __name__ == "__main__":
    main()
