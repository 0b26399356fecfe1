"""The keys of an audio monitor's ``[[device]]`` table, with the values each may hold.

Both backends take this one table (the sim changes only the relay's default), so a
room's config can switch backend without edits. The monitor reads the keys;
tests/test_audio_options.py holds every key read to this table.
"""
from __future__ import annotations

from typing import Any

from examroom.drivers.base import Option, positive

DTYPES = {"S16_LE": "<i2", "S32_LE": "<i4"}  # sample_format -> numpy dtype of the capture


def _is_pin(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and value.strip() != "")


OPTIONS: dict[str, Option] = {
    "device": Option(str, default="default", help="ALSA capture PCM name"),
    "rate": Option(int, default=48000, check=lambda v: 8000 <= v <= 192000,
                   expected="8000-192000 Hz"),
    "channels": Option(int, default=1, check=lambda v: 1 <= v <= 8, expected="1-8"),
    "sample_format": Option(str, default="S16_LE", check=lambda v: v in DTYPES,
                            expected="S16_LE or S32_LE"),
    "block_ms": Option(int, default=100, check=lambda v: 10 <= v <= 1000,
                       expected="10-1000 ms"),
    "levels_every_s": Option((int, float), default=1.0, check=lambda v: 0.01 <= v <= 60,
                             expected="0.01-60 seconds", help="AudioLevels period"),
    "silence_floor_dbfs": Option((int, float), default=-50.0, check=lambda v: -120 < v < 0,
                                 expected="between -120 and 0 dBFS"),
    "silence_hold_s": Option((int, float), default=2.0, check=positive, expected="> 0 s"),
    "clip_dbfs": Option((int, float), default=-0.1, check=lambda v: -20 <= v <= 0,
                        expected="between -20 and 0 dBFS"),
    "clip_samples": Option(int, default=3, check=positive,
                           expected=">= 1 sample per block at or above clip_dbfs"),
    "relay_pin": Option((int, str), default=None, check=_is_pin,
                        expected="a GPIO number (17) or a gpiozero pin name (\"GPIO17\")",
                        help="relay switching primary (released) / backup (energised)"),
    "relay_active_high": Option(bool, default=True),
    "retry_s": Option((int, float), default=2.0, check=positive, expected="> 0 s",
                      help="how often an absent capture device is looked for again"),
    "output_device": Option(str, default="default", help="ALSA playback PCM for loopback"),
    "loopback_test": Option(bool, default=False,
                            help="selftest plays a tone and expects it back on the input"),
}
