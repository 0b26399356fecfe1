"""Times a person reads: in the exam's zone (``[procedure] timezone``, default
Asia/Shanghai), never the zone of the shell or the box. A box set to UTC printed UTC
in the CLI while its record said +08:00; a proctor compares these with the wall clock.

The CLI loads the config and calls ``use_zone`` once; ``watch`` without a config keeps
the default. Machine-facing times are ISO 8601 with offset and are written elsewhere
(``contract/times.py``); they come through here only to be read: a reply's time is such a
string, or epoch seconds from an older agent, and a proctor reads either the same way.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from examroom.contract.times import epoch

DEFAULT_ZONE = "Asia/Shanghai"
_zone = ZoneInfo(DEFAULT_ZONE)


def use_zone(name: str) -> None:
    global _zone
    _zone = ZoneInfo(name)


def clock(ts: Any = None) -> str:
    """Time of day, ``HH:MM:SS``, in the exam's zone, from epoch seconds or an ISO 8601 string
    with offset; ``?`` for what is not a time."""
    t = time.time() if ts is None else epoch(ts)
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, _zone).strftime("%H:%M:%S")
