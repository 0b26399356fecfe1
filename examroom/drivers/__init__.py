"""Hardware drivers, one module per hardware kind, each with a real and a simulated backend.

The registry maps ``(kind, backend)`` to ``"module:Class"`` so importing this
package imports no hardware library; the class is loaded only when a
``[[device]]`` table asks for it.
"""
from __future__ import annotations

import importlib

from examroom.drivers.base import Driver

REGISTRY: dict[tuple[str, str], str] = {
    ("idcard", "serial"): "examroom.drivers.idcard.reader:SerialIdCardReader",
    ("idcard", "sim"): "examroom.drivers.idcard.reader:SimIdCardReader",
    ("pcsc", "pcsc"): "examroom.drivers.pcsc.reader:PcscReader",
    ("pcsc", "sim"): "examroom.drivers.pcsc.sim:SimPcscReader",
    ("metal_detector", "gpio"): "examroom.drivers.metal_detector:GpioMetalDetector",
    ("metal_detector", "sim"): "examroom.drivers.metal_detector:SimMetalDetector",
    ("audio", "alsa"): "examroom.drivers.audio.backends:AlsaAudioMonitor",
    ("audio", "sim"): "examroom.drivers.audio.backends:SimAudioMonitor",
    ("camera", "picamera2"): "examroom.drivers.camera.backends:PiCamera",
    ("camera", "sim"): "examroom.drivers.camera.backends:SimCamera",
    ("clock", "system"): "examroom.drivers.clock:SystemClock",
    ("clock", "sim"): "examroom.drivers.clock:SimClock",
}


def kinds() -> list[str]:
    return sorted({k for k, _ in REGISTRY})


def backends(kind: str) -> list[str]:
    return sorted(b for k, b in REGISTRY if k == kind)


def driver_class(kind: str, backend: str) -> type[Driver]:
    """Import the driver module lazily. Raises KeyError for an unknown pair."""
    target = REGISTRY[(kind, backend)]
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)
