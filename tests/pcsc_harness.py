"""A private, real pcscd for the PC/SC tests, and the fixtures they share.

pcscd always listens on /run/pcscd/pcscd.comm, so there is one per machine:
each test module owns one for its run (``own_pcscd``), behind a machine-wide
lock, and refuses to fight a pcscd it did not start. Every wait is on an event
with a timeout; pcscd polls readers, so insertions take ~0.5 s to be seen.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.base import OK
from examroom.drivers.events import DeviceStateChanged
from examroom.drivers.pcsc import PcscReader
from tests.vcard import VirtualCard

VPCD_0 = "Virtual PCD 00 00"
VPCD_READERS = {36096: VPCD_0, 36097: "Virtual PCD 00 01"}  # vpcd port -> reader
VPCD_CONF = """\
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x8D00
LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so
CHANNELID    0x8D00
"""
MARKER = "examroom-pcsc-test"  # in our pcscd's config path: how a stray one of ours is known
LOCK_FILE = "/tmp/examroom-pcsc-tests.lock"
PID_FILE = Path("/run/pcscd/pcscd.pid")
SOCKET = Path("/run/pcscd/pcscd.comm")
DRIVERS = Path("/usr/lib/pcsc/drivers/serial")
WAIT_S = 8.0


class Pcscd:
    """A private pcscd that a test can kill (as a crash would) and start again.

    ``confs`` are its reader.conf.d files by name; change them and ``start()``
    again to restart it with other readers. ``expect`` are reader names it must
    list before it counts as ready.
    """

    def __init__(self, binary: str, workdir: Path, confs: dict[str, str],
                 expect: list[str]) -> None:
        self.binary = binary
        self.confdir = workdir / "reader.conf.d"
        self.confdir.mkdir()
        self.log = workdir / "pcscd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.configure(confs, expect)

    def configure(self, confs: dict[str, str], expect: list[str]) -> None:
        for old in self.confdir.iterdir():
            old.unlink()
        for name, text in confs.items():
            (self.confdir / name).write_text(text)
        self.expect = expect

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([self.binary, "-f", "-e", "-c", str(self.confdir)],
                                         stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def _wait_ready(self) -> None:
        """Ready when a client sees the expected readers (vpcd's ~10 ms after the socket)."""
        from smartcard import scard
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"pcscd exited with {self.proc.returncode}: {self.log.read_text()}")
            hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr == scard.SCARD_S_SUCCESS:
                hr, readers = scard.SCardListReaders(context, [])
                scard.SCardReleaseContext(context)
                if hr == scard.SCARD_S_SUCCESS and set(self.expect) <= set(readers):
                    return
            time.sleep(0.01)
        pytest.fail(f"pcscd did not show {self.expect} within 10 s: {self.log.read_text()}")


def _alive(pid: int) -> bool:
    """True unless gone or a zombie (an orphan nobody reaps still answers kill(pid, 0))."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _running_pcscds() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue  # exited while we looked
        if os.path.basename(argv[0].decode(errors="replace")) == "pcscd" \
                and _alive(int(entry.name)):
            found.append((int(entry.name), " ".join(a.decode(errors="replace") for a in argv)))
    return found


def _take_machine_lock() -> int:
    """Serialise test runs (several sessions may test one work tree): pcscd is per machine."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 300
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace")
                os.close(fd)
                pytest.fail(f"another PC/SC test run (pid {holder}) held {LOCK_FILE} for 300 s")
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _clear_stray_pcscd() -> None:
    """Kill a pcscd an earlier, dead run of these tests left; refuse to touch anyone else's.

    Called with the machine lock held, so a pcscd with our marker has no live owner.
    """
    for pid, cmdline in _running_pcscds():
        if MARKER not in cmdline:
            pytest.fail(f"another pcscd is running (pid {pid}: {cmdline}); these tests need "
                        "their own: stop it first (e.g. systemctl stop pcscd.socket pcscd)")
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running_pcscds():
        if time.monotonic() > deadline:
            pytest.fail(f"stray pcscd would not die: {_running_pcscds()}")
        time.sleep(0.02)
    try:  # pcscd refuses to start while its pid file names a zombie
        if not _alive(int(PID_FILE.read_text().strip("\0\n "))):  # pcscd writes a NUL too
            PID_FILE.unlink()
    except (OSError, ValueError):
        pass  # no pid file (or unreadable): nothing stale to clear


def own_pcscd(confs: dict[str, str], expect: list[str]) -> Iterator[Pcscd]:
    """Body of a module-scoped ``pcscd`` fixture: the machine's pcscd, started, then killed.

    A serial reader must be on its line before this runs: pcscd opens it at start only.
    """
    binary = shutil.which("pcscd") or next(
        (p for p in ("/usr/sbin/pcscd", "/sbin/pcscd") if os.access(p, os.X_OK)), None)
    missing = [line.split()[1] for text in confs.values() for line in text.splitlines()
               if line.startswith("LIBPATH") and not Path(line.split()[1]).exists()]
    if binary is None or missing:
        pytest.fail(f"pcscd or a reader driver ({missing}) is missing: run scripts/setup.sh")
    if os.geteuid() != 0:  # said, not hidden: CI runs as root and runs them
        pytest.skip("pcscd always uses /run/pcscd: the real-pcscd tests need root")
    lock = _take_machine_lock()
    try:
        _clear_stray_pcscd()
        with tempfile.TemporaryDirectory(prefix=MARKER + "-") as tmp:
            daemon = Pcscd(binary, Path(tmp), confs, expect)
            try:
                daemon.start()
                yield daemon
            finally:
                daemon.kill()
    finally:
        os.close(lock)  # releases the flock


class Recorder:
    """Collects the bus's events and lets a test wait for one that matches."""

    def __init__(self, bus: Bus) -> None:
        self.events: list[DeviceEvent] = []
        self._changed = threading.Condition()
        bus.subscribe(DeviceEvent, self._on_event)

    def _on_event(self, event: DeviceEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, kind: type, after: int = 0, timeout: float = WAIT_S,
                 **fields: Any) -> DeviceEvent:
        """First event of ``kind`` with these field values, among those from index ``after``."""
        def match() -> DeviceEvent | None:
            return next((e for e in self.events[after:] if isinstance(e, kind)
                         and all(getattr(e, k) == v for k, v in fields.items())), None)
        with self._changed:
            if not self._changed.wait_for(match, timeout=timeout):
                pytest.fail(f"no {kind.__name__} {fields} within {timeout} s; saw {self.events}")
            found = match()
            assert found is not None
            return found

    def mark(self) -> int:
        with self._changed:
            return len(self.events)


@pytest.fixture
def cards() -> Iterator[Callable[..., VirtualCard]]:
    """Virtual cards on vpcd's readers (``port``); all removed, and seen removed, at teardown."""
    made: list[VirtualCard] = []

    def make(uid: str, answers: dict[str, str] | None = None, port: int = 36096) -> VirtualCard:
        card = VirtualCard(bytes.fromhex(uid), {bytes.fromhex(k): bytes.fromhex(v)
                                                for k, v in (answers or {}).items()}, port=port)
        made.append(card)
        return card

    yield make
    for card in made:
        card.remove()
    for port in {card.port for card in made}:
        wait_reader_empty(VPCD_READERS[port])


def wait_reader_empty(reader: str) -> None:
    """vpcd notices a closed card link only at its next poll: the next test must not see it."""
    from smartcard import scard
    hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return  # pcscd is down: its readers and their cards are gone with it
    try:
        hr, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        deadline = time.monotonic() + WAIT_S
        while hr == scard.SCARD_S_SUCCESS and states[0][1] & scard.SCARD_STATE_PRESENT:
            assert time.monotonic() < deadline, f"{reader} still shows a card"
            current = [(r, e & ~scard.SCARD_STATE_CHANGED) for r, e, _ in states]
            hr, states = scard.SCardGetStatusChange(context, 1000, current)
            if hr == scard.SCARD_E_TIMEOUT:
                hr, states = scard.SCARD_S_SUCCESS, [(r, e, b"") for r, e in current]
    finally:
        scard.SCardReleaseContext(context)


@pytest.fixture
def make_reader() -> Iterator[Callable[..., tuple[PcscReader, Recorder]]]:
    """Unstarted drivers with these options over the defaults; all stopped at teardown."""
    made: list[PcscReader] = []

    def make(**options: Any) -> tuple[PcscReader, Recorder]:
        bus = Bus()
        recorder = Recorder(bus)
        config = {"reader": "", "poll_interval_s": 0.2, "app_apdus": [], **options}
        made.append(PcscReader("door-reader", config, bus))
        return made[-1], recorder

    yield make
    for driver in made:
        driver.stop()


def started(made: tuple[PcscReader, Recorder]) -> tuple[PcscReader, Recorder]:
    driver, rec = made
    driver.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    return driver, rec
