"""A serial CCID reader (Gemalto GemPC Twin) played by the test over a pseudo-terminal.

pcscd drives it with the real CCID driver (libccid's ``libccidtwin.so``), so a
test can do what vpcd cannot: pull the reader's cable while pcscd keeps running.
A serial reader cannot tell pcscd it left; it stops answering, the driver's
status poll times out (3 s), and pcscd marks the reader UNAVAILABLE until it
answers again. (pcscd 1.9.9 built with libudev never adds or removes a serial
reader after start: ``pcscd --hotplug`` is a no-op for them, and vpcd's readers
always answer.)

Wire format (libccid ``ccid_serial.c``): SYNC 0x03, CTRL 0x06 (ACK), a CCID
message (10-byte header: type, data length little-endian, slot, sequence, three
message-specific bytes; then the data), and an LRC, the XOR of every byte before
it. A GemPC Twin echoes each command frame before its answer. The card talks T=0
at the TPDU level: an XfrBlock carries the APDU and its answer the response.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import tty
from typing import Protocol

SYNC, ACK = 0x03, 0x06
HEADER = struct.Struct("<BIBBBBB")   # CCID message header
MAX_DATA = 271                       # the driver's dwMaxCCIDMessageLength for this reader
FIRMWARE = b"GemTwin V1.00 (test)"   # answer to the "get firmware" escape the driver sends first
T0_ATR = bytes.fromhex("3B021450")   # T=0 only: the driver then sends APDUs as they are
# CCID bStatus: ICC status in bits 0-1, command failed in bit 6; bError 0xFE: ICC mute.
ICC_ACTIVE, ICC_INACTIVE, ICC_ABSENT, FAILED, ICC_MUTE = 0, 1, 2, 0x40, 0xFE


class Card(Protocol):
    """What the reader needs of a card (``tests.vcard.VirtualCard`` is one)."""

    atr: bytes

    def answer(self, apdu: bytes) -> bytes: ...


def _lrc(data: bytes) -> int:
    lrc = 0
    for byte in data:
        lrc ^= byte
    return lrc


def _frame(message: bytes) -> bytes:
    body = bytes([SYNC, ACK]) + message
    return body + bytes([_lrc(body)])


class GemPcTwin:
    """The reader on the far end of a pty; ``path`` goes into pcscd's reader.conf."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugged = True
        self._card: Card | None = None
        self._powered = False
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.path = ""

    def start(self) -> GemPcTwin:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # held open so the line lives across pcscd restarts
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="gempc-twin", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            os.close(fd)

    def reader_conf(self, name: str = "GemPC Twin") -> str:
        return (f'FRIENDLYNAME "{name}"\nDEVICENAME {self.path}:GemPCTwin\n'
                "LIBPATH /usr/lib/pcsc/drivers/serial/libccidtwin.so\n")

    def unplug(self) -> None:
        """The cable is pulled: whatever the host sends is lost, nothing comes back."""
        with self._lock:
            self._plugged = False

    def plug(self) -> None:
        with self._lock:
            self._plugged = True

    def insert(self, card: Card) -> None:
        with self._lock:
            self._card, self._powered = card, False

    def remove(self) -> None:
        with self._lock:
            self._card, self._powered = None, False

    def _serve(self) -> None:
        buffer = b""
        while True:
            ready, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                return  # the line is gone (the test is closing)
            with self._lock:
                plugged = self._plugged
            buffer = buffer + chunk if plugged else b""  # unplugged: bytes fall on the floor
            buffer = self._answer_frames(buffer)

    def _answer_frames(self, buffer: bytes) -> bytes:
        """Answers every whole frame at the front; resynchronises past bytes that are none."""
        while True:
            start = buffer.find(bytes([SYNC, ACK]))
            if start < 0:
                return buffer[-1:]  # a lone SYNC may be the start of the next frame
            buffer = buffer[start:]
            if len(buffer) < 2 + HEADER.size:
                return buffer
            (length,) = struct.unpack_from("<I", buffer, 3)
            if length > MAX_DATA:
                buffer = buffer[1:]  # not a frame start (half a frame cut by a plug-in)
                continue
            total = 2 + HEADER.size + length + 1
            if len(buffer) < total:
                return buffer
            frame, rest = buffer[:total], buffer[total:]
            if _lrc(frame) != 0:
                buffer = buffer[1:]
                continue
            os.write(self._master, frame + _frame(self._respond(frame[2:-1])))  # echo, answer
            buffer = rest

    def _respond(self, message: bytes) -> bytes:
        kind, _, slot, seq, b7, _, _ = HEADER.unpack_from(message)
        data = message[HEADER.size:]
        with self._lock:
            card = self._card
            if kind == 0x62 and card is not None:      # PC_to_RDR_IccPowerOn
                self._powered = True
            elif kind == 0x63:                         # PC_to_RDR_IccPowerOff
                self._powered = False
            icc = ICC_ABSENT if card is None else ICC_ACTIVE if self._powered else ICC_INACTIVE

        def reply(kind: int, payload: bytes = b"", status: int = icc, error: int = 0,
                  last: int = 0) -> bytes:
            return HEADER.pack(kind, len(payload), slot, seq, status, error, last) + payload

        if kind == 0x6B:                               # PC_to_RDR_Escape
            return reply(0x83, FIRMWARE if data == b"\x02" else b"")
        if kind in (0x65, 0x63):                       # GetSlotStatus, IccPowerOff
            return reply(0x81)
        if kind == 0x61:                               # SetParameters: accept them as sent
            return reply(0x82, data, last=b7)
        if kind in (0x62, 0x6F):                       # IccPowerOn, XfrBlock
            if card is None:
                return reply(0x80, status=FAILED | ICC_ABSENT, error=ICC_MUTE)
            return reply(0x80, card.atr if kind == 0x62 else card.answer(data))
        return reply(0x81, status=FAILED | icc)        # "command not supported" (bError 0)
