"""Real image files for the camera tests, drawn with Pillow: a room scene, a black frame, a blur,
and the scene at another size and aspect (640x480: what a camera mode change delivers).

Shared by test_camera_health.py (verdicts, blur calibration) and test_camera.py (the driver).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

W, H = 1280, 720
SMALL = (640, 480)  # another aspect: downscaled for analysis it is 320x240, not 320x180


def make_scene(seed: int = 3) -> Image.Image:
    """A classroom-like view: textured wall, rows of desks, a clock, the room label."""
    rng = np.random.default_rng(seed)
    wall = np.linspace(80, 180, W)[None, :, None] * np.ones((H, 1, 3))
    texture = rng.normal(0, 10, (H // 4, W // 4, 1)).repeat(4, 0).repeat(4, 1)
    image = Image.fromarray(np.clip(wall + texture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for row in range(3):
        for col in range(5):
            x, y = 80 + col * 230, 300 + row * 130
            draw.rectangle([x, y, x + 170, y + 70], fill=(150, 110, 70), outline=(30, 20, 10), width=4)
            draw.ellipse([x + 60, y - 50, x + 110, y], fill=(60, 50, 45))  # a candidate's head
    draw.ellipse([1040, 30, 1220, 210], fill=(235, 235, 240), outline=(0, 0, 0), width=5)
    draw.line([1130, 120, 1130, 50], fill=(0, 0, 0), width=6)
    draw.text((60, 50), "Site 0101 Room 12", fill=(15, 15, 15), font=ImageFont.load_default(size=56))
    return image


def noisy(image: Image.Image, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    arr = arr + np.random.default_rng(seed).normal(0, sigma, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test images as files on disk, read back as any camera frame would be."""
    root = tmp_path_factory.mktemp("camera-images")
    scene = make_scene()
    (root / "scenes").mkdir()  # the sim's images_dir: the normal scene only
    paths = {"scene": root / "scenes" / "scene.png", "black": root / "black.png", "blurred": root / "blurred.png",
             "small": root / "small.png"}
    scene.save(paths["scene"])
    scene.resize(SMALL).save(paths["small"])
    Image.new("RGB", (W, H), (3, 3, 3)).save(paths["black"])
    scene.filter(ImageFilter.GaussianBlur(5)).save(paths["blurred"])
    return paths


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))
