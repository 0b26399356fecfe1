"""Audio monitor: the level core on WAV files, AlsaAudioMonitor through a real ALSA
``file`` device reading those WAVs, and the real-time SimAudioMonitor.

The ALSA device is not paced, so a fake constant clock (wall and monotonic)
makes every ``since`` exact (start + frames / rate) and a collector keeps only
the events of the first N seconds of the feed (the file plugin reads zeros past
the end).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
import wave
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from examroom.agent import human_time
from examroom.agent import config
from examroom.agent.daemon import Agent
from examroom.agent.events import iso_now
from examroom.agent.monitors import AudioWatch
from examroom.agent.schedule import Schedule, Session, Window
from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.audio.backends import AlsaAudioMonitor, SimAudioMonitor
from examroom.drivers.audio.levels import LevelAnalyzer, Thresholds, TrialRecorder
from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, DeviceAbsent, SimulationError
from examroom.drivers.events import AudioLevels, AudioSourceSwitched, AudioStateChanged, DeviceStateChanged
from tests.agentproc import write_config
from tests.schemas import load_schemas

pytestmark = pytest.mark.skipif(not (shutil.which("sox") and shutil.which("espeak-ng")),
                                reason="needs Debian sox and espeak-ng")

RATE = 48000
T0 = 1000.0  # the fake wall clock: frame n is at T0 + n / RATE


def fixed_clock() -> float:
    return T0


# -- signals ------------------------------------------------------------------------------

class Feeds:
    """Exact test signals made with ``sox -D`` (no dither: digital silence stays zero)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def synth(self, name: str, effects: str) -> Path:
        out = self.root / f"{name}.wav"
        subprocess.run(["sox", "-D", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(out),
                        *effects.split()], check=True, capture_output=True)
        return out

    def tone(self, seconds: float, vol: str = "-20dB", name: str = "") -> Path:
        return self.synth(name or f"tone{seconds}", f"synth {seconds} sine 1000 vol {vol}")

    def silence(self, seconds: float) -> Path:
        return self.synth(f"silence{seconds}", f"trim 0 {seconds}")

    def concat(self, name: str, *parts: Path) -> Path:
        out = self.root / f"{name}.wav"
        subprocess.run(["sox", "-D", *map(str, parts), str(out)], check=True)
        return out

    def speech(self) -> Path:
        raw = self.root / "speech22k.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), "The listening test begins now. Question one. "
                        "What time does the train to the airport leave?"], check=True)
        out = self.root / "speech.wav"
        subprocess.run(["sox", "-D", str(raw), "-r", str(RATE), str(out)], check=True)
        return out


def duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture
def feeds(tmp_path: Path) -> Feeds:
    return Feeds(tmp_path)


@pytest.fixture
def alsa_feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], str]:
    """An ALSA capture device that reads a WAV's samples, as a sound card would deliver them.

    The file plugin reads its ``infile`` raw (a WAV header would be heard as samples),
    and its ``null`` slave leaves stale memory in the buffer past the end, so the
    slave is itself a file device reading /dev/zero: past the end is digital silence.
    """
    conf = tmp_path / "asound.conf"
    raw = tmp_path / "feed.raw"
    fifo = tmp_path / "feed.fifo"  # examroom_fifo: a feed that stops when its writer does

    def use(wav: Path) -> str:
        subprocess.run(["sox", "-D", str(wav), "-t", "raw", str(raw)], check=True)
        return "examroom_feed"

    conf.write_text(f"""</usr/share/alsa/alsa.conf>
pcm.examroom_zeros {{ type file slave.pcm null file "/dev/null" infile "/dev/zero" format raw }}
pcm.examroom_feed {{ type file slave.pcm examroom_zeros file "/dev/null" infile "{raw}" format raw }}
pcm.examroom_fifo {{ type file slave.pcm examroom_zeros file "/dev/null" infile "{fifo}" format raw }}
""")
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    return use


class Collector:
    """Keeps the events up to the ``seconds``-th AudioLevels (one per second of feed)."""

    def __init__(self, bus: Bus, seconds: int) -> None:
        self.seconds = seconds
        self.events: list[DeviceEvent] = []
        self.done = threading.Event()
        bus.subscribe(DeviceEvent, self._on)

    def _on(self, event: DeviceEvent) -> None:
        if self.done.is_set():
            return
        self.events.append(event)
        if len(self.of(AudioLevels)) == self.seconds:
            self.done.set()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def changes(self) -> list[tuple[str, str, float]]:
        return [(e.previous, e.state, round(e.since - T0, 3)) for e in self.of(AudioStateChanged)]


def run_alsa(device: str, seconds: int, clock: Callable[[], float] = fixed_clock,
             on_levels: Callable[[Collector, AudioLevels], None] | None = None,
             **options: Any) -> Collector:
    """Feed ``device`` through the real ALSA backend for ``seconds`` of audio. ``clock`` is the
    wall clock (the monotonic one is fixed); ``on_levels`` runs in the capture thread."""
    bus = Bus()
    col = Collector(bus, seconds)
    if on_levels is not None:
        bus.subscribe(AudioLevels, lambda ev: on_levels(col, ev))
    drv = AlsaAudioMonitor("audio", {"device": device, **options}, bus, clock=clock,
                           monotonic=fixed_clock)
    drv.start()
    try:
        assert col.done.wait(10), "feed not consumed"
    finally:
        drv.stop()
    return col


def wav_blocks(path: Path, block_s: float = 0.1) -> tuple[int, list[np.ndarray]]:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    step = int(rate * block_s)
    return rate, [pcm[i:i + step] for i in range(0, len(pcm), step)]


# -- the core, on WAV files read with the wave module -------------------------------------

def test_core_tone_levels(feeds: Feeds) -> None:
    rate, blocks = wav_blocks(feeds.tone(1))
    core = LevelAnalyzer(rate, 1, Thresholds())
    for block in blocks:
        b, _ = core.feed(block)
        assert b.peak_dbfs == pytest.approx(-19.98, abs=0.1)
        assert b.rms_dbfs == pytest.approx(-23.01, abs=0.1)
    assert core.state == "signal" and core.frames == rate


def test_core_speech_at_its_own_rate_stays_signal(feeds: Feeds, tmp_path: Path) -> None:
    feeds.speech()
    rate, blocks = wav_blocks(tmp_path / "speech22k.wav")
    assert rate == 22050
    core = LevelAnalyzer(rate, 1, Thresholds())
    states = {core.feed(b)[0].quiet for b in blocks}
    assert True in states, "speech has quiet pauses between words"
    assert core.state == "signal"


def test_core_trial_report_of_a_dropout(feeds: Feeds) -> None:
    wav = feeds.concat("dropout", feeds.tone(2), feeds.silence(3), feeds.tone(2))
    rate, blocks = wav_blocks(wav)
    core = LevelAnalyzer(rate, 1, Thresholds())
    rec = TrialRecorder(rate, Thresholds(), wanted=7 * rate, start=0)
    for block in blocks:
        rec.add(core.feed(block)[0])
    report = rec.report(lambda f: T0 + f / rate, complete=rec.done)
    assert report["complete"] and not report["pass"] and report["problems"] == ["silence"]
    assert report["silences"] == [{"start": T0 + 2, "end": T0 + 5, "offset_s": 2.0, "duration_s": 3.0}]
    assert report["peak_dbfs"] == pytest.approx(-19.98, abs=0.1)
    assert report["mean_dbfs"] == pytest.approx(-23.01 + 10 * np.log10(4 / 7), abs=0.1)


def test_core_trial_report_of_clipping(feeds: Feeds) -> None:
    rate, blocks = wav_blocks(feeds.tone(2, vol="2", name="clipped"))
    core = LevelAnalyzer(rate, 1, Thresholds())
    rec = TrialRecorder(rate, Thresholds(), wanted=2 * rate, start=0)
    for block in blocks:
        rec.add(core.feed(block)[0])
    report = rec.report(lambda f: T0 + f / rate, complete=True)
    assert report["problems"] == ["clipping"] and report["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    assert report["clipping"]["blocks"] == 20 and report["clipping"]["seconds"] == 2.0
    assert report["clipping"]["samples"] > 1000


# -- AlsaAudioMonitor through an ALSA file device -----------------------------------------

def test_alsa_tone_levels(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    col = run_alsa(alsa_feed(feeds.tone(3)), 3)
    levels = col.of(AudioLevels)
    assert [lv.state for lv in levels] == ["signal"] * 3
    for lv in levels:
        assert lv.peak_dbfs == pytest.approx(-19.98, abs=0.1)
        assert lv.rms_dbfs == pytest.approx(-23.01, abs=0.1)
    assert col.changes() == [("no_input", "signal", 0.0)]
    assert col.of(DeviceStateChanged)[0].state == OK


def test_alsa_digital_silence_after_hold(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    col = run_alsa(alsa_feed(feeds.silence(4)), 4)
    # Until the 2 s hold has passed a quiet input is undecided; then silence from the start.
    assert [lv.state for lv in col.of(AudioLevels)] == ["no_input", "no_input", "silence", "silence"]
    assert col.changes() == [("no_input", "silence", 0.0)]
    assert col.of(AudioLevels)[-1].rms_dbfs == -120.0


def test_alsa_speech_is_signal_throughout(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    wav = feeds.speech()
    col = run_alsa(alsa_feed(wav), int(duration(wav)))
    assert col.changes() == [("no_input", "signal", 0.0)]
    assert {lv.state for lv in col.of(AudioLevels)} == {"signal"}


def test_alsa_clipping(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    col = run_alsa(alsa_feed(feeds.tone(3, vol="2", name="clipped")), 3)
    assert col.changes() == [("no_input", "clipping", 0.0)]
    assert [lv.state for lv in col.of(AudioLevels)] == ["clipping"] * 3
    assert col.of(AudioLevels)[0].peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_alsa_dropout_start_and_duration(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    wav = feeds.concat("dropout", feeds.tone(2), feeds.silence(3), feeds.tone(2))
    col = run_alsa(alsa_feed(wav), 7)
    assert col.changes() == [("no_input", "signal", 0.0), ("signal", "silence", 2.0),
                             ("silence", "signal", 5.0)]
    drop, back = col.of(AudioStateChanged)[1:]
    assert back.since - drop.since == pytest.approx(3.0, abs=0.01)
    assert drop.rms_dbfs == -120.0 and back.rms_dbfs == pytest.approx(-23.01, abs=0.1)


def test_alsa_no_device_is_absent_and_retried(feeds: Feeds, alsa_feed: Callable[[Path], str],
                                              tmp_path: Path) -> None:
    bus = Bus()
    opened = threading.Event()
    bus.subscribe(DeviceStateChanged, lambda e: opened.set() if e.state == OK else None)
    drv = AlsaAudioMonitor("audio", {"device": "examroom_feed", "retry_s": 0.05}, bus)
    drv.start()  # feed.raw does not exist yet: the file device cannot open
    try:
        assert drv.status().state == ABSENT and "examroom_feed" in drv.status().reason
        assert drv.levels()["state"] == "no_input"
        result = drv.selftest()
        assert result.skipped and not result.ok
        report = drv.trial(5)
        assert not report["pass"] and report["problems"] == ["incomplete"] and report["start"] is None
        alsa_feed(feeds.tone(1))
        assert opened.wait(5), "the monitor did not retry opening the device"
        assert drv.status().state == OK
    finally:
        drv.stop()
    assert drv.status().state == STOPPED


def test_alsa_selftest_and_loopback_failure(feeds: Feeds, alsa_feed: Callable[[Path], str]) -> None:
    drv = AlsaAudioMonitor("audio", {"device": alsa_feed(feeds.tone(3)), "loopback_test": True,
                                     "output_device": "examroom_nowhere"}, Bus())
    drv.start()
    try:
        result = drv.selftest()
    finally:
        drv.stop()
    steps = {s.name: s for s in result.steps}
    assert steps["input"].ok and steps["samples"].ok
    assert not steps["loopback"].ok and "aplay failed" in steps["loopback"].detail
    assert not result.ok and not result.skipped


@pytest.fixture
def mock_gpio() -> Any:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory
    saved, Device.pin_factory = Device.pin_factory, MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = saved


@pytest.mark.parametrize("active_high", [True, False])
def test_alsa_relay_switch(feeds: Feeds, alsa_feed: Callable[[Path], str], mock_gpio: Any,
                           active_high: bool) -> None:
    bus = Bus()
    switched: list[AudioSourceSwitched] = []
    bus.subscribe(AudioSourceSwitched, switched.append)
    drv = AlsaAudioMonitor("audio", {"device": alsa_feed(feeds.tone(1)), "relay_pin": 17,
                                     "relay_active_high": active_high}, bus)
    drv.start()
    try:
        pin = mock_gpio.pin(17)
        assert drv.levels()["source"] == "primary" and pin.state == (not active_high)
        assert drv.switch_source("backup", "auto") == {
            "source": "backup", "previous": "primary", "reason": "auto", "changed": True}
        assert pin.state == active_high and drv.status().details["source"] == "backup"
        assert drv.switch_source("backup")["changed"] is False
        drv.switch_source("primary")
        assert pin.state == (not active_high)
        assert [(e.source, e.reason) for e in switched] == [("backup", "auto"), ("primary", "command")]
        with pytest.raises(ValueError):
            drv.switch_source("spare")
        with pytest.raises(ValueError):
            drv.switch_source("backup", "because")
    finally:
        drv.stop()


def test_alsa_relay_errors(feeds: Feeds, alsa_feed: Callable[[Path], str], mock_gpio: Any) -> None:
    device = alsa_feed(feeds.tone(1))
    drv = AlsaAudioMonitor("audio", {"device": device}, Bus())
    drv.start()
    try:
        with pytest.raises(DeviceAbsent, match="no relay_pin"):
            drv.switch_source("backup")
    finally:
        drv.stop()
    drv = AlsaAudioMonitor("audio", {"device": device, "relay_pin": "NOSUCHPIN"}, Bus())
    drv.start()
    try:
        assert drv.status().state == FAULT and drv.status().reason.startswith("relay:")
        with pytest.raises(DeviceAbsent, match="relay unavailable"):
            drv.switch_source("backup")
        assert not {s.name: s for s in drv.selftest().steps}["relay"].ok
    finally:
        drv.stop()


# -- SimAudioMonitor (real time) ----------------------------------------------------------

@pytest.fixture
def sim() -> Any:
    bus = Bus()
    drv = SimAudioMonitor("audio", {"silence_hold_s": 0.3, "levels_every_s": 0.2}, bus)
    drv.start()
    yield drv, bus
    drv.stop()


def wait_state(bus: Bus, state: str) -> threading.Event:
    seen = threading.Event()
    bus.subscribe(AudioStateChanged, lambda e: seen.set() if e.state == state else None)
    return seen


def test_sim_trial_pass_and_fail(sim: Any) -> None:
    drv, bus = sim
    report = drv.trial(0.5)
    assert report["pass"] and report["complete"] and report["measured_s"] == 0.5
    assert report["mean_dbfs"] == pytest.approx(-23.01, abs=0.1)
    assert report["peak_dbfs"] == pytest.approx(-19.98, abs=0.1)
    assert report["end"] - report["start"] == pytest.approx(0.5, abs=1e-3)  # epoch floats: ulp ~2e-7
    drv.simulate("silence", [])
    report = drv.trial(0.5)
    assert not report["pass"] and report["problems"] == ["silence"]
    assert report["silences"][0]["offset_s"] == 0.0 and report["silences"][0]["duration_s"] == 0.5
    with pytest.raises(ValueError):
        drv.trial(0)


def test_sim_actions_drive_the_state(sim: Any) -> None:
    drv, bus = sim
    assert drv.status().state == OK
    silent, clipping, signal = (wait_state(bus, s) for s in ("silence", "clipping", "signal"))
    assert drv.simulate("silence", []) == {"signal": "silence", "level_dbfs": -120.0}
    assert silent.wait(3)
    drv.simulate("clip", [])
    assert clipping.wait(3)
    levels = threading.Event()
    bus.subscribe(AudioLevels, lambda e: levels.set() if abs(e.rms_dbfs + 33.01) < 0.1 else None)
    assert drv.simulate("level", ["-30"]) == {"signal": "tone", "level_dbfs": -30.0}
    assert signal.wait(3) and levels.wait(3)
    assert drv.levels()["peak_dbfs"] == pytest.approx(-30.0, abs=0.1)


@pytest.mark.parametrize("action,args", [("level", ["loud"]), ("level", ["3"]), ("level", ["-1", "-2"]),
                                         ("level", ["nan"]), ("silence", ["1"]), ("clip", ["x"]),
                                         ("boom", [])])
def test_sim_bad_actions(action: str, args: list[str]) -> None:
    drv = SimAudioMonitor("audio", {}, Bus())
    with pytest.raises(SimulationError):
        drv.simulate(action, args)


def test_sim_relay_on_private_mock_pins(sim: Any) -> None:
    drv, bus = sim
    switched = threading.Event()
    bus.subscribe(AudioSourceSwitched, lambda e: switched.set())
    assert drv.switch_source("backup")["changed"]
    assert switched.is_set() and drv.pin_factory.pin(27).state is True
    result = drv.selftest()
    assert result.ok and [s.name for s in result.steps] == ["input", "samples", "relay"]


# -- what the exam makes of it: no input, stepped clocks, stalls, the contract -----------------

class Log:
    """Items handed over by other threads, waited on (never slept for)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, pred: Callable[[Any], bool], after: int = 0, timeout: float = 5.0) -> Any:
        def first() -> Any:
            return next((i for i in self.items[after:] if pred(i)), None)
        with self._cond:
            found = self._cond.wait_for(first, timeout)
        assert found is not None, f"not seen within {timeout} s; have {self.items[after:]}"
        return found


class Emitted(Log):
    """A watcher's ``emit``: keeps (kind, data) and checks data against the documented schema
    (a failed assert in a bus listener would only be logged, so problems are kept instead)."""

    def __init__(self) -> None:
        super().__init__()
        fmt = Draft202012Validator.FORMAT_CHECKER
        self.validators = {k: Draft202012Validator(v, format_checker=fmt) for k, v in load_schemas().items()}
        self.problems: list[str] = []

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.problems += [f"{kind}: {e.message}" for e in self.validators[f"data/{kind}"].iter_errors(data)]
        self.add((kind, data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.items if k == kind]


def test_input_absent_from_boot_is_an_incident_when_listening_opens(
        feeds: Feeds, alsa_feed: Callable[[Path], str], mock_gpio: Any) -> None:
    wall = [T0]
    listen = Window(T0 + 10, T0 + 60)
    schedule = Schedule((Session("eng-am", "English", T0 + 5, T0 + 100, 30, 15, (listen,),
                                 datetime.now().astimezone().tzinfo),))
    bus, emitted, records = Bus(), Emitted(), []
    drv = AlsaAudioMonitor("broadcast", {"device": "examroom_feed", "retry_s": 0.05, "relay_pin": 17},
                           bus, clock=lambda: wall[0])

    def auto_backup(device: str) -> None:  # what the room does with ``auto_switch_backup``
        if drv.levels()["source"] == "primary":
            drv.switch_source("backup", "auto")

    watch = AudioWatch(schedule, emitted, lambda: wall[0], records.append, auto_backup)
    bus.subscribe(AudioStateChanged, watch.on_state)
    bus.subscribe(AudioSourceSwitched, watch.on_switch)
    drv.start()  # feed.raw does not exist: the input is absent from the start
    try:
        [boot] = emitted.of("audio")
        assert (boot["state"], boot["previous"], boot["listening"]) == ("no_input", "no_input", False)
        assert drv.levels()["since"] == pytest.approx(T0, abs=0.5)
        watch.evaluate()
        assert emitted.of("incident") == [] and watch.alerts() == []

        wall[0] = listen.start  # the listening window opens; the agent's tick evaluates
        watch.evaluate()
        [started] = emitted.of("incident")
        assert started == {"type": "audio_loss", "device": "broadcast", "session": "eng-am",
                           "cause": "no_input", "start": iso_now(listen.start), "phase": "started"}
        assert emitted.of("audio_switch") == [{"device": "broadcast", "source": "backup", "reason": "auto"}]
        assert mock_gpio.pin(17).state is True
        assert watch.alerts() == [f"broadcast: audio no_input during listening since {human_time.clock(listen.start)}"]

        wall[0] = listen.start + 15
        alsa_feed(feeds.tone(3))  # the card appears: the retry opens it
        _, ended = emitted.wait(lambda i: i[0] == "incident" and i[1]["phase"] == "ended")
        assert (ended["cause"], ended["start"]) == ("no_input", started["start"])
        assert ended["duration_s"] == pytest.approx(15.0, abs=0.2)
        assert records[0].as_dict() == {k: v for k, v in ended.items() if k != "phase"}
        assert emitted.problems == []
    finally:
        drv.stop()


@pytest.mark.parametrize("step", [-30.0, 30.0])
def test_wall_clock_step_moves_labels_not_durations(feeds: Feeds, alsa_feed: Callable[[Path], str],
                                                    step: float) -> None:
    wav = feeds.concat("dropout3", feeds.tone(3), feeds.silence(3), feeds.tone(2))
    wall = [T0]

    def step_after_first_second(col: Collector, _: AudioLevels) -> None:  # in frame order
        if len(col.of(AudioLevels)) == 1:
            wall[0] = T0 + step

    col = run_alsa(alsa_feed(wav), 8, clock=lambda: wall[0], on_levels=step_after_first_second)
    assert col.changes() == [("no_input", "signal", 0.0), ("signal", "silence", 3.0 + step),
                             ("silence", "signal", 6.0 + step)]


def test_selftest_relay_switch_is_a_valid_audio_switch(sim: Any) -> None:
    drv, bus = sim
    emitted = Emitted()
    bus.subscribe(AudioSourceSwitched, AudioWatch(None, emitted, time.time).on_switch)
    result = drv.selftest(act=True)
    assert result.ok and {s.name: s for s in result.steps}["relay switch"].ok
    assert emitted.of("audio_switch") == [{"device": "audio", "source": "backup", "reason": "selftest"},
                                          {"device": "audio", "source": "primary", "reason": "selftest"}]
    assert emitted.problems == []


def test_stalled_capture_is_no_input_and_recovers(tmp_path: Path, feeds: Feeds,
                                                  alsa_feed: Callable[[Path], str]) -> None:
    """A FIFO behind the ALSA file device: when its writer stops, the read blocks in alsa-lib."""
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer exists, so the device's open does not block
    with wave.open(str(feeds.tone(0.5))) as w:
        half_second = w.readframes(w.getnframes())
    agent = Agent(config.load(write_config(tmp_path, 1883, extra="""
[[device]]
kind = "audio"
name = "broadcast"
backend = "alsa"
device = "examroom_fifo"
silence_hold_s = 0.5
levels_every_s = 0.2
""")), plan=None)
    agent.metrics_bridge.start()
    seen = Log()
    agent.bus.subscribe(DeviceEvent, seen.add)  # after the bridge's: its gauges are set when we look

    def gauges() -> list[float | None]:
        return [agent.metrics.registry.get_sample_value(f"examroom_audio_{m}_dbfs", {"device": "broadcast"})
                for m in ("rms", "peak")]

    agent.devices.start()
    drv = agent.devices.get("broadcast")
    try:
        os.write(writer, half_second)
        seen.wait(lambda e: isinstance(e, AudioLevels) and e.state == "signal")
        assert gauges() == [pytest.approx(-23.01, abs=0.1), pytest.approx(-19.98, abs=0.1)]
        signal = seen.wait(lambda e: isinstance(e, AudioStateChanged) and e.state == "signal")
        mark = len(seen.items)

        stalled = seen.wait(lambda e: isinstance(e, AudioStateChanged), after=mark)
        assert (stalled.state, stalled.previous) == ("no_input", "signal")
        assert stalled.since > signal.since and stalled.ts - stalled.since > 0.5  # from the last block on
        fault = seen.wait(lambda e: isinstance(e, DeviceStateChanged), after=mark)
        assert (fault.state, fault.reason) == (FAULT, "capture stalled: no samples for over 0.5 s")
        assert all(math.isnan(g) for g in gauges())
        assert drv.levels()["state"] == "no_input" and drv.levels()["rms_dbfs"] is None
        assert drv.status().state == FAULT
        hung = drv.selftest()  # present and stalled: a failure, never "absent" (--allow-absent passed it)
        assert hung.ok is False and hung.skipped is False and "stalled" in hung.steps[0].detail
        mark = len(seen.items)

        os.write(writer, half_second)
        assert seen.wait(lambda e: isinstance(e, DeviceStateChanged), after=mark).state == OK
        back = seen.wait(lambda e: isinstance(e, AudioStateChanged), after=mark)
        assert (back.state, back.previous) == ("signal", "no_input")
        seen.wait(lambda e: isinstance(e, AudioLevels), after=mark)
        assert gauges()[0] == pytest.approx(-23.01, abs=0.1)
        assert drv.status().state == OK
    finally:
        os.close(writer)  # end of file: the blocked read returns, so stop() can join
        agent.devices.stop()
        agent.spool.close()
