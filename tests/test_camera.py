"""The camera driver (sim and picamera2 backends) on real image files written by the tests.

The freeze check runs on a fake monotonic clock; waits on the health thread
use threading.Event with timeouts, never sleeps.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from examroom import drivers
from examroom.agent.events import iso_now
from examroom.drivers.bus import Bus, DeviceEvent
from examroom.drivers.base import ABSENT, FAULT, OK, STOPPED, DeviceAbsent, SimulationError
from examroom.drivers.camera.backends import PiCamera, SimCamera
from examroom.drivers.camera.base import COMMON_OPTIONS, CameraBase, prune_snapshots, sanitise_tag
from examroom.drivers.events import CameraHealth, DeviceStateChanged
from tests.camera_images import H, W, noisy
from tests.schemas import load_schemas


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Bus listener that also lets a test wait for a matching event without sleeping."""

    def __init__(self, bus: Bus) -> None:
        self.events: list[DeviceEvent] = []
        self._want: tuple[type, dict] | None = None
        self._seen = threading.Event()
        bus.subscribe(DeviceEvent, self._on)

    def _on(self, event: DeviceEvent) -> None:
        self.events.append(event)
        if self._want and isinstance(event, self._want[0]) and all(
                getattr(event, k) == v for k, v in self._want[1].items()):
            self._seen.set()

    def expect(self, kind: type, **fields: object) -> threading.Event:
        self._seen.clear()
        self._want = (kind, fields)
        return self._seen

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def check(cam: CameraBase) -> dict[str, Any]:
    """One health check as the health thread runs it, read back the way the heartbeat reads it."""
    assert cam._check() is not None, "the camera is not running"
    status = cam.status()
    return {"reason": status.reason, **status.details}


@pytest.fixture
def sim(images: dict[str, Path], tmp_path: Path):
    scene_dir = tmp_path / "scenes"
    scene_dir.mkdir()
    (scene_dir / "scene.png").write_bytes(images["scene"].read_bytes())
    bus, clock = Bus(), FakeMonotonic()
    rec = Recorder(bus)
    config = {"images_dir": str(scene_dir), "snapshot_dir": str(tmp_path / "snaps"), "interval_s": 3600}
    cam = SimCamera("cam1", config, bus, monotonic=clock)
    yield cam, rec, clock
    cam.stop()


def test_registry_names() -> None:
    assert drivers.driver_class("camera", "sim") is SimCamera
    assert drivers.driver_class("camera", "picamera2") is PiCamera
    assert SimCamera.kind == PiCamera.kind == "camera"


def test_option_defaults_pass_their_checks() -> None:
    for cls in (SimCamera, PiCamera):
        for key, opt in cls.options.items():
            assert opt.check is None or opt.check(opt.default), key
    assert set(COMMON_OPTIONS) >= {"interval_s", "dark_threshold", "blur_threshold", "frozen_after_s",
                                   "snapshot_dir", "retention_days", "retention_max_mb", "jpeg_quality",
                                   "analysis_width"}


def test_health_events_only_on_change(sim) -> None:
    cam, rec, clock = sim
    cam.start()
    assert cam.status().state == OK
    for _ in range(3):
        clock.now += 5
        assert check(cam)["health"] == "normal"
    cam.simulate("black", [])
    for _ in range(3):
        clock.now += 5
        assert check(cam)["reason"] == "dark"
    cam.simulate("normal", [])
    clock.now += 5
    check(cam)
    health = [(e.state, e.reason) for e in rec.of(CameraHealth)]
    assert health == [("normal", ""), ("abnormal", "dark"), ("normal", "")]
    states = [(e.state, e.reason) for e in rec.of(DeviceStateChanged)]
    assert states == [(OK, ""), (FAULT, "dark"), (OK, "")]


def test_frozen_driven_by_fake_clock(sim) -> None:
    cam, rec, clock = sim
    cam.start()
    cam.simulate("frozen", [])  # from now on the frame start() saw at t=1000 repeats
    for t in (1003, 1006, 1009.9):
        clock.now = t
        assert check(cam)["reason"] == ""
    clock.now = 1010
    h = check(cam)
    assert h["reason"] == "frozen" and h["metrics"]["diff"] == 0.0 and h["metrics"]["still_s"] == 10.0
    assert [e.reason for e in rec.of(CameraHealth)] == ["", "frozen"]
    cam.simulate("normal", [])
    clock.now += 60
    assert check(cam)["health"] == "normal"


def test_blur_and_no_frames_through_driver(sim) -> None:
    cam, rec, clock = sim
    cam.start()
    cam.simulate("blur", [])
    assert check(cam)["reason"] == "blurred"
    cam.simulate("no_frames", [])
    h = check(cam)
    assert h["reason"] == "no_frames" and "no frames" in h["metrics"]["error"]
    assert cam.status().as_dict()["reason"] == "no_frames"


def test_hung_capture_times_out_as_no_frames(images: dict[str, Path], tmp_path: Path) -> None:
    release = threading.Event()

    class HangingCamera(SimCamera):
        def _capture(self) -> np.ndarray:
            release.wait(10)
            return super()._capture()

    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(tmp_path),
              "interval_s": 3600, "capture_timeout_s": 0.3}
    cam = HangingCamera("hang", config, Bus(), monotonic=FakeMonotonic())
    try:
        cam.start()  # start reports the first verdict even though no frame came
        assert cam.status().reason == "no_frames"
        h = check(cam)
        assert h["reason"] == "no_frames" and "never returned" in h["metrics"]["error"]
        release.set()
        assert check(cam)["health"] == "normal"
    finally:
        release.set()
        cam.stop()


def test_health_thread_reports_change(images: dict[str, Path], tmp_path: Path) -> None:
    bus = Bus()
    rec = Recorder(bus)
    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(tmp_path), "interval_s": 0.01}
    cam = SimCamera("cam2", config, bus)
    try:
        cam.start()
        seen = rec.expect(CameraHealth, reason="dark")
        cam.simulate("black", [])
        assert seen.wait(5), "health thread did not report the covered lens"
    finally:
        cam.stop()
    assert cam.status().state == STOPPED
    assert [e.reason for e in rec.of(CameraHealth)][:2] == ["", "dark"]


def test_snapshot_is_a_valid_jpeg_with_matching_hash(sim, tmp_path: Path) -> None:
    cam, _, _ = sim
    cam.start()
    out = cam.snapshot("seat 07/../../etc 张三")
    path = tmp_path / "snaps" / out["file"]
    assert set(out) == {"file", "ts", "sha256", "bytes"}
    assert "/" not in out["file"] and out["file"].endswith("_seat-07-etc.jpg")
    assert path.stat().st_size == out["bytes"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == out["sha256"]
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (W, H)
        img.verify()
    assert cam.status().details["snapshots"] >= 1


@pytest.fixture
def beijing_box(monkeypatch: pytest.MonkeyPatch):
    """The box's zone is UTC+8 (POSIX TZ, no tzdata needed), so a UTC time cannot pass for local."""
    monkeypatch.setenv("TZ", "CST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_carry_the_box_offset_like_every_other(beijing_box, images: dict[str, Path],
                                                     tmp_path: Path) -> None:
    wall = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(tmp_path), "interval_s": 3600}
    with SimCamera("cam-tz", config, Bus(), clock=lambda: wall) as cam:
        checked_at = cam.status().details["checked_at"]
        shot = cam.snapshot("tz")
    assert checked_at == shot["ts"] == iso_now(wall) == "2025-06-15T23:06:40.000+08:00"
    assert shot["file"] == "20250615T150640.000Z_tz.jpg"  # file names stay UTC: they sort across zones


def test_scenes_of_two_sizes_give_valid_json(images: dict[str, Path], tmp_path: Path) -> None:
    """Each frame has another size than the last (a mode change, mixed sim images): changed, not frozen."""
    scene_dir = tmp_path / "scenes"
    scene_dir.mkdir()
    (scene_dir / "a.png").write_bytes(images["scene"].read_bytes())  # 1280x720
    (scene_dir / "b.png").write_bytes(images["small"].read_bytes())  # 640x480
    bus, clock = Bus(), FakeMonotonic()
    rec = Recorder(bus)
    cam = SimCamera("camera", {"images_dir": str(scene_dir), "snapshot_dir": str(tmp_path / "s"),
                               "interval_s": 3600}, bus, monotonic=clock)
    schemas = load_schemas()
    device_schema = Draft202012Validator(schemas["device/camera"])
    try:
        cam.start()
        for _ in range(4):  # 15 s of frames, longer than frozen_after_s (10)
            clock.now += 5
            h = check(cam)
            assert (h["health"], h["reason"]) == ("normal", "")
            assert h["metrics"]["diff"] is None and h["metrics"]["still_s"] == 0.0
            entry = {"kind": cam.kind, "backend": cam.backend, **cam.status().as_dict()}
            json.loads(json.dumps(entry, allow_nan=False))  # what the heartbeat sends: strict JSON
            assert list(device_schema.iter_errors(entry)) == []
    finally:
        cam.stop()
    event_schema = Draft202012Validator(schemas["data/camera"])
    for e in rec.of(CameraHealth):
        data = {"device": e.device, "state": e.state, "reason": e.reason, "metrics": e.metrics}
        json.dumps(data, allow_nan=False)
        assert list(event_schema.iter_errors(data)) == []


def test_snapshot_names_never_collide(images: dict[str, Path], tmp_path: Path) -> None:
    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(tmp_path), "interval_s": 3600}
    cam = SimCamera("cam3", config, Bus(), clock=lambda: 1_700_000_000.0)
    with cam:
        names = {cam.snapshot("x")["file"] for _ in range(3)}
    assert names == {"20231114T221320.000Z_x.jpg", "20231114T221320.000Z_x-2.jpg", "20231114T221320.000Z_x-3.jpg"}


def test_sanitise_tag() -> None:
    assert sanitise_tag("../../etc/passwd") == "etc-passwd"
    assert sanitise_tag("张三") == "snap"
    assert len(sanitise_tag("a" * 200)) == 40


def _junk(path: Path, size: int, mtime: float) -> None:
    path.write_bytes(b"\xff" * size)
    os.utime(path, (mtime, mtime))


def test_retention_by_age(sim, tmp_path: Path) -> None:
    cam, _, _ = sim
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    now = time.time()
    _junk(snaps / "old.jpg", 100, now - 31 * 86400)
    _junk(snaps / "recent.jpg", 100, now - 29 * 86400)
    _junk(snaps / "notes.txt", 100, now - 400 * 86400)  # not a snapshot: never touched
    cam.start()
    out = cam.snapshot("age")
    assert sorted(p.name for p in snaps.iterdir()) == sorted([out["file"], "recent.jpg", "notes.txt"])


def test_retention_by_total_size(images: dict[str, Path], tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    now = time.time()
    for i in range(5):  # 5 x 200 KiB, oldest first
        _junk(snaps / f"s{i}.jpg", 200 * 1024, now - 3600 * (5 - i))
    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(snaps),
              "interval_s": 3600, "retention_max_mb": 0.5}
    with SimCamera("cam4", config, Bus()) as cam:
        out = cam.snapshot("size")
    left = {p.name for p in snaps.iterdir()}
    total = sum(p.stat().st_size for p in snaps.iterdir())
    kept_old = sorted(left - {out["file"]})
    assert out["file"] in left and total <= 0.5 * 1024 * 1024
    assert kept_old == [f"s{i}.jpg" for i in range(5 - len(kept_old), 5)]  # oldest went first
    assert total + 200 * 1024 > 0.5 * 1024 * 1024  # and no more than needed


def test_prune_never_deletes_the_kept_file(tmp_path: Path) -> None:
    _junk(tmp_path / "a.jpg", 1000, 10.0)
    _junk(tmp_path / "b.jpg", 1000, 20.0)
    removed = prune_snapshots(tmp_path, now=30.0, max_age_s=5.0, max_bytes=10, keep=tmp_path / "a.jpg")
    assert removed == ["b.jpg"] and (tmp_path / "a.jpg").exists()


def test_selftest_sim(sim) -> None:
    cam, _, _ = sim
    assert cam.selftest().skipped  # not started
    cam.start()
    result = cam.selftest()
    assert result.ok and [s.name for s in result.steps] == ["frame", "not_dark", "not_blurred"]
    cam.simulate("black", [])
    assert not cam.selftest().steps[1].ok
    cam.simulate("blur", ["8"])
    steps = cam.selftest().steps
    assert steps[1].ok and not steps[2].ok


def test_sim_bad_actions(sim) -> None:
    cam, _, _ = sim
    for action, args in [("explode", []), ("normal", ["1"]), ("black", ["x"]), ("blur", ["1", "2"]),
                         ("blur", ["soft"]), ("blur", ["-1"]), ("blur", ["nan"]), ("frozen", ["now"])]:
        with pytest.raises(SimulationError):
            cam.simulate(action, args)
    with pytest.raises(ValueError):  # SimulationError is also a ValueError for generic callers
        cam.simulate("", [])
    assert cam.simulate("blur", ["2.5"]) == {"mode": "blur", "radius": 2.5}
    assert cam.simulate("frozen", []) == {"mode": "frozen"}


def test_sim_default_scene_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with SimCamera("cam5", {"snapshot_dir": str(tmp_path / "s"), "interval_s": 3600}, Bus()) as cam:
        assert check(cam)["health"] == "normal"
    assert (tmp_path / "examroom-sim-camera" / "scene.png").exists()


def test_sim_without_images_is_absent(tmp_path: Path) -> None:
    cam = SimCamera("cam6", {"images_dir": str(tmp_path), "interval_s": 3600}, Bus())
    cam.start()
    assert cam.status().state == ABSENT
    cam.stop()


def test_stop_is_idempotent_and_restart_works(sim) -> None:
    cam, rec, _ = sim
    cam.stop()
    cam.start()
    cam.stop()
    cam.stop()
    cam.start()
    assert check(cam)["health"] == "normal"
    assert [e.state for e in rec.of(DeviceStateChanged)] == [OK, STOPPED, OK]


# -- PiCamera ------------------------------------------------------------------

def test_picamera_absent_on_this_machine(tmp_path: Path) -> None:
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    bus = Bus()
    rec = Recorder(bus)
    cam = PiCamera("pi", {"snapshot_dir": str(tmp_path)}, bus)
    cam.start()  # must not raise
    assert cam.status().state == ABSENT and "picamera2" in cam.status().reason
    assert [(e.state) for e in rec.of(DeviceStateChanged)] == [ABSENT]
    assert [(e.state) for e in rec.of(CameraHealth)] == ["absent"]
    assert cam._check() is None  # nothing to check: the health thread never ran
    assert cam.status().details == {"health": None, "metrics": {}, "checked_at": None, "snapshots": 0}
    assert cam.selftest().skipped and not cam.selftest().ok
    with pytest.raises(OSError):
        cam.snapshot("x")
    with pytest.raises(DeviceAbsent):
        cam.snapshot("x")
    cam.stop()
    cam.stop()


def _fake_picamera2(frame: np.ndarray, cameras: list[dict], start_error: str = "") -> types.ModuleType:
    """Enough of picamera2's surface to run PiCamera's own code path on x86."""
    calls: list[str] = []

    class Picamera2:
        @staticmethod
        def global_camera_info() -> list[dict]:
            return cameras

        def create_preview_configuration(self, main: dict) -> dict:
            calls.append(f"config {main['size']} {main['format']}")
            return {"main": main}

        def configure(self, config: dict) -> None:
            calls.append("configure")

        def start(self) -> None:
            calls.append("start")
            if start_error:
                raise RuntimeError(start_error)

        def capture_array(self, name: str = "main") -> np.ndarray:
            return frame.copy()

        def stop(self) -> None:
            calls.append("stop")

        def close(self) -> None:
            calls.append("close")

    module = types.ModuleType("picamera2")
    module.Picamera2 = Picamera2  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


def test_picamera_with_fake_library(images: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_picamera2(noisy(Image.open(images["scene"])), cameras=[{"Num": 0}])
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    cam = PiCamera("pi", {"snapshot_dir": str(tmp_path), "interval_s": 3600, "resolution": [1280, 720]}, Bus())
    cam.start()
    assert cam.status().state == OK and check(cam)["health"] == "normal"
    assert cam.selftest().ok
    assert Image.open(tmp_path / cam.snapshot("pi")["file"]).size == (W, H)
    cam.stop()
    assert fake.calls == ["config (1280, 720) BGR888", "configure", "start", "stop", "close"]


def test_picamera_no_camera_on_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", _fake_picamera2(np.zeros((4, 4, 3), np.uint8), cameras=[]))
    cam = PiCamera("pi", {"snapshot_dir": str(tmp_path)}, Bus())
    cam.start()
    assert cam.status().state == ABSENT and "CSI" in cam.status().reason


def test_picamera_that_will_not_start_is_a_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_picamera2(np.zeros((4, 4, 3), np.uint8), cameras=[{"Num": 0}], start_error="Device or resource busy")
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    bus = Bus()
    rec = Recorder(bus)
    cam = PiCamera("pi", {"snapshot_dir": str(tmp_path)}, bus)
    cam.start()
    assert cam.status().state == FAULT and "busy" in cam.status().reason
    assert [(e.state, e.reason) for e in rec.of(CameraHealth)] == [("abnormal", "no_frames")]
    assert cam._check() is None and cam.status().details["health"] is None  # never running: no check
    assert fake.calls[-1] == "close"  # the half-opened camera is released
    cam.stop()
    assert cam.status().state == STOPPED


def test_retention_between_rescans_uses_the_index(images: dict[str, Path], tmp_path: Path) -> None:
    """After the first snapshot the directory is not listed again; the size bound still holds."""
    snaps = tmp_path / "snaps"
    clock = [time.time()]
    config = {"images_dir": str(images["scene"].parent), "snapshot_dir": str(snaps),
              "interval_s": 3600, "retention_max_mb": 0.4}
    with SimCamera("cam5", config, Bus(), clock=lambda: clock[0]) as cam:
        made = []
        for i in range(12):
            clock[0] += 1.0
            made.append(cam.snapshot(f"n{i}")["file"])
        left = sorted(p.name for p in snaps.iterdir())
        assert cam.status().details["snapshots"] == len(left)
    total = sum(p.stat().st_size for p in snaps.iterdir())
    assert total <= 0.4 * 1024 * 1024
    assert left == sorted(made[len(made) - len(left):])  # the newest kept, the oldest removed
    assert 0 < len(left) < 12
