"""Durable event spool: SQLite in WAL mode, the shape of ThingsBoard's EventStorage
(put / read a batch / ack) without its flaws.

* ``append`` commits before it returns (``synchronous=FULL`` by default: the
  event survives a power cut, not only a crash), and assigns ``seq`` from an
  AUTOINCREMENT key, so numbers are never reused, even after the rows are gone.
* ``read_batch`` always reads ``ORDER BY seq``: delivery after an outage is in
  the order events happened.
* ``ack`` deletes only what the broker acknowledged.
* The spool is bounded: telemetry is dropped oldest first when it is full;
  evidence never is — the spool then reports ``overfull`` so the agent raises an
  alert and a person can act. The bound holds for the files too: the WAL is
  checkpointed often enough and truncated, and freed pages go back to the disk
  (incremental auto-vacuum) once the spool has drained.
* A full disk stops appends, never delivery: a reserve file (``disk_reserve.py``)
  is given back the moment a write fails for space, so acknowledgements and the
  session counter still commit; an append that cannot be stored raises
  ``DiskFull`` and is counted (``disk_full`` in ``depth()``), and the spool takes
  its reserve back by itself when space returns (``SpaceGuard``).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from examroom.agent.disk_reserve import SpaceGuard, out_of_space
from examroom.agent.events import Event, is_evidence, iso_now
from examroom.agent.spool_files import SpoolFiles

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL,
    ts       TEXT NOT NULL,
    created  REAL NOT NULL,
    kind     TEXT NOT NULL,
    session  INTEGER NOT NULL,
    live     INTEGER NOT NULL,
    evidence INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    data     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_droppable ON events (evidence, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_INSERT = ("INSERT INTO events (id, ts, created, kind, session, live, evidence, size, data)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


class SpoolClosed(RuntimeError):
    pass


MIN_RESERVE = 256 * 1024


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 64 * 1024 * 1024,
                 sync: str = "full", on_drop: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.sync = sync
        self.on_drop = on_drop  # told the kind of every event dropped or refused (metrics)
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._bytes = 0
        self._count = 0
        self.last_seq = 0  # the newest committed seq: a reader at it has nothing to read
        self.dropped: Counter[str] = Counter()
        self.overfull = False
        self._files = SpoolFiles(self.path, max_bytes)
        # room for a whole WAL and the pages a checkpoint adds to the database: what
        # delivery writes between two checkpoints (16 MiB at most, 8 MiB by default)
        self._space = SpaceGuard(self.path, max(2 * self._files.wal_pages * self._files.page, MIN_RESERVE))

    @property
    def disk_full(self) -> bool:
        return self._space.full

    @property
    def unstored(self) -> int:
        """Appends refused for want of disk space."""
        return self._space.unstored

    def open(self) -> None:
        self._files.create_private()
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._files.configure(db)
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.executescript(_SCHEMA)
        self._space.open()
        self._bytes, self._count = db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM events").fetchone()
        self.overfull = self._bytes > self.max_bytes  # still true after a restart
        self.last_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self._db = db
        # Reads go through their own connection: in WAL mode a reader sees every committed
        # event without waiting for the writer, so the sender never queues behind an
        # append's fsync (that wait halved throughput).
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)

    def close(self) -> None:
        with self._lock, self._read_lock:
            for db in (self._db, self._reader):
                if db is not None:
                    db.close()
            self._db = self._reader = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolClosed("spool is not open")
        return self._db

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error: one failed write (a full disk)
        must not leave the connection inside a transaction that refuses every later event."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def next_session(self) -> int:
        """Connection sessions are numbered for the aggregator to tell a late Will from now."""
        def bump() -> int:
            with self._transaction() as db:
                row = db.execute("SELECT value FROM meta WHERE key='session'").fetchone()
                n = int(row[0]) + 1 if row else 1
                db.execute("INSERT OR REPLACE INTO meta VALUES ('session', ?)", (str(n),))
            return n
        with self._lock:
            return self._space.retrying(self._conn(), bump)

    def check_space(self) -> bool:
        """Take the reserve back when space has returned; True when appends are possible.
        The agent asks on every heartbeat, so recovery needs no person and no append."""
        with self._lock:
            return self._space.recover()

    def last_session(self) -> int:
        return int(self.get_meta("session", "0") or 0)

    # -- events -------------------------------------------------------------
    def append(self, kind: str, data: dict[str, Any], session: int, live: bool,
               now: float | None = None) -> Event | None:
        """Commit one event. Returns None only for telemetry refused because the spool is full."""
        created = time.time() if now is None else now
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        evidence = is_evidence(kind)
        size = len(body.encode()) + len(kind) + 120  # bytes (Chinese text is 3 a character) + envelope
        eid = str(uuid.uuid4())
        ts = iso_now(created)
        row = (eid, ts, created, kind, session, int(live), int(evidence), size, body)
        with self._lock:
            self._space.admit()
            gone: list[tuple[int, str, int]] = []
            refused = False
            try:
                if self._bytes + size <= self.max_bytes:
                    # room enough: one statement is its own transaction, with the same fsync;
                    # BEGIN/COMMIT around it cost as much again in Python and SQLite
                    cur = self._conn().execute(_INSERT, row)
                    after = self._bytes + size
                else:
                    with self._transaction() as db:
                        gone = self._drop_telemetry(db, self._bytes + size - self.max_bytes)
                        after = self._bytes - sum(g[2] for g in gone) + size
                        refused = after > self.max_bytes and not evidence
                        if not refused:
                            cur = db.execute(_INSERT, row)
            except sqlite3.Error as e:
                if not out_of_space(e):
                    raise
                self._space.went_full(self._conn())
                raise self._space.refuse() from None
            # counters change only once the transaction is committed
            for _, gone_kind, gone_size in gone:
                self._dropped(gone_kind)
                self._bytes -= gone_size
                self._count -= 1
            if refused:
                self._dropped(kind)
                return None
            if after > self.max_bytes and not self.overfull:
                log.error("spool %s is full of undelivered evidence (%d bytes > max_bytes %d): "
                          "evidence is kept beyond the bound; restore the network or free space",
                          self.path, after, self.max_bytes)
                self.overfull = True
            self._bytes += size
            self._count += 1
            self.last_seq = cur.lastrowid
        return Event(cur.lastrowid, eid, ts, kind, session, body, live, size)

    def _dropped(self, kind: str) -> None:
        self.dropped[kind] += 1
        if self.on_drop is not None:
            self.on_drop(kind)

    @staticmethod
    def _drop_telemetry(db: sqlite3.Connection, need: int) -> list[tuple[int, str, int]]:
        """Delete the oldest telemetry until ``need`` bytes are free; returns what went."""
        gone: list[tuple[int, str, int]] = []
        freed = 0
        for seq, kind, size in db.execute(
                "SELECT seq, kind, size FROM events WHERE evidence=0 ORDER BY seq"):
            if freed >= need:
                break
            freed += size
            gone.append((seq, kind, size))
        db.executemany("DELETE FROM events WHERE seq=?", ((g[0],) for g in gone))
        return gone

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise SpoolClosed("spool is not open")
        return self._reader

    def read_batch(self, after_seq: int = 0, limit: int = 100) -> list[Event]:
        with self._read_lock:
            rows = self._read().execute(
                "SELECT seq, id, ts, kind, session, data, live, size FROM events"
                " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [Event(s, i, t, k, se, d, bool(lv), sz)
                for s, i, t, k, se, d, lv, sz in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._lock:
            db = self._conn()

            def delete() -> tuple[int, int]:
                with self._transaction():
                    freed, n = 0, 0
                    for i in range(0, len(seqs), 500):
                        chunk = seqs[i:i + 500]
                        marks = ",".join("?" * len(chunk))
                        got = db.execute(f"SELECT COALESCE(SUM(size),0), COUNT(*) FROM events "
                                         f"WHERE seq IN ({marks})", chunk).fetchone()
                        db.execute(f"DELETE FROM events WHERE seq IN ({marks})", chunk)
                        freed += got[0]
                        n += got[1]
                return freed, n

            # An ack lost to a power cut only means the event is sent again (the
            # aggregator de-duplicates by id), so deletes skip the fsync that
            # appends pay; the next append's fsync makes them durable anyway.
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                freed, n = self._space.retrying(db, delete)
            finally:
                db.execute(f"PRAGMA synchronous={self.sync.upper()}")
            self._bytes -= freed
            self._count -= n
            if self._bytes <= self.max_bytes:
                self.overfull = False
            if self._count == 0:
                self._files.shrink(db)
        return n

    def file_bytes(self) -> int:
        """What the spool takes on disk: the database and its WAL (not the reserve)."""
        return self._files.size()

    @property
    def pending(self) -> int:
        """Events not yet acknowledged, from the counter: no query."""
        return self._count

    def depth(self) -> dict[str, Any]:
        with self._read_lock:
            oldest = self._read().execute(
                "SELECT created FROM events ORDER BY seq LIMIT 1").fetchone()
        with self._lock:
            count, size = self._count, self._bytes
        return {"events": count, "bytes": size,
                "oldest_age_s": round(time.time() - oldest[0], 3) if oldest else 0.0,
                "overfull": self.overfull, "dropped": dict(self.dropped),
                "disk_full": self.disk_full, "unstored": self.unstored}
