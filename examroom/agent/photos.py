"""The room's photos: check-in verdicts photographed on a worker, and snapshots on request.

Check-in photos are taken here, one at a time and in order, so the door never
waits for capture + JPEG + fsync (the station lock also orders metal alarms and
sweep buttons); a second worker would only race the first for the camera.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from examroom.agent.devices import Devices
from examroom.contract.vocabulary import DeviceState, EventKind
from examroom.drivers.base import Driver

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]


class NoCamera(LookupError):
    """No working camera: a snapshot request fails with this text."""


class Photos:
    def __init__(self, devices: Devices, emit: Emit, cameras: list[str]) -> None:
        self._devices = devices
        self._emit = emit
        self._cameras = cameras  # configured camera names, known before the drivers exist
        self._shots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkin-snapshot")

    @property
    def configured(self) -> bool:
        return bool(self._cameras)

    def stop(self) -> None:
        """Waits for the photos already asked for: each one's ``snapshot`` event is evidence the
        aggregator joins to a ``checkin``, and the camera and spool are still running here."""
        self._shots.shutdown(wait=True)

    def camera(self) -> Driver | None:
        cams = [d for d in self._devices.of_kind("camera") if d.status().state == DeviceState.OK]
        return cams[0] if cams else None

    def take(self, tag: str) -> dict[str, Any]:
        """A snapshot asked for by a person or the site: taken now, published, returned."""
        cam = self.camera()
        if cam is None:
            raise NoCamera("no working camera is configured")
        shot = cam.snapshot(tag)
        self._emit(EventKind.SNAPSHOT, {"device": cam.name, **shot})
        return shot

    def for_checkin(self, tag: str, about: dict[str, Any]) -> None:
        """The station's photo of a verdict: queued, never waited for."""
        self._shots.submit(self._take_for_checkin, tag, about)

    def _take_for_checkin(self, tag: str, about: dict[str, Any]) -> None:
        """Every request ends in one ``snapshot`` event naming its check-in in ``for``: the photo,
        or why there is none, so an aggregator waiting on a pending marker always hears back."""
        cam = self.camera()
        try:
            if cam is None:
                raise RuntimeError("no working camera")
            data = {"device": cam.name, **cam.snapshot(tag)}
        except Exception as e:  # a failing camera costs the photo, never the worker
            log.warning("check-in snapshot %s failed: %s", tag, e)
            data = {"device": cam.name if cam else self._cameras[0], "error": str(e)}
        try:
            self._emit(EventKind.SNAPSHOT, {**data, "for": about})
        except Exception:  # nobody reads this worker's futures: say it here
            log.exception("snapshot event for check-in %s not spooled", about.get("id"))
