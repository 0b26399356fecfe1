"""The aggregator's durable store: SQLite in WAL mode, one writer, readers beside it.

What the rooms published is kept as it came (``payload``), with the parts the
board and the exports query (room, seq, kind, session) beside it. An event is
unique by ``id``: a duplicate after a lost PUBACK is counted, not stored twice.
A payload that fails the contract's schemas is kept and flagged (``problems``),
never dropped: it may be the only trace of what happened.

``Store`` is the storage interface: the ingest, the board and the exports use
only its methods, so another database (PostgreSQL) can stand behind the same
calls. The writer's calls run inside ``batch()``: one transaction per batch of
MQTT messages, committed before any of them is acknowledged to the broker.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from examroom.drivers.gb11643 import mask_ids_in_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    room          TEXT PRIMARY KEY,
    label         TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL DEFAULT 'unknown',
    state_since   REAL,
    offline_why   TEXT NOT NULL DEFAULT '',
    session       INTEGER NOT NULL DEFAULT 0,
    status        TEXT,
    status_at     REAL,
    heartbeat     TEXT,
    heartbeat_at  REAL,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    events        INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    dropped_seen  INTEGER NOT NULL DEFAULT 0,
    dropped_used  INTEGER NOT NULL DEFAULT 0,
    dropped_last  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id        TEXT PRIMARY KEY,
    room      TEXT NOT NULL,
    seq       INTEGER,
    kind      TEXT NOT NULL,
    ts        TEXT,
    session   INTEGER,
    exam      TEXT,
    replayed  INTEGER NOT NULL DEFAULT 0,
    payload   TEXT NOT NULL,
    problems  TEXT NOT NULL DEFAULT '',
    received  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_room_seq ON events (room, seq);
CREATE INDEX IF NOT EXISTS events_exam ON events (exam, room, kind);
CREATE TABLE IF NOT EXISTS gaps (
    room      TEXT NOT NULL,
    first     INTEGER NOT NULL,
    last      INTEGER NOT NULL,
    opened    REAL NOT NULL,
    verdict   TEXT NOT NULL,
    decided   REAL,
    PRIMARY KEY (room, first)
);
CREATE TABLE IF NOT EXISTS rejects (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,
    room      TEXT,
    topic     TEXT NOT NULL,
    payload   BLOB NOT NULL,
    problems  TEXT NOT NULL,
    received  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,
    room      TEXT NOT NULL,
    key       TEXT NOT NULL,
    text      TEXT NOT NULL,
    raised    REAL NOT NULL,
    cleared   REAL,
    acked_by  TEXT,
    acked_at  REAL
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (room, key, cleared);
CREATE TABLE IF NOT EXISTS log (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    what      TEXT NOT NULL,
    body      TEXT NOT NULL
);
"""

ROOM_COLUMNS = ("room", "label", "state", "state_since", "offline_why", "session", "status", "status_at",
                "heartbeat", "heartbeat_at", "last_seq", "events", "duplicates", "dropped_seen",
                "dropped_used", "dropped_last")


class Store:
    def __init__(self, path: str | Path, sync: str = "full") -> None:
        self.path = Path(path)
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")  # the site's commands (push, export) open it too
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction: everything inside commits together, or nothing does."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def _one(self, sql: str, args: tuple = ()) -> Any:
        with self._lock:
            return self.db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.db.execute(sql, args)

    # -- rooms ----------------------------------------------------------------
    def room(self, room: str) -> dict[str, Any]:
        """The room's row, made on first sight."""
        row = self._one(f"SELECT {', '.join(ROOM_COLUMNS)} FROM rooms WHERE room=?", (room,))
        if row is None:
            self._run("INSERT OR IGNORE INTO rooms (room) VALUES (?)", (room,))
            row = self._one(f"SELECT {', '.join(ROOM_COLUMNS)} FROM rooms WHERE room=?", (room,))
        return dict(zip(ROOM_COLUMNS, row))

    def rooms(self, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every room, or ``only`` those (a board update reads the rooms that changed, not 1,000)."""
        sql = f"SELECT {', '.join(ROOM_COLUMNS)} FROM rooms"
        if only is None:
            rows = self._all(sql + " ORDER BY room")
        else:
            names = sorted(set(only))
            rows = [r for i in range(0, len(names), 500) for r in self._all(
                sql + f" WHERE room IN ({','.join('?' * len(names[i:i + 500]))})", tuple(names[i:i + 500]))]
        return [dict(zip(ROOM_COLUMNS, r)) for r in rows]

    def update_room(self, room: str, **fields: Any) -> None:
        bad = set(fields) - set(ROOM_COLUMNS)
        if bad:
            raise KeyError(f"no such room column: {sorted(bad)}")
        sets = ", ".join(f"{k}=?" for k in fields)
        self._run(f"UPDATE rooms SET {sets} WHERE room=?", (*fields.values(), room))

    # -- events ---------------------------------------------------------------
    def add_event(self, room: str, ev: dict[str, Any], raw: str, problems: list[str], now: float) -> bool:
        """Store one event; False when its ``id`` is already stored (a duplicate)."""
        data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
        exam = data.get("session") if isinstance(data.get("session"), str) else None
        seq = ev.get("seq") if isinstance(ev.get("seq"), int) else None
        cur = self._run(
            "INSERT OR IGNORE INTO events (id, room, seq, kind, ts, session, exam, replayed, payload,"
            " problems, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (str(ev.get("id")), room, seq, str(ev.get("kind")), ev.get("ts"),
             ev.get("session") if isinstance(ev.get("session"), int) else None, exam,
             int(bool(ev.get("replayed"))), raw, "\n".join(problems), now))
        return cur.rowcount == 1

    def events(self, room: str | None = None, kind: str | None = None, exam: str | None = None,
               after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events in ``seq`` order per room (a room's replayed events merge where they belong)."""
        where, args = ["COALESCE(seq, 0) > ?"], [after_seq]
        for col, val in (("room", room), ("kind", kind), ("exam", exam)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        rows = self._all(f"SELECT room, payload, problems, received FROM events WHERE {' AND '.join(where)}"
                         " ORDER BY room, seq LIMIT ?", (*args, limit))
        return [json.loads(p) | {"room": r, "problems": pr.split("\n") if pr else [], "received": rc}
                for r, p, pr, rc in rows]

    def recent_events(self, room: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._all("SELECT payload, problems FROM events WHERE room=? ORDER BY seq DESC LIMIT ?",
                         (room, limit))
        return [json.loads(p) | {"problems": pr.split("\n") if pr else []} for p, pr in rows]

    def has_seq(self, room: str, first: int, last: int) -> int:
        return self._one("SELECT COUNT(*) FROM events WHERE room=? AND seq BETWEEN ? AND ?",
                         (room, first, last))[0]

    def exams(self) -> list[str]:
        return [r[0] for r in self._all("SELECT DISTINCT exam FROM events WHERE exam IS NOT NULL ORDER BY exam")]

    def event_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM events")[0]

    # -- gaps -----------------------------------------------------------------
    def add_gap(self, room: str, first: int, last: int, now: float) -> None:
        self._run("INSERT OR IGNORE INTO gaps VALUES (?, ?, ?, ?, 'pending', NULL)", (room, first, last, now))

    def gaps(self, room: str | None = None, verdict: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if room is not None:
            where.append("room=?")
            args.append(room)
        if verdict is not None:
            where.append("verdict=?")
            args.append(verdict)
        sql = "SELECT room, first, last, opened, verdict, decided FROM gaps"
        rows = self._all(sql + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY room, first",
                         tuple(args))
        return [dict(zip(("room", "first", "last", "opened", "verdict", "decided"), r)) for r in rows]

    def decide_gap(self, room: str, first: int, verdict: str, now: float) -> None:
        self._run("UPDATE gaps SET verdict=?, decided=? WHERE room=? AND first=?", (verdict, now, room, first))

    # -- rejects, alerts, log ---------------------------------------------------
    def add_reject(self, room: str | None, topic: str, payload: bytes, problems: list[str], now: float) -> None:
        self._run("INSERT INTO rejects (room, topic, payload, problems, received) VALUES (?, ?, ?, ?, ?)",
                  (room, topic, payload, "\n".join(problems), now))

    def rejects(self, room: str | None = None) -> list[dict[str, Any]]:
        rows = self._all("SELECT room, topic, payload, problems, received FROM rejects"
                         + (" WHERE room=?" if room else "") + " ORDER BY n", (room,) if room else ())
        return [{"room": r, "topic": t, "payload": bytes(p).decode("utf-8", "replace"),
                 "problems": pr.split("\n"), "received": rc} for r, t, p, pr, rc in rows]

    def open_alert_keys(self, room: str) -> dict[str, int]:
        return {k: n for n, k in self._all("SELECT n, key FROM alerts WHERE room=? AND cleared IS NULL", (room,))}

    def raise_alert(self, room: str, key: str, text: str, now: float) -> int:
        """An alert's text is shown on every board: an ID number a room let through is masked."""
        return self._run("INSERT INTO alerts (room, key, text, raised) VALUES (?, ?, ?, ?)",
                         (room, key, mask_ids_in_text(text), now)).lastrowid

    def clear_alert(self, n: int, now: float) -> None:
        self._run("UPDATE alerts SET cleared=? WHERE n=? AND cleared IS NULL", (now, n))

    def ack_alert(self, n: int, by: str, now: float) -> bool:
        """A person saw it: who and when, once (a second acknowledgement changes nothing)."""
        return self._run("UPDATE alerts SET acked_by=?, acked_at=? WHERE n=? AND acked_by IS NULL",
                         (by, now, n)).rowcount == 1

    def alerts(self, room: str | None = None, unacked_or_open: bool = False) -> list[dict[str, Any]]:
        where, args = [], []
        if room is not None:
            where.append("room=?")
            args.append(room)
        if unacked_or_open:
            where.append("(cleared IS NULL OR acked_by IS NULL)")
        rows = self._all("SELECT n, room, key, text, raised, cleared, acked_by, acked_at FROM alerts"
                         + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY n", tuple(args))
        return [dict(zip(("n", "room", "key", "text", "raised", "cleared", "acked_by", "acked_at"), r))
                for r in rows]

    def record(self, what: str, body: dict[str, Any], now: float | None = None) -> int:
        """The site's own log (pushes, joint tests, acknowledgements): kept with the rooms' events."""
        return self._run("INSERT INTO log (at, what, body) VALUES (?, ?, ?)",
                         (time.time() if now is None else now, what,
                          json.dumps(body, ensure_ascii=False))).lastrowid

    def log_entries(self, what: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._all("SELECT n, at, what, body FROM log" + (" WHERE what=?" if what else "")
                         + " ORDER BY n DESC LIMIT ?", ((what, limit) if what else (limit,)))
        return [{"n": n, "at": at, "what": w, **json.loads(b)} for n, at, w, b in rows]
