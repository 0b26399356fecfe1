"""CPU share of the audio monitor at 48 kHz mono (target: <= 5 % of one core).

Three numbers, because each answers a different question:
- sim: the whole SimAudioMonitor run in real time for ``--seconds`` (synthesis
  included, so an upper bound for the monitor itself): process CPU / wall time.
- alsa: AlsaAudioMonitor reading the same length of PCM from an ALSA ``file``
  device (not paced, so it runs flat out): process CPU per second of audio,
  which is the share it would take of a core when fed in real time.
- core: LevelAnalyzer.feed alone, microseconds per 100 ms block.

Run: .venv/bin/python bench/bench_audio.py [--seconds 10]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from examroom.drivers.bus import Bus
from examroom.drivers.audio.backends import AlsaAudioMonitor, SimAudioMonitor
from examroom.drivers.audio.levels import LevelAnalyzer, Thresholds
from examroom.drivers.events import AudioLevels

RATE = 48000


def tone(seconds: float) -> np.ndarray:
    n = np.arange(int(seconds * RATE))
    return np.rint(3277 * np.sin(2 * math.pi * 1000 * n / RATE)).astype("<i2")


def until_levels(bus: Bus, count: int) -> threading.Event:
    """Set once ``count`` one-second AudioLevels have been emitted."""
    seen = [0]
    done = threading.Event()

    def on(_: AudioLevels) -> None:
        seen[0] += 1
        if seen[0] == count:
            done.set()

    bus.subscribe(AudioLevels, on)
    return done


def bench_sim(seconds: int) -> None:
    bus = Bus()
    done = until_levels(bus, seconds)
    drv = SimAudioMonitor("audio", {}, bus)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    drv.start()
    try:
        fed = done.wait(seconds + 5)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        drv.stop()
    if not fed:
        raise SystemExit(f"sim feed stalled: {seconds} s of levels not seen in {wall:.1f} s; no result")
    print(f"sim   {seconds} s real time: wall {wall:.2f} s, cpu {cpu:.3f} s, "
          f"share {100 * cpu / wall:.2f} % of one core")


def bench_alsa(seconds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "feed.raw"
        raw.write_bytes(tone(seconds + 1).tobytes())
        conf = Path(tmp) / "asound.conf"
        conf.write_text(f"""</usr/share/alsa/alsa.conf>
pcm.bench_zeros {{ type file slave.pcm null file "/dev/null" infile "/dev/zero" format raw }}
pcm.bench_feed {{ type file slave.pcm bench_zeros file "/dev/null" infile "{raw}" format raw }}
""")
        os.environ["ALSA_CONFIG_PATH"] = str(conf)
        bus = Bus()
        done = until_levels(bus, seconds)
        drv = AlsaAudioMonitor("audio", {"device": "bench_feed"}, bus)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        drv.start()
        try:
            fed = done.wait(60)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            drv.stop()
        if not fed:
            raise SystemExit(f"alsa feed stalled: {seconds} s of levels not seen in {wall:.1f} s "
                             f"({drv.status().reason or 'no error'}); no result")
    print(f"alsa  {seconds} s of audio read unpaced in {wall:.3f} s: cpu {cpu:.3f} s, "
          f"= {100 * cpu / seconds:.2f} % of one core at real time")


def bench_core(blocks: int = 2000) -> None:
    core = LevelAnalyzer(RATE, 1, Thresholds())
    block = tone(0.1)
    t0 = time.process_time()
    for _ in range(blocks):
        core.feed(block)
    per_block = (time.process_time() - t0) / blocks
    print(f"core  {1e6 * per_block:.1f} us per 100 ms block = {100 * per_block / 0.1:.3f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    bench_core()
    bench_alsa(args.seconds)
    bench_sim(args.seconds)


if __name__ == "__main__":
    main()
