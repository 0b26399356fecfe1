"""The PC/SC driver heals by itself: pcscd crashes and restarts, a reader's cable is pulled.

Against a real pcscd with two readers: vpcd (the test's virtual cards) and a
serial GemPC Twin driven by libccid's real CCID driver over a pty, with the
reader itself played by tests/gempc_twin.py. The serial reader is what lets a
test unplug a reader while pcscd keeps running (vpcd's readers never go away).
What cannot be produced here is a reader leaving pcscd's list under a running
pcscd: only USB hot-plug (udev) does that, and this machine has no USB; the
nearest real case, a pcscd restarted without the reader, is tested instead.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from typing import Any, Iterator

import pytest

from examroom.drivers.base import ABSENT, OK
from examroom.drivers.events import CardPresented, CardRemoved, DeviceStateChanged
from examroom.drivers.pcsc import PCSCD_AWAY, READER_MUTE
from tests.gempc_twin import T0_ATR, GemPcTwin
from tests.pcsc_harness import SOCKET, VPCD_0, VPCD_CONF, WAIT_S, Pcscd, own_pcscd, started
from tests.vcard import VirtualCard, recv_exact

TWIN = "GemPC Twin 00 00"
UNPLUG_S = 12.0  # the CCID driver's status poll times out after 3 s, and pcscd polls every 0.4 s


@pytest.fixture(scope="module")
def twin() -> Iterator[GemPcTwin]:
    reader = GemPcTwin().start()
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def pcscd(twin: GemPcTwin) -> Iterator[Pcscd]:
    yield from own_pcscd(_both(twin), expect=[VPCD_0, TWIN])


def _both(twin: GemPcTwin) -> dict[str, str]:
    return {"vpcd": VPCD_CONF, "twin": twin.reader_conf()}


@pytest.fixture
def daemon(pcscd: Pcscd, twin: GemPcTwin) -> Pcscd:
    """pcscd running with both readers (a failed test may have left it down or changed)."""
    if pcscd.expect != [VPCD_0, TWIN]:
        pcscd.kill()
        pcscd.configure(_both(twin), [VPCD_0, TWIN])
    pcscd.ensure_running()
    return pcscd


@pytest.fixture
def line(daemon: Pcscd, twin: GemPcTwin) -> Iterator[GemPcTwin]:
    """The serial reader plugged in and empty, as pcscd sees it, before and after the test."""
    twin.plug()
    twin.remove()
    _wait_twin_empty()
    yield twin
    twin.plug()
    twin.remove()
    _wait_twin_empty()


def _wait_twin_empty() -> None:
    """Until pcscd reports the serial reader answering with no card (a replug takes ~3 s)."""
    from smartcard import scard
    hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    try:
        states = [(TWIN, scard.SCARD_STATE_UNAWARE)]
        deadline = time.monotonic() + UNPLUG_S
        while time.monotonic() < deadline:
            hr, result = scard.SCardGetStatusChange(context, 1000, states)
            if hr == scard.SCARD_S_SUCCESS:
                if result[0][1] & scard.SCARD_STATE_EMPTY:
                    return
                states = [(r, e & ~scard.SCARD_STATE_CHANGED) for r, e, _ in result]
        pytest.fail(f"{TWIN} not back to empty within {UNPLUG_S} s")
    finally:
        scard.SCardReleaseContext(context)


@pytest.mark.pcsc
def test_serial_reader_unplugged_under_running_pcscd_is_absent_then_back(
        daemon: Pcscd, line: GemPcTwin, make_reader: Any) -> None:
    driver, rec = started(make_reader(reader="GemPC Twin"))
    assert driver.status().details["reader"] == TWIN
    card = VirtualCard(bytes.fromhex("04C0FFEE112233"), atr=T0_ATR)  # only its answers are used
    line.insert(card)
    seen = rec.wait_for(CardPresented)
    assert (seen.uid, seen.atr) == ("04C0FFEE112233", T0_ATR.hex().upper())
    proc = daemon.proc
    mark = rec.mark()
    line.unplug()
    gone = rec.wait_for(DeviceStateChanged, after=mark, timeout=UNPLUG_S, state=ABSENT)
    assert gone.reason == READER_MUTE
    assert rec.wait_for(CardRemoved, after=mark).uid == "04C0FFEE112233"
    assert driver.status().as_dict() == {"state": ABSENT, "reason": READER_MUTE, "reader": TWIN,
                                         "cards_read": 1, "errors": 0, "card_present": False}
    assert driver.selftest().skipped
    assert proc is daemon.proc and proc is not None and proc.poll() is None, \
        "the reader must go away under the same, running pcscd"
    mark = rec.mark()
    line.plug()  # the card stayed on the reader: it is read anew
    rec.wait_for(DeviceStateChanged, after=mark, timeout=UNPLUG_S, state=OK)
    assert rec.wait_for(CardPresented, after=mark).uid == "04C0FFEE112233"
    assert [a.hex().upper() for a in card.apdus] == ["FFCA000000"] * 2
    mark = rec.mark()
    line.remove()
    rec.wait_for(CardRemoved, after=mark, uid="04C0FFEE112233")
    assert driver.status().details["cards_read"] == 2
    assert [e.state for e in rec.events if isinstance(e, DeviceStateChanged)] == [OK, ABSENT, OK]


@pytest.mark.pcsc
def test_pcscd_crash_and_restart_are_survived(daemon: Pcscd, make_reader: Any, cards: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="examroom.drivers.pcsc")
    driver, rec = started(make_reader(reader=VPCD_0))
    cards("04A1B2C3D4E5F6").insert()
    rec.wait_for(CardPresented)
    mark = rec.mark()
    daemon.kill()
    absent = rec.wait_for(DeviceStateChanged, after=mark, state=ABSENT)
    assert absent.reason == PCSCD_AWAY
    rec.wait_for(CardRemoved, after=mark, uid="04A1B2C3D4E5F6")
    assert driver.status().state == ABSENT
    mark = rec.mark()
    daemon.start()
    rec.wait_for(DeviceStateChanged, after=mark, state=OK)
    cards("0455667788").insert()  # vpcd died with pcscd: the old card's link is gone
    assert rec.wait_for(CardPresented, after=mark).uid == "0455667788"
    assert driver.status().details["cards_read"] == 2
    ours = [r for r in caplog.records if r.name == "examroom.drivers.pcsc"]
    assert [r.levelname for r in ours] == ["WARNING", "INFO"], [r.getMessage() for r in ours]
    assert "answers again after" in ours[1].getMessage()


@pytest.mark.pcsc
def test_no_pcscd_at_start_then_it_appears(daemon: Pcscd, make_reader: Any, cards: Any) -> None:
    daemon.kill()
    driver, rec = make_reader(reader=VPCD_0)
    driver.start()  # must not raise
    rec.wait_for(DeviceStateChanged, state=ABSENT)
    assert driver.status().state == ABSENT
    assert driver.selftest().skipped
    daemon.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    cards("04A1B2C3D4E5F6").insert()
    assert rec.wait_for(CardPresented).uid == "04A1B2C3D4E5F6"


@pytest.mark.pcsc
def test_reader_missing_after_a_pcscd_restart_is_absent_until_it_is_back(
        daemon: Pcscd, twin: GemPcTwin, make_reader: Any, cards: Any) -> None:
    """A reader gone while pcscd was down (the nearest real case of leaving its list here)."""
    driver, rec = started(make_reader(reader=VPCD_0))
    mark = rec.mark()
    daemon.kill()
    daemon.configure({"twin": twin.reader_conf()}, [TWIN])
    daemon.start()
    rec.wait_for(DeviceStateChanged, after=mark, state=ABSENT,
                 reason=f"no reader matching {VPCD_0!r}")
    assert driver.status().details["reader"] is None
    mark = rec.mark()
    daemon.kill()
    daemon.configure(_both(twin), [VPCD_0, TWIN])
    daemon.start()
    rec.wait_for(DeviceStateChanged, after=mark, state=OK)
    assert driver.status().details["reader"] == VPCD_0
    cards("0A0B0C0D").insert()
    assert rec.wait_for(CardPresented, after=mark).uid == "0A0B0C0D"


class BrokenPcscd:
    """A pcscd that grants every context, then drops the connection at the first real call.

    As a pcscd whose reader driver crashes it on every request while a supervisor
    restarts it: the context is fine, every call on it fails ("RPC transport
    error"). Spoken through pyscard and the real libpcsclite, on pcscd's socket.
    """

    VERSION, ESTABLISH = 0x11, 0x01  # pcsc-lite's CMD_VERSION and SCARD_ESTABLISH_CONTEXT

    def __init__(self) -> None:
        self.contexts: list[float] = []  # monotonic time of every context granted
        self.granted = threading.Condition()
        self._closing = False
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(SOCKET))
        self._server.listen(16)
        self._thread = threading.Thread(target=self._accept, name="broken-pcscd", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Idempotent: a test may close it early to let the real pcscd back."""
        if not self._closing:
            self._closing = True
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                wake.connect(str(SOCKET))  # accept() returns and sees _closing
            self._thread.join(timeout=5)
            self._server.close()
            SOCKET.unlink(missing_ok=True)

    def wait_contexts(self, count: int, timeout: float = WAIT_S) -> list[float]:
        with self.granted:
            assert self.granted.wait_for(lambda: len(self.contexts) >= count, timeout), \
                f"only {len(self.contexts)} contexts asked for within {timeout} s"
            return list(self.contexts)

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if self._closing:
                client.close()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            while (header := recv_exact(client, 8)) is not None:
                size, command = struct.unpack("<II", header)
                body = recv_exact(client, size) or b""
                if command == self.VERSION:  # same protocol version back, rv 0
                    client.sendall(body[:8] + bytes(4))
                elif command == self.ESTABLISH:  # scope back, a context, rv 0
                    client.sendall(body[:4] + struct.pack("<II", 0x5EC0 + len(self.contexts), 0))
                    with self.granted:
                        self.contexts.append(time.monotonic())
                        self.granted.notify_all()
                else:
                    return  # "crash": the client's call fails


@pytest.fixture
def broken_pcscd(daemon: Pcscd) -> Iterator[BrokenPcscd]:
    daemon.kill()
    SOCKET.unlink(missing_ok=True)
    os.makedirs(SOCKET.parent, exist_ok=True)
    server = BrokenPcscd()
    yield server
    server.close()


@pytest.mark.pcsc
def test_persistent_error_on_a_good_context_is_retried_each_interval_and_logged_once(
        daemon: Pcscd, broken_pcscd: BrokenPcscd, make_reader: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="examroom.drivers.pcsc")
    driver, rec = make_reader(reader=VPCD_0, poll_interval_s=0.25)
    driver.start()
    granted = broken_pcscd.wait_contexts(5)
    gaps = [b - a for a, b in zip(granted, granted[1:])]
    assert min(gaps) >= 0.2, f"reconnects {gaps} s apart: it spins instead of waiting 0.25 s"
    warnings = [r for r in caplog.records if r.name == "examroom.drivers.pcsc"
                and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "lost pcscd" in warnings[0].getMessage()
    assert [(e.state, e.reason) for e in rec.events] == [(ABSENT, PCSCD_AWAY)]  # no flicker
    broken_pcscd.close()
    attempts = len(broken_pcscd.contexts)
    caplog.clear()
    daemon.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    back = [r.getMessage() for r in caplog.records if r.name == "examroom.drivers.pcsc"
            and r.levelno == logging.INFO]
    assert len(back) == 1 and "answers again after" in back[0], back
    assert int(back[0].split("after ")[1].split()[0]) >= attempts


@pytest.mark.pcsc
def test_stop_is_prompt_while_waiting_to_retry(broken_pcscd: BrokenPcscd, make_reader: Any) -> None:
    driver, rec = make_reader(reader=VPCD_0, poll_interval_s=10)
    driver.start()
    broken_pcscd.wait_contexts(1)
    rec.wait_for(DeviceStateChanged, state=ABSENT)
    begun = time.monotonic()
    driver.stop()
    assert time.monotonic() - begun < 1, "stop must not sit out the 10 s retry wait"
    assert len(broken_pcscd.contexts) == 1
