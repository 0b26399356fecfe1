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
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_SEATPLAN = ROOT / "config" / "demo-seatplan.csv"
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
