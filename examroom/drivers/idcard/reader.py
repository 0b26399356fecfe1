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
    ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceError, DeviceStatus, DeviceTimeout, Driver, Option,
    ProtocolError, SelftestResult, SelftestStep, SimulationError, positive,
)
from examroom.drivers.events import CardPresented, CardRemoved, Identity, ReaderGarbage
from examroom.drivers.gb11643 import has_id_shape, is_valid, mask_id
from examroom.drivers.idcard.sam_protocol import (
    BAD_CHECKSUM, BAD_LENGTH, FIND_CARD, KNOWN_COMMANDS, NATION_NAMES, READ_TEXT_PHOTO, SAM_ID, SAM_STATUS,
    SELECT_CARD, SEX_NAMES, SHORT_FRAME, SW_SAM_FAULT, CardError, FrameDecoder, Refusal, Reply, answers,
    check_status, decode_identity, encode_command, format_sam_id, reply_decoder,
)
from examroom.drivers.idcard.sam_simulator import FAULTS, NOISE, SLOW, Fault, SamReaderSimulator

log = logging.getLogger(__name__)

_READ_SLICE_S = 0.05   # one serial read blocks at most this long, so deadlines are kept
_REMOVAL_MISSES = 2    # a single failed find can be RF noise; two in a row mean the card left
_SILENT_MISSES = 2     # one lost or late reply is the line; two in a row mean the reader is not there
_UNEXPECTED_FRAME = "unexpected_frame"
_BAD_CARD_DATA = "bad_card_data"
_MANGLED = (BAD_CHECKSUM, BAD_LENGTH, SHORT_FRAME)  # refusals that mean "our reply, damaged"


def _seconds(default: float, meaning: str) -> Option:
    return Option((int, float), default, check=positive, expected="a number of seconds > 0", help=meaning)


class SerialIdCardReader(Driver):
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
        self._io = threading.RLock()  # one command/reply exchange at a time on the line
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial: Any = None      # serial.Serial while the port is open
        self._serial_mod: Any = None  # the pyserial module, imported by start()
        self._decoder: FrameDecoder[Reply] | None = None
        self._port_error = ""  # why the port last failed to open or work; "" once it opens
        self._present = False
        self._misses = 0
        self._cards_read = 0
        self._garbage_bytes = 0
        self._refusals: dict[str, int] = {}  # reason -> times
        self._timeouts = 0                   # exchanges that got no reply at all in time
        self._silent = 0                     # ... of them in a row
        self._refusing = False               # refusals since the last whole reply (log once)
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
            self._serial_mod = serial
            self._decoder = reply_decoder(self._refused)
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
        self._close()
        with self._lock:
            self._present, self._misses, self._silent = False, 0, 0
            self._port_error = ""
        self._set_state(STOPPED)

    def status(self) -> DeviceStatus:
        with self._lock:
            details: dict[str, Any] = {
                "port": self._port_path(),
                "cards_read": self._cards_read,
                "card_present": self._present,
                "garbage_count": sum(self._refusals.values()),
                "garbage_bytes": self._garbage_bytes,
                "refused": dict(self._refusals),
                "timeouts": self._timeouts,
            }
            if self._sam_id:
                details["sam_id"] = self._sam_id
            return DeviceStatus(self._state, self._reason, details)

    def selftest(self) -> SelftestResult:
        if self._serial is None:
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
        just_opened = self._serial is not None
        while not self._stopping.is_set():
            if self._serial is None:
                just_opened = self._try_open()
            if self._serial is not None:
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
        self._misses = 0
        if self._present:
            return  # same placement: already reported
        try:
            self._transact(SELECT_CARD, command_timeout)
            reply = self._transact(READ_TEXT_PHOTO, self._opt("read_timeout_s"))
        except DeviceError as exc:
            log.info("%s: card seen but not read (will retry): %s", self.name, exc)
            return
        try:
            identity = decode_identity(reply.data)
        except ProtocolError as exc:
            log.warning("%s: refused card data: %s", self.name, exc)
            self._refused(Refusal(_BAD_CARD_DATA, len(reply.data)))
            return
        with self._lock:
            self._present = True
            self._cards_read += 1
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

    # -- the line ---------------------------------------------------------------------------

    def _transact(self, code: tuple[int, int], timeout: float) -> Reply:
        """Send one command and return its successful reply; raise for anything else."""
        what = KNOWN_COMMANDS[code]
        with self._io:
            ser, decoder = self._serial, self._decoder
            if ser is None or decoder is None:
                raise DeviceAbsent(f"port {self._port_path()} is not open")
            self._discard_stale(ser, decoder)
            ser.write(encode_command(code))
            deadline = time.monotonic() + timeout
            mangled_before = _mangled(decoder)
            reply, stray = self._await_answer(ser, decoder, code, deadline, mangled_before)
            mangled = _mangled(decoder) > mangled_before
        if reply is None and mangled:
            # The reader did answer; the line damaged it. Not a fault: the caller retries.
            self._heard()
            raise ProtocolError(f"{what}: reply refused (damaged on the line)")
        if reply is None and stray is not None:
            self._heard()
            check_status(stray, code)  # a status this command cannot have: raises UnexpectedStatus
        if reply is None:
            self._missed(what, timeout)
            raise DeviceTimeout(f"{what}: no reply within {timeout} s")
        self._heard(whole=True)
        if reply.sw3 == SW_SAM_FAULT:
            self._set_state(FAULT, "SAM module self-test failed")
        else:
            self._set_state(OK)
        return check_status(reply, code)

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
                log.debug("%s: a reply that does not answer %s (SW3 %02X): a late answer?",
                          self.name, KNOWN_COMMANDS[code], frame.sw3)
                self._refused(Refusal(_UNEXPECTED_FRAME, frame.size))
        for extra in pending:
            self._refused(Refusal(_UNEXPECTED_FRAME, extra.size))
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

    def _heard(self, whole: bool = False) -> None:
        """The reader answered (``whole``: with a reply we could use, which ends a run of
        refusals; a damaged answer still shows the reader is there)."""
        with self._lock:
            self._silent = 0
            if whole:
                self._refusing = False

    def _missed(self, what: str, timeout: float) -> None:
        with self._lock:
            self._timeouts += 1
            self._silent += 1
            silent = self._silent
        if silent >= _SILENT_MISSES:
            self._set_state(FAULT, f"reader on {self._port_path()} does not answer")
        elif silent == 1:
            log.warning("%s: no reply to %s within %s s", self.name, what, timeout)

    def _discard_stale(self, ser: Any, decoder: FrameDecoder[Reply]) -> None:
        """Whatever is on the line before we ask belongs to no question of ours."""
        stale = ser.read(ser.in_waiting) if ser.in_waiting else b""
        for frame in decoder.feed(stale) + decoder.flush():
            self._refused(Refusal(_UNEXPECTED_FRAME, frame.size))

    def _refused(self, refusal: Refusal) -> None:
        """Counted every time; logged at INFO once per run of refusals (a noisy line refuses
        a few frames a second), the rest at DEBUG: ``status`` has the counts."""
        with self._lock:
            self._garbage_bytes += refusal.nbytes
            self._refusals[refusal.reason] = self._refusals.get(refusal.reason, 0) + 1
            first, self._refusing = not self._refusing, True
        log.log(logging.INFO if first else logging.DEBUG, "%s: refused %d bytes (%s)%s", self.name,
                refusal.nbytes, refusal.reason, "; more are counted in status until a good reply" if first else "")
        self.emit(ReaderGarbage(device=self.name, reason=refusal.reason, count=refusal.nbytes,
                                ts=self.clock()))

    # -- the port ---------------------------------------------------------------------------

    def _try_open(self) -> bool:
        port = self._port_path()
        try:
            ser = self._serial_mod.Serial(port, baudrate=self._opt("baudrate"), timeout=_READ_SLICE_S,
                                          write_timeout=1.0, exclusive=True)
        except OSError as exc:
            self._port_failed(f"cannot open {port}: {exc}")
            return False
        with self._io:
            self._serial = ser
        with self._lock:
            self._port_error = ""
        self._heard()
        log.info("%s: opened %s", self.name, port)
        self._set_state(OK)  # working: nothing to say; the port is in the status details
        return True

    def _lost(self, exc: OSError) -> None:
        self._close()
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

    def _close(self) -> None:
        with self._io:
            ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except OSError:
                pass  # the device is already gone; nothing left to release


def _mangled(decoder: FrameDecoder[Reply]) -> int:
    return sum(decoder.refused.get(reason, 0) for reason in _MANGLED)


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
        id_valid=is_valid(id_number),
    )
