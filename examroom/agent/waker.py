"""Wakes the uplink's loop out of its ``select`` when there is something to send."""
from __future__ import annotations

import socket


class Waker:
    """A socket pair: other threads ``wake()``, the loop selects on ``readable`` and ``drain()``s.

    The flag spares a syscall per event while the loop is busy anyway. No wake is
    lost: the loop empties the pair, then clears the flag, then looks at what was
    handed over, so whatever was queued before a skipped send is seen. (Clearing
    first would let a byte sent in between be swallowed with the flag left set:
    every later wake skipped, the loop down to its idle polling.)
    """

    def __init__(self) -> None:
        self.readable: socket.socket | None = None
        self._w: socket.socket | None = None
        self._woken = False

    def open(self) -> None:
        self.readable, self._w = socket.socketpair()
        self.readable.setblocking(False)
        self._w.setblocking(False)

    def close(self) -> None:
        for s in (self.readable, self._w):
            if s is not None:
                s.close()

    def wake(self) -> None:
        if self._woken or self._w is None:
            return
        self._woken = True
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        try:
            assert self.readable is not None
            self.readable.recv(4096)
        except (BlockingIOError, OSError):
            pass
        self._woken = False
