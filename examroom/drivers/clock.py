"""The room box's clock: is it synchronised, how far off is it, was it stepped?

Exam signals go out by the clock, so the agent must know when the box's time
cannot be trusted. chrony knows best (``chronyc -c tracking``); without chrony
(Raspberry Pi OS ships systemd-timesyncd) the kernel still knows whether a time
daemon has disciplined the clock (``adjtimex``: STA_UNSYNC, error bounds).

Offsets are "room clock minus reference": positive means the box is fast. Both
chrony's CSV ("System time", positive = slow) and the kernel's PLL offset
(reference minus local, NTP's convention) are negated to get there.

A step (someone ran ``date -s``, or a daemon stepped the clock after boot) is
seen as wall time moving differently from ``time.monotonic()`` between two
polls: no daemon has to report it, and the injected clocks make it testable.
"""
from __future__ import annotations

import csv
import ctypes
import ctypes.util
import logging
import math
import os
import shlex
import shutil
import subprocess
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from examroom.drivers.bus import Bus
from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceError, DeviceStatus,
                          Driver, Option, ProtocolError, SelftestResult, SelftestStep,
                          SimulationError, positive)
from examroom.drivers.events import ClockState

log = logging.getLogger(__name__)

LOCAL_ONLY = "chrony follows its own local clock, no time source"
UNSYNCED = "unsynced"


@dataclass(frozen=True)
class ClockReading:
    synced: bool
    offset_s: float | None       # room clock minus reference (positive = fast)
    source: str                  # "chrony:<reference>", "kernel", "sim"
    stratum: int | None = None
    leap: str = ""
    max_error_s: float | None = None  # bound on |offset| the source vouches for


# -- chrony ---------------------------------------------------------------------------

def parse_chrony_tracking(text: str) -> ClockReading:
    """Parse ``chronyc -c tracking``: refid, name, stratum, ref time, system time, ..., leap."""
    rows = [row for row in csv.reader(text.splitlines()) if row]
    if len(rows) != 1 or len(rows[0]) < 14:
        raise ProtocolError(f"chronyc tracking: expected one CSV line of 14 fields, got {text!r}")
    f = rows[0]
    try:
        stratum = int(f[2])
        system_time, root_delay, root_dispersion = float(f[4]), float(f[10]), float(f[11])
    except ValueError as exc:
        raise ProtocolError(f"chronyc tracking: {exc} in {text!r}") from exc
    ref_id, ref_name, leap = f[0], f[1], f[13]
    # 7F7F0101 (127.127.1.1) is chrony's "local" reference (``local stratum N``): the box
    # serves its own time. chrony calls that synchronised, but a room box whose clock follows
    # only itself is not on the site's time, so here it is not synced.
    local = ref_id == "7F7F0101"
    reference = "local" if local else (ref_name or ref_id)
    return ClockReading(
        synced=leap != "Not synchronised" and not local,
        offset_s=-system_time,
        source=f"chrony:{reference}",
        stratum=stratum,
        leap=leap,
        max_error_s=root_dispersion + root_delay / 2,
    )


def read_chrony(command: Sequence[str] = ("chronyc",),
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                timeout_s: float = 2.0) -> ClockReading:
    """Ask chronyd. ``-n``: never resolve names, a dead DNS must not stall the poll."""
    argv = [*command, "-n", "-c", "tracking"]
    try:
        done = run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceAbsent(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip() or f"exit status {done.returncode}"
        raise DeviceAbsent(f"chronyd not answering: {said}")
    return parse_chrony_tracking(done.stdout)


# -- kernel ---------------------------------------------------------------------------

class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """glibc's ``struct timex`` as the plain ``adjtimex`` symbol takes it (long-sized fields)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_padding", ctypes.c_int * 11),
    ]


STA_UNSYNC = 0x0040
STA_NANO = 0x2000
TIME_ERROR = 5
LEAP_STATES = {0: "Normal", 1: "Insert second", 2: "Delete second", 3: "Leap in progress",
               4: "Leap done", TIME_ERROR: "Not synchronised"}


def read_adjtimex() -> ClockReading:
    """Read (modes = 0: change nothing, no privilege needed) the kernel's NTP state."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        raise DeviceAbsent(f"no adjtimex in the C library: {exc}") from exc
    tx = Timex()
    state = adjtimex(ctypes.byref(tx))
    if state == -1:
        raise DeviceAbsent(f"adjtimex: {os.strerror(ctypes.get_errno())}")
    unit = 1e-9 if tx.status & STA_NANO else 1e-6
    return ClockReading(
        synced=state != TIME_ERROR and not tx.status & STA_UNSYNC,
        offset_s=-tx.offset * unit,
        source="kernel",
        leap=LEAP_STATES.get(state, f"state {state}"),
        max_error_s=tx.maxerror * 1e-6,
    )


def read_system(chronyc: str = "chronyc") -> ClockReading:
    """chrony when it is installed and answers, else the kernel (timesyncd, ntpd, nothing)."""
    command = shlex.split(chronyc)
    if command and shutil.which(command[0]):
        try:
            return read_chrony(command)
        except DeviceAbsent as exc:
            log.debug("falling back to adjtimex: %s", exc)
    return read_adjtimex()


# -- drivers --------------------------------------------------------------------------

def _unsynced_reason(reading: ClockReading) -> str:
    """Why an unsynced reading is: a clock serving only itself says so, it needs a different fix."""
    return LOCAL_ONLY if reading.source == "chrony:local" else UNSYNCED


def _beyond(limit: float, offset_s: float | None = None) -> str:
    """Why an offset is a fault. The state's reason (what the event says) names the bound
    only: the offset moves with every poll, and a reason that changes is news. status()
    shows the offset too, as the heartbeat always has."""
    if offset_s is None:
        return f"offset exceeds {limit:g} s"
    return f"offset {offset_s:.3g} s exceeds {limit:g} s"


class _ClockDriver(Driver):
    """Polling, change detection and health, shared by the real and the simulated clock."""

    kind: ClassVar[str] = "clock"
    options: ClassVar[dict[str, Option]] = {
        "poll_interval_s": Option((int, float), default=10, check=positive,
                                  expected="a positive number of seconds"),
        "max_offset_s": Option((int, float), default=0.5, check=positive,
                               expected="a positive number of seconds",
                               help="a larger |offset| makes the clock FAULT"),
        "step_threshold_s": Option((int, float), default=1.0, check=positive,
                                   expected="a positive number of seconds",
                                   help="wall-clock jumps larger than this are reported"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._reading: ClockReading | None = None
        self._last_times: tuple[float, float] | None = None  # (wall, monotonic) at last poll
        self._steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _read(self) -> ClockReading:
        """One reading of the time source; raises DeviceAbsent/ProtocolError."""

    def _wall(self) -> float:
        return self.clock()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._last_times = None
            self.poll()  # status is meaningful as soon as start() returns
            self._thread = threading.Thread(target=self._run, name=f"clock-{self.name}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._opt("poll_interval_s")):
            try:
                self.poll()
            except Exception:  # the poller must outlive any surprise
                log.exception("clock %s: poll failed", self.name)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is None:
            return
        thread.join()
        with self._lock:
            self._reading = None
        self._set_state(STOPPED)

    def poll(self) -> ClockReading | None:
        """Read once, report what changed. The poll thread calls it; tests call it directly."""
        with self._lock:
            wall, mono = self._wall(), self.monotonic()
            stepped = None
            if self._last_times is not None:
                jump = (wall - self._last_times[0]) - (mono - self._last_times[1])
                if abs(jump) > self._opt("step_threshold_s"):
                    stepped = jump
                    self._steps += 1
            self._last_times = (wall, mono)
            previous = self._reading
            try:
                reading: ClockReading | None = self._read()
            except DeviceError as exc:
                reading = None
                self._set_state(ABSENT if isinstance(exc, DeviceAbsent) else FAULT, str(exc))
            self._reading = reading
            if reading is not None:
                self._set_state(*self._judge(reading))
            if stepped is not None or (reading is not None and self._key(reading) != self._key(previous)):
                self.emit(ClockState(
                    self.name, synced=reading is not None and reading.synced,
                    offset_s=None if reading is None else reading.offset_s,
                    source="unreadable" if reading is None else reading.source,
                    stepped_s=stepped, ts=wall))
            return reading

    def _key(self, reading: ClockReading | None) -> tuple[bool, bool, str] | None:
        """What an event is worth: synced, offset within bound, source."""
        if reading is None:
            return None
        within = reading.offset_s is None or abs(reading.offset_s) <= self._opt("max_offset_s")
        return reading.synced, within, reading.source

    def _judge(self, reading: ClockReading) -> tuple[str, str]:
        if not reading.synced:
            return FAULT, _unsynced_reason(reading)
        limit = self._opt("max_offset_s")
        if reading.offset_s is not None and abs(reading.offset_s) > limit:
            return FAULT, _beyond(limit)
        return OK, ""

    def status(self) -> DeviceStatus:
        with self._lock:
            details: dict[str, Any] = {"steps": self._steps}
            reason = self._reason
            if self._reading is not None:
                r = self._reading
                details.update(synced=r.synced, offset_s=r.offset_s, source=r.source,
                               stratum=r.stratum, leap=r.leap, max_error_s=r.max_error_s)
                limit = self._opt("max_offset_s")
                if reason == _beyond(limit):
                    reason = _beyond(limit, r.offset_s)
            return DeviceStatus(self._state, reason, details)

    def selftest(self) -> SelftestResult:
        try:
            reading = self._read()
        except DeviceError as exc:
            return SelftestResult(self.name, self.kind, ok=False,
                                  skipped=isinstance(exc, DeviceAbsent),
                                  steps=(SelftestStep("source readable", False, str(exc)),))
        limit = self._opt("max_offset_s")
        within = reading.offset_s is None or abs(reading.offset_s) <= limit
        steps = (
            SelftestStep("source readable", True,
                         f"{reading.source}, stratum {reading.stratum}, leap {reading.leap!r}"),
            SelftestStep("synchronised", reading.synced,
                         reading.leap if reading.synced else f"{_unsynced_reason(reading)} ({reading.leap})"),
            SelftestStep("offset within bound", within,
                         f"offset {reading.offset_s} s, bound {limit:g} s"),
        )
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps), steps=steps)


class SystemClock(_ClockDriver):
    """The box's own clock, as chrony or the kernel sees it."""

    backend: ClassVar[str] = "system"
    options: ClassVar[dict[str, Option]] = {
        **_ClockDriver.options,
        "chronyc": Option(str, default="chronyc",
                          help="chronyc path, with arguments if needed (\"chronyc -h /run/x.sock\")"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 reader: Callable[[], ClockReading] | None = None) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._reader = reader

    def _read(self) -> ClockReading:
        if self._reader is not None:
            return self._reader()
        return read_system(self._opt("chronyc"))


class SimClock(_ClockDriver):
    """A clock whose sync state and wall time ``simulate`` sets; events come from the same logic."""

    backend: ClassVar[str] = "sim"
    options: ClassVar[dict[str, Option]] = {
        **_ClockDriver.options,
        "synced": Option(bool, default=True, help="initial sync state"),
        "offset_s": Option((int, float), default=0.0, check=math.isfinite,
                           expected="a finite number of seconds", help="initial offset"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._synced = bool(self._opt("synced"))
        self._offset = float(self._opt("offset_s"))
        self._shift = 0.0  # simulated steps, added to the real wall clock

    def _read(self) -> ClockReading:
        return ClockReading(self._synced, self._offset, "sim", stratum=None,
                            leap="Normal" if self._synced else "Not synchronised")

    def _wall(self) -> float:
        return self.clock() + self._shift

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        usage = "expected 'offset <seconds>', 'step <seconds>', 'sync' or 'unsync'"
        with self._lock:
            if self._thread is None:
                raise SimulationError(f"device {self.name!r} is not started")
            if action in ("sync", "unsync") and not args:
                self._synced = action == "sync"
            elif action in ("offset", "step") and len(args) == 1:
                try:
                    seconds = float(args[0])
                except ValueError:
                    seconds = math.nan
                if not math.isfinite(seconds):
                    raise SimulationError(f"bad sim {action} {args[0]!r}: {usage}")
                if action == "offset":
                    self._offset = seconds
                else:
                    self._shift += seconds
            else:
                raise SimulationError(f"bad sim command {' '.join([action, *args])!r}: {usage}")
            self.poll()
            return self.status().as_dict()
