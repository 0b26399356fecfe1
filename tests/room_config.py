"""A whole simulated exam room for end-to-end tests, on a timeline measured in seconds.

Like config/demo.toml (every device on its `sim` backend: ID card reader,
PC/SC reader, metal detector, unified audio source, camera, clock) with the
demo seat plan, but with one [[exam]] session whose times are relative to
*now*: entry already open, start, late cutoff, listening window and end a few
seconds ahead (schedule minutes may be fractions). The test owns the broker
port and every state path (spool, socket, journal, records, snapshots).
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from examroom.contract.topics import Topics
from tests.agentproc import AgentProcess
from tests.mqttwatch import Message, Watcher

ROOT = Path(__file__).resolve().parent.parent
DEMO_SEATPLAN = ROOT / "config" / "demo-seatplan.csv"
TOPICS = Topics("exam", "site01", "room101")  # topics of the room room_config() writes
BASE = TOPICS.base
TZ = timezone(timedelta(hours=8))  # exam sites keep Beijing time; the agent must not care


@dataclass(frozen=True)
class Candidate:
    seat: str
    ticket: str
    name: str
    id_number: str
    card_uids: tuple[str, ...]
    medical_metal: bool

    @property
    def id_masked(self) -> str:
        return self.id_number[:6] + "*" * 8 + self.id_number[-4:]


@dataclass
class Room:
    config: Path
    socket: Path
    seatplan: Path
    record_dir: Path
    snapshot_dir: Path
    session: str
    times: dict[str, float]  # entry_opens, start, cutoff, end, listen_start, listen_end (epoch s)
    candidates: dict[str, Candidate] = field(default_factory=dict)

    def wait_until(self, what: str, margin: float = 0.05) -> None:
        """Wait for a point of the exam timeline (a wall-clock instant, not the agent)."""
        deadline = self.times[what] + margin
        while (left := deadline - time.time()) > 0:
            time.sleep(min(left, 0.1))


def load_candidates(seatplan: Path = DEMO_SEATPLAN) -> dict[str, Candidate]:
    with open(seatplan, encoding="utf-8-sig") as f:
        return {r["seat"]: Candidate(r["seat"], r["ticket"], r["name"], r["id_number"],
                                     tuple(u for u in (r.get("card_uids") or "").split(";") if u),
                                     (r.get("medical_metal") or "").lower() in ("true", "1", "yes", "是"))
                for r in csv.DictReader(f)}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, TZ).isoformat(timespec="milliseconds")


def _short_socket(tmp: Path, room: str) -> Path:
    sock = tmp / f"{room}.sock"
    if len(str(sock)) < 100:  # AF_UNIX paths are limited to ~107 bytes
        return sock
    return Path(tempfile.mkdtemp(prefix="er", dir="/tmp")) / f"{room}.sock"


def room_config(tmp: Path, port: int, *, room: str = "room101", session: str = "eng-e2e",
                entry_in: float = -1.0, start_in: float = 3.0, cutoff_after: float = 10.0, end_after: float = 16.0,
                listening: tuple[float, float] | None = None, seatplan: Path | None = None,
                auto_switch_backup: bool = True, silence_hold_s: float = 0.5,
                heartbeat_s: float = 0.5, camera_interval_s: float = 0.3,
                clock_poll_s: float = 1.0, idcard_poll_s: float = 0.1, log_level: str = "DEBUG", extra: str = "") -> Room:
    """Write ``tmp/<room>.toml`` for a simulated room; times are seconds from now.

    ``entry_in``: entry opens (negative: already open; a station that starts after entry
    opened reports ``complete: false``); ``start_in``: the start signal.
    ``cutoff_after`` / ``end_after``: late cutoff and end, counted from the start.
    ``listening``: a (from, to) window, in seconds from now, inside the session.
    ``extra``: more TOML, appended before [[exam]]; it must begin with a table header.
    """
    now = time.time()
    start = now + start_in
    assert entry_in < start_in
    t = {"entry_opens": now + entry_in, "start": start, "cutoff": start + cutoff_after,
         "end": start + end_after}
    listen = ""
    if listening is not None:
        t["listen_start"], t["listen_end"] = now + listening[0], now + listening[1]
        assert start <= t["listen_start"] < t["listen_end"] <= t["end"], "listening must be inside the session"
        listen = f'listening = [{{ start = "{_iso(t["listen_start"])}", end = "{_iso(t["listen_end"])}" }}]\n'
    seatplan = seatplan or DEMO_SEATPLAN
    sock = _short_socket(tmp, room)
    records, snapshots = tmp / "records", tmp / "snapshots"
    cfg = tmp / f"{room}.toml"
    cfg.write_text(f"""schema_version = 1
[site]
id = "site01"
name = "郑州一中考点 (test)"
[room]
id = "{room}"
label = "郑州一中考点 第101考场"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[spool]
path = "{tmp}/{room}-spool.db"
[heartbeat]
interval_s = {heartbeat_s}
[control]
socket = "{sock}"
[metrics]
listen = ""
[log]
level = "{log_level}"
[checkin]
seatplan = "{seatplan}"
record_dir = "{records}"
journal = "{tmp}/{room}-checkin.journal"
[listening]
auto_switch_backup = {str(auto_switch_backup).lower()}

[[device]]
kind = "idcard"
name = "idcard"
backend = "sim"
poll_interval_s = {idcard_poll_s}

[[device]]
kind = "pcsc"
name = "campus-card"
backend = "sim"

[[device]]
kind = "metal_detector"
name = "detector"
backend = "sim"

[[device]]
kind = "audio"
name = "broadcast"
backend = "sim"
silence_hold_s = {silence_hold_s}

[[device]]
kind = "camera"
name = "camera"
backend = "sim"
interval_s = {camera_interval_s}
snapshot_dir = "{snapshots}"

[[device]]
kind = "clock"
name = "clock"
backend = "sim"
poll_interval_s = {clock_poll_s}
{extra}
[[exam]]
id = "{session}"
subject = "English (e2e)"
start = "{_iso(start)}"
end = "{_iso(t["end"])}"
entry_before_min = {(start - t["entry_opens"]) / 60!r}
late_cutoff_min = {cutoff_after / 60!r}
{listen}""", encoding="utf-8")
    return Room(cfg, sock, seatplan, records, snapshots, session, t, load_candidates(seatplan))


# -- driving the room and waiting on what the aggregator receives ------------------------------

def is_hb(m: Message) -> bool:
    return m.topic == TOPICS.heartbeat and m.json is not None


class Door:
    """The proctors at the door: every step returns when the room has seen it."""

    def __init__(self, agent: AgentProcess, w: Watcher, room: Room) -> None:
        self.agent, self.w, self.room = agent, w, room
        self.cards_read = 0
        self.alarms = 0
        self.rechecks = 0
        self.released: dict[str, float] = {}  # button -> when the sim lets go of it

    def do(self, cmd: str, ok: bool = True, **args) -> dict:
        reply = self.agent.call(cmd, **args)
        assert reply.get("ok") is ok, (cmd, args, reply)
        return reply

    def sim(self, *words: str) -> dict:
        return self.do("sim", words=list(words))

    def next_event(self, kind: str, action, timeout: float = 10) -> dict:
        n = len(self.w.events(kind))
        action()
        return self.w.wait_for(lambda _: len(self.w.events(kind)) > n and self.w.events(kind)[n], timeout)["data"]

    def heartbeat_shows(self, device: str, pred, timeout: float = 10) -> None:
        self.w.wait_for(lambda ms: any(pred(m.json["devices"][device]) for m in ms if is_hb(m)), timeout)

    def tap_id(self, id_number: str, name: str = "") -> dict:
        """Place the ID card, wait for the verdict, lift it and wait until the reader saw it go."""
        data = self.next_event("checkin", lambda: self.sim("card", id_number, *([name] if name else [])))
        self.cards_read += 1
        self.sim("idcard", "remove")
        n = self.cards_read
        self.heartbeat_shows("idcard", lambda d: d["cards_read"] == n and not d["card_present"])
        return data

    def tap_uid(self, uid: str) -> dict:
        data = self.next_event("checkin", lambda: self.sim("card", uid))
        self.sim("campus-card", "remove")
        return data

    def alarm(self) -> None:
        self.alarms += 1
        n = self.alarms
        self.sim("alarm", "on")
        self.heartbeat_shows("detector", lambda d: d["alarms"] == n and d["alarm_active"])
        self.sim("alarm", "off")
        self.heartbeat_shows("detector", lambda d: d["alarms"] == n and not d["alarm_active"])

    def press(self, button: str) -> None:
        """A sim press holds the button `hold_s` and lets go on a timer; nothing reports the
        release, so a second press of the same button is paced (a held button has no edge)."""
        time.sleep(max(0.0, self.released.get(button, 0.0) - time.monotonic()))
        hold = self.sim("button", button)["result"]["hold_s"]
        self.released[button] = time.monotonic() + 2 * hold + 0.05

    def recheck(self) -> None:
        self.rechecks += 1
        n = self.rechecks
        self.press("recheck")
        self.heartbeat_shows("detector", lambda d: d["presses"]["recheck"] == n)

    def clear(self) -> dict:
        return self.next_event("sweep", lambda: self.press("clear"))


def kinds_after(w: Watcher, start: int, kind: str) -> list[dict]:
    return [m.json["data"] for m in w.messages[start:] if m.topic == TOPICS.event(kind)]


def status_after(w: Watcher, start: int, pred) -> dict | None:
    return next((m.json for m in w.messages[start:] if m.topic == TOPICS.status and pred(m.json)), None)


def wait_status(w: Watcher, start: int, state: str, alert_part: str = "") -> dict:
    return w.wait_for(lambda _: status_after(w, start, lambda s: s["state"] == state and (
        not alert_part or any(alert_part in a for a in s.get("alerts", [])))))


def wait_kind(w: Watcher, start: int, kind: str, pred=lambda d: True, timeout: float = 10) -> dict:
    return w.wait_for(lambda _: next((d for d in kinds_after(w, start, kind) if pred(d)), None), timeout)


def settled(w: Watcher) -> None:
    """Online, and the events of the devices' start (spooled before the connection) arrived."""
    wait_status(w, 0, "online")
    wait_kind(w, 0, "clock")  # the clock starts last


class Aggregator:
    """Publishes commands as the site aggregator does; replies are read from the watcher."""

    def __init__(self, port: int, w: Watcher) -> None:
        self.w = w
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.n = 0

    def call(self, name: str, args: dict | None = None, timeout: float = 10) -> dict:
        self.n += 1
        rid = f"req-{self.n}"
        self.client.publish(TOPICS.cmd(name), json.dumps({"id": rid, "args": args or {}}), qos=1).wait_for_publish(5)
        return self.w.wait_for(lambda ms: next((m.json for m in ms if m.topic == TOPICS.reply(name)
                                                and (m.json or {}).get("request_id") == rid), None), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
