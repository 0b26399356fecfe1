"""The benchmarks are scripts, not timed tests; this only keeps them runnable (a rename once
broke one silently). Tiny sizes: the numbers printed here mean nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script,args,expect", [
    ("bench_core.py", ["--events", "200", "--latency-samples", "20", "--idle-seconds", "1"], "ratio"),
    ("bench_checkin.py", ["--n", "20", "--plans", "30", "--sync", "normal", "--room-seats", "2"], "p99"),
    ("bench_audio.py", ["--seconds", "1"], "%"),
    ("bench_camera.py", ["2"], "ms"),
    ("bench_simroom_idle.py", ["--seconds", "1"], "RSS"),
    ("soak_outage.py", ["--events", "200"], "lost 0"),
    ("soak_crashloop.py", ["--seconds", "4", "--agent-kills", "1", "--broker-kills", "1"], "lost 0"),
])
def test_benchmark_runs(script: str, args: list[str], expect: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert expect in r.stdout
