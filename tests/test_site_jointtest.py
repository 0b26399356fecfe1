"""Joint testing (联调) of a 20-room site: the acceptance report names exactly the rooms that failed.

Real Mosquitto and 20 rooms as configured (19 real agent processes, each with a
simulated clock, audio feed and camera; started in parallel, heartbeat 1 s). One
room is offline (configured, never started); one has a camera whose backend is not
installed (picamera2), so its self-test and its snapshot fail. The report (JSON,
CSV, HTML) must name exactly those two, and the exit code must say so.
"""
from __future__ import annotations

import csv
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from devkit.localbroker import Broker
from examroom.site import cli as site_cli
from examroom.site.config import SiteConfig, parse
from examroom.site.jointtest import start_campaign
from examroom.site.store import Store
from tests.agentproc import AgentProcess, wait_online, write_config

ROOMS = [f"room{i:02d}" for i in range(1, 21)]
OFFLINE, FAULTY = "room13", "room07"
DEVICES = """
[[device]]
kind = "clock"
name = "clock"
backend = "sim"

[[device]]
kind = "audio"
name = "broadcast"
backend = "sim"

[[device]]
kind = "camera"
name = "camera"
backend = "{camera}"
snapshot_dir = "{tmp}/snapshots-{room}"
"""
OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")  # Asia/Shanghai, whatever the machine's zone


class Site:
    def __init__(self, tmp: Path, broker: Broker, cfg: SiteConfig) -> None:
        self.tmp, self.broker, self.cfg = tmp, broker, cfg

    def cli(self, *args: str) -> int:
        return site_cli.main(["-c", self.cfg.file, *args])

    def store(self) -> Store:
        store = Store(self.cfg.store["path"])
        store.open()
        return store


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("jointtest")
    broker = Broker(tmp / "broker").start()
    agents = []
    for room in ROOMS:
        extra = DEVICES.format(camera="picamera2" if room == FAULTY else "sim", tmp=tmp, room=room)
        agents.append(AgentProcess(write_config(tmp, broker.port, room=room, extra=extra, heartbeat_s=1),
                                   tmp / f"{room}.sock"))
    # the aggregator has seen room20; the site expects the others (the offline one included)
    (tmp / "site.toml").write_text(
        f'[site]\nid = "site01"\nname = "第一考点"\ntimezone = "Asia/Shanghai"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[store]\npath = "{tmp}/site.db"\n'
        f'[board]\nlisten = ""\n[rooms]\nexpected = {json.dumps(ROOMS[:-1])}\n', encoding="utf-8")
    cfg = parse((tmp / "site.toml").read_text(encoding="utf-8"), str(tmp / "site.toml"))
    s = Site(tmp, broker, cfg)
    store = s.store()
    with store.batch():
        store.room(ROOMS[-1])
    store.close()
    try:
        with ThreadPoolExecutor(len(agents)) as pool:  # 19 Python processes on 2 cores: in parallel
            list(pool.map(lambda a: a.start(timeout=60), [a for a in agents if OFFLINE not in a.socket]))
        wait_online(broker.port, [r for r in ROOMS if r != OFFLINE])
        yield s
    finally:
        for a in agents:
            a.kill()
        broker.kill()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_names_the_faulty_and_the_offline_room(site: Site, capsys: pytest.CaptureFixture) -> None:
    out = site.tmp / "report-all"
    assert site.cli("jointtest", "--rooms", "all", "--timeout", "5", "--out", str(out), "--by", "王工") == 1
    printed = capsys.readouterr().out
    progress = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(progress) == len(ROOMS) * 4, printed  # one line per finished room step
    assert f"FAILED: {FAULTY}" in printed and f"NEVER ANSWERED: {OFFLINE}" in printed

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [r["room"] for r in report["rooms"]] == ROOMS
    assert report["failed"] == [FAULTY] and report["no_answer"] == [OFFLINE] and report["passed"] is False
    assert [r["room"] for r in report["rooms"] if not r["passed"]] == [FAULTY, OFFLINE]
    assert report["by"] == "王工" and OFFSET.match(report["started"]) and OFFSET.match(report["finished"])
    faulty = next(r for r in report["rooms"] if r["room"] == FAULTY)
    assert {(row["step"], row["device"]) for row in faulty["rows"] if row["result"] == "fail"} == {
        ("selftest", "camera"), ("snapshot", "camera")}
    for r in report["rooms"]:
        if r["room"] != OFFLINE:
            assert r["answered"] and r["rtt_ms"]["n"] == 3 and 0 < r["rtt_ms"]["p50"] <= r["rtt_ms"]["max"]

    rows = read_csv(out / "report.csv")
    assert list(rows[0]) == ["room", "step", "device", "result", "value", "time", "rtt_ms"]
    assert {r["room"] for r in rows if r["result"] != "pass"} == {FAULTY, OFFLINE}
    assert {r["result"] for r in rows if r["room"] == OFFLINE} == {"no-answer"}
    assert {r["step"] for r in rows if r["room"] == "room01"} == {"selftest", "ping", "snapshot", "trial"}
    assert {r["device"] for r in rows if r["room"] == "room01" and r["step"] == "selftest"} == {
        "clock", "broadcast", "camera"}
    assert all(OFFSET.match(r["time"]) for r in rows)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "size: A4" in page and "联调验收" in page and "签字" in page and "王工" in page
    assert re.search(rf'id="no-answer">{OFFLINE}<', page) and re.search(rf'id="failed">{FAULTY}<', page)
    assert "第一考点" in page and "无应答" in page and "未通过" in page

    store = site.store()
    try:
        last = store.log_entries("jointtest")[0]
    finally:
        store.close()
    assert last["state"] == "done" and last["passed"] is False and last["report"] == str(out / "report.html")
    assert last["done"] == last["total"] == len(ROOMS) * 4


def test_rooms_that_all_pass_exit_0(site: Site, capsys: pytest.CaptureFixture) -> None:
    out = site.tmp / "report-pass"
    assert site.cli("jointtest", "--rooms", "room01,room02,room20", "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["passed"] is True and report["failed"] == report["no_answer"] == []
    assert "3 of 3 rooms passed" in capsys.readouterr().out


def test_ping_gives_numbers_per_room(site: Site, capsys: pytest.CaptureFixture) -> None:
    assert site.cli("ping", "--all", "--count", "3", "--timeout", "1") == 1
    printed = capsys.readouterr().out
    for room in ROOMS:
        line = next(line for line in printed.splitlines() if line.startswith(room + " "))
        if room == OFFLINE:
            assert "0 of 3" in line and line.split()[-3:] == ["-", "-", "-"]
        else:
            p50, p99, most = (float(x) for x in line.split()[-3:])
            assert "3 of 3" in line and 0 < p50 <= p99 <= most
    assert f"never answered: {OFFLINE}" in printed
    assert site.cli("ping", "--rooms", "room01,room02") == 0


def test_the_boards_button_runs_the_same_campaign_in_the_background(site: Site) -> None:
    store = site.store()
    try:
        run = start_campaign(site.cfg, store, ["room01", FAULTY], steps=["ping", "selftest"], timeout=5,
                             by="board", out=site.tmp / "report-board")
        [thread] = [t for t in threading.enumerate() if t.name == f"jointtest-{run}"]
        thread.join(30)
        entries: list[dict[str, Any]] = [e for e in store.log_entries("jointtest") if e["run"] == run]
    finally:
        store.close()
    assert entries[-1]["state"] == "running" and entries[-1]["done"] == 0  # newest first: the start is last
    done = entries[0]
    assert done["state"] == "done" and done["passed"] is False and done["done"] == done["total"] == 4
    assert Path(done["report"]).name == "report.html" and Path(done["report"]).exists()
    assert {e["state"] for e in entries[1:]} == {"running"}
