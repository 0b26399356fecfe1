"""The README's demo: a simulated exam room, a local Mosquitto, the aggregator's live view and
the site's board (``--rooms N``: N rooms, and a joint test of them at the end).

It starts a private broker (unless --port names a running one), runs the real
agent on config/demo.toml with a compressed exam timeline (entry now, start in
20 s, late cutoff 15 s after, a listening window, the end a minute later), and
walks candidates through the door with the same `sim` commands a person can
type. Everything printed after "watching" is what the aggregator receives.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examroom.agent import human_time  # noqa: E402
from examroom.agent.config import load  # noqa: E402
from examroom.agent.control import AgentNotRunning, call  # noqa: E402
from devkit.localbroker import Broker, free_port  # noqa: E402
from examroom.agent.watch import watch  # noqa: E402
from demo_site import joint_test, port_free, start_rooms, start_site, time_check  # noqa: E402

TZ = timezone(timedelta(hours=8))  # exam sites keep Beijing time
DOOR_PAGE = f"127.0.0.1:{8090 if port_free(8090) else free_port()}"  # the proctor's page at the door


def say(text: str) -> None:
    print(f"\n\033[1m▶ {text}\033[0m", flush=True)


def exam_block(now: float) -> tuple[str, dict[str, float]]:
    """A session compressed into ~90 s so every phase of exam day shows up."""
    t = {"start": now + 20, "cutoff": now + 35, "listen_start": now + 45, "listen_end": now + 75,
         "end": now + 85}

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, TZ).isoformat(timespec="seconds")

    return (f'[[exam]]\nid = "demo-eng"\nsubject = "English (demo)"\nstart = {iso(t["start"])}\n'
            f'end = {iso(t["end"])}\nentry_before_min = 0.5\nlate_cutoff_min = 0.25\n'
            f'listening = [{{ start = {iso(t["listen_start"])}, end = {iso(t["listen_end"])} }}]\n'), t


def write_config(state: Path, port: int, now: float) -> tuple[Path, dict[str, float]]:
    text = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)
    text = text.replace('"demo-state/', f'"{state}/').replace('"demo-seatplan.csv"',
                                                                f'"{ROOT / "config" / "demo-seatplan.csv"}"')
    text = text.replace("/tmp/examroom-demo-snapshots", str(state / "snapshots"))
    text = text.replace('page_listen = ""', f'page_listen = "{DOOR_PAGE}"', 1)
    plan_sha = hashlib.sha256((ROOT / "config" / "demo-seatplan.csv").read_bytes()).hexdigest()
    text = text.replace("[procedure]\n", f'[procedure]\nseatplan_sha256 = "{plan_sha}"  # as the site distributed it\n', 1)
    head, _, _ = text.partition("# --- exam:")
    block, times = exam_block(now)
    cfg = state / "demo.toml"
    cfg.write_text(head + block, encoding="utf-8")
    return cfg, times


class Room:
    """Drives the simulated room through the control socket, as a person would with the CLI."""

    def __init__(self, sock: str) -> None:
        self.sock = sock

    def do(self, cmd: str, **args) -> dict:
        reply = call(self.sock, cmd, **args)
        if not reply.get("ok"):
            print(f"  (agent answered: {reply.get('error')})", flush=True)
        return reply

    def sim(self, *words: str) -> dict:
        return self.do("sim", words=list(words))

    def tap_id(self, id_number: str, name: str = "") -> None:
        self.sim("card", id_number, *([name] if name else []))
        time.sleep(1.0)  # the reader polls every 0.3 s; then the card is lifted
        self.sim("idcard", "remove")
        time.sleep(0.6)

    def sweep(self, alarm: bool = False, recheck: bool = False) -> None:
        if alarm:
            self.sim("alarm", "on")
            time.sleep(0.3)
            self.sim("alarm", "off")
        if recheck:
            self.sim("button", "recheck")
            time.sleep(0.4)
        self.sim("button", "clear")
        time.sleep(0.5)


def wait_until(ts: float) -> None:
    while time.time() < ts:
        time.sleep(min(0.2, max(ts - time.time(), 0)))


def dropout_s() -> float:
    """How long the demo's broadcast drops out: 2 s past the feed's configured silence hold.

    A loss shorter than ``silence_hold_s`` is no silence at all, so the dropout is taken
    from config/demo.toml rather than written down beside it: the incident always happens.
    """
    [feed] = [d for d in load(ROOT / "config" / "demo.toml").devices if d.name == "broadcast"]
    return float(feed.options["silence_hold_s"]) + 2.0  # load() fills in the driver's default


def scenario(room: Room, ids: dict[int, str], times: dict[str, float], time_check: Callable[[], None]) -> None:
    say("The two proctors sign in (a woman among them, from different units): the roster check passes")
    room.do("proctor_signin", proctor="proctor-A")
    room.do("proctor_signin", proctor="proctor-B")
    say("The site publishes the standard time; the room answers its clock's offset; a proctor confirms the wall clock")
    time_check()
    room.do("clock_confirm", by="proctor-A", note="wall clock checked")
    say("Entry is open. Candidates show admission ticket + ID card, then a metal-detector sweep.")
    for seat in (1, 2, 3):
        say(f"Seat {seat}: taps the second-generation ID card, sweep clear")
        room.tap_id(ids[seat])
        room.sweep()
    say("Seat 5: the detector beeps; re-check with the hand-held, then clear")
    room.tap_id(ids[5])
    room.sweep(alarm=True, recheck=True)
    say("Seat 7: registered implant (medical_metal): the alarm is expected and logged as such")
    room.tap_id(ids[7])
    room.sweep(alarm=True)
    say("Seat 8: a campus card (PC/SC UID) instead of the ID card")
    room.sim("card", "04A1B2C3D408")
    time.sleep(0.8)
    room.sim("campus-card", "remove")
    room.sweep()
    say("A candidate of another room taps in here: refused (not_in_room)")
    room.tap_id("110105199003070017")
    say("Seat 9: the card will not read; the proctor admits by the last 6 ID digits")
    room.do("checkin_admit", id_last6=ids[9][-6:], proctor="proctor-A")
    room.sweep()
    say("Seat 10: photo does not match well: marked suspect (存疑), photographed; two proctors confirm")
    room.tap_id(ids[10])
    room.do("checkin_suspect", seat="10", proctor="proctor-A", reason="photo unclear")
    room.do("checkin_confirm", seat="10", proctor="proctor-A")
    room.do("checkin_confirm", seat="10", proctor="proctor-B")
    room.sweep()
    say("Seat 6 brings an approved special item (a hearing aid): the record lists it with the sweep")
    room.tap_id(ids[6])
    room.sweep()
    say("Seat 11: the photo does not match at all: sent to the site's identity-verification point, confirmed there")
    room.tap_id(ids[11])
    room.do("checkin_suspect", seat="11", proctor="proctor-B", reason="looks different")
    room.do("checkin_send_to_verification", seat="11", proctor="proctor-B")
    room.do("checkin_verify", seat="11", outcome="confirmed", point="考点身份验证点", proctor="proctor-B")
    room.sweep()
    say("Somebody hangs a coat over the camera: the room turns to ALERT; then it is uncovered")
    room.sim("camera", "black")
    time.sleep(3)
    room.sim("camera", "normal")
    say(f"Waiting for the start signal and the late cutoff at {human_time.clock(times['cutoff'])}"
        " — the attendance summary follows")
    wait_until(times["cutoff"] + 2)
    say("Seat 12 arrives after the cutoff: refused and recorded (late_refused)")
    room.tap_id(ids[12])
    dropout = dropout_s()
    say(f"The listening part starts; the broadcast feed drops out for {dropout:g} s: an incident; "
        "the agent switches to the backup source")
    wait_until(times["listen_start"] + 3)
    room.sim("broadcast", "silence")
    time.sleep(dropout)
    room.sim("broadcast", "level", "-20")
    say("Seat 3 whispers to a neighbour: violation W04 on the record card")
    room.do("violation", seat="3", code="W04", by="proctor-A")
    wait_until(times["end"] - 55)
    say("Seat 1 hands in during the last minute and leaves; tries to come back: refused (no re-entry)")
    room.do("checkin_handin", seat="1", proctor="proctor-A")
    room.tap_id(ids[1])
    say(f"End of the session at {human_time.clock(times['end'])}: the session record is published "
        "and written for the room record card")
    wait_until(times["end"] + 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, help="use a running broker on 127.0.0.1:PORT instead of starting one")
    ap.add_argument("--duration", type=float, default=None,
                    help="stop this many seconds after the scenario (default: run until Ctrl-C)")
    ap.add_argument("--rooms", type=int, default=1,
                    help="rooms of the site (default 1); with more, a joint test of all of them at the end")
    args = ap.parse_args()
    if not 1 <= args.rooms <= 40:
        ap.error("--rooms: 1 to 40 rooms")
    state = ROOT / "demo-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    broker = None
    if args.port is None:
        broker = Broker(state / "broker").start()
        port = broker.port
        print(f"started a private Mosquitto on 127.0.0.1:{port}")
    else:
        port = args.port
    cfg, times = write_config(state, port, time.time())
    log = open(state / "agent.log", "w")
    agent = subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "run", "--config", str(cfg)],
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    threading.Thread(target=watch, args=("127.0.0.1", port, "exam"), daemon=True).start()
    sock = str(state / "agent.sock")
    others = start_rooms(state, cfg, args.rooms)
    site = None
    try:
        site, board = start_site(state, port, [f"room{100 + k}" for k in range(1, args.rooms + 1)])
        print(f"site board (the site office's view of {args.rooms} room(s)): {board}", flush=True)
        deadline = time.time() + 20
        while True:
            try:
                call(sock, "ping", timeout=1)
                break
            except AgentNotRunning:
                if agent.poll() is not None or time.time() > deadline:
                    print(f"the agent did not start; see {state / 'agent.log'}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(f"agent running: config {cfg}, log {state / 'agent.log'}")
        print(f"try in another terminal: .venv/bin/examroom-agent status -c {cfg}")
        print(f"the door page (what a proctor at the door sees): http://{DOOR_PAGE}/", flush=True)
        scenario(Room(sock), _ids(), times, lambda: time_check(state))
        records = sorted((state / "records").glob("*"))
        say("Room record files for the proctors: " + ", ".join(str(p) for p in records))
        if args.rooms > 1:
            say(f"Joint testing (联调) of the site's {args.rooms} rooms: ping, read-only self-test, snapshot")
            joint_test(state)
        say("The room keeps reporting its heartbeat" + (" (Ctrl-C to stop)" if args.duration is None else ""))
        if args.duration is None:
            while agent.poll() is None:
                time.sleep(1)
        else:
            time.sleep(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in [agent, *others]:
            proc.terminate()
        for proc in [agent, *others]:
            proc.wait(15)
        if site is not None:
            site.terminate()
            site.wait(15)
        time.sleep(0.3)  # let the view print the clean "offline" status
        if broker is not None:
            broker.kill()
    return 0


def _ids() -> dict[int, str]:
    import csv

    with open(ROOT / "config" / "demo-seatplan.csv", encoding="utf-8") as f:
        return {int(r["seat"]): r["id_number"] for r in csv.DictReader(f)}


if __name__ == "__main__":
    sys.exit(main())
