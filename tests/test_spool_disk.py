"""The spool on a full disk, and the spool's files held to its bound.

The full-disk cases need a small filesystem of their own: a tmpfs mounted by the test
(root only; skipped with the reason otherwise), so the rest of the machine never fills.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from devkit.localbroker import Broker
from examroom.agent.disk_reserve import DiskFull
from examroom.agent.spool import Spool
from tests.agentproc import AgentProcess, write_config
from tests.mqttwatch import Watcher


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs at tmp_path/disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(spool: Spool, text: str = "x" * 2000) -> list:
    """Append evidence until the disk refuses; returns what was stored."""
    stored = []
    with pytest.raises(DiskFull):
        for i in range(100_000):
            stored.append(spool.append("note", {"text": f"{i} {text}"}, 1, False))
    return stored


def test_a_full_disk_stops_appends_not_delivery_and_recovers_by_itself(small_disk: Path):
    spool = Spool(small_disk / "spool.db", max_bytes=2 * 1024 * 1024)  # reserve: 256 KiB
    spool.open()
    try:
        stored = fill(spool)
        assert spool.disk_full and spool.unstored == 1 and len(stored) > 100
        with pytest.raises(DiskFull, match="disk of the spool .* is full"):
            spool.append("note", {"text": "one more"}, 1, False)
        assert spool.unstored == 2 and spool.depth()["disk_full"] is True
        # delivery goes on: a reconnect's session counter, then the broker's acknowledgements
        assert spool.next_session() == 1
        for i in range(0, len(stored), 50):
            assert spool.ack(e.seq for e in stored[i:i + 50]) == len(stored[i:i + 50])
        assert spool.pending == 0
        assert spool.check_space() is True and not spool.disk_full  # the drain gave the space back
        assert spool.append("note", {"text": "after"}, 2, True) is not None
    finally:
        spool.close()


def test_files_shrink_back_to_the_bound_after_a_drain(tmp_path: Path):
    """A 64 KiB bound left 4.35 MB of files, and files never shrank."""
    spool = Spool(tmp_path / "spool.db", max_bytes=64 * 1024)
    spool.open()
    try:
        events = [spool.append("note", {"text": f"{i} " + "y" * 1000}, 1, False) for i in range(2000)]
        assert spool.overfull  # evidence is kept past the bound during the outage
        peak = spool.file_bytes()
        for i in range(0, len(events), 50):
            spool.ack(e.seq for e in events[i:i + 50])
        assert spool.pending == 0
        assert spool.file_bytes() <= 64 * 1024 + 32 * 1024, (peak, spool.file_bytes())
        for i in range(500):  # telemetry over the bound: dropped, and the files stay near it
            spool.append("device", {"device": "d", "state": "ok", "n": i, "pad": "z" * 500}, 1, False)
        assert spool.file_bytes() <= 4 * 64 * 1024
    finally:
        spool.close()


def test_the_agent_alerts_on_a_full_disk_delivers_what_it_has_and_recovers(small_disk: Path, tmp_path: Path):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    cfg = write_config(tmp_path, broker.port, max_bytes=2 * 1024 * 1024, heartbeat_s=0.2)
    cfg.write_text(cfg.read_text().replace(f'path = "{tmp_path}/room101-spool.db"',
                                           f'path = "{small_disk}/spool.db"'), encoding="utf-8")
    agent = AgentProcess(cfg, tmp_path / "room101.sock").start()
    try:
        with Watcher(broker.port, persistent=True) as w:  # the aggregator's durable session
            w.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/status") and m.json.get("state") == "online"])
            broker.stop()
            sent = 0
            while True:
                r = agent.call("note", text=f"{sent} " + "n" * 1900)
                if not r["ok"]:
                    break
                sent += 1
            assert "disk" in r["error"] and "full" in r["error"]
            st = agent.call("status")
            assert st["state"] == "alert" and any(a.startswith("disk_full") for a in st["alerts"])
            assert st["spool"]["disk_full"] is True and st["spool"]["unstored"] >= 1
            broker.start()
            got = w.wait_for(lambda ms: (n := [m for m in ms if m.topic.endswith("/event/note")])[sent - 1:] and n,
                             timeout=60)
            assert sorted(int(m.json["data"]["text"].split()[0]) for m in got) == list(range(sent))
            deadline = time.monotonic() + 30
            while agent.call("status")["spool"]["disk_full"]:  # the next heartbeat takes the reserve back
                assert time.monotonic() < deadline, "the agent did not recover from the full disk"
                time.sleep(0.1)  # status is a question, not an event to wait on
            assert agent.call("note", text="space is back")["ok"]
    finally:
        agent.terminate()
        broker.kill()
