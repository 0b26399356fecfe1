"""Server-sent events for the board: every open page gets each change once, at once.

The aggregator's writer thread only drops the set of changed rooms into a queue
(``Hub.changed`` never blocks: the store's commits must not wait for a browser).
One publisher thread turns the changes into one update message and hands the
same bytes to every client's queue; each client's HTTP thread writes its own
queue to its socket. A client that cannot keep up (its queue full: a laptop
asleep) is dropped; its browser reconnects and starts again from a snapshot.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # a comment this often keeps proxies and the browser from closing an idle stream
UPDATE_EVERY_S = 0.25  # a board's update rate at most: well inside the 2 s a change may take to show
IDLE_CHECK_S = 1.0  # the site's log (pushes, joint tests) is looked at this often without a change
CLIENT_BACKLOG = 256
RETRY_MS = 1000  # how soon a browser reconnects after the stream broke


def frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE message (json.dumps writes no newline, so one data line is enough)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
HELLO = f"retry: {RETRY_MS}\n\n".encode()


class Client:
    """One open stream: what is still to be written to it."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue(CLIENT_BACKLOG)
        self.closed = threading.Event()

    def next(self, timeout: float | None = None) -> bytes | None:
        """The next message, the keep-alive after ``timeout`` (``KEEPALIVE_S``), or None: the stream is to end."""
        if self.closed.is_set():
            return None
        try:
            item = self.queue.get(timeout=KEEPALIVE_S if timeout is None else timeout)
        except queue.Empty:
            return KEEPALIVE
        return None if self.closed.is_set() else item

    def close(self) -> None:
        self.closed.set()
        try:
            self.queue.put_nowait(None)  # wakes its thread if it waits
        except queue.Full:
            pass  # it does not wait: it sees ``closed`` before its next message


class Hub:
    """The clients and the publisher; ``build`` makes an update from changed rooms (None: nothing new)."""

    def __init__(self, build: Callable[[set[str]], dict[str, Any] | None]) -> None:
        self.build = build
        self._changes: queue.Queue[set[str]] = queue.Queue()
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._publish_forever, name="board-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changes.put(set())
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            clients, self._clients = self._clients, set()
        for c in clients:
            c.close()

    def changed(self, rooms: set[str]) -> None:
        """Called by the aggregator's writer after a commit: queue and return."""
        self._changes.put(set(rooms))

    def connect(self) -> Client:
        c = Client()
        with self._lock:
            self._clients.add(c)
        return c

    def disconnect(self, c: Client) -> None:
        with self._lock:
            self._clients.discard(c)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def _take_queued(self) -> set[str]:
        rooms: set[str] = set()
        while True:
            try:
                rooms |= self._changes.get_nowait()
            except queue.Empty:
                return rooms

    def _take(self) -> set[str]:
        """The rooms changed since the last update (every change queued so far, merged)."""
        try:
            rooms = set(self._changes.get(timeout=IDLE_CHECK_S))
        except queue.Empty:
            return set()
        return rooms | self._take_queued()

    def _publish_forever(self) -> None:
        """One update per UPDATE_EVERY_S at most, the changes of the meantime merged: 1,000 rooms
        heartbeating make a change every few milliseconds, a board needs one every fraction of a
        second. Without a board open nothing is built (a new one starts from a snapshot)."""
        while not self._stop.is_set():
            rooms = self._take()
            if self._stop.is_set():
                return
            if not self.clients:
                continue
            self._stop.wait(UPDATE_EVERY_S)
            rooms |= self._take_queued()
            try:
                update = self.build(rooms)
            except Exception:
                log.exception("board update failed; the next change tries again")
                continue
            if update is not None:
                self._send(frame("update", update))

    def _send(self, data: bytes) -> None:
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.queue.put_nowait(data)
            except queue.Full:
                log.warning("a board client fell %d messages behind: dropped (it reconnects)", CLIENT_BACKLOG)
                self.disconnect(c)
                c.close()
