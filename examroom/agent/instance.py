"""One agent per spool, started whole or not at all.

A second ``examroom-agent run`` on the same config used to get half-way up before it
noticed the first: it opened the spool and the hardware and took over the MQTT client
id (the broker then dropped the live agent: the aggregator saw online/offline flapping).
The lock below is taken before anything is opened and is held for the life of the
process. flock, not a pid file: the kernel releases it when the holder dies, even by
SIGKILL, so there is never a stale lock to clean up after a crash.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another agent holds this spool or answers on this control socket (CLI exit 3)."""


class StartFailed(RuntimeError):
    """Starting failed on something outside the config (disk, port, I/O); what had started
    is stopped again. CLI exit 1: such causes can clear up, so systemd retries."""


class InstanceLock:
    """An exclusive, non-blocking flock on ``<spool>.lock`` (mode 0600, next to the spool).

    The file is left in place on exit: unlinking a lock file races with the next agent
    opening it (two agents could then each lock a different inode)."""

    def __init__(self, spool_path: str) -> None:
        self.spool_path = spool_path
        self.path = Path(f"{spool_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> "InstanceLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StartFailed(f"cannot create the lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another examroom agent (pid {pid}) is already running "
                                 f"on {self.spool_path}") from None
        except OSError as e:
            os.close(fd)
            raise StartFailed(f"cannot lock {self.path}: {e.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # a lock file made under a wider umask does not stay so
        except PermissionError:
            pass  # another user's file that we may write: its mode is its owner's business
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message a second agent prints
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
