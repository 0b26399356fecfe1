"""A contactless card played by the test itself, as a TCP client of vpcd.

Debian's vicc is broken as packaged and crashes on ``FF CA``, so the tests
speak vpcd's wire format directly: every message is a 2-byte big-endian
length then the payload; a 1-byte payload is a control message from vpcd
(0 off, 1 on, 2 reset, 4 "send your ATR"), anything longer is a command APDU
answered by a response APDU. The card counts as inserted while the TCP
connection is open, so ``insert()``/``remove()`` are connect/close.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 36096  # reader "Virtual PCD 00 00"; 36097 is "00 01"
GET_UID = bytes.fromhex("FFCA000000")
SW_OK = b"\x90\x00"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"
# A PC/SC-part-3 contactless storage card ATR: pcscd parses ATRs, so it must be well formed.
DEFAULT_ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4


class VirtualCard:
    """One card with chosen answers: ``answers`` maps a command APDU to its response data (+9000)."""

    def __init__(self, uid: bytes, answers: dict[bytes, bytes] | None = None,
                 atr: bytes = DEFAULT_ATR, port: int = VPCD_PORT) -> None:
        self.uid = uid
        self.atr = atr
        self.port = port
        self.answers = {GET_UID: uid, **(answers or {})}
        self.apdus: list[bytes] = []  # every command APDU received, for assertions
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def insert(self, timeout: float = 5.0) -> None:
        """Connect to vpcd, retrying while pcscd (which hosts vpcd) is still coming up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((VPCD_HOST, self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                        name=f"vcard-{self.uid.hex()}")
        self._thread.start()

    def remove(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # vpcd may have gone first (pcscd killed)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def answer(self, apdu: bytes) -> bytes:
        self.apdus.append(apdu)
        data = self.answers.get(apdu)
        return SW_INS_NOT_SUPPORTED if data is None else data + SW_OK

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = recv_exact(sock, 2)
                if header is None:
                    return
                (length,) = struct.unpack(">H", header)
                payload = recv_exact(sock, length)
                if payload is None:
                    return
                if length == 1:
                    if payload[0] == CTRL_ATR:
                        _send(sock, self.atr)
                    continue  # off/on/reset need no answer
                _send(sock, self.answer(payload))
        except OSError:
            return  # our own remove() closed the socket under us


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None once the peer has closed."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
