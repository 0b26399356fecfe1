"""ID card reader driver over a real pseudo-terminal, with the reader simulator on the other end.

The port the driver opens is a symlink to the pty slave, so a test can make the
device node vanish and come back as a USB-serial adapter does when unplugged.
"""
from __future__ import annotations

import logging
import os
import threading
import tty
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers import driver_class
from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, SimulationError
from examroom.drivers.events import CardPresented, CardRemoved, DeviceStateChanged, Identity, ReaderGarbage
from examroom.drivers.idcard.reader import SerialIdCardReader, SimIdCardReader
from examroom.drivers.idcard.sam_protocol import BAD_CHECKSUM, GARBAGE, SHORT_FRAME
from examroom.drivers.idcard.sam_simulator import CORRUPT, DROP, NOISE, SLOW, TRUNCATE, Fault, SamReaderSimulator

WAIT = 5.0
ID_NUMBER = "11010519491231002X"
ZHANG = Identity(name="张三丰", sex="男", sex_code="1", nation="汉", nation_code="01", birth="19491231",
                 address="北京市东城区考试路1号",
                 id_number=ID_NUMBER, issuer="北京市公安局东城分局", valid_from="20150101",
                 valid_to="20350101", photo_wlt=bytes(range(256)) * 4)
LI = Identity(name="李四", sex="女", sex_code="2", nation="壮", nation_code="08", birth="20060215",
              address="广西南宁市青秀区",
              id_number="450103200602150027", issuer="南宁市公安局青秀分局", valid_from="20220301",
              valid_to="20270301", photo_wlt=bytes(1024))  # wrong check digit


class Events:
    """Every event the driver published, with a wait that wakes when a new one arrives."""

    def __init__(self, bus: Bus) -> None:
        self.items: list[DeviceEvent] = []
        self._cond = threading.Condition()
        bus.subscribe(DeviceEvent, self._add)

    def _add(self, event: DeviceEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def of(self, kind: type) -> list[Any]:
        with self._cond:
            return [e for e in self.items if isinstance(e, kind)]

    def wait(self, kind: type, count: int = 1, where: Callable[[Any], bool] = lambda e: True) -> list[Any]:
        def found() -> list[Any]:
            return [e for e in self.items if isinstance(e, kind) and where(e)]
        with self._cond:
            assert self._cond.wait_for(lambda: len(found()) >= count, WAIT), \
                f"waited {WAIT}s for {count} {kind.__name__}; got {self.items}"
            return found()

    def states(self) -> list[str]:
        return [e.state for e in self.of(DeviceStateChanged)]


class Line:
    """A pty pair with the simulator on the master and a symlink (the 'device node') to the slave."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        link.symlink_to(os.ttyname(self.slave))
        self.sim = SamReaderSimulator(self.master).start()

    def unplug(self) -> None:
        self.sim.stop()
        self.link.unlink()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def events(bus: Bus) -> Events:
    return Events(bus)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    ln = Line(tmp_path / "ttyID0")
    yield ln
    if ln.link.is_symlink():
        ln.unplug()


def config(port: Path | str, **over: Any) -> dict[str, Any]:
    cfg = {k: o.default for k, o in SerialIdCardReader.options.items()}
    cfg.update(port=str(port), poll_interval_s=0.02, read_timeout_s=1.0, command_timeout_s=0.2)
    cfg.update(over)
    return cfg


@pytest.fixture
def reader(line: Line, bus: Bus, events: Events) -> Iterator[SerialIdCardReader]:
    drv = SerialIdCardReader("idcard1", config(line.link), bus)
    drv.start()
    yield drv
    drv.stop()


def test_registry_names_these_classes() -> None:
    assert driver_class("idcard", "serial") is SerialIdCardReader
    assert driver_class("idcard", "sim") is SimIdCardReader
    assert SerialIdCardReader.options["port"].required
    assert "port" not in SimIdCardReader.options


def test_constructor_opens_nothing(line: Line, bus: Bus, events: Events) -> None:
    drv = SerialIdCardReader("idcard1", config(line.link), bus)
    assert drv.status().state == STOPPED
    assert line.sim.served.total() == 0 and events.items == []


def test_card_read_gives_card_presented_with_the_identity(reader: SerialIdCardReader, line: Line,
                                                          events: Events) -> None:
    assert reader.status().state == OK
    line.sim.set_card(ZHANG)
    [event] = events.wait(CardPresented)
    assert event.device == "idcard1"
    assert event.identity == ZHANG
    assert event.identity.photo_wlt == ZHANG.photo_wlt
    status = reader.status()
    assert status.details["cards_read"] == 1 and status.details["card_present"] is True
    assert status.details["port"] == str(line.link)


def test_a_quick_swap_gives_the_second_card_its_verdict(reader: SerialIdCardReader, line: Line,
                                                       events: Events) -> None:
    """A second card put down 0.35 s after the first was lifted is one missed look at the default
    poll, not the two that mean "removed": it was taken for the first card and never read."""
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    line.sim.set_card(LI, lift_finds=1)
    presented = events.wait(CardPresented, 2)
    assert presented[1].identity == LI
    assert [type(e).__name__ for e in events.of((CardPresented, CardRemoved))] == \
        ["CardPresented", "CardRemoved", "CardPresented"]
    reads = line.sim.served["read text and photo"]
    finds = line.sim.served["find card"]
    assert line.sim.wait_served("find card", finds + 10, WAIT)  # it stays: no third verdict
    assert len(events.of(CardPresented)) == 2 and line.sim.served["read text and photo"] == reads


def test_a_flaky_look_at_the_same_card_is_no_new_verdict(reader: SerialIdCardReader, line: Line,
                                                         events: Events) -> None:
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    line.sim.set_card(ZHANG, lift_finds=1)  # one look finds nothing, the same card is there again
    reads = line.sim.served["read text and photo"]
    assert line.sim.wait_served("read text and photo", reads + 1, WAIT)  # it is checked...
    finds = line.sim.served["find card"]
    assert line.sim.wait_served("find card", finds + 5, WAIT)
    assert len(events.of(CardPresented)) == 1 and not events.of(CardRemoved)  # ...and is the same card


def test_one_event_per_placement_and_removal(reader: SerialIdCardReader, line: Line, events: Events) -> None:
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    finds = line.sim.served["find card"]
    assert line.sim.wait_served("find card", finds + 10, WAIT)  # ten more looks while it stays
    assert len(events.of(CardPresented)) == 1
    assert line.sim.served["read text and photo"] == 1  # not even read again

    line.sim.set_card(None)
    events.wait(CardRemoved)
    assert reader.status().details["card_present"] is False

    line.sim.set_card(LI)
    presented = events.wait(CardPresented, 2)
    assert presented[1].identity == LI and presented[1].identity.id_valid is False
    assert [type(e).__name__ for e in events.of((CardPresented, CardRemoved))] == \
        ["CardPresented", "CardRemoved", "CardPresented"]


def test_swapped_card_is_a_new_placement(reader: SerialIdCardReader, line: Line, events: Events) -> None:
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    line.sim.set_card(LI)  # lifted and replaced between two looks of the reader
    assert events.wait(CardPresented, 2)[1].identity == LI
    assert [type(e).__name__ for e in events.of((CardPresented, CardRemoved))] == \
        ["CardPresented", "CardRemoved", "CardPresented"]
    line.sim.set_card(None)
    line.sim.set_card(LI)  # the same card put straight back: a placement again
    assert events.wait(CardPresented, 3)[2].identity == LI


READ = "read text and photo"
UNEXPECTED = "unexpected_frame"


@pytest.mark.parametrize("fault,reason,rereads,missed", [
    (Fault(TRUNCATE, READ), SHORT_FRAME, True, False),
    (Fault(TRUNCATE, READ, keep=3), GARBAGE, True, True),   # cut inside the preamble: noise, no reply
    (Fault(CORRUPT, READ), BAD_CHECKSUM, True, False),
    (Fault(NOISE, READ, junk=b"\x00\xffnoise\x13"), GARBAGE, False, False),  # the frame behind is whole
    (Fault(SLOW, READ, delay_s=1.0), UNEXPECTED, True, True),  # it comes after we gave up on it
    (Fault(DROP, READ), None, True, True),
], ids=["truncated", "truncated-in-preamble", "bad-checksum", "garbage-before", "slow", "no-reply"])
def test_a_damaged_card_read_is_refused_counted_and_the_next_card_read(
        line: Line, bus: Bus, events: Events, caplog: pytest.LogCaptureFixture,
        fault: Fault, reason: str | None, rereads: bool, missed: bool) -> None:
    caplog.set_level(logging.INFO, logger="examroom.drivers.idcard.reader")
    drv = SerialIdCardReader("idcard1", config(line.link, read_timeout_s=0.3), bus)
    drv.start()
    try:
        line.sim.inject(fault)
        line.sim.set_card(ZHANG)
        assert line.sim.wait_faulted(fault.kind, 1, WAIT)
        [event] = events.wait(CardPresented)
        assert event.identity == ZHANG
        # The damaged reply was not believed: the card had to be read again (garbage aside, whose
        # frame behind it was whole). Once read, the card is not read again while it stays.
        assert line.sim.received[READ] == (2 if rereads else 1)
        details = drv.status().details
        if reason is not None:
            refused = events.wait(ReaderGarbage, where=lambda e: e.reason == reason)
            assert details["refused"][reason] >= 1 and details["garbage_count"] >= len(refused)
            assert f"({reason})" in caplog.text
        if missed:
            assert details["timeouts"] >= 1
            assert f"no reply to {READ} within 0.3 s" in caplog.text
        else:
            assert details["timeouts"] == 0
        if fault.kind != SLOW:  # a slow reply may land after the next find too: two misses in a row
            assert events.states() == [OK]  # one damaged or lost reply is the line, not a faulty reader
        assert ID_NUMBER not in caplog.text

        line.sim.set_card(LI)  # and the next candidate's card reads as usual
        assert events.wait(CardPresented, 2)[1].identity == LI
        assert [e.identity for e in events.of(CardPresented)] == [ZHANG, LI]
    finally:
        drv.stop()


def test_garbage_run_is_reported_once_with_its_size(reader: SerialIdCardReader, line: Line,
                                                    events: Events) -> None:
    line.sim.inject(Fault(NOISE, junk=b"\x00\xffnoise\x13"))
    [event] = events.wait(ReaderGarbage, where=lambda e: e.reason == GARBAGE)
    assert event.count == 8
    details = reader.status().details
    assert details["garbage_count"] == 1 and details["garbage_bytes"] == 8
    assert details["refused"] == {GARBAGE: 1}


def test_a_late_reply_is_never_taken_for_the_next_card(line: Line, bus: Bus, events: Events) -> None:
    """A read answered late carries the card that was there when it was asked; by then another
    card may lie on the reader. The late frame must be refused, not believed as the new card's."""
    drv = SerialIdCardReader("idcard1", config(line.link, read_timeout_s=0.3), bus)
    drv.start()
    try:
        line.sim.inject(Fault(SLOW, READ, delay_s=1.0))
        line.sim.set_card(ZHANG)
        assert line.sim.wait_received(READ, 1, WAIT)  # ZHANG's text is made, and on its way slowly
        line.sim.set_card(LI)  # ZHANG lifted, LI put down before the answer arrives
        assert events.wait(CardPresented)[0].identity == LI
        assert line.sim.faulted[SLOW] == 1  # the late frame came before LI's, and was refused
        assert [e.identity for e in events.of(CardPresented)] == [LI]
        assert drv.status().details["refused"][UNEXPECTED] >= 1
    finally:
        drv.stop()


def test_events_carry_the_drivers_clock(line: Line, bus: Bus, events: Events) -> None:
    moved = 1_900_000_000.0  # 2030: far from the wall clock, as in a test that moves time
    drv = SerialIdCardReader("idcard1", config(line.link), bus, clock=lambda: moved)
    drv.start()
    try:
        line.sim.inject(Fault(NOISE))
        line.sim.set_card(ZHANG)
        events.wait(CardPresented)
        events.wait(ReaderGarbage)
        line.sim.set_card(None)
        events.wait(CardRemoved)
    finally:
        drv.stop()
    kinds = {type(e) for e in events.items}
    assert {DeviceStateChanged, CardPresented, ReaderGarbage, CardRemoved} <= kinds
    assert {e.ts for e in events.items} == {moved}


def test_reader_absent_at_start(tmp_path: Path, bus: Bus, events: Events) -> None:
    drv = SerialIdCardReader("idcard1", config(tmp_path / "ttyUSB9"), bus)
    drv.start()  # must not raise
    try:
        status = drv.status()
        assert status.state == ABSENT and "ttyUSB9" in status.reason
        assert events.states() == [ABSENT]
        result = drv.selftest()
        assert result.skipped and not result.ok
        assert result.steps[0].name == "port" and "ttyUSB9" in result.steps[0].detail
    finally:
        drv.stop()


def test_absent_reader_is_picked_up_when_plugged_in(tmp_path: Path, bus: Bus, events: Events) -> None:
    link = tmp_path / "ttyID0"
    drv = SerialIdCardReader("idcard1", config(link), bus)
    drv.start()
    line = None
    try:
        assert drv.status().state == ABSENT
        line = Line(link)
        events.wait(DeviceStateChanged, where=lambda e: e.state == OK)
        status = drv.status()  # working: no reason (the absence's is gone), the port in the details
        assert (status.state, status.reason, status.details["port"]) == (OK, "", str(link))
        line.sim.set_card(ZHANG)
        assert events.wait(CardPresented)[0].identity == ZHANG
    finally:
        drv.stop()
        if line is not None:
            line.unplug()


def test_port_vanishing_and_coming_back(reader: SerialIdCardReader, line: Line, events: Events,
                                        tmp_path: Path) -> None:
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    line.unplug()
    events.wait(DeviceStateChanged, where=lambda e: e.state == ABSENT)
    assert reader.status().state == ABSENT
    events.wait(CardRemoved)  # whatever was on a reader that is gone is gone too

    again = Line(line.link)
    try:
        events.wait(DeviceStateChanged, count=2, where=lambda e: e.state == OK)
        assert events.states() == [OK, ABSENT, OK]
        again.sim.set_card(LI)
        presented = events.wait(CardPresented, 2)
        assert presented[1].identity == LI
    finally:
        reader.stop()
        again.unplug()


def test_silent_reader_is_a_fault_until_it_answers(reader: SerialIdCardReader, line: Line,
                                                   events: Events) -> None:
    line.sim.stop()  # the port stays, the reader behind it stops answering
    events.wait(DeviceStateChanged, where=lambda e: e.state == FAULT)
    assert "does not answer" in reader.status().reason
    line.sim.start()
    events.wait(DeviceStateChanged, count=2, where=lambda e: e.state == OK)
    assert reader.status().state == OK


def test_one_lost_reply_is_the_line_two_in_a_row_a_fault(reader: SerialIdCardReader, line: Line,
                                                          events: Events) -> None:
    line.sim.inject(Fault(DROP, "find card"))
    line.sim.inject(Fault(DROP, "find card"))
    events.wait(DeviceStateChanged, where=lambda e: e.state == FAULT)
    assert line.sim.faulted[DROP] == 2 and reader.status().details["timeouts"] == 2
    events.wait(DeviceStateChanged, where=lambda e: e.state == OK, count=2)  # the next find answers


def test_selftest_ok(reader: SerialIdCardReader, line: Line) -> None:
    result = reader.selftest()
    assert result.ok and not result.skipped
    assert [s.name for s in result.steps] == ["port", "sam_status", "sam_id"]
    assert result.steps[2].detail == "0501000020170817000000010000002A"
    assert reader.status().details["sam_id"] == result.steps[2].detail


def test_selftest_reports_a_failed_sam(reader: SerialIdCardReader, line: Line, events: Events) -> None:
    line.sim.sam_ok = False
    result = reader.selftest()
    assert not result.ok and not result.skipped
    assert not result.steps[1].ok and "self-test failed" in result.steps[1].detail
    events.wait(DeviceStateChanged, where=lambda e: e.state == FAULT)


def test_stop_is_idempotent(reader: SerialIdCardReader, line: Line) -> None:
    reader.stop()
    reader.stop()
    assert reader.status().state == STOPPED
    assert not [t for t in threading.enumerate() if t.name == "idcard-idcard1"]
    assert reader.selftest().skipped


def test_full_id_number_never_logged(reader: SerialIdCardReader, line: Line, events: Events,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    line.sim.set_card(ZHANG)
    events.wait(CardPresented)
    assert "110105********002X" in caplog.text
    assert ID_NUMBER not in caplog.text


# -- the sim backend --------------------------------------------------------------------------

@pytest.fixture
def sim_reader(bus: Bus, events: Events) -> Iterator[SimIdCardReader]:
    drv = SimIdCardReader("idcard1", {"poll_interval_s": 0.02}, bus)
    drv.start()
    yield drv
    drv.stop()


def test_sim_backend_reads_simulated_cards_through_the_serial_path(sim_reader: SimIdCardReader,
                                                                   events: Events) -> None:
    assert sim_reader.status().state == OK
    assert sim_reader.status().details["port"].startswith("/dev/pts/")
    out = sim_reader.simulate("card", ["11010519491231002x", "王五"])
    assert out == {"card": "110105********002X", "name": "王五", "valid_to": "20350101", "id_valid": True}
    identity = events.wait(CardPresented)[0].identity
    assert (identity.name, identity.birth, identity.valid_to) == ("王五", "19491231", "20350101")
    # digit 17 is even: a woman; the sim's cards are 汉 (01)
    assert (identity.sex, identity.sex_code, identity.nation, identity.nation_code) == ("女", "2", "汉", "01")
    assert identity.id_number == ID_NUMBER and identity.id_valid

    assert sim_reader.simulate("remove", []) == {"removed": True}
    events.wait(CardRemoved)

    assert sim_reader.simulate("garbage", ["01", "02ff"]) == {"garbage_bytes": 3}
    assert events.wait(ReaderGarbage)[0].count == 3

    sim_reader.simulate("card", ["41010519900101123X", "expired"])
    late = events.wait(CardPresented, 2)[1].identity
    assert late.valid_to < "20250101" and late.name == "测试考生" and (late.sex, late.sex_code) == ("男", "1")
    assert sim_reader.selftest().ok


def test_sim_backend_acts_out_faults_on_its_own_line(bus: Bus, events: Events) -> None:
    drv = SimIdCardReader("idcard1", {"poll_interval_s": 0.02, "read_timeout_s": 0.3}, bus)
    with drv:
        assert drv.simulate("fault", ["truncate", "read"]) == {"fault": TRUNCATE, "command": READ}
        assert drv.simulate("fault", ["no_reply"]) == {"fault": DROP, "command": "any"}
        drv.simulate("card", [ID_NUMBER])
        assert events.wait(CardPresented)[0].identity.id_number == ID_NUMBER
        details = drv.status().details
        assert details["refused"][SHORT_FRAME] == 1 and details["timeouts"] >= 1
        assert len(events.of(CardPresented)) == 1


@pytest.mark.parametrize("action,args,words", [
    ("dance", [], "unknown idcard action"),
    ("card", [], "needs an ID number"),
    ("card", ["1234"], "17 digits"),
    ("card", ["110105194913310021"], "birth date"),
    ("card", [ID_NUMBER, "a", "b"], "one name"),
    ("remove", ["now"], "no arguments"),
    ("garbage", ["zz"], "hex bytes"),
    ("fault", [], "fault takes"),
    ("fault", ["melt"], "fault takes"),
    ("fault", ["slow", "write"], "fault takes"),
    ("fault", ["slow", "read", "now"], "fault takes"),
])
def test_sim_refuses_bad_actions(sim_reader: SimIdCardReader, action: str, args: list[str], words: str) -> None:
    with pytest.raises(SimulationError, match=words) as info:
        sim_reader.simulate(action, args)
    assert ID_NUMBER not in str(info.value)


def test_sim_needs_start_and_stops_cleanly(bus: Bus) -> None:
    drv = SimIdCardReader("idcard1", {}, bus)
    with pytest.raises(SimulationError, match="not started"):
        drv.simulate("remove", [])
    with drv:
        assert drv.status().state == OK
    assert drv.status().state == STOPPED
    drv.stop()
