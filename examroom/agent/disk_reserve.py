"""Space held back on the spool's filesystem so delivery goes on when the disk fills.

With the disk full, staying connected needs the acknowledgement deletes and
reconnecting needs the session counter: both are SQLite writes. Without room for
them the uplink reconnected every second for ever and nothing already spooled
was delivered. So the spool keeps a pre-allocated file beside it and deletes it
the moment a write fails for space: what is spooled drains, and when space
returns the file is made again.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class DiskReserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def hold(self) -> bool:
        """Allocate the reserve (blocks really taken, not a sparse file); False when the disk
        has not the room for it and a margin as large again."""
        if self.held:
            return True
        if self.free_bytes() < 2 * self.size:
            return False
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.fsync(fd)
        except OSError as e:
            log.warning("could not reserve %d bytes in %s: %s", self.size, self.path, e)
            os.close(fd)
            self.release()
            return False
        os.close(fd)
        return True

    def release(self) -> bool:
        """Give the reserve back to the filesystem; True if there was one to give."""
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False


class DiskFull(OSError):
    """An event could not be stored: the spool's filesystem is full. Nothing was written."""

    def __init__(self, path: Path, refused: int) -> None:
        super().__init__(errno.ENOSPC, f"the disk of the spool {path} is full: the event was not stored "
                                       f"({refused} refused so far); free space there")


def out_of_space(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)


class SpaceGuard:
    """The spool's full-disk state: appends stop, the writes delivery needs go on, and
    the reserve comes back by itself. The spool calls it under its own lock."""

    def __init__(self, spool_path: Path, reserve_size: int) -> None:
        self.spool_path = spool_path
        self.reserve = DiskReserve(Path(f"{spool_path}.reserve"), reserve_size)
        self.full = False
        self.unstored = 0  # appends refused for want of disk space

    def open(self) -> None:
        if not self.reserve.hold():
            self.full = True
            log.error("spool %s: no room for its %d-byte reserve: the disk is (nearly) full",
                      self.spool_path, self.reserve.size)

    def admit(self) -> None:
        """Before an append: with the disk full and the reserve not back, an append would
        take the reserve's place, so it is refused."""
        if self.full and not self.reserve.hold():
            raise self.refuse()
        self.full = False

    def refuse(self) -> DiskFull:
        self.unstored += 1
        return DiskFull(self.spool_path, self.unstored)

    def went_full(self, db: sqlite3.Connection) -> None:
        """A write failed for space: give the reserve back and fold the WAL into the database."""
        if not self.full:
            log.error("spool %s: the disk is full; appends are refused until space returns, "
                      "delivery of what is spooled goes on", self.spool_path)
        self.full = True
        if self.reserve.release():
            log.warning("spool %s: reserve of %d bytes given back so delivery can go on",
                        self.spool_path, self.reserve.size)
        try:  # the WAL back into the database and truncated: later writes reuse its space
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("spool %s: checkpoint on a full disk failed: %s", self.spool_path, e)

    def retrying(self, db: sqlite3.Connection, write: Callable[[], T]) -> T:
        """A write delivery depends on (an ack, the session counter): if it fails for space,
        the reserve is given back and it is tried once more."""
        try:
            return write()
        except sqlite3.Error as e:
            if not out_of_space(e):
                raise
            self.went_full(db)
            return write()

    def recover(self) -> bool:
        """Take the reserve back when space has returned; True when appends are possible."""
        if self.full and self.reserve.hold():
            self.full = False
            log.warning("spool %s: disk space is back; appends resume", self.spool_path)
        return not self.full
