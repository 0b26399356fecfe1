"""Room camera backends: the Pi camera (picamera2) and a simulator made of image files.

Both only open, close and hand over one RGB frame; what a camera does with
frames (health, events, snapshots) is ``drivers.camera.base.CameraBase``.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from examroom.drivers.bus import Bus
from examroom.drivers.base import DeviceAbsent, DeviceError, DeviceTimeout, Option, SimulationError
from examroom.drivers.camera.base import COMMON_OPTIONS, CameraBase

__all__ = ["PiCamera", "SimCamera", "SIM_MODES"]


def _is_resolution(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 8192 for v in value))


class PiCamera(CameraBase):
    """Raspberry Pi camera through picamera2 (libcamera); imported in start() only."""

    backend: ClassVar[str] = "picamera2"
    options: ClassVar[dict[str, Option]] = {
        **COMMON_OPTIONS,
        "resolution": Option(list, [1920, 1080], check=_is_resolution, expected="[width, height] in pixels",
                             help="size of captured frames and snapshots"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._camera: Any = None

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2
        except Exception as exc:  # ImportError on x86 (no libcamera bindings); broken installs raise others
            raise DeviceAbsent(f"picamera2 not available: {exc}") from exc
        if not Picamera2.global_camera_info():
            raise DeviceAbsent("no camera detected on the CSI bus")
        camera = Picamera2()
        try:
            width, height = self._opt("resolution")
            # picamera2's "BGR888" is laid out [R, G, B] in memory: the RGB array we want.
            camera.configure(camera.create_preview_configuration(
                main={"size": (width, height), "format": "BGR888"}))
            camera.start()
        except Exception as exc:
            camera.close()
            raise DeviceError(f"camera would not start: {exc}") from exc
        self._camera = camera

    def _close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()  # release the device even if stopping the stream failed

    def _capture(self) -> np.ndarray:
        camera = self._camera
        if camera is None:
            raise DeviceAbsent("camera closed")
        return camera.capture_array("main")


SIM_MODES = ("normal", "black", "frozen", "blur", "no_frames")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm"}


def default_scene_dir() -> Path:
    """A room scene made once per machine so the sim needs no image files to be shipped."""
    directory = Path(tempfile.gettempdir()) / "examroom-sim-camera"
    path = directory / "scene.png"
    if path.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    width, height = 1280, 720
    rng = np.random.default_rng(7)
    wall = np.linspace(90, 170, width)[None, :, None] * np.ones((height, 1, 3))
    texture = rng.normal(0, 12, (height // 8, width // 8, 1)).repeat(8, 0).repeat(8, 1)
    image = Image.fromarray(np.clip(wall + texture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for row in range(4):
        for col in range(6):
            x, y = 60 + col * 200, 250 + row * 110
            draw.rectangle([x, y, x + 150, y + 60], fill=(140, 100, 60), outline=(40, 30, 20), width=3)
    draw.ellipse([1000, 40, 1200, 200], fill=(230, 230, 240), outline=(0, 0, 0), width=4)
    draw.text((60, 60), "Site 0101 Room 12", fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    tmp = directory / f".scene-{os.getpid()}.png"
    image.save(tmp)
    os.replace(tmp, path)  # atomic: two agents starting together never read half a file
    return directory


class SimCamera(CameraBase):
    """A camera made of image files with sensor noise and a moving marker, so normal is never frozen."""

    backend: ClassVar[str] = "sim"
    options: ClassVar[dict[str, Option]] = {
        **COMMON_OPTIONS,
        "images_dir": Option(str, "", help="directory of scene images (png/jpg); empty: a generated room scene"),
    }

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._mode = "normal"
        self._blur_radius = 6.0
        self._scenes: list[np.ndarray] = []
        self._tick = 0
        self._last: np.ndarray | None = None
        self._rng = np.random.default_rng()

    def _open(self) -> None:
        configured = self._opt("images_dir")
        directory = Path(configured) if configured else default_scene_dir()
        files = sorted(p for p in directory.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES) \
            if directory.is_dir() else []
        if not files:
            raise DeviceAbsent(f"no scene images in {directory}")
        self._scenes = [np.asarray(Image.open(p).convert("RGB")) for p in files]
        self._tick = 0
        self._last = None

    def _close(self) -> None:
        self._scenes = []
        self._last = None

    def _capture(self) -> np.ndarray:
        with self._lock:
            mode, radius = self._mode, self._blur_radius
        if mode == "no_frames":
            raise DeviceTimeout("simulated: the camera sends no frames")
        if mode == "frozen" and self._last is not None:
            return self._last.copy()
        scene = self._scenes[self._tick % len(self._scenes)]
        self._tick += 1
        image = Image.fromarray(scene)
        size = max(8, image.width // 40)  # a marker moving across, like a person walking by
        x = (self._tick * size) % max(1, image.width - size)
        ImageDraw.Draw(image).rectangle([x, image.height - 2 * size, x + size, image.height - size],
                                        fill=(200, 40, 40))
        if mode == "blur":
            image = image.filter(ImageFilter.GaussianBlur(radius))
        frame = np.asarray(image, dtype=np.float32)
        if mode == "black":
            frame = frame * 0.02  # a covered lens still leaks a little light
        frame += self._rng.normal(0.0, 2.0, frame.shape).astype(np.float32)  # sensor noise
        self._last = np.clip(frame, 0, 255).astype(np.uint8)
        return self._last

    def simulate(self, action: str, args: list[str]) -> dict[str, Any]:
        if action not in SIM_MODES:
            raise SimulationError(f"camera action {action!r} unknown; expected one of {', '.join(SIM_MODES)}")
        radius = self._blur_radius
        if action == "blur" and args:
            if len(args) > 1:
                raise SimulationError(f"blur takes at most one argument (radius in pixels), got {args!r}")
            try:
                radius = float(args[0])
            except ValueError:
                raise SimulationError(f"blur radius must be a number, got {args[0]!r}") from None
            if not (math.isfinite(radius) and radius > 0):
                raise SimulationError(f"blur radius must be > 0, got {args[0]!r}")
        elif args:
            raise SimulationError(f"{action} takes no arguments, got {args!r}")
        with self._lock:
            self._mode, self._blur_radius = action, radius
        return {"mode": action, **({"radius": radius} if action == "blur" else {})}
