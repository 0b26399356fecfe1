"""The audio monitor's self-test steps that act on outputs: the relay and the loopback tone.

They switch a relay or play a tone in the room, which a person must agree to, so each
comes with the words ``selftest_actions`` shows before asking, and a "not confirmed"
step for when the answer was no. The steps take what they use (a way to switch, a way
to record the feed); the options that choose them are read by the monitor.
"""
from __future__ import annotations

import math
import subprocess
import tempfile
import wave
from typing import Any, Callable

import numpy as np

from examroom.drivers.audio.levels import TrialRecorder
from examroom.drivers.audio.relay import SourceRelay
from examroom.drivers.base import DeviceError, SelftestStep

Record = Callable[[float], tuple[TrialRecorder, bool]]  # seconds -> (recording, complete)


def actions(relay: bool, loopback: bool, output_device: str) -> list[str]:
    """What the acting steps would do, in words for a person (``Driver.selftest_actions``)."""
    acts = []
    if relay:
        acts.append("switch the audio relay to the other source for about half a second, "
                    "then back to the source it was on")
    if loopback:
        acts.append(f"play a 1 kHz test tone for 1.5 s on playback device "
                    f"{output_device!r} (audible in the room)")
    return acts


def not_confirmed(step: str) -> SelftestStep:
    return SelftestStep(step, True, "skipped: acts on an output and was not confirmed", skipped=True)


def relay_steps(relay: SourceRelay, act: bool | None, switch: Callable[[str, str], Any],
                record: Record) -> list[SelftestStep]:
    """The relay is looked at; with ``act`` it is also switched to the other source and back."""
    steps = [SelftestStep("relay", relay.is_open,
                          f"source {relay.source}" if relay.is_open else relay.error or "not open")]
    if act is False:
        steps.append(not_confirmed("relay switch"))
    elif act and relay.is_open:
        steps.append(_relay_switch(relay.source, switch, record))
    return steps


def _relay_switch(original: str, switch: Callable[[str, str], Any], record: Record) -> SelftestStep:
    """Switch to the other source and back; its level is reported, not judged.

    Whether the other feed carries sound depends on what the broadcast room
    plays at that moment, so only the switching itself can fail here.
    """
    other = "backup" if original == "primary" else "primary"
    try:
        switch(other, "selftest")
        heard, _ = record(0.5)
        level = heard.mean_dbfs
    except (DeviceError, OSError) as exc:
        return SelftestStep("relay switch", False, f"{type(exc).__name__}: {exc}")
    finally:
        switch(original, "selftest")
    return SelftestStep("relay switch", True,
                        f"{original} -> {other} -> {original}; {other} feed mean {level} dBFS")


def loopback(record: Record, rate: int, output_device: str, silence_floor_dbfs: float) -> SelftestStep:
    """Play a 1 kHz tone with aplay and expect the input level to rise by 10 dB."""
    base, _ = record(0.5)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        t = np.arange(int(1.5 * rate)) / rate
        tone = (0.1 * 32767 * np.sin(2 * math.pi * 1000.0 * t)).astype("<i2")
        with wave.open(f.name, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(tone.tobytes())
        try:
            proc = subprocess.Popen(["aplay", "-q", "-D", output_device, f.name],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            return SelftestStep("loopback", False, f"cannot run aplay: {exc}")
        heard, _ = record(1.0)
        try:
            _, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return SelftestStep("loopback", False, "aplay did not finish")
    if proc.returncode != 0:
        return SelftestStep("loopback", False, f"aplay failed: {err.decode(errors='replace').strip()}")
    before, during = base.mean_dbfs, heard.mean_dbfs
    ok = during >= before + 10.0 and during > silence_floor_dbfs
    return SelftestStep("loopback", ok, f"input {before} dBFS before, {during} dBFS with the tone")
