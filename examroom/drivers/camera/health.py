"""Is the camera's picture usable? Pure analysis over numpy frames, no hardware.

Kept apart from the driver so the verdicts can be tested on real image files
and benchmarked without a camera. Frames are downscaled before analysis
because the questions asked (is it dark, blurred, frozen) are answered just as
well at 320 pixels wide as at 1920, for a fraction of the CPU of a Pi.

Sharpness is the variance of a 4-neighbour Laplacian: edges and texture give
large second derivatives, defocus or a smeared lens removes them. The value
depends on the analysis size (a downscaled image packs more edge per pixel),
so ``DEFAULT_BLUR_THRESHOLD`` is calibrated at ``DEFAULT_ANALYSIS_WIDTH``; see
tests/test_camera_health.py for the calibration images and the measured margins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from examroom.contract.vocabulary import CameraProblem, CameraView

NORMAL, ABNORMAL = CameraView.NORMAL, CameraView.ABNORMAL
DARK, BLURRED, FROZEN, NO_FRAMES = CameraProblem.DARK, CameraProblem.BLURRED, CameraProblem.FROZEN, CameraProblem.NO_FRAMES

DEFAULT_ANALYSIS_WIDTH = 320
DEFAULT_DARK_THRESHOLD = 20.0      # mean grey level of 255; a covered lens sits near 0-10
# Calibrated at 320 px wide on the 1280x720 room scenes of the sim and the tests (desks,
# heads, text, texture, sensor noise): sharp 2000-3200; GaussianBlur radius 2: 420-530
# (soft, still usable); radius 4: 50-66 and radius 6: 15-17 (no seat readable); a flat
# noisy wall 5-11. 100 sits 20x under a sharp scene and above what nobody could read.
DEFAULT_BLUR_THRESHOLD = 100.0
DEFAULT_FROZEN_AFTER_S = 10.0
# Mean absolute difference (grey levels) below which two frames count as the same.
# Any live sensor shows noise well above this (~0.3 or more even after downscaling);
# a stuck pipeline repeats a buffer exactly and gives 0.
DEFAULT_FROZEN_EPSILON = 0.05


def prepare(rgb: np.ndarray, width: int = DEFAULT_ANALYSIS_WIDTH) -> np.ndarray:
    """Grey float32 frame at about ``width`` pixels wide, from an 8-bit RGB(X) frame.

    Downscales by an integer box reduction first (Pillow, in C) so the full
    frame is read once and every later numpy pass runs on the small image.
    """
    frame = np.asarray(rgb)
    if frame.ndim == 3 and frame.shape[2] == 4:  # XRGB-style buffers carry a padding channel
        frame = frame[:, :, :3]
    image = Image.fromarray(np.ascontiguousarray(frame))
    factor = max(1, math.ceil(image.width / width)) if width > 0 else 1
    if factor > 1:
        image = image.reduce(factor)
    return np.asarray(image.convert("L"), dtype=np.float32)


def brightness(gray: np.ndarray) -> float:
    return float(gray.mean())


def sharpness(gray: np.ndarray) -> float:
    """Variance of the discrete Laplacian (kernel 0 1 0 / 1 -4 1 / 0 1 0), border excluded."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    centre = gray[1:-1, 1:-1]
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * centre
    return float(lap.var())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """Frame-to-frame change; None when the sizes differ (a camera mode change, another image).

    Frames of different sizes cannot be compared pixel by pixel, and a picture whose size
    changed is certainly not frozen. None rather than infinity: the value goes into JSON,
    which has no infinity.
    """
    if a.shape != b.shape:
        return None
    return float(np.abs(a - b).mean())


@dataclass(frozen=True)
class Thresholds:
    dark: float = DEFAULT_DARK_THRESHOLD
    blur: float = DEFAULT_BLUR_THRESHOLD
    frozen_after_s: float = DEFAULT_FROZEN_AFTER_S
    frozen_epsilon: float = DEFAULT_FROZEN_EPSILON


@dataclass(frozen=True)
class Verdict:
    state: str                       # NORMAL | ABNORMAL
    reason: str = ""                 # "" | DARK | FROZEN | BLURRED | NO_FRAMES
    metrics: dict[str, Any] = field(default_factory=dict)


class HealthAnalyzer:
    """Turns a stream of prepared frames into verdicts.

    Stateful only for the freeze check, which needs the previous frame and
    the monotonic time the picture last changed; the caller passes ``now`` so
    tests drive time without sleeping. Reasons are ranked by what a person
    must do: no frames (cabling/driver) before dark (lens covered: the black
    picture is also still and flat) before frozen (a stuck feed may show a
    sharp picture) before blurred.
    """

    def __init__(self, thresholds: Thresholds = Thresholds()) -> None:
        self.thresholds = thresholds
        self._previous: np.ndarray | None = None
        self._still_since: float | None = None

    def observe(self, gray: np.ndarray | None, now: float) -> Verdict:
        """Analyse one prepared frame; ``None`` means the capture failed or timed out."""
        if gray is None:
            return Verdict(ABNORMAL, NO_FRAMES, {"brightness": None, "sharpness": None, "diff": None})
        t = self.thresholds
        # None: the first frame, or one of another size than the last; either way a change.
        diff = None if self._previous is None else mean_abs_diff(gray, self._previous)
        if diff is None or diff >= t.frozen_epsilon or self._still_since is None:
            self._still_since = now
        self._previous = gray
        still_for = now - self._still_since
        metrics = {
            "brightness": round(brightness(gray), 2),
            "sharpness": round(sharpness(gray), 2),
            "diff": None if diff is None else round(diff, 4),
            "still_s": round(still_for, 3),
        }
        if metrics["brightness"] < t.dark:
            return Verdict(ABNORMAL, DARK, metrics)
        if diff is not None and still_for >= t.frozen_after_s:
            return Verdict(ABNORMAL, FROZEN, metrics)
        if metrics["sharpness"] < t.blur:
            return Verdict(ABNORMAL, BLURRED, metrics)
        return Verdict(NORMAL, "", metrics)
