"""Space held back on the spool's filesystem so delivery goes on when the disk fills.

With the disk full, staying connected needs the acknowledgement deletes and
reconnecting needs the session counter: both are SQLite writes. Without room for
them the uplink reconnected every second for ever and nothing already spooled
was delivered. So the spool keeps a pre-allocated file beside it and deletes it
the moment a write fails for space: what is spooled drains, and when space
returns the file is made again.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


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
