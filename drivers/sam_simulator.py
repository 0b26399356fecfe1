"""A second-generation ID card reader played in software, on the reader's end of a serial line.

It speaks the same frames as the real reader (through ``sam_protocol``) over a
file descriptor, normally the master side of a pseudo-terminal whose slave the
real driver opens with pyserial. Tests and the ``sim`` backend therefore run
the driver's whole serial path, byte for byte, with no reader attached.
"""
from __future__ import annotations

import errno
import os
import select
import threading
from collections import Counter

from drivers.events import Identity
from drivers.sam_protocol import (
    BAD_CHECKSUM, BAD_LENGTH, FIND_CARD, KNOWN_COMMANDS, SAM_ID, SAM_STATUS,
    SELECT_CARD, SHORT_FRAME, SW_BAD_CHECKSUM, SW_BAD_COMMAND, SW_BAD_LENGTH, SW_CARD_FOUND,
    SW_FIND_FAILED, SW_OK, SW_READ_FAILED, SW_SAM_FAULT, SW_SELECT_FAILED, Command, Refusal, Reply,
    command_decoder, encode_identity, encode_reply,
)

DEFAULT_SAM_ID = bytes.fromhex("0501000020170817000000010000002A")
_WAKE_S = 0.05  # how often the serving thread looks at its stop flag
# A card lifted off the reader stays away for at least this many looks (find commands), more
# than any driver's removal debounce: a scripted "remove, put another" is then seen as two
# placements however fast the script runs, as it would be by hand.
LIFT_FINDS = 3

# What a reader answers to a frame it could not decode (plain noise gets no answer).
_REFUSAL_STATUS = {BAD_CHECKSUM: SW_BAD_CHECKSUM, BAD_LENGTH: SW_BAD_LENGTH, SHORT_FRAME: SW_BAD_LENGTH}


class SamReaderSimulator:
    """Serves reader replies on ``fd`` from a thread. The caller owns (and closes) ``fd``."""

    def __init__(self, fd: int, sam_id: bytes = DEFAULT_SAM_ID) -> None:
        self._fd = fd
        self._sam_id = sam_id
        self._lock = threading.Condition()
        self._card: Identity | None = None
        self._away = 0  # finds still to answer "no card" because a card was just lifted
        self._garbage = b""
        self._corrupt_next = False
        self.sam_ok = True
        self.served: Counter[str] = Counter()  # command name (or "refused") -> times answered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refusals: list[Refusal] = []
        self._decoder = command_decoder(self._refusals.append)

    # -- what the outside world does to the reader -------------------------------------

    @property
    def card(self) -> Identity | None:
        with self._lock:
            return self._card

    def set_card(self, identity: Identity | None) -> None:
        """Put a card on the reader (``None`` takes it away); a card already there is lifted first."""
        with self._lock:
            if self._card is not None:
                self._away = LIFT_FINDS
            self._card = identity

    def inject_garbage(self, junk: bytes) -> None:
        """Line noise: ``junk`` goes out just before the next reply."""
        with self._lock:
            self._garbage += junk

    def corrupt_next_reply(self) -> None:
        """The next reply leaves with a wrong checksum, as after a flipped bit."""
        with self._lock:
            self._corrupt_next = True

    def wait_served(self, name: str, count: int, timeout: float) -> bool:
        """Block until command ``name`` has been answered ``count`` times in all."""
        with self._lock:
            return self._lock.wait_for(lambda: self.served[name] >= count, timeout)

    # -- serving -------------------------------------------------------------------------

    def start(self) -> "SamReaderSimulator":
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="sam-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def answer(self, command: Command) -> Reply:
        """The reply a reader gives to ``command`` with the current card and SAM."""
        code = command.code
        if code not in KNOWN_COMMANDS:
            return Reply(SW_BAD_COMMAND)
        if command.data:
            return Reply(SW_BAD_LENGTH)
        if not self.sam_ok:
            return Reply(SW_SAM_FAULT)
        with self._lock:
            if code == FIND_CARD and self._away:
                self._away -= 1
            card = None if self._away else self._card
        if code == SAM_STATUS:
            return Reply(SW_OK)
        if code == SAM_ID:
            return Reply(SW_OK, self._sam_id)
        if code == FIND_CARD:
            return Reply(SW_CARD_FOUND, bytes(4)) if card else Reply(SW_FIND_FAILED)
        if code == SELECT_CARD:
            return Reply(SW_OK, bytes(8)) if card else Reply(SW_SELECT_FAILED)
        # READ_TEXT_PHOTO, the last known command
        return Reply(SW_OK, encode_identity(card)) if card else Reply(SW_READ_FAILED)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], _WAKE_S)
                if not ready:
                    continue
                chunk = os.read(self._fd, 4096)
            except OSError as exc:
                # EIO: nobody holds the other end open yet (or any more); wait for one.
                if exc.errno not in (errno.EIO, errno.EAGAIN):
                    return
                self._stop.wait(_WAKE_S)
                continue
            for command in self._decoder.feed(chunk):
                self._reply(KNOWN_COMMANDS.get(command.code, "unknown"), self.answer(command))
            refusals = self._refusals.copy()
            self._refusals.clear()
            for refusal in refusals:
                if refusal.reason in _REFUSAL_STATUS:
                    self._reply("refused", Reply(_REFUSAL_STATUS[refusal.reason]))

    def _reply(self, name: str, reply: Reply) -> None:
        frame = encode_reply(reply)
        with self._lock:
            if self._corrupt_next:
                frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
                self._corrupt_next = False
            frame, self._garbage = self._garbage + frame, b""
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            return  # the other end went away mid-reply: so does a real reader's answer
        with self._lock:
            self.served[name] += 1
            self._lock.notify_all()
