"""Door feedback: lights and buzzer on gpiozero's own MockFactory pins, and the proctor's page.

Pin tests wait on pin changes (a MockPin that notifies), never on fixed sleeps, and read
the pattern's timing off MockPin.states (each change with the time since the previous).
The page is opened in headless Chromium (tests/browser.py) against a real agent process.
"""
from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from examroom.agent.config import SCHEMA
from examroom.agent.door import Door, DoorSignals, pattern, signal_for
from examroom.agent.door_page import LABELS, DoorPage
from examroom.contract.vocabulary import Verdict
from tests.agentproc import AgentProcess
from tests.checkin_station import OUTSIDER, card, station
from tests.room_config import load_candidates, room_config

GREEN, RED, AMBER, BUZZER = 5, 6, 13, 19
FAST = {"backend": "gpio", "green_pin": GREEN, "red_pin": RED, "amber_pin": AMBER, "buzzer_pin": BUZZER,
        "admitted_s": 0.3, "refused_s": 0.6, "attention_s": 0.4, "blink_s": 0.1, "beep_s": 0.1, "beeps": 2}
DEFAULTS = {k: o.default for k, o in SCHEMA["door"].items()}
TOLERANCE = 0.07  # a thread's timer on a loaded test machine; the patterns differ by 0.1 s and more
CHANGED = threading.Condition()


class WatchedPin(MockPin):
    """A MockPin that tells waiting tests about each change of its state."""

    def _change_state(self, value):
        with CHANGED:
            changed = super()._change_state(value)
            CHANGED.notify_all()
        return changed


class BrokenPin(MockPin):
    """An output that opens but fails when driven, as a pin whose driver chip died does."""

    def _set_state(self, value):
        if value:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


@pytest.fixture
def factory():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory(pin_class=WatchedPin)
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = previous


def levels(factory, pin: int) -> list[bool]:
    return [s.state for s in factory.pin(pin).states]


def wait_levels(factory, pin: int, expected: list[bool], timeout: float = 5.0) -> list:
    """Wait until the pin has gone through ``expected`` (from its first state); its states."""
    with CHANGED:
        assert CHANGED.wait_for(lambda: levels(factory, pin) == expected, timeout), (pin, levels(factory, pin))
    return factory.pin(pin).states


@pytest.fixture
def signals(factory):
    s = DoorSignals(dict(FAST), lambda k, d: None)
    s.start()
    yield s
    s.stop()


def play(signals, verdict: str) -> None:
    signals.on_event("checkin", {"verdict": verdict, "seat": "3"})


def test_admitted_lights_green_for_its_time(factory, signals):
    play(signals, "admitted")
    states = wait_levels(factory, GREEN, [False, True, False])
    assert states[2].timestamp == pytest.approx(FAST["admitted_s"], abs=TOLERANCE)
    assert levels(factory, RED) == levels(factory, AMBER) == levels(factory, BUZZER) == [False]


@pytest.mark.parametrize("verdict", ["not_in_room", "late_refused", "unknown_card", "invalid_id", "expired_card",
                                     "outside_window", "plan_unverified", "reentry_refused"])
def test_a_refusal_is_red_with_two_beeps(factory, signals, verdict):
    play(signals, verdict)
    red = wait_levels(factory, RED, [False, True, False])
    beeps = wait_levels(factory, BUZZER, [False, True, False, True, False])
    assert red[2].timestamp == pytest.approx(FAST["refused_s"], abs=TOLERANCE)
    assert [s.timestamp for s in beeps[2:]] == pytest.approx([FAST["beep_s"]] * 3, abs=TOLERANCE)  # on, off, on
    assert levels(factory, GREEN) == [False]


@pytest.mark.parametrize("verdict", ["suspect", "duplicate"])
def test_suspect_and_duplicate_blink_amber(factory, signals, verdict):
    play(signals, verdict)
    amber = wait_levels(factory, AMBER, [False, True, False, True, False])
    assert [s.timestamp for s in amber[2:]] == pytest.approx([FAST["blink_s"]] * 3, abs=TOLERANCE)
    assert levels(factory, RED) == levels(factory, BUZZER) == [False]


def test_a_newer_verdict_cuts_the_current_pattern_short(factory, signals):
    play(signals, "admitted")
    wait_levels(factory, GREEN, [False, True])
    play(signals, "not_in_room")
    green = wait_levels(factory, GREEN, [False, True, False])
    wait_levels(factory, RED, [False, True, False])
    assert green[2].timestamp < FAST["admitted_s"] - 0.1


def test_leaving_shows_nothing_and_every_verdict_has_a_light_and_a_label():
    assert signal_for("left") is None and signal_for("handed_in") is None
    assert signal_for("a_verdict_from_the_future") == "red"  # stop is the safe signal
    assert set(LABELS) == {v.value for v in Verdict}


def test_the_default_patterns_are_a_second_of_green_and_three_of_red_with_two_beeps():
    wired = frozenset({"green", "red", "amber", "buzzer"})
    assert pattern("green", DEFAULTS, wired) == [(frozenset({"green"}), 1.0)]
    red = pattern("red", DEFAULTS, wired)
    assert sum(s for _, s in red) == pytest.approx(3.0) and sum("buzzer" in on for on, _ in red) == 2
    assert all("red" in on for on, _ in red)
    amber = pattern("amber", DEFAULTS, wired)
    assert {frozenset({"amber"}), frozenset()} == {on for on, _ in amber}
    assert pattern("amber", DEFAULTS, frozenset({"red"}))[0][0] == frozenset({"red"})  # no amber LED


def test_a_failing_pin_does_not_stop_check_in(factory, plan, schedule, clock, tmp_path):
    factory.pin(RED, pin_class=BrokenPin)
    emitted: list[tuple[str, dict]] = []
    door = Door(DoorSignals(dict(FAST), lambda k, d: emitted.append((k, d))), None)
    door.start()

    def emit(kind, data):
        emitted.append((str(kind), data))
        door.on_event(kind, data)  # as Agent.emit fans out

    try:
        st = station(plan, schedule, emit, clock, tmp_path / "records")
        st.book.start()
        assert st.on_card(card(id_number=OUTSIDER))["verdict"] == "not_in_room"  # the red pin fails
        with CHANGED:
            assert CHANGED.wait_for(lambda: door.alerts(), 5)
        assert st.on_card(card(1))["verdict"] == "admitted"
        wait_levels(factory, GREEN, [False, True, False])  # the other outputs go on
        [fault] = [d for k, d in emitted if k == "device"]
        assert (fault["device"], fault["state"]) == ("door", "fault") and "red output" in fault["reason"]
        assert "door page still shows every verdict" in door.alerts()[0]
    finally:
        door.stop()


def test_pins_that_cannot_be_opened_are_an_alert_not_a_crash(factory, monkeypatch):
    same = DoorSignals({**FAST, "red_pin": GREEN}, lambda k, d: None)  # two outputs on one pin
    same.start()
    assert same.status()["state"] == "fault" and "GPIOPinInUse" in same.alerts()[0]
    same.on_event("checkin", {"verdict": "admitted"})  # the outputs that did open still work
    wait_levels(factory, GREEN, [False, True, False])
    same.stop()
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")  # no GPIO on this machine
    absent = DoorSignals(dict(FAST), lambda k, d: None)
    absent.start()
    assert absent.status()["state"] == "absent" and absent.alerts()[0].startswith("door: lights/buzzer absent")
    absent.on_event("checkin", {"verdict": "admitted"})  # nothing to play, nothing raised
    absent.stop()


# -- the page ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_refuses_a_foreign_host_name_and_unknown_paths(clock):
    page = DoorPage("127.0.0.1:0", "Asia/Shanghai", "12", "", lambda: {}, lambda: [], clock)
    page.start()
    try:
        host, port = page.address
        ok = urllib.request.urlopen(f"http://{host}:{port}/state", timeout=5)
        assert json.load(ok)["zone"] == "Asia/Shanghai (UTC+08:00)"
        rebound = urllib.request.Request(f"http://{host}:{port}/state", headers={"Host": "evil.example:8090"})
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(rebound, timeout=5)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://{host}:{port}/etc/passwd", timeout=5)
    finally:
        page.stop()


def test_the_page_shows_each_verdict_within_two_seconds_in_the_exams_zone(chromium, tmp_path):
    port = free_port()
    room = room_config(tmp_path, free_port(), start_in=600, cutoff_after=600, end_after=1200, extra=f"""
[door]
backend = "sim"
green_pin = {GREEN}
red_pin = {RED}
buzzer_pin = {BUZZER}
page_listen = "127.0.0.1:{port}"
""")  # no broker at that port: the room works offline, and so does its door
    agent = AgentProcess(room.config, room.socket).start()
    try:
        chromium.get(f"http://127.0.0.1:{port}/")
        wait_page(chromium, lambda src: "等待验证" in src)
        c = load_candidates(room.seatplan)
        admitted = agent.call("checkin_admit", id_last6=c["7"].id_number[-6:], proctor="P1")
        assert admitted["verdict"] == "admitted"
        shown = datetime.fromisoformat(admitted["time"]).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M:%S")
        wait_page(chromium, lambda src: 'data-seat="7"' in src and "准许入场" in src, timeout=2.0)  # raises past 2 s
        row = chromium.find_element("css selector", 'tr[data-seat="7"]').text
        assert shown in row and "admitted" in row and c["7"].id_masked in row
        agent.call("sim", words=["card", OUTSIDER])  # another room's candidate, by card
        wait_page(chromium, lambda src: 'data-verdict="not_in_room"' in src, timeout=2.0)
        assert "7" in chromium.find_element("id", "pending").text  # admitted, not swept yet
        assert "--id-last6" in chromium.page_source and "checkin confirm" in chromium.page_source
        source = chromium.page_source
        for cand in c.values():
            assert cand.name not in source and cand.id_number not in source
        assert OUTSIDER not in source and OUTSIDER[:6] + "********" + OUTSIDER[-4:] in source
        assert agent.terminate() == 0  # a clean stop, the page's server included
    finally:
        agent.kill()


def wait_page(driver, pred, timeout: float = 10.0) -> None:
    """Wait for the rendered page's source to satisfy ``pred`` (Selenium's own wait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: pred(d.page_source))
