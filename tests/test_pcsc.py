"""PC/SC reader driver against a real pcscd with vpcd and the test's own virtual cards.

Card taps, APDUs, reader choice, self-test and stop; pcscd restarts and reader
unplugging are in test_pcsc_recovery.py. The pcscd these tests own is set up by
tests/pcsc_harness.py (one per machine, so never in parallel).
"""
from __future__ import annotations

import sys
import logging
import threading
import time
from typing import Any, Iterator

import pytest

from examroom.drivers.bus import Bus
from examroom.drivers import driver_class
from examroom.drivers.base import ABSENT, OK, STOPPED, SimulationError
from examroom.drivers.events import CardPresented, CardRemoved, DeviceStateChanged, ReaderGarbage
from examroom.drivers.pcsc import SIM_ATR, PcscReader, SimPcscReader
from tests.pcsc_harness import VPCD_0 as READER_0, VPCD_CONF, Pcscd, Recorder, own_pcscd
from tests.pcsc_harness import started as _started
from tests.vcard import DEFAULT_ATR

SELECT = "00A4040007A0000000031010"
READ_BINARY = "00B0000010"
APP_FILE = bytes.fromhex("2024A1B2C3D4E5F60011223344556677")


@pytest.fixture(scope="module")
def pcscd() -> Iterator[Pcscd]:
    yield from own_pcscd({"vpcd": VPCD_CONF}, expect=[READER_0])


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


@pytest.mark.pcsc
def test_the_log_says_ok_when_it_works_and_stopped_only_when_stopped(pcscd: Pcscd, make_reader: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """It logged "stopped" at every start and never "ok", though it worked."""
    pcscd.ensure_running()
    caplog.set_level(logging.INFO, logger="examroom.drivers")
    driver, rec = make_reader()
    driver.start()
    rec.wait_for(DeviceStateChanged, state=OK)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("door-reader: ")]
    assert said == ["door-reader: ok"]
    driver.stop()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("door-reader: ")]
    assert said == ["door-reader: ok", "door-reader: stopped"]
