"""PC/SC reader driver against a real pcscd with vpcd and the test's own virtual card.

pcscd always listens on /run/pcscd/pcscd.comm, so there is one per machine:
these tests own it for the module (and refuse to fight a pcscd they did not
start). Every wait is on an event with a timeout; pcscd polls readers, so
insertions take ~0.5 s to be seen.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from drivers.bus import Bus, DeviceEvent
from drivers import driver_class
from drivers.base import ABSENT, OK, STOPPED, SimulationError
from drivers.events import CardPresented, CardRemoved, DeviceStateChanged, ReaderGarbage
from drivers.pcsc import SIM_ATR, PcscReader, SimPcscReader
from tests.vcard import DEFAULT_ATR, VirtualCard

READER_0 = "Virtual PCD 00 00"
READERS = {36096: READER_0, 36097: "Virtual PCD 00 01"}  # vpcd port -> reader
MARKER = "examroom-pcsc-test"  # in our pcscd's config path: how a stray one of ours is known
LOCK_FILE = "/tmp/examroom-pcsc-tests.lock"
PID_FILE = Path("/run/pcscd/pcscd.pid")
READER_CONF = """\
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x8D00
LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so
CHANNELID    0x8D00
"""
WAIT_S = 8.0
SELECT = "00A4040007A0000000031010"
READ_BINARY = "00B0000010"
APP_FILE = bytes.fromhex("2024A1B2C3D4E5F60011223344556677")


class Pcscd:
    """A private pcscd that a test can kill (as a crash would) and start again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.confdir = workdir / "reader.conf.d"
        self.confdir.mkdir()
        (self.confdir / "vpcd").write_text(READER_CONF)
        self.log = workdir / "pcscd.log"
        self.proc: subprocess.Popen[bytes] | None = None

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
        """Ready when a client sees the vpcd readers (they appear ~10 ms after the socket)."""
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
                if hr == scard.SCARD_S_SUCCESS and READER_0 in readers:
                    return
            time.sleep(0.01)
        pytest.fail(f"pcscd did not show {READER_0!r} within 10 s: {self.log.read_text()}")


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


@pytest.fixture(scope="module")
def pcscd() -> Iterator[Pcscd]:
    binary = shutil.which("pcscd") or next(
        (p for p in ("/usr/sbin/pcscd", "/sbin/pcscd") if os.access(p, os.X_OK)), None)
    if binary is None or not Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists():
        pytest.fail("pcscd or vpcd (libifdvpcd.so) is missing: run scripts/setup.sh")
    if os.geteuid() != 0:  # said, not hidden: CI runs as root and runs them
        pytest.skip("pcscd always uses /run/pcscd: the real-pcscd tests need root")
    lock = _take_machine_lock()
    try:
        _clear_stray_pcscd()
        with tempfile.TemporaryDirectory(prefix=MARKER + "-") as tmp:
            daemon = Pcscd(binary, Path(tmp))
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
        _wait_reader_empty(READERS[port])


def _wait_reader_empty(reader: str) -> None:
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


def _started(made: tuple[PcscReader, Recorder]) -> tuple[PcscReader, Recorder]:
    driver, rec = made
    driver.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    return driver, rec


@pytest.mark.pcsc
def test_insert_and_remove_give_uid_atr_and_removal(pcscd: Pcscd, make_reader: Any,
                                                    cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader())
    assert driver.status().details["reader"] == READER_0
    card = cards("04A1B2C3D4E5F6")
    card.insert()
    seen = rec.wait_for(CardPresented)
    assert (seen.device, seen.uid, seen.atr, seen.app_data) == (
        "door-reader", "04A1B2C3D4E5F6", DEFAULT_ATR.hex().upper(), None)
    assert driver.status().details["cards_read"] == 1
    mark = rec.mark()
    card.remove()
    gone = rec.wait_for(CardRemoved, after=mark)
    assert gone.uid == "04A1B2C3D4E5F6"
    assert driver.status().as_dict() == {"state": OK, "reason": "", "reader": READER_0,
                                         "cards_read": 1, "errors": 0, "card_present": False}


@pytest.mark.pcsc
def test_app_data_and_a_second_card(pcscd: Pcscd, make_reader: Any, cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader(app_apdus=[SELECT, READ_BINARY]))
    first = cards("11223344", {SELECT: "6F00", READ_BINARY: APP_FILE.hex()})
    first.insert()
    seen = rec.wait_for(CardPresented)
    assert (seen.uid, seen.app_data) == ("11223344", APP_FILE.hex().upper())
    assert [a.hex().upper() for a in first.apdus] == ["FFCA000000", SELECT, READ_BINARY]
    first.remove()
    rec.wait_for(CardRemoved, uid="11223344")
    mark = rec.mark()
    second = cards("04998877665544", {SELECT: "", READ_BINARY: "CAFE"})
    second.insert()
    again = rec.wait_for(CardPresented, after=mark)
    assert (again.uid, again.app_data) == ("04998877665544", "CAFE")
    assert driver.status().details["cards_read"] == 2


@pytest.mark.pcsc
def test_app_apdu_refused_gives_uid_without_app_data(pcscd: Pcscd, make_reader: Any,
                                                     cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader(app_apdus=[SELECT, READ_BINARY]))
    cards("0A0B0C0D", {SELECT: ""}).insert()  # READ BINARY gets 6D00
    seen = rec.wait_for(CardPresented)
    assert (seen.uid, seen.app_data) == ("0A0B0C0D", None)
    assert driver.status().details["errors"] == 1


@pytest.mark.pcsc
def test_card_without_uid_is_reported_as_garbage(pcscd: Pcscd, make_reader: Any,
                                                  cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader())
    card = cards("01020304")
    del card.answers[bytes.fromhex("FFCA000000")]  # a card that refuses GET DATA
    card.insert()
    assert "no UID" in rec.wait_for(ReaderGarbage).reason
    seen = rec.wait_for(CardPresented)
    assert (seen.uid, seen.atr) == (None, DEFAULT_ATR.hex().upper())
    assert driver.status().details == {"reader": READER_0, "cards_read": 0, "errors": 1,
                                       "card_present": True}


@pytest.mark.pcsc
def test_reader_option_picks_a_reader_by_substring(pcscd: Pcscd, make_reader: Any,
                                                   cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader(reader="00 01"))
    assert driver.status().details["reader"] == "Virtual PCD 00 01"
    cards("DEADBEEF", port=36097).insert()
    assert rec.wait_for(CardPresented).uid == "DEADBEEF"


@pytest.mark.pcsc
def test_unmatched_reader_is_absent(pcscd: Pcscd, make_reader: Any) -> None:
    pcscd.ensure_running()
    driver, rec = make_reader(reader="no such reader")
    driver.start()
    changed = rec.wait_for(DeviceStateChanged, state=ABSENT)
    assert "no such reader" in changed.reason
    assert driver.selftest().skipped


@pytest.mark.pcsc
def test_selftest_without_and_with_a_card(pcscd: Pcscd, make_reader: Any, cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader())
    result = driver.selftest()
    assert result.ok and not result.skipped
    assert [s.name for s in result.steps] == ["pcscd context", "reader present", "card"]
    cards("04A1B2C3D4E5F6").insert()
    rec.wait_for(CardPresented)
    result = driver.selftest()
    assert result.ok, result.as_dict()
    assert result.steps[-1].name == "uid read" and result.steps[-1].detail == "04A1B2C3D4E5F6"


@pytest.mark.pcsc
def test_stop_is_idempotent_and_releases_the_thread(pcscd: Pcscd, make_reader: Any) -> None:
    pcscd.ensure_running()
    driver, rec = make_reader()
    driver.stop()  # before start: nothing to do
    driver.start()
    driver.start()  # a second start does not open a second monitor
    rec.wait_for(DeviceStateChanged, state=OK)
    started = time.monotonic()
    driver.stop()
    assert time.monotonic() - started < 2, "stop should cancel the wait, not sit it out"
    driver.stop()
    assert driver.status().state == STOPPED
    assert not [t for t in threading.enumerate() if t.name == "pcsc-door-reader"]
    assert [e.state for e in rec.events if isinstance(e, DeviceStateChanged)] == [OK, STOPPED]


@pytest.mark.pcsc
def test_pcscd_crash_and_restart_are_survived(pcscd: Pcscd, make_reader: Any, cards: Any) -> None:
    pcscd.ensure_running()
    driver, rec = _started(make_reader())
    cards("04A1B2C3D4E5F6").insert()
    rec.wait_for(CardPresented)
    mark = rec.mark()
    pcscd.kill()
    absent = rec.wait_for(DeviceStateChanged, after=mark, state=ABSENT)
    assert "pcscd" in absent.reason
    rec.wait_for(CardRemoved, after=mark, uid="04A1B2C3D4E5F6")
    assert driver.status().state == ABSENT
    mark = rec.mark()
    pcscd.start()
    rec.wait_for(DeviceStateChanged, after=mark, state=OK)
    cards("0455667788").insert()  # vpcd died with pcscd: the old card's link is gone
    assert rec.wait_for(CardPresented, after=mark).uid == "0455667788"
    assert driver.status().details["cards_read"] == 2


@pytest.mark.pcsc
def test_no_pcscd_at_start_then_it_appears(pcscd: Pcscd, make_reader: Any, cards: Any) -> None:
    pcscd.kill()
    driver, rec = make_reader()
    driver.start()  # must not raise
    rec.wait_for(DeviceStateChanged, state=ABSENT)
    assert driver.status().state == ABSENT
    assert driver.selftest().skipped
    pcscd.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    cards("04A1B2C3D4E5F6").insert()
    assert rec.wait_for(CardPresented).uid == "04A1B2C3D4E5F6"


def test_no_pyscard_means_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smartcard", None)  # makes the import fail
    bus = Bus()
    rec = Recorder(bus)
    driver = PcscReader("door-reader", {}, bus)
    driver.start()
    assert driver.status().state == ABSENT
    assert "pyscard" in rec.wait_for(DeviceStateChanged, state=ABSENT).reason
    assert driver.selftest().skipped
    driver.stop()
    driver.stop()


def test_registry_names_both_backends() -> None:
    assert driver_class("pcsc", "pcsc") is PcscReader
    assert driver_class("pcsc", "sim") is SimPcscReader


def test_options_check_app_apdus() -> None:
    check = PcscReader.options["app_apdus"].check
    assert check is not None
    assert check([SELECT, READ_BINARY]) and check([])
    assert not check(["00A4"]) and not check(["zz112233"]) and not check("00A40400")


def test_sim_reader_taps_and_removals() -> None:
    bus = Bus()
    rec = Recorder(bus)
    sim = SimPcscReader("sim-reader", {}, bus)
    with pytest.raises(SimulationError, match="not started"):
        sim.simulate("card", ["04A1B2C3"])
    sim.start()
    assert sim.status().state == OK and sim.selftest().ok
    assert sim.simulate("card", ["04a1b2c3"]) == {"uid": "04A1B2C3", "atr": SIM_ATR,
                                                  "app_data": None}
    seen = rec.wait_for(CardPresented)
    assert (seen.uid, seen.atr) == ("04A1B2C3", SIM_ATR)
    sim.simulate("card", ["0455667788AA", "CAFE"])  # a swap: the first card leaves first
    assert rec.wait_for(CardRemoved).uid == "04A1B2C3"
    assert rec.wait_for(CardPresented, uid="0455667788AA").app_data == "CAFE"
    assert sim.simulate("remove", []) == {"removed": "0455667788AA"}
    assert sim.status().details["cards_read"] == 2
    sim.stop()
    sim.stop()
    assert sim.status().state == STOPPED


@pytest.mark.parametrize("action,args,message", [
    ("card", [], "needs <uid-hex>"),
    ("card", ["XYZ"], "not hex"),
    ("card", ["0102"], "4 to 10 bytes"),
    ("card", ["01020304", "G"], "not hex"),
    ("remove", [], "no card"),
    ("remove", ["x"], "takes no arguments"),
    ("explode", [], "unknown action"),
])
def test_sim_reader_rejects_bad_commands(action: str, args: list[str], message: str) -> None:
    sim = SimPcscReader("sim-reader", {}, Bus())
    sim.start()
    with pytest.raises(SimulationError, match=message):
        sim.simulate(action, args)
