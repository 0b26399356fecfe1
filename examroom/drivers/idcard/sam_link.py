"""The serial line to a SAM reader: its port, one command exchanged for its reply, and a tally.

The reader only answers, so whatever the line delivers should be the answer to
the question just asked; often it is not. Bytes that make no good frame are
refused by the decoder; a whole frame that cannot answer the command (a reply
that came after we stopped waiting for it), and whatever was on the line before
we asked, are refused here. Every refusal is counted and handed to the driver
as it happens, so its events keep the line's order. ``exchange`` says in one
``Exchange`` how the exchange went; what that means for the reader (working,
faulty, gone) is the driver's to judge, and the driver logs: nothing here does,
so the whole reader logs under one name.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from examroom.drivers.base import DeviceAbsent
from examroom.drivers.idcard.sam_protocol import (
    BAD_CHECKSUM, BAD_LENGTH, SHORT_FRAME, FrameDecoder, Refusal, Reply, answers, encode_command, reply_decoder,
)

READ_SLICE_S = 0.05   # one serial read blocks at most this long, so deadlines are kept
UNEXPECTED_FRAME = "unexpected_frame"
_MANGLED = (BAD_CHECKSUM, BAD_LENGTH, SHORT_FRAME)  # refusals that mean "our reply, damaged"

# How an exchange went, best first: a frame that could answer wins over a damaged one, and a
# damaged one over a stray (the reader did answer us; the line spoilt it).
ANSWERED = "answered"  # a frame that answers the command; its status may still be an error
DAMAGED = "damaged"    # no answer, but a frame ruined on the line: the reader did reply
STRAY = "stray"        # no answer, but a whole frame with a status this command cannot have
SILENT = "silent"      # nothing that could be an answer before the deadline


@dataclass(frozen=True)
class Exchange:
    """How one command went, decided where its frames were seen, so the driver need not
    piece it together from what the decoder counted on the way."""

    outcome: str
    frame: Reply | None  # the answer (ANSWERED) or the last stray frame (STRAY); else None
    silent_run: int      # exchanges in a row, up to this one, that heard nothing (0 unless SILENT)


class SamLink:
    """One exchange at a time on one port, which the driver opens and closes.

    ``on_refused`` hears every refusal, with True for the first since the last whole reply (a
    noisy line refuses a few frames a second: one of a run is news, the rest are counts).
    ``on_stray`` hears a whole frame that answers some other command, with the command asked.
    The counts cover the driver's life; ``begin`` starts a run of it, not a new tally.
    """

    def __init__(self, on_refused: Callable[[Refusal, bool], None],
                 on_stray: Callable[[Reply, tuple[int, int]], None]) -> None:
        self._on_refused = on_refused
        self._on_stray = on_stray
        self._io = threading.RLock()  # one command/reply exchange at a time on the line
        self._serial: Any = None      # serial.Serial while the port is open
        self._serial_mod: Any = None  # the pyserial module, given by begin()
        self._port = ""               # the port last opened, for the error when it is closed
        self._decoder: FrameDecoder[Reply] = reply_decoder(self.refuse)
        self._count_lock = threading.Lock()  # the counts below: status() reads them from its own thread
        self._refusals: dict[str, int] = {}  # reason -> times
        self._garbage_bytes = 0
        self._timeouts = 0                   # exchanges that got no reply at all in time
        self._silent = 0                     # ... of them in a row
        self._refusing = False               # refusals since the last whole reply

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def begin(self, serial_mod: Any) -> None:
        """Ready for a run of the driver: pyserial to open ports with, and an empty decoder (a
        previous run's half-read bytes belong to no question of this one; a reopened port's,
        within a run, are refused as stale by the next exchange)."""
        self._serial_mod = serial_mod
        self._decoder = reply_decoder(self.refuse)

    def open(self, port: str, baudrate: int) -> None:
        """Raises OSError (pyserial's SerialException is one) when the port cannot be opened."""
        ser = self._serial_mod.Serial(port, baudrate=baudrate, timeout=READ_SLICE_S,
                                      write_timeout=1.0, exclusive=True)
        with self._io:
            self._serial, self._port = ser, port
        with self._count_lock:
            self._silent = 0  # a port just opened has missed nothing yet

    def close(self) -> None:
        with self._io:
            ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except OSError:
                pass  # the device is already gone; nothing left to release

    def counts(self) -> dict[str, Any]:
        """What the line did since the driver was made, as ``status()`` shows it."""
        with self._count_lock:
            return {"garbage_count": sum(self._refusals.values()), "garbage_bytes": self._garbage_bytes,
                    "refused": dict(self._refusals), "timeouts": self._timeouts}

    def refuse(self, refusal: Refusal) -> None:
        """Count a refusal (the decoder's, this link's, or the driver's own) and pass it on."""
        with self._count_lock:
            self._garbage_bytes += refusal.nbytes
            self._refusals[refusal.reason] = self._refusals.get(refusal.reason, 0) + 1
            first, self._refusing = not self._refusing, True
        self._on_refused(refusal, first)

    def exchange(self, code: tuple[int, int], timeout: float) -> Exchange:
        """Send one command and listen for its answer until ``timeout`` has passed. Raises
        DeviceAbsent when the port is closed, OSError when it fails."""
        with self._io:
            ser, decoder = self._serial, self._decoder
            if ser is None:
                raise DeviceAbsent(f"port {self._port} is not open")
            self._discard_stale(ser, decoder)
            ser.write(encode_command(code))
            deadline = time.monotonic() + timeout
            mangled_before = _mangled(decoder)
            reply, stray = self._await_answer(ser, decoder, code, deadline, mangled_before)
            damaged = _mangled(decoder) > mangled_before
        if reply is not None:
            outcome, frame = ANSWERED, reply
        elif damaged:
            outcome, frame = DAMAGED, None
        elif stray is not None:
            outcome, frame = STRAY, stray
        else:
            outcome, frame = SILENT, None
        return Exchange(outcome, frame, self._count(outcome))

    def _count(self, outcome: str) -> int:
        """Count an exchange; returns how many in a row, up to this one, heard nothing."""
        with self._count_lock:
            if outcome == SILENT:
                self._timeouts += 1
                self._silent += 1
            else:  # any frame shows the reader is there; only an answer ends a run of refusals
                self._silent = 0
                if outcome == ANSWERED:
                    self._refusing = False
            return self._silent

    def _await_answer(self, ser: Any, decoder: FrameDecoder[Reply], code: tuple[int, int],
                      deadline: float, mangled_before: int) -> tuple[Reply | None, Reply | None]:
        """(our reply, the last frame refused as no answer to ``code``), listening until one
        comes, the deadline passes or a damaged frame shows our reply was lost."""
        pending: list[Reply] = []
        stray: Reply | None = None
        reply: Reply | None = None
        while reply is None:
            if not pending:
                pending = self._await_frames(ser, decoder, deadline, mangled_before)
                if not pending:
                    break
            frame = pending.pop(0)
            if answers(frame, code):
                reply = frame
            else:
                stray = frame
                self._on_stray(frame, code)
                self.refuse(Refusal(UNEXPECTED_FRAME, frame.size))
        for extra in pending:
            self.refuse(Refusal(UNEXPECTED_FRAME, extra.size))
        return reply, stray

    def _await_frames(self, ser: Any, decoder: FrameDecoder[Reply], deadline: float,
                      mangled_before: int) -> list[Reply]:
        # A damaged frame was our reply: no point waiting on for it.
        while time.monotonic() < deadline and _mangled(decoder) == mangled_before:
            chunk = ser.read(max(1, ser.in_waiting))
            if chunk:
                frames = decoder.feed(chunk)
                if frames:
                    return frames
        return decoder.flush()  # a frame may hide behind a truncated one

    def _discard_stale(self, ser: Any, decoder: FrameDecoder[Reply]) -> None:
        """Whatever is on the line before we ask belongs to no question of ours."""
        stale = ser.read(ser.in_waiting) if ser.in_waiting else b""
        for frame in decoder.feed(stale) + decoder.flush():
            self.refuse(Refusal(UNEXPECTED_FRAME, frame.size))


def _mangled(decoder: FrameDecoder[Reply]) -> int:
    return sum(decoder.refused.get(reason, 0) for reason in _MANGLED)
