"""The site half of the README's demo: the aggregator with its live board, the other rooms
of the site (``--rooms N``), and the joint test at the end.

The other rooms run the real agent on the demo's simulated devices, without a seat plan
(nobody checks in there: they show on the board, heartbeat, answer the joint test).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from devkit.localbroker import free_port

ROOT = Path(__file__).resolve().parent.parent


def _wait_for_line(log: Path, needle: str, proc: subprocess.Popen, timeout: float) -> str | None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if needle in line:
                return line
        time.sleep(0.1)  # the line is in another process's log file
    return None


def start_site(state: Path, port: int, rooms: list[str]) -> tuple[subprocess.Popen, str]:
    """``examroom-site run`` on a free port; returns the process and the board's URL."""
    site = state / "site"
    site.mkdir(parents=True, exist_ok=True)
    board_port = 8080 if port_free(8080) else free_port()
    cfg = site / "site.toml"
    cfg.write_text(f'[site]\nid = "site01"\nname = "郑州一中考点 (demo)"\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
                   f'[store]\npath = "{site}/site.db"\n[liveness]\nheartbeat_s = 5\n'
                   f'[board]\nlisten = "127.0.0.1:{board_port}"\n[rooms]\nexpected = {rooms!r}\n'.replace("'", '"'),
                   encoding="utf-8")
    log = site / "site.log"
    proc = subprocess.Popen([sys.executable, "-m", "examroom.site.cli", "--config", str(cfg), "run"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    line = _wait_for_line(log, "board on", proc, 20)
    if line is None:
        raise RuntimeError(f"the site aggregator did not start; see {log}")
    return proc, line.split("board on", 1)[1].strip()


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_rooms(state: Path, demo_cfg: Path, n: int) -> list[subprocess.Popen]:
    """Rooms 102.. beside the demo's room 101: its config, another id, no seat plan."""
    text = demo_cfg.read_text(encoding="utf-8")
    procs = []
    for k in range(2, n + 1):
        room = f"room{100 + k}"
        d = state / room
        d.mkdir(parents=True, exist_ok=True)
        t = text.replace('id = "room101"', f'id = "{room}"').replace("第101考场", f"第{100 + k}考场")
        t = t.replace(f'"{state}/', f'"{d}/')
        t = re.sub(r'(?m)^page_listen = .*$', 'page_listen = ""', t)  # one door page: room 101's
        t = re.sub(r'(?m)^seatplan = .*$', 'seatplan = ""', t)
        cfg = d / "agent.toml"
        cfg.write_text(t, encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(cfg)],
                                      stdout=open(d / "agent.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT))
    return procs


def joint_test(state: Path) -> int:
    """The joint test of every room the aggregator knows; prints its summary and report paths."""
    out = state / "jointtest"
    r = subprocess.run([sys.executable, "-m", "examroom.site.cli", "--config", str(state / "site/site.toml"),
                        "jointtest", "--rooms", "all", "--steps", "ping,selftest,snapshot", "--out", str(out),
                        "--by", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(r.stdout.rstrip(), flush=True)
    if r.stderr.strip():
        print(r.stderr.rstrip(), flush=True)
    print(f"joint-test report: {out / 'report.html'} (also report.csv, report.json); exit code {r.returncode}")
    return r.returncode


def time_check(state: Path) -> None:
    """The site's standard time to the demo room (examroom-site time-check), its answer printed."""
    r = subprocess.run([sys.executable, "-m", "examroom.site.cli", "--config", str(state / "site/site.toml"),
                        "time-check", "--rooms", "room101"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    print(r.stdout.rstrip() or r.stderr.rstrip(), flush=True)
