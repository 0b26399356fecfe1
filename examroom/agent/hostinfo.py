"""Host health for the heartbeat: what a technician would check first on a sick box."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _temperature_c() -> float | None:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def host_health(data_dir: str) -> dict[str, Any]:
    mem = _meminfo()
    try:
        disk = shutil.disk_usage(data_dir)
        disk_free = disk.free
    except OSError:
        disk_free = None
    load1, load5, _ = os.getloadavg()
    return {
        "load1": round(load1, 2), "load5": round(load5, 2), "cpus": os.cpu_count(),
        "temp_c": _temperature_c(),
        "mem_available": mem.get("MemAvailable"), "mem_total": mem.get("MemTotal"),
        "disk_free": disk_free,
    }
