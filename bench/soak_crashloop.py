"""Soak: a stream of notes through 10 agent SIGKILLs and 5 broker restarts; nothing acknowledged lost.

Run: .venv/bin/python bench/soak_crashloop.py [--seconds 120]
A note counts as acknowledged when the agent answered it with its seq (it is in the spool);
every one must reach the durable subscriber, in seq order. docs/reliability.md keeps the figures.
The agent is SIGKILLed; the broker is stopped and started, which keeps the subscriber's queue:
a SIGKILLed Mosquitto loses what it acknowledged but had not yet saved (its autosave), which
is the site broker's durability, not the room's, and would read here as the agent's loss.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from soaklib import BROKER_CONF, Agent, Subscriber, config, tally

from devkit.localbroker import Broker
from examroom.agent.control import AgentUnreachable, call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--agent-kills", type=int, default=10)
    ap.add_argument("--broker-kills", type=int, default=5)
    a = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="soak") as d, ExitStack() as cleanup:
        tmp = Path(d)
        broker = Broker(tmp / "broker", persistence=True, extra_conf=BROKER_CONF).start()
        cleanup.callback(broker.kill)  # whatever fails, nothing is left running
        sub = Subscriber(broker.port).start()
        agent = Agent(config(tmp, broker.port), tmp)
        cleanup.callback(agent.kill)
        agent.start()
        acknowledged: set[int] = set()
        stop = threading.Event()
        refused = 0

        def stream() -> None:
            nonlocal refused
            i = 0
            while not stop.is_set():
                try:
                    r = call(agent.sock, "note", timeout=5, text=f"soak {i}")
                    acknowledged.add(r["seq"])
                    i += 1
                except AgentUnreachable:
                    refused += 1  # the agent is down: the proctor's CLI says so, nothing is stored
                    time.sleep(0.02)

        writer = threading.Thread(target=stream)
        writer.start()
        faults = ["agent"] * a.agent_kills + ["broker"] * a.broker_kills
        rng.shuffle(faults)
        gap = a.seconds / (len(faults) + 1)
        t0 = time.monotonic()
        for fault in faults:
            time.sleep(gap * rng.uniform(0.5, 1.5))
            if fault == "agent":
                agent.kill()
                agent.start()
            else:  # a restart that keeps the broker's queues (see the docstring)
                broker.stop()
                time.sleep(rng.uniform(0.5, 3))
                broker.start()
        time.sleep(gap)
        stop.set()
        writer.join()
        drain = sub.wait_for(acknowledged, timeout=120)
        agent.stop()
        sub.close()
        broker.kill()
        t = tally(acknowledged, sub.seqs)
        print(f"crash loop over {time.monotonic() - t0:.0f} s: {a.agent_kills} agent SIGKILLs, "
              f"{a.broker_kills} broker restarts, {agent.starts} agent starts (0 hangs)")
        print(f"  notes acknowledged {t['acknowledged']}, lost {t['lost']}, duplicated {t['duplicated']}, "
              f"reordered {t['reordered']}; calls refused while the agent was down {refused}")
        print(f"  drain after the last fault {drain:.2f} s; tracebacks in the agent log {agent.tracebacks()}")


if __name__ == "__main__":
    main()
