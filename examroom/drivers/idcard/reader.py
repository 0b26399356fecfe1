"""Second-generation ID card reader: a SAM reader on a serial line (USB-serial or UART).

The reader only answers; it never tells us a card arrived. So a thread polls
find -> select -> read and turns the answers into one ``CardPresented`` per
placement and one ``CardRemoved`` when the card goes. The port is treated as
something that can vanish at any time (USB unplugged, reader power-cycled): the
driver reports it absent and keeps reopening it by itself, and the agent never
sees an exception for it. Bytes the line delivers that do not make a good frame
are refused, counted and reported as ``ReaderGarbage``, never acted upon; so is
a good frame that cannot be the answer to the question just asked (a reply
that came after we stopped waiting for it). Every exchange runs to a deadline;
a missed one is counted, and only replies missed in a row make the reader FAULT.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import tty
from datetime import date
from typing import Any, Callable

from examroom.drivers.bus import Bus
from examroom.drivers.base import (
    ABSENT, FAULT, OK, STOPPED, DeviceError, DeviceStatus, DeviceTimeout, Driver, Option, ProtocolError,
    SelftestResult, SelftestStep, SimulationError, positive,
)
from examroom.drivers.events import CardPresented, CardRemoved, Identity, ReaderGarbage
from examroom.drivers.gb11643 import has_id_shape, mask_id
from examroom.drivers.idcard.sam_link import ANSWERED, SILENT, SamLink
from examroom.drivers.idcard.sam_protocol import (
    FIND_CARD, KNOWN_COMMANDS, NATION_NAMES, READ_TEXT_PHOTO, SAM_ID, SAM_STATUS, SELECT_CARD, SEX_NAMES,
    SW_SAM_FAULT, CardError, Refusal, Reply, check_status, decode_identity, format_sam_id,
)
from examroom.drivers.idcard.sam_simulator import FAULTS, NOISE, SLOW, Fault, SamReaderSimulator

log = logging.getLogger(__name__)

_REMOVAL_MISSES = 2    # a single failed find can be RF noise; two in a row mean the card left
_SILENT_MISSES = 2     # one lost or late reply is the line; two in a row mean the reader is not there
_BAD_CARD_DATA = "bad_card_data"


def _seconds(default: float, meaning: str) -> Option:
    return Option((int, float), default, check=positive, expected="a number of seconds > 0", help=meaning)


class SerialIdCardReader(Driver):
    """Polls the reader for cards, keeps its port open, and judges the line by its answers.

    The exchange itself (port, frames, deadlines, counts) is the ``SamLink``'s; this class
    decides what each outcome means for the reader's state, its events and the log.
    """

    kind = "idcard"
    backend = "serial"
    options = {
        "port": Option(str, required=True, help="serial device of the reader, e.g. /dev/ttyUSB0"),
        "baudrate": Option(int, 115200, check=positive, expected="a positive baud rate"),
        "poll_interval_s": _seconds(0.3, "pause between two looks for a card"),
        "read_timeout_s": _seconds(2.0, "how long reading text and photo may take"),
        "command_timeout_s": _seconds(0.2, "how long find, select and SAM commands may take"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._link = SamLink(self._refused, self._stray)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._port_error = ""  # why the port last failed to open or work; "" once it opens
        self._present = False
        self._last_id: str | None = None  # the card now on the reader, to tell a swap from a flaky look
        self._misses = 0
        self._cards_read = 0
        self._sam_id: str | None = None

    def _port_path(self) -> str:
        return str(self.config["port"])

    # -- Driver contract --------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            try:
                import serial
            except ImportError:
                self._set_state(ABSENT, "pyserial is not installed")
                return
            self._link.begin(serial)
            self._stopping.clear()
            self._try_open()
            self._thread = threading.Thread(target=self._run, name=f"idcard-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None:
            # A read in progress ends by its own deadline; the loop then sees the flag.
            thread.join(timeout=self._opt("read_timeout_s") + 2 * self._opt("command_timeout_s") + 1)
        self._link.close()
        with self._lock:
            self._present, self._misses = False, 0
            self._port_error = ""
        self._set_state(STOPPED)

    def status(self) -> DeviceStatus:
        with self._lock:
            details: dict[str, Any] = {
                "port": self._port_path(),
                "cards_read": self._cards_read,
                "card_present": self._present,
                **self._link.counts(),
            }
            if self._sam_id:
                details["sam_id"] = self._sam_id
            return DeviceStatus(self._state, self._reason, details)

    def selftest(self) -> SelftestResult:
        if not self._link.is_open:
            with self._lock:
                reason = ": ".join(filter(None, (self._reason or "not started", self._port_error)))
            return SelftestResult(self.name, self.kind, ok=False, skipped=True,
                                  steps=(SelftestStep("port", False, reason),))
        steps = [SelftestStep("port", True, self._port_path())]
        timeout = self._opt("command_timeout_s")
        try:
            self._transact(SAM_STATUS, timeout)
            steps.append(SelftestStep("sam_status", True, "SAM ready"))
        except (DeviceError, OSError) as exc:
            steps.append(SelftestStep("sam_status", False, str(exc)))
        try:
            steps.append(SelftestStep("sam_id", True, self._read_sam_id(timeout)))
        except (DeviceError, OSError) as exc:
            steps.append(SelftestStep("sam_id", False, str(exc)))
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps), steps=tuple(steps))

    # -- the polling thread -------------------------------------------------------------------

    def _run(self) -> None:
        just_opened = self._link.is_open
        while not self._stopping.is_set():
            if not self._link.is_open:
                just_opened = self._try_open()
            if self._link.is_open:
                try:
                    if just_opened:
                        just_opened = False
                        self._hello()
                    self._poll()
                except OSError as exc:  # pyserial's SerialException is an OSError
                    self._lost(exc)
                except Exception as exc:  # a bug must not silently end card reading for the day
                    log.exception("%s: reader loop failed; reopening the port", self.name)
                    self._lost(OSError(f"internal error: {type(exc).__name__}: {exc}"))
            self._stopping.wait(self._opt("poll_interval_s"))

    def _hello(self) -> None:
        """Learn the SAM id once per opening, so status() can name the module in use."""
        try:
            self._read_sam_id(self._opt("command_timeout_s"))
        except DeviceError as exc:
            log.info("%s: SAM id not read: %s", self.name, exc)

    def _poll(self) -> None:
        command_timeout = self._opt("command_timeout_s")
        try:
            self._transact(FIND_CARD, command_timeout)
        except CardError:
            self._no_card()
            return
        except DeviceError as exc:
            log.debug("%s: find card: %s", self.name, exc)
            return
        missed, self._misses = self._misses, 0
        if self._present and not missed:
            return  # same placement: already reported
        # Not present, or present but a look just found nothing: a card swapped quicker than
        # the two misses that mean "removed" (0.35 s at the default poll) was never read.
        try:
            self._transact(SELECT_CARD, command_timeout)
            reply = self._transact(READ_TEXT_PHOTO, self._opt("read_timeout_s"))
        except DeviceError as exc:
            log.info("%s: card seen but not read (will retry): %s", self.name, exc)
            self._misses = missed  # a swap still unchecked is checked on the next look
            return
        try:
            identity = decode_identity(reply.data)
        except ProtocolError as exc:
            log.warning("%s: refused card data: %s", self.name, exc)
            self._link.refuse(Refusal(_BAD_CARD_DATA, len(reply.data)))
            self._misses = missed
            return
        with self._lock:
            swapped = self._present and identity.id_number != self._last_id
            if self._present and not swapped:
                return  # the same card after a flaky look: already reported
            self._present, self._last_id = True, identity.id_number
            self._cards_read += 1
        if swapped:
            log.info("%s: card swapped without a lift the reader could see", self.name)
            self.emit(CardRemoved(device=self.name, ts=self.clock()))
        log.info("%s: card read: %r", self.name, identity)
        self.emit(CardPresented(device=self.name, identity=identity, ts=self.clock()))

    def _no_card(self) -> None:
        if not self._present:
            return
        self._misses += 1
        if self._misses >= _REMOVAL_MISSES:
            with self._lock:
                self._present, self._misses = False, 0
            self.emit(CardRemoved(device=self.name, ts=self.clock()))

    def _read_sam_id(self, timeout: float) -> str:
        sam_id = format_sam_id(self._transact(SAM_ID, timeout).data)
        with self._lock:
            self._sam_id = sam_id
        return sam_id

    # -- what the line's answers mean ---------------------------------------------------------

    def _transact(self, code: tuple[int, int], timeout: float) -> Reply:
        """Send one command and return its successful reply; raise for anything else."""
        what = KNOWN_COMMANDS[code]
        exchange = self._link.exchange(code, timeout)
        if exchange.outcome == SILENT:
            if exchange.silent_run >= _SILENT_MISSES:
                self._set_state(FAULT, f"reader on {self._port_path()} does not answer")
            elif exchange.silent_run == 1:
                log.warning("%s: no reply to %s within %s s", self.name, what, timeout)
            raise DeviceTimeout(f"{what}: no reply within {timeout} s")
        if exchange.frame is None:  # DAMAGED: the reader did answer; the line spoilt it
            # Not a fault: the caller retries.
            raise ProtocolError(f"{what}: reply refused (damaged on the line)")
        if exchange.outcome == ANSWERED:
            if exchange.frame.sw3 == SW_SAM_FAULT:
                self._set_state(FAULT, "SAM module self-test failed")
            else:
                self._set_state(OK)
        # A stray's status is one this command cannot have: check_status raises UnexpectedStatus.
        return check_status(exchange.frame, code)

    def _stray(self, frame: Reply, code: tuple[int, int]) -> None:
        log.debug("%s: a reply that does not answer %s (SW3 %02X): a late answer?",
                  self.name, KNOWN_COMMANDS[code], frame.sw3)

    def _refused(self, refusal: Refusal, first: bool) -> None:
        """Logged at INFO once per run of refusals, the rest at DEBUG: ``status`` has the counts."""
        log.log(logging.INFO if first else logging.DEBUG, "%s: refused %d bytes (%s)%s", self.name,
                refusal.nbytes, refusal.reason, "; more are counted in status until a good reply" if first else "")
        self.emit(ReaderGarbage(device=self.name, reason=refusal.reason, count=refusal.nbytes,
                                ts=self.clock()))

    # -- the port ---------------------------------------------------------------------------

    def _try_open(self) -> bool:
        port = self._port_path()
        try:
            self._link.open(port, self._opt("baudrate"))
        except OSError as exc:
            self._port_failed(f"cannot open {port}: {exc}")
            return False
        with self._lock:
            self._port_error = ""
        log.info("%s: opened %s", self.name, port)
        self._set_state(OK)  # working: nothing to say; the port is in the status details
        return True

    def _lost(self, exc: OSError) -> None:
        self._link.close()
        with self._lock:
            was_present, self._present, self._misses = self._present, False, 0
        if was_present:
            self.emit(CardRemoved(device=self.name, ts=self.clock()))
        self._port_failed(f"lost {self._port_path()}: {exc}")

    def _port_failed(self, error: str) -> None:
        """The port is unusable. The reason is the same however it failed (lost, then not
        there to reopen, with an errno that may change from one retry to the next), so the
        retries publish nothing new; the error itself is logged when it differs from the last
        one and shown by selftest()."""
        with self._lock:
            new, self._port_error = error != self._port_error, error
        if new:
            log.info("%s: %s", self.name, error)
        self._set_state(ABSENT, f"port {self._port_path()} unavailable")


_SIM_COMMANDS = {"find": FIND_CARD, "select": SELECT_CARD, "read": READ_TEXT_PHOTO}
_SIM_ACTIONS = ("card <id_number> [name] [expired] | remove | garbage [hex bytes] | "
                f"fault <{'|'.join(FAULTS)}> [{'|'.join(_SIM_COMMANDS)}]")


class SimIdCardReader(SerialIdCardReader):
    """The serial driver, unchanged, talking to a simulated reader across a pseudo-terminal."""

    backend = "sim"
    options = {k: v for k, v in SerialIdCardReader.options.items() if k != "port"}

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config, bus, clock)
        self._sim: SamReaderSimulator | None = None
        self._pty: tuple[int, int] | None = None
        self._pty_path = ""

    def _port_path(self) -> str:
        return self._pty_path

    def start(self) -> None:
        with self._lock:
            if self._sim is None:
                master, slave = os.openpty()
                tty.setraw(slave)  # no echo, no line editing: the reader's bytes must pass untouched
                self._pty, self._pty_path = (master, slave), os.ttyname(slave)
                self._sim = SamReaderSimulator(master).start()
        super().start()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            sim, self._sim = self._sim, None
            fds, self._pty = self._pty, None
        if sim is not None:
            sim.stop()
        for fd in fds or ():
            os.close(fd)

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        sim = self._sim
        if sim is None:
            raise SimulationError(f"device {self.name!r} is not started")
        if action == "card":
            identity = _sim_identity(args)
            sim.set_card(identity)
            return {"card": mask_id(identity.id_number), "name": identity.name,
                    "valid_to": identity.valid_to, "id_valid": identity.id_valid}
        if action == "remove":
            if args:
                raise SimulationError("remove takes no arguments")
            had = sim.card is not None
            sim.set_card(None)
            return {"removed": had}
        if action == "garbage":
            try:
                noise = Fault(NOISE, junk=bytes.fromhex("".join(args))) if args else Fault(NOISE)
            except ValueError:
                raise SimulationError(f"garbage takes hex bytes, got {' '.join(args)!r}") from None
            sim.inject(noise)
            return {"garbage_bytes": len(noise.junk)}
        if action == "fault":
            fault = self._sim_fault(args)
            sim.inject(fault)
            return {"fault": fault.kind, "command": fault.command or "any"}
        raise SimulationError(f"unknown idcard action {action!r}; expected {_SIM_ACTIONS}")

    def _sim_fault(self, args: list[str]) -> Fault:
        """The next reply (to one command, if named) suffers ``kind``; a slow one comes after
        twice the time the driver waits for it, so it is always too late."""
        if not 1 <= len(args) <= 2 or args[0] not in FAULTS or (len(args) == 2 and args[1] not in _SIM_COMMANDS):
            raise SimulationError(f"fault takes a kind and optionally a command: {_SIM_ACTIONS}")
        code = _SIM_COMMANDS[args[1]] if len(args) == 2 else None
        wait = self._opt("read_timeout_s" if code in (None, READ_TEXT_PHOTO) else "command_timeout_s")
        return Fault(args[0], KNOWN_COMMANDS[code] if code else None,
                     delay_s=2 * wait if args[0] == SLOW else 0.0)


def _sim_identity(args: list[str]) -> Identity:
    """A plausible card from an ID number: birth date and sex are those the number encodes."""
    if not args:
        raise SimulationError(f"card needs an ID number: {_SIM_ACTIONS}")
    id_number = args[0].strip().upper()
    if not has_id_shape(id_number):
        raise SimulationError("card: the ID number must be 17 digits and a check character (digit or X)")
    birth = id_number[6:14]
    try:
        date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
    except ValueError:
        raise SimulationError(f"card: digits 7-14 of the ID number must be a birth date, got {birth}") from None
    rest = args[1:]
    expired = "expired" in rest
    names = [a for a in rest if a != "expired"]
    if len(names) > 1:
        raise SimulationError(f"card takes one name, got {len(names)}: {_SIM_ACTIONS}")
    name = names[0] if names else "测试考生"
    if len(name) > 15:
        raise SimulationError("card: a name holds at most 15 characters")
    sex_code = "1" if int(id_number[16]) % 2 else "2"
    return Identity(
        name=name,
        sex=SEX_NAMES[sex_code],
        sex_code=sex_code,
        nation=NATION_NAMES["01"],
        nation_code="01",
        birth=birth,
        address="北京市东城区考试路1号",
        id_number=id_number,
        issuer="北京市公安局东城分局",
        valid_from="20150101" if expired else "20250101",
        valid_to="20200101" if expired else "20350101",
    )
