"""CPU cost of one camera health check, to size ``analysis_width`` and ``interval_s`` for a Pi.

Measures process CPU time (not wall time) of what the health thread does per
check after the capture: downscale + grey + brightness + Laplacian variance +
frame difference, for a 1920x1080 RGB frame. The capture itself (done by the
camera's ISP) and JPEG snapshots are reported separately.

Run: .venv/bin/python bench/bench_camera.py [iterations]
"""
from __future__ import annotations

import io
import sys
import time
from typing import Callable

import numpy as np
from PIL import Image

from examroom.drivers.camera.backends import default_scene_dir
from examroom.drivers.camera.health import HealthAnalyzer, prepare

DEFAULT_INTERVAL_S = 5.0


def frames(n: int) -> list[np.ndarray]:
    """Distinct noisy 1920x1080 frames of the sim's room scene, made before timing starts."""
    scene = np.asarray(Image.open(default_scene_dir() / "scene.png").convert("RGB").resize((1920, 1080)),
                       dtype=np.float32)
    rng = np.random.default_rng(1)
    return [np.clip(scene + rng.normal(0, 2, scene.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def cpu_per_call(fn: Callable[[int], object], iterations: int) -> float:
    fn(0)  # warm-up: first call pays imports and allocations
    start = time.process_time()
    for i in range(iterations):
        fn(i)
    return (time.process_time() - start) / iterations


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    pool = frames(4)
    print(f"frame 1920x1080 RGB, {iterations} iterations, process CPU time per call")
    results: dict[str, float] = {}
    for width in (320, 640, 1920):
        analyzer = HealthAnalyzer()
        results[f"check@{width}"] = cpu_per_call(
            lambda i, w=width, a=analyzer: a.observe(prepare(pool[i % len(pool)], w), float(i)), iterations)
    results["jpeg q85 snapshot"] = cpu_per_call(
        lambda i: Image.fromarray(pool[i % len(pool)]).save(io.BytesIO(), "JPEG", quality=85), iterations)
    for label, seconds in results.items():
        line = f"  {label:<20} {seconds * 1000:8.2f} ms"
        if label.startswith("check"):
            line += f"   CPU share at interval_s={DEFAULT_INTERVAL_S:g}: {seconds / DEFAULT_INTERVAL_S * 100:.3f} %"
        print(line)


if __name__ == "__main__":
    main()
