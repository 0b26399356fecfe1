"""Clock driver: chrony parsing (canned and from a private chronyd), adjtimex, change and step detection."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers import driver_class
from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, DeviceAbsent, ProtocolError, SimulationError
from examroom.drivers.clock import (ClockReading, SimClock, SystemClock, Timex, parse_chrony_tracking,
                           read_adjtimex, read_chrony, read_system)
from examroom.drivers.events import ClockState, DeviceStateChanged

# Realistic `chronyc -c tracking` lines (chrony 4.3): synced to an NTP server, 1.2 s slow, unsynced.
SYNCED = ("A9FEA97B,169.254.169.123,4,1700000000.123456789,0.000012345,-0.000003000,"
          "0.000021000,-12.345,0.001,0.050,0.000456000,0.000789000,64.2,Normal\n")
SLOW = ("C0A80101,192.168.1.1,3,1700000000.000000000,1.200000000,1.250000000,"
        "0.300000000,2.054,-0.004,0.182,0.023675382,0.001886752,1042.2,Normal\n")
UNSYNCED = ("00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,"
            "1.000000000,1.000000000,0.0,Not synchronised\n")
# `local stratum 10` and no server: chrony serves its own clock (refid 7F7F0101, 'LOCAL').
LOCAL = ("7F7F0101,127.127.1.1,10,1700000000.000000000,0.000000000,0.000000000,0.000000000,"
         "0.000,0.000,0.000,0.000000000,0.000010000,0.0,Normal\n")


class Clocks:
    """Injected wall and monotonic clocks that only move when the test says so."""

    def __init__(self) -> None:
        self.wall = 1_750_000_000.0
        self.mono = 1000.0

    def tick(self, seconds: float, wall_jump: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + wall_jump


@pytest.fixture
def bus_events():
    bus = Bus()
    events: list[DeviceEvent] = []
    bus.subscribe(DeviceEvent, events.append)
    return bus, events


def clock_states(events: list[DeviceEvent]) -> list[ClockState]:
    return [e for e in events if isinstance(e, ClockState)]


def system_clock(bus: Bus, clocks: Clocks, readings: list[Any], **config: Any) -> SystemClock:
    def reader() -> ClockReading:
        item = readings[0] if len(readings) == 1 else readings.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return SystemClock("clock", config, bus, clock=lambda: clocks.wall,
                       monotonic=lambda: clocks.mono, reader=reader)


def test_registry_names():
    assert driver_class("clock", "system") is SystemClock
    assert driver_class("clock", "sim") is SimClock


def test_parse_chrony_tracking():
    synced = parse_chrony_tracking(SYNCED)
    assert synced == ClockReading(True, -0.000012345, "chrony:169.254.169.123", stratum=4,
                                  leap="Normal", max_error_s=pytest.approx(0.000789 + 0.000228))
    slow = parse_chrony_tracking(SLOW)
    assert slow.offset_s == -1.2  # chrony's positive "System time" means slow
    unsynced = parse_chrony_tracking(UNSYNCED)
    assert (unsynced.synced, unsynced.source, unsynced.stratum) == (False, "chrony:00000000", 0)
    local = parse_chrony_tracking(LOCAL)  # chrony says Normal, but no time source is behind it
    assert (local.synced, local.source, local.stratum, local.leap) == (False, "chrony:local", 10, "Normal")
    for bad in ("", "506 Cannot talk to daemon\n", SYNCED.replace(",4,", ",four,"), SYNCED * 2):
        with pytest.raises(ProtocolError):
            parse_chrony_tracking(bad)


def test_read_chrony_runs_chronyc_without_dns():
    seen: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, SYNCED, "")

    assert read_chrony(["chronyc", "-h", "/x.sock"], run=run).synced
    assert seen == [["chronyc", "-h", "/x.sock", "-n", "-c", "tracking"]]

    def dead(argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "506 Cannot talk to daemon\n", "")

    with pytest.raises(DeviceAbsent, match="Cannot talk"):
        read_chrony(run=dead)
    with pytest.raises(DeviceAbsent):
        read_chrony(["/nonexistent/chronyc"])


def test_real_adjtimex_on_this_machine():
    if ctypes.sizeof(ctypes.c_long) == 8:
        assert ctypes.sizeof(Timex) == 208  # glibc's struct timex on 64-bit Linux
    reading = read_adjtimex()
    assert reading.source == "kernel"
    assert isinstance(reading.synced, bool)
    assert reading.offset_s is not None and abs(reading.offset_s) < 1000
    assert reading.max_error_s is not None and 0 <= reading.max_error_s <= 100
    assert reading.leap in ("Normal", "Insert second", "Delete second", "Leap in progress",
                            "Leap done", "Not synchronised")
    assert reading.synced == (reading.leap != "Not synchronised")


def test_read_system_falls_back_to_kernel_without_chronyd():
    assert read_system("/nonexistent/chronyc").source == "kernel"


def test_events_only_on_change(bus_events):
    bus, events = bus_events
    clocks = Clocks()
    ok = ClockReading(True, 0.01, "chrony:ntp1")
    readings: list[Any] = [ok, ClockReading(True, 0.02, "chrony:ntp1"),
                           ClockReading(False, 0.02, "chrony:ntp1"),
                           ClockReading(False, 0.03, "chrony:ntp1"), ok, ok]
    clk = system_clock(bus, clocks, readings)
    for _ in range(6):
        clk.poll()
        clocks.tick(10)
    assert [(e.synced, e.offset_s, e.stepped_s) for e in clock_states(events)] == [
        (True, 0.01, None), (False, 0.02, None), (True, 0.01, None)]
    assert [e.state for e in events if isinstance(e, DeviceStateChanged)] == [OK, FAULT, OK]


def test_offset_bound_crossed_both_ways(bus_events):
    bus, events = bus_events
    clocks = Clocks()
    readings: list[Any] = [ClockReading(True, off, "kernel") for off in (0.1, 0.4, -1.2, 0.9, 0.2)]
    clk = system_clock(bus, clocks, readings, max_offset_s=0.5)
    clk.poll()
    clk.poll()
    clk.poll()
    status = clk.status()
    assert (status.state, status.reason) == (FAULT, "offset -1.2 s exceeds 0.5 s")
    assert status.details["synced"] is True and status.details["source"] == "kernel"
    clk.poll()
    assert clk.status().reason == "offset 0.9 s exceeds 0.5 s"
    clk.poll()
    assert clk.status().state == OK
    assert [e.offset_s for e in clock_states(events)] == [0.1, -1.2, 0.2]
    # the event's reason leaves the moving offset out, so -1.2 then 0.9 is one fault, not two
    assert [(e.state, e.reason) for e in events if isinstance(e, DeviceStateChanged)] == [
        (OK, ""), (FAULT, "offset exceeds 0.5 s"), (OK, "")]


def test_unsynced_status_and_absent_source(bus_events):
    bus, events = bus_events
    clocks = Clocks()
    readings: list[Any] = [ClockReading(False, None, "kernel"), DeviceAbsent("no chronyd"),
                           ClockReading(False, None, "kernel")]
    clk = system_clock(bus, clocks, readings)
    clk.poll()
    assert (clk.status().state, clk.status().reason) == (FAULT, "unsynced")
    clk.poll()
    assert (clk.status().state, clk.status().reason) == (ABSENT, "no chronyd")
    clk.poll()
    assert [e.synced for e in clock_states(events)] == [False, False]  # unknown, then known again


def test_clock_following_only_itself_is_a_fault_with_its_own_reason(bus_events):
    """A box on chrony's local reference keeps good time by itself, not the site's: alert."""
    bus, events = bus_events
    clocks = Clocks()
    local = parse_chrony_tracking(LOCAL)
    clk = system_clock(bus, clocks, [local, local, parse_chrony_tracking(SYNCED)])
    clk.poll()
    status = clk.status()
    assert (status.state, status.reason) == (FAULT, "chrony follows its own local clock, no time source")
    assert (status.details["synced"], status.details["source"]) == (False, "chrony:local")
    selftest = clk.selftest()  # reads the second local reading
    assert not selftest.ok and "own local clock" in selftest.steps[1].detail
    clocks.tick(10)
    clk.poll()  # a server answers: synced, OK, and the event says which source
    assert (clk.status().state, clk.status().reason) == (OK, "")
    assert [(e.synced, e.source) for e in clock_states(events)] == [
        (False, "chrony:local"), (True, "chrony:169.254.169.123")]
    assert [e.state for e in events if isinstance(e, DeviceStateChanged)] == [FAULT, OK]


def test_step_detection_with_injected_clocks(bus_events):
    bus, events = bus_events
    clocks = Clocks()
    clk = system_clock(bus, clocks, [ClockReading(True, 0.0, "chrony:ntp1")],
                       step_threshold_s=1.0)
    clk.poll()
    clocks.tick(10, wall_jump=0.4)  # slewing-size drift: not a step
    clk.poll()
    clocks.tick(10, wall_jump=-3600.0)  # someone set the clock back an hour
    clk.poll()
    clocks.tick(10, wall_jump=2.5)
    clk.poll()
    stepped = [e.stepped_s for e in clock_states(events)]
    assert stepped == [None, pytest.approx(-3600.0), pytest.approx(2.5)]
    assert clk.status().details["steps"] == 2
    assert clock_states(events)[1].ts == clocks.wall - 10 - 2.5  # wall time of that poll


def test_start_polls_at_once_and_stop_is_idempotent(bus_events):
    bus, events = bus_events
    polled = threading.Event()
    count = 0

    def reader() -> ClockReading:
        nonlocal count
        count += 1
        if count >= 2:
            polled.set()  # the background thread polled too
        return ClockReading(True, 0.0, "kernel")

    clk = SystemClock("clock", {"poll_interval_s": 0.01}, bus, reader=reader)
    clk.stop()
    clk.start()
    assert clk.status().state == OK
    assert polled.wait(5)
    clk.stop()
    clk.stop()
    assert clk.status().state == STOPPED
    assert [e.state for e in events if isinstance(e, DeviceStateChanged)] == [OK, STOPPED]


def test_selftest(bus_events):
    bus, _ = bus_events
    good = system_clock(bus, Clocks(), [ClockReading(True, 0.1, "chrony:ntp1", 3, "Normal")])
    assert good.selftest().ok
    far = system_clock(bus, Clocks(), [ClockReading(True, 2.0, "chrony:ntp1", 3, "Normal")])
    result = far.selftest()
    assert not result.ok and [s.ok for s in result.steps] == [True, True, False]
    absent = system_clock(bus, Clocks(), [DeviceAbsent("no adjtimex")])
    assert absent.selftest().skipped
    real = SystemClock("clock", {}, bus).selftest()  # whatever this machine's clock says
    assert real.steps[0].name == "source readable" and real.steps[0].ok


def test_sim_actions(bus_events):
    bus, events = bus_events
    clocks = Clocks()
    sim = SimClock("clock", {"poll_interval_s": 3600}, bus, clock=lambda: clocks.wall,
                   monotonic=lambda: clocks.mono)
    with pytest.raises(SimulationError, match="not started"):
        sim.simulate("sync", [])
    sim.start()
    assert sim.status().state == OK
    assert sim.simulate("offset", ["0.2"])["offset_s"] == 0.2  # within bound: no event
    assert sim.simulate("offset", ["-1.5"])["reason"] == "offset -1.5 s exceeds 0.5 s"
    sim.simulate("offset", ["0"])
    assert sim.simulate("unsync", [])["reason"] == "unsynced"
    sim.simulate("unsync", [])
    sim.simulate("sync", [])
    sim.simulate("step", ["-30"])
    assert [(e.synced, e.offset_s, e.stepped_s) for e in clock_states(events)] == [
        (True, 0.0, None), (True, -1.5, None), (True, 0.0, None), (False, 0.0, None),
        (True, 0.0, None), (True, 0.0, pytest.approx(-30.0))]
    assert all(e.source == "sim" for e in clock_states(events))
    for action, args in [("offset", []), ("offset", ["soon"]), ("step", ["nan"]),
                         ("sync", ["now"]), ("warp", [])]:
        with pytest.raises(SimulationError, match="expected 'offset <seconds>'"):
            sim.simulate(action, args)
    sim.stop()
    sim.stop()


def test_sim_initial_state_from_config(bus_events):
    bus, events = bus_events
    sim = SimClock("clock", {"synced": False, "offset_s": 3.0, "poll_interval_s": 3600}, bus)
    sim.start()
    assert (sim.status().state, sim.status().reason) == (FAULT, "unsynced")
    sim.stop()


# -- a real chronyd that never touches the system clock (-x), on a private socket --------

@pytest.fixture
def chronyd_socket():
    def start(local: bool) -> str:
        if not shutil.which("chronyd") or os.geteuid() != 0:
            pytest.skip("needs chronyd (Debian package chrony) and root")
        work = Path(tempfile.mkdtemp(prefix="chr"))  # 0700, as chronyd demands
        sock = work / "chronyd.sock"
        conf = work / "chrony.conf"
        conf.write_text(f"bindcmdaddress {sock}\ncmdport 0\nport 0\n"
                        f"pidfile {work}/chronyd.pid\n" + ("local stratum 10\n" if local else ""))
        proc = subprocess.Popen(["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append((proc, work))
        deadline = time.monotonic() + 10
        while not sock.exists():  # chronyd creates the socket when it is ready for commands
            if proc.poll() is not None:
                pytest.fail(f"chronyd exited: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("chronyd did not create its socket in 10 s")
            threading.Event().wait(0.01)
        return str(sock)

    procs: list[tuple[subprocess.Popen, Path]] = []
    yield start
    for proc, work in procs:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def test_real_chronyd_local_reference(chronyd_socket, bus_events):
    bus, events = bus_events
    sock = chronyd_socket(local=True)
    reading = read_chrony(["chronyc", "-h", sock])
    assert (reading.synced, reading.source, reading.stratum, reading.leap) == (
        False, "chrony:local", 10, "Normal")  # chrony's own view is "Normal": not the site's time
    clk = SystemClock("clock", {"chronyc": f"chronyc -h {sock}", "poll_interval_s": 3600}, bus)
    clk.start()
    assert (clk.status().state, clk.status().reason) == (
        FAULT, "chrony follows its own local clock, no time source")
    assert [(e.synced, e.source) for e in clock_states(events)] == [(False, "chrony:local")]
    clk.stop()


def test_real_chronyd_unsynchronised(chronyd_socket):
    sock = chronyd_socket(local=False)
    reading = read_chrony(["chronyc", "-h", sock])
    assert (reading.synced, reading.leap, reading.stratum) == (False, "Not synchronised", 0)
