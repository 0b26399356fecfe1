"""The room's devices: built from ``[[device]]`` tables, started, watched, self-tested.

The agent talks to devices only through the Driver contract, so a missing
library or absent hardware is a device state, never a crash of the agent.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from examroom import drivers
from examroom.drivers.bus import Bus
from examroom.agent.config import DeviceConfig
from examroom.agent.metrics import Metrics
from examroom.drivers.base import ABSENT, FAULT, OK, DeviceStatus, Driver, SelftestResult, SelftestStep

log = logging.getLogger(__name__)


class Devices:
    def __init__(self, configs: tuple[DeviceConfig, ...], bus: Bus, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.configs = configs
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.drivers: dict[str, Driver] = {}

    def _backend(self, dc: DeviceConfig) -> str:
        """``EXAMROOM_BACKEND=sim`` runs a production config on simulated hardware (a dry run on a
        laptop, a training room), like gpiozero's GPIOZERO_PIN_FACTORY; said loudly, never silently."""
        forced = os.environ.get("EXAMROOM_BACKEND", "")
        if not forced or forced == dc.backend:
            return dc.backend
        if forced not in drivers.backends(dc.kind):
            log.warning("EXAMROOM_BACKEND=%s has no %s driver: device %s keeps backend %s",
                        forced, dc.kind, dc.name, dc.backend)
            return dc.backend
        log.warning("EXAMROOM_BACKEND=%s: device %s runs on %s instead of the configured %s",
                    forced, dc.name, forced, dc.backend)
        return forced

    def start(self) -> None:
        for dc in self.configs:
            backend = self._backend(dc)
            cls = drivers.driver_class(dc.kind, backend)
            options = {k: o.default for k, o in cls.options.items()} | dict(dc.options)
            drv = cls(dc.name, options, self.bus, self.clock)
            self.drivers[dc.name] = drv
            try:
                drv.start()
            except Exception:  # a driver bug must not keep the room offline
                log.exception("device %s (%s/%s) failed to start", dc.name, dc.kind, backend)
            log.info("device %s (%s/%s): %s", dc.name, dc.kind, backend, self._status(drv).state)

    def stop(self) -> None:
        for name, drv in reversed(list(self.drivers.items())):
            try:
                drv.stop()
            except Exception:
                log.exception("device %s failed to stop", name)

    def of_kind(self, kind: str) -> list[Driver]:
        return [d for d in self.drivers.values() if d.kind == kind]

    def first(self, kind: str) -> Driver | None:
        found = self.of_kind(kind)
        return found[0] if found else None

    def get(self, name: str) -> Driver:
        try:
            return self.drivers[name]
        except KeyError:
            raise LookupError(f"no device named {name!r}; devices: {', '.join(self.drivers) or 'none'}") from None

    def _status(self, drv: Driver) -> DeviceStatus:
        """Each device is a collector, as in node_exporter: whether its status could be
        read and how long that took are metrics of their own."""
        t0 = time.monotonic()
        ok = True
        try:
            return drv.status()
        except Exception as e:
            ok = False
            log.exception("device %s status failed", drv.name)
            return DeviceStatus(FAULT, f"status failed: {e}")
        finally:
            self.metrics.status_seconds.labels(device=drv.name).set(time.monotonic() - t0)
            self.metrics.status_ok.labels(device=drv.name).set(1 if ok else 0)

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, drv in self.drivers.items():
            st = self._status(drv)
            self.metrics.device_up.labels(device=name, kind=drv.kind).set(1 if st.state == OK else 0)
            out[name] = {"kind": drv.kind, "backend": drv.backend, **st.as_dict()}
        return out

    def needing_attention(self) -> list[str]:
        """Devices a person must look at (absent or faulty), as 'name: reason' lines."""
        return [f"{name}: {st['state']}{' (' + st['reason'] + ')' if st.get('reason') else ''}"
                for name, st in self.statuses().items() if st["state"] in (ABSENT, FAULT)]

    def selftest(self, names: list[str] | None = None, act: bool | None = None) -> list[SelftestResult]:
        """Self-test the devices; ``act`` goes only to drivers whose test can drive an output.

        None leaves every driver's own default; the caller passes True only
        after a person agreed (see ``Driver.selftest_actions``).
        """
        results = []
        for name, drv in self.drivers.items():
            if names and name not in names:
                continue
            t0 = time.monotonic()
            try:
                if act is not None and drv.selftest_actions(drv.config):
                    res = drv.selftest(act=act)  # type: ignore[call-arg]  # declared by selftest_actions
                else:
                    res = drv.selftest()
            except Exception as e:
                log.exception("device %s self-test crashed", name)
                res = SelftestResult(name, drv.kind, False, (SelftestStep("selftest", False, str(e)),))
            self.metrics.selftest_seconds.labels(device=name).set(time.monotonic() - t0)
            self.metrics.selftest_ok.labels(device=name).set(1 if res.ok else 0)
            results.append(res)
        return results


def selftest_verdict(results: list[dict[str, Any]], allow_absent: bool) -> dict[str, Any]:
    """One rule for the daemon and the offline CLI: an absent device fails unless allowed.

    Drivers report an absent device as ``skipped``; on exam morning the room
    still needs it, so it only passes when the caller says absence is expected
    (``allow_absent``, e.g. a device not installed yet during joint testing).
    """
    absent = [r["device"] for r in results if r["skipped"]]
    failed = [r["device"] for r in results if not r["ok"] and not r["skipped"]]
    return {"passed": not failed and (allow_absent or not absent), "failed": failed, "absent": absent,
            "allow_absent": allow_absent}
