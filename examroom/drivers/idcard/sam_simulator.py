"""A second-generation ID card reader played in software, on the reader's end of a serial line.

It speaks the same frames as the real reader (through ``sam_protocol``) over a
file descriptor, normally the master side of a pseudo-terminal whose slave the
real driver opens with pyserial. Tests and the ``sim`` backend therefore run
the driver's whole serial path, byte for byte, with no reader attached.

Faults (``inject``) act out what a real line does to a reply: cut it short,
flip a bit, precede it with noise, deliver it late, or lose it. They exist so
tests can show, over a real pty, that the driver refuses and counts each one
and still reads the next card.
"""
from __future__ import annotations

import errno
import os
import select
import threading
from collections import Counter, deque
from dataclasses import dataclass

from examroom.drivers.events import Identity
from examroom.drivers.idcard.sam_protocol import (
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

# What can happen to one reply on its way to the host.
TRUNCATE = "truncate"      # only its first bytes leave (reader reset mid-reply, loose wire)
CORRUPT = "bad_checksum"   # one bit flipped: the checksum no longer matches
NOISE = "garbage"          # line noise just before the frame
SLOW = "slow"              # it leaves after a delay, longer than the host waits
DROP = "no_reply"          # the command is never answered
FAULTS = (TRUNCATE, CORRUPT, NOISE, SLOW, DROP)


@dataclass(frozen=True)
class Fault:
    """One fault for one reply: the next reply to ``command`` (a ``KNOWN_COMMANDS`` name), or
    to anything when ``command`` is None."""

    kind: str
    command: str | None = None
    keep: int | None = None    # TRUNCATE: bytes that leave; None: half the frame
    delay_s: float = 0.0       # SLOW
    junk: bytes = b"\x00\xff\x13\x37garbage"  # NOISE

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {', '.join(FAULTS)}")
        if self.command is not None and self.command not in KNOWN_COMMANDS.values():
            raise ValueError(f"unknown command {self.command!r}; expected one of "
                             f"{', '.join(KNOWN_COMMANDS.values())}")
        if self.kind == SLOW and self.delay_s <= 0:
            raise ValueError("a slow reply needs delay_s > 0")
        if self.keep is not None and self.keep < 0:
            raise ValueError("keep must be >= 0 bytes")
        if self.kind == NOISE and not self.junk:
            raise ValueError("garbage needs at least one byte")


class SamReaderSimulator:
    """Serves reader replies on ``fd`` from a thread. The caller owns (and closes) ``fd``."""

    def __init__(self, fd: int, sam_id: bytes = DEFAULT_SAM_ID) -> None:
        self._fd = fd
        self._sam_id = sam_id
        self._lock = threading.Condition()
        self._card: Identity | None = None
        self._away = 0  # finds still to answer "no card" because a card was just lifted
        self._faults: deque[Fault] = deque()
        self.sam_ok = True
        self.received: Counter[str] = Counter()  # command name -> times asked (answer already made)
        self.served: Counter[str] = Counter()  # command name (or "refused") -> times answered
        self.faulted: Counter[str] = Counter()  # fault kind -> times done (its bytes are out)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refusals: list[Refusal] = []
        self._decoder = command_decoder(self._refusals.append)

    # -- what the outside world does to the reader -------------------------------------

    @property
    def card(self) -> Identity | None:
        with self._lock:
            return self._card

    def set_card(self, identity: Identity | None, lift_finds: int = LIFT_FINDS) -> None:
        """Put a card on the reader (``None`` takes it away); a card already there is lifted
        first, and stays away ``lift_finds`` looks (1: a quick swap, one look sees no card)."""
        with self._lock:
            if self._card is not None:
                self._away = lift_finds
            self._card = identity

    def inject(self, fault: Fault) -> None:
        """Queue ``fault``; faults apply in order, each to one reply it matches."""
        with self._lock:
            self._faults.append(fault)

    def wait_received(self, name: str, count: int, timeout: float) -> bool:
        """Block until command ``name`` has been asked ``count`` times (its answer is made, not
        necessarily sent: a slow reply is then on its way)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.received[name] >= count, timeout)

    def wait_served(self, name: str, count: int, timeout: float) -> bool:
        """Block until command ``name`` has been answered ``count`` times in all."""
        with self._lock:
            return self._lock.wait_for(lambda: self.served[name] >= count, timeout)

    def wait_faulted(self, kind: str, count: int, timeout: float) -> bool:
        """Block until fault ``kind`` has been done ``count`` times in all."""
        with self._lock:
            return self._lock.wait_for(lambda: self.faulted[kind] >= count, timeout)

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
            away = self._away  # this look is one of the ``lift_finds`` that see no card
            if code == FIND_CARD and self._away:
                self._away -= 1
            card = None if away else self._card
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
                name, reply = KNOWN_COMMANDS.get(command.code, "unknown"), self.answer(command)
                with self._lock:
                    self.received[name] += 1
                    self._lock.notify_all()
                self._reply(name, reply)
            refusals = self._refusals.copy()
            self._refusals.clear()
            for refusal in refusals:
                if refusal.reason in _REFUSAL_STATUS:
                    self._reply("refused", Reply(_REFUSAL_STATUS[refusal.reason]))

    def _take_fault(self, name: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.command in (None, name):
                    self._faults.remove(fault)
                    return fault
        return None

    def _reply(self, name: str, reply: Reply) -> None:
        frame = encode_reply(reply)
        fault = self._take_fault(name)
        if fault is not None:
            if fault.kind == DROP:
                self._count(fault)
                return
            if fault.kind == SLOW and self._stop.wait(fault.delay_s):
                return  # stopped meanwhile: the reply never leaves
            frame = _damage(frame, fault)
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            return  # the other end went away mid-reply: so does a real reader's answer
        with self._lock:
            self.served[name] += 1
            self._lock.notify_all()
        self._count(fault)

    def _count(self, fault: Fault | None) -> None:
        if fault is not None:
            with self._lock:
                self.faulted[fault.kind] += 1
                self._lock.notify_all()


def _damage(frame: bytes, fault: Fault) -> bytes:
    """``frame`` as ``fault`` leaves it on the line (a slow reply leaves whole)."""
    if fault.kind == TRUNCATE:
        return frame[:len(frame) // 2 if fault.keep is None else fault.keep]
    if fault.kind == CORRUPT:
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if fault.kind == NOISE:
        return fault.junk + frame
    return frame
