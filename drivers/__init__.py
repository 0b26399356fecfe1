"""Hardware drivers, one module per hardware kind, each with a real and a simulated backend.

The registry maps ``(kind, backend)`` to ``"module:Class"`` so importing this
package imports no hardware library; the class is loaded only when a
``[[device]]`` table asks for it.
"""
from __future__ import annotations

import importlib

from drivers.base import Driver

REGISTRY: dict[tuple[str, str], str] = {
    ("idcard", "serial"): "drivers.idcard:SerialIdCardReader",
    ("idcard", "sim"): "drivers.idcard:SimIdCardReader",
    ("pcsc", "pcsc"): "drivers.pcsc:PcscReader",
    ("pcsc", "sim"): "drivers.pcsc:SimPcscReader",
    ("metal_detector", "gpio"): "drivers.metal_detector:GpioMetalDetector",
    ("metal_detector", "sim"): "drivers.metal_detector:SimMetalDetector",
    ("audio", "alsa"): "drivers.audio:AlsaAudioMonitor",
    ("audio", "sim"): "drivers.audio:SimAudioMonitor",
    ("camera", "picamera2"): "drivers.camera:PiCamera",
    ("camera", "sim"): "drivers.camera:SimCamera",
    ("clock", "system"): "drivers.clock:SystemClock",
    ("clock", "sim"): "drivers.clock:SimClock",
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
