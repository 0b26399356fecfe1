"""systemd's notify protocol, done here because the `sdnotify` package connects once
at creation and swallows errors; this sends each message on its own and says if it failed."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send e.g. ``READY=1``; False when not under systemd (no NOTIFY_SOCKET) or on error."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError as e:
        log.warning("sd_notify %s failed: %s", message, e)
        return False


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
