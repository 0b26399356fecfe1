"""A picture of the live board for the docs, taken from the real thing: a private Mosquitto,
the aggregator with its board, eight simulated rooms (the real agent as processes on
config/demo.toml's sim devices, each with its own seat plan and an exam session whose
entry is open), a pushed instruction some rooms acknowledged, one room's camera covered
(alert) and one room's agent killed (offline, by its Last Will). Headless Chromium
(Debian's chromium and chromium-driver) photographs ``/`` at 1600x1000.

    .venv/bin/python -m devkit.board_screenshot docs/img/board.png
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from devkit.localbroker import Broker
from examroom.agent.control import AgentNotRunning, call
from examroom.site.app import SiteApp
from examroom.site.config import parse

ROOT = Path(__file__).resolve().parent.parent
ROOMS = [f"room1{i:02d}" for i in range(1, 9)]
ALERT_ROOM, OFFLINE_ROOM = "room103", "room106"
ACKED = {"room101": "张老师", "room102": "李老师", "room104": "王老师", "room105": "赵老师", "room108": "刘老师"}
ADMITTED = {room: 9 + 2 * i for i, room in enumerate(ROOMS)}  # seats admitted so far, per room
BEIJING = timezone(timedelta(hours=8))


def room_config(state: Path, port: int, room: str, number: int) -> Path:
    """config/demo.toml for one room of the site: its id, label, seat plan, paths, and an exam
    session starting in 20 minutes (entry opens 30 minutes before: it is open now)."""
    plan = state / f"{room}-seatplan.csv"
    rows = (ROOT / "config" / "demo-seatplan.csv").read_text(encoding="utf-8").splitlines()
    plan.write_text("\n".join([rows[0]] + [re.sub(r"^[^,]*", room, r) for r in rows[1:]]) + "\n", encoding="utf-8")
    text = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8").partition("# --- exam:")[0]
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)
    text = re.sub(r"(?m)^interval_s = 5$", "interval_s = 1", text, count=1)  # the heartbeat
    text = (text.replace('id = "room101"', f'id = "{room}"').replace("第101考场", f"第{number}考场")
            .replace('"demo-state/', f'"{state}/{room}-').replace('"demo-seatplan.csv"', f'"{plan}"')
            .replace('listen = "127.0.0.1:0"', 'listen = ""')
            .replace("/tmp/examroom-demo-snapshots", str(state / f"{room}-snapshots")))
    start = datetime.now(BEIJING).replace(microsecond=0) + timedelta(minutes=20)
    text += (f'[[exam]]\nid = "eng-am"\nsubject = "English"\nstart = {start.isoformat()}\n'
             f'end = {(start + timedelta(hours=2)).isoformat()}\n')
    cfg = state / f"{room}.toml"
    cfg.write_text(text, encoding="utf-8")
    return cfg


def start_agent(cfg: Path, sock: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(cfg)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    until(lambda: _answers(sock) or proc.poll() is not None, 20, f"the agent of {cfg.stem}")
    if proc.poll() is not None:
        raise RuntimeError(f"the agent of {cfg.stem} exited: {log.read_text(errors='replace')[-1500:]}")
    return proc


def _answers(sock: Path) -> bool:
    try:
        call(str(sock), "ping", timeout=1)
        return True
    except (AgentNotRunning, OSError, ValueError):
        return False


def until(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Wait for something another process does (no event reaches this one)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def push(site_toml: Path, text: str) -> None:
    """The site's own push command, as the site office runs it (it records the push in the store)."""
    subprocess.run([sys.executable, "-m", "examroom.site.cli", "--config", str(site_toml), "--log-level", "WARNING",
                    "push", text, "--wait", "0", "--by", "考务办"], cwd=ROOT, capture_output=True, timeout=60, check=True)


def screenshot(url: str, out: Path, ready: Callable[[Any], bool]) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:  # the page's own size, whatever the headless window keeps for itself
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        driver.get(url)
        WebDriverWait(driver, 20).until(ready)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def board_ready(driver: Any) -> bool:
    """The picture is worth taking: the alert, the offline room and every acknowledgement are on it."""
    script = ("const s = (r) => document.querySelector(`.tile[data-room='${r}']`)?.dataset.state;"
              "return [s(arguments[0]), s(arguments[1]), document.querySelectorAll('tr.push-acked').length,"
              " document.querySelectorAll(`.tile[data-room='${arguments[0]}'] .dev-fault`).length];")
    return driver.execute_script(script, ALERT_ROOM, OFFLINE_ROOM) == ["alert", "offline", len(ACKED), 1]


def run(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="board-shot-") as tmp:
        state = Path(tmp)
        broker = Broker(state / "broker", persistence=True).start()
        site_toml = state / "site.toml"
        site_toml.write_text(f'[site]\nid = "site01"\nname = "郑州一中考点"\n[mqtt]\nport = {broker.port}\n'
                             f'[store]\npath = "{state}/site.db"\n[liveness]\nheartbeat_s = 1\nmissed = 10\n'
                             f'[board]\nlisten = "127.0.0.1:0"\n', encoding="utf-8")
        app = SiteApp(parse(site_toml.read_text(encoding="utf-8"), str(site_toml)))
        agents: dict[str, subprocess.Popen] = {}
        try:
            app.start()
            for n, room in enumerate(ROOMS, start=1):
                agents[room] = start_agent(room_config(state, broker.port, room, n), state / f"{room}-agent.sock",
                                           state / f"{room}.log")
            until(lambda: sum(r["state"] == "online" for r in app.store.rooms()) == len(ROOMS), 30,
                  "eight rooms online")
            for room in ROOMS:
                for seat in range(1, ADMITTED[room] + 1):
                    call(str(state / f"{room}-agent.sock"), "checkin_admit", seat=str(seat), proctor="A")
            push(site_toml, "请各考场核对考场时钟并回复")
            until(lambda: app.store.events(kind="push"), 30, "the push delivered")
            push_id = app.store.log_entries("push", 1)[0]["push_id"]
            for room, who in ACKED.items():
                call(str(state / f"{room}-agent.sock"), "push_ack", push_id=push_id, by=who)
            call(str(state / f"{ALERT_ROOM}-agent.sock"), "sim", words=["camera", "black"])
            agents[OFFLINE_ROOM].send_signal(signal.SIGKILL)
            screenshot(app.board.url, out, board_ready)
        finally:
            for proc in agents.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(15)
            app.stop()
            broker.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the PNG to write (e.g. docs/img/board.png)")
    args = p.parse_args()
    run(args.out)
    print(f"board screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
