"""The aggregator with a real Mosquitto and real room agents: nothing the broker delivered
is lost or stored twice when the aggregator is SIGKILLed mid-stream; a room's outage comes
back in seq order; a frozen room goes offline by its missed heartbeats."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from devkit.localbroker import Broker
from examroom.contract.vocabulary import RoomState
from examroom.site.app import SiteApp
from examroom.site.store import Store
from tests.agentproc import AgentProcess, write_config
from tests.site_lab import SiteProcess, site_config, site_toml


def stored(path: Path, room: str = "room101") -> list[dict]:
    store = Store(path)
    store.open()
    try:
        return store.events(room, kind="note", limit=100_000)
    finally:
        store.close()


def test_aggregator_sigkilled_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path: Path):
    broker = Broker(tmp_path / "b", persistence=True).start()
    site = SiteProcess(site_toml(tmp_path, broker.port)).start()
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "room101.sock").start()
    total = 1600  # long enough that the third kill still finds events in flight on a loaded machine
    sent: list[int] = []
    try:
        def stream() -> None:
            for i in range(total):
                sent.append(agent.call("note", text=f"n {i}")["seq"])

        writer = threading.Thread(target=stream)
        writer.start()
        kills = 0
        while writer.is_alive() and kills < 3:  # three kills, each with events in flight
            if len(sent) >= (kills + 1) * total // 8:
                site.kill()
                kills += 1
                site.start()
            time.sleep(0.01)  # watching a counter another thread moves
        writer.join()
        assert kills == 3
        deadline = time.monotonic() + 30
        while len(got := stored(tmp_path / "site.db")) < total and time.monotonic() < deadline:
            time.sleep(0.1)  # the aggregator's store is another process's file
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(sent) and len(set(e["id"] for e in got)) == total  # all, once, in order
        site.terminate()
        store = Store(tmp_path / "site.db")
        store.open()
        assert store.gaps("room101") == []
        store.close()
    finally:
        agent.kill()
        site.kill()
        broker.kill()


def test_a_rooms_outage_is_merged_in_seq_order_and_a_frozen_room_goes_offline(tmp_path: Path):
    broker = Broker(tmp_path / "b", persistence=True).start()
    app = SiteApp(site_config(tmp_path, broker.port, heartbeat_s=0.5, missed=2))
    changed = threading.Condition()
    seen: set[str] = set()

    def tell(rooms: set[str]) -> None:
        with changed:
            seen.update(rooms)
            changed.notify_all()

    app.board = type("Recorder", (), {"rooms_changed": staticmethod(tell), "stop": lambda self: None})()
    app.store.open()
    app.subscriber.start()
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "room101.sock").start()
    try:
        assert app.subscriber.wait_connected(10)
        agent.call("note", text="before")
        broker.stop()
        for i in range(20):
            agent.call("note", text=f"during {i}")  # spooled on the box while the broker is away
        broker.start()

        def state_is(want: str) -> bool:
            return app.store.room("room101")["state"] == want

        with changed:
            assert changed.wait_for(lambda: len(stored(tmp_path / "site.db")) == 21, timeout=30)
        notes = stored(tmp_path / "site.db")
        assert [e["data"]["text"] for e in notes] == ["before"] + [f"during {i}" for i in range(20)]
        assert [e["seq"] for e in notes] == sorted(e["seq"] for e in notes)
        assert all(e["replayed"] for e in notes[1:]) and "room101" in seen
        os.kill(agent.proc.pid, signal.SIGSTOP)  # frozen: connected, but no heartbeat
        try:
            with changed:
                assert changed.wait_for(lambda: state_is(RoomState.OFFLINE), timeout=10)
            assert app.store.room("room101")["offline_why"].startswith("no heartbeat for")
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        with changed:
            assert changed.wait_for(lambda: not state_is(RoomState.OFFLINE), timeout=10)
    finally:
        agent.kill()
        app.stop()
        broker.kill()
