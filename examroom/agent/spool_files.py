"""The spool's files on disk: private to the service, and held near the spool's bound.

By default SQLite let the WAL grow to 4 MB and never shrink, and pages freed by
acknowledgements stayed in the file: a 64 KiB bound left 4.35 MB of files behind.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

WAL_MAX_PAGES = 1000  # SQLite's own auto-checkpoint point


class SpoolFiles:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.page = 4096  # SQLite's default; configure() reads the real one
        self.wal_pages = min(max(max_bytes // 4 // self.page, 16), WAL_MAX_PAGES)

    @property
    def companions(self) -> tuple[Path, Path, Path]:
        return self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")

    def create_private(self) -> None:
        """The spool holds evidence: owner only. The file is made 0600 before SQLite opens
        it, because SQLite gives the -wal and -shm files (which hold the same data) the
        database file's mode when it creates them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for p in self.companions:
            try:
                os.chmod(p, 0o600)
            except OSError:
                pass

    def configure(self, db: sqlite3.Connection) -> None:
        """Pages freed by deletes go back to the disk (incremental auto-vacuum; an older spool
        made without it is converted once), and the WAL is checkpointed every quarter of the
        bound (at most SQLite's 1,000 pages) and truncated to that size."""
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                try:
                    db.execute("VACUUM")  # the setting applies to an existing file only after one
                except sqlite3.OperationalError as e:
                    log.warning("spool %s: could not convert to incremental vacuum: %s", self.path, e)
        db.execute("PRAGMA journal_mode=WAL")
        self.page = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA wal_autocheckpoint={self.wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={self.wal_pages * self.page}")

    def shrink(self, db: sqlite3.Connection) -> None:
        """Drained: give freed pages back and truncate the WAL, when they hold more than a
        quarter of the bound (checked from the file sizes: most drains cost nothing)."""
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal = 0
        free_pages = db.execute("PRAGMA freelist_count").fetchone()[0]
        if wal + free_pages * self.page <= max(self.wal_pages * self.page, 64 * 1024):
            return
        try:
            db.executescript("PRAGMA incremental_vacuum;")  # stepped to the end: execute() frees one page
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:  # a reader mid-read: the next drain tries again
            log.debug("spool %s: shrink postponed: %s", self.path, e)

    def size(self) -> int:
        """What the spool takes on disk: the database and its WAL (not the reserve)."""
        return sum(os.path.getsize(p) for p in self.companions if os.path.exists(p))
