"""Verdicts of the pure analysis core on real image files; the blur threshold's calibration.

Time for the freeze check is passed in, so nothing sleeps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from examroom.drivers.camera.health import (DEFAULT_BLUR_THRESHOLD, DEFAULT_DARK_THRESHOLD, HealthAnalyzer,
                                   Thresholds, brightness, prepare, sharpness)
from tests.camera_images import SMALL, H, W, load, noisy


def verdict_of(frame: np.ndarray) -> tuple[str, str]:
    v = HealthAnalyzer().observe(prepare(frame), now=0.0)
    return v.state, v.reason


def test_scene_is_normal(images: dict[str, Path]) -> None:
    assert verdict_of(load(images["scene"])) == ("normal", "")
    assert verdict_of(noisy(Image.open(images["scene"]))) == ("normal", "")


def test_black_frame_is_dark(images: dict[str, Path]) -> None:
    frame = load(images["black"])
    assert brightness(prepare(frame)) < DEFAULT_DARK_THRESHOLD
    assert verdict_of(frame) == ("abnormal", "dark")


def test_blurred_frame_is_blurred(images: dict[str, Path]) -> None:
    assert verdict_of(load(images["blurred"])) == ("abnormal", "blurred")
    assert verdict_of(noisy(Image.open(images["blurred"]), sigma=4)) == ("abnormal", "blurred")


def test_blur_calibration(images: dict[str, Path]) -> None:
    """Sharp scene far above the threshold, radius >= 4 blur well below it, with noise included."""
    scene = Image.open(images["scene"])
    sharp = sharpness(prepare(noisy(scene)))
    by_radius = {r: sharpness(prepare(noisy(scene.filter(ImageFilter.GaussianBlur(r))))) for r in (1, 2, 4, 6)}
    flat = sharpness(prepare(noisy(Image.new("RGB", (W, H), (128, 128, 128)), sigma=4)))
    print(f"sharpness @320px: scene {sharp:.0f}, blur {by_radius}, flat wall {flat:.1f}")
    assert sharp > 10 * DEFAULT_BLUR_THRESHOLD
    assert by_radius[2] > DEFAULT_BLUR_THRESHOLD  # slightly soft is still usable
    assert by_radius[4] < DEFAULT_BLUR_THRESHOLD and by_radius[6] < DEFAULT_BLUR_THRESHOLD / 3
    assert flat < DEFAULT_BLUR_THRESHOLD / 3


def test_prepare_downscales_and_keeps_verdicts(images: dict[str, Path]) -> None:
    big = np.asarray(Image.open(images["scene"]).resize((1920, 1080)))
    gray = prepare(big, 320)
    assert gray.shape == (180, 320) and gray.dtype == np.float32
    rgba = np.dstack([big, np.full(big.shape[:2], 255, np.uint8)])  # XRGB-style buffer
    assert np.array_equal(prepare(rgba, 320), gray)


def test_frozen_after_identical_frames_on_injected_clock(images: dict[str, Path]) -> None:
    analyzer = HealthAnalyzer(Thresholds(frozen_after_s=10))
    frame = prepare(load(images["scene"]))
    assert analyzer.observe(frame, 0.0).reason == ""
    assert analyzer.observe(frame.copy(), 5.0).reason == ""
    v = analyzer.observe(frame.copy(), 9.9)
    assert v.reason == "" and v.metrics["diff"] == 0.0
    v = analyzer.observe(frame.copy(), 10.0)
    assert (v.state, v.reason) == ("abnormal", "frozen") and v.metrics["still_s"] == 10.0
    assert analyzer.observe(prepare(noisy(Image.open(images["scene"]))), 11.0).reason == ""


def test_noisy_live_frames_never_freeze(images: dict[str, Path]) -> None:
    analyzer = HealthAnalyzer(Thresholds(frozen_after_s=10))
    scene = Image.open(images["scene"])
    reasons = {analyzer.observe(prepare(noisy(scene, seed=i)), float(i * 5)).reason for i in range(12)}
    assert reasons == {""}


def test_no_frames_verdict() -> None:
    v = HealthAnalyzer().observe(None, 0.0)
    assert (v.state, v.reason) == ("abnormal", "no_frames")


def test_frame_size_change_is_a_change_not_a_freeze(images: dict[str, Path]) -> None:
    """A camera mode change or another sim image: frames cannot be compared, the picture changed."""
    analyzer = HealthAnalyzer(Thresholds(frozen_after_s=10))
    big, small = prepare(load(images["scene"])), prepare(load(images["small"]))
    assert load(images["small"]).shape[:2] == SMALL[::-1] and big.shape != small.shape
    analyzer.observe(big, 0.0)
    assert analyzer.observe(big.copy(), 9.0).metrics["still_s"] == 9.0  # still for 9 s, not yet frozen
    v = analyzer.observe(small, 10.0)
    assert (v.state, v.reason) == ("normal", "")
    assert v.metrics["diff"] is None and v.metrics["still_s"] == 0.0  # the freeze clock restarts
    json.dumps(v.metrics, allow_nan=False)  # no Infinity: the metrics go out as JSON
    assert analyzer.observe(small.copy(), 19.9).reason == ""
    assert analyzer.observe(small.copy(), 20.0).reason == "frozen"  # 10 s after the size change
    back = analyzer.observe(big, 21.0)
    assert back.reason == "" and back.metrics["diff"] is None
