"""Room camera logic shared by every backend: health (正常/异常), snapshots, retention.

A backend only opens, closes and hands over one RGB frame; everything a
camera does with frames lives in ``CameraBase`` so the sim and the Pi behave
alike. Every capture runs in a single worker thread
and is waited for with a timeout, so a camera that stops delivering shows up
as ``no_frames`` instead of hanging the health thread or a snapshot.
"""
from __future__ import annotations

import hashlib
import io
from collections import deque
import logging
import os
import re
import threading
import time
from abc import abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image

from examroom.drivers.bus import Bus
from examroom.drivers.base import (ABSENT, FAULT, OK, STOPPED, DeviceAbsent, DeviceError, DeviceStatus,
                          DeviceTimeout, Driver, Option, ProtocolError, SelftestResult,
                          SelftestStep, positive)
from examroom.contract.vocabulary import CameraProblem, CameraView
from examroom.drivers.camera.health import (ABNORMAL, DEFAULT_ANALYSIS_WIDTH, DEFAULT_BLUR_THRESHOLD,
                                   DEFAULT_DARK_THRESHOLD, DEFAULT_FROZEN_AFTER_S, NO_FRAMES, NORMAL,
                                   HealthAnalyzer, Thresholds, Verdict, brightness, prepare,
                                   sharpness)
from examroom.drivers.events import CameraHealth, iso_now

log = logging.getLogger(__name__)

_NUMBER = (int, float)
_MIB = 1024 * 1024


def _non_negative(value: Any) -> bool:
    return not isinstance(value, bool) and value >= 0


COMMON_OPTIONS: dict[str, Option] = {
    "interval_s": Option(_NUMBER, 5.0, check=positive, expected="seconds > 0",
                         help="period of the picture health check"),
    "dark_threshold": Option(_NUMBER, DEFAULT_DARK_THRESHOLD, check=lambda v: _non_negative(v) and v <= 255,
                             expected="a mean grey level 0-255", help="below this the view counts as dark/covered"),
    "blur_threshold": Option(_NUMBER, DEFAULT_BLUR_THRESHOLD, check=_non_negative, expected="a number >= 0",
                             help="Laplacian variance at analysis_width below which the view is blurred"),
    "frozen_after_s": Option(_NUMBER, DEFAULT_FROZEN_AFTER_S, check=positive, expected="seconds > 0",
                             help="identical frames for this long mean the feed is frozen"),
    "capture_timeout_s": Option(_NUMBER, 5.0, check=positive, expected="seconds > 0",
                                help="a capture taking longer counts as no frames"),
    "snapshot_dir": Option(str, "/var/lib/examroom/snapshots", check=bool, expected="a directory path"),
    "retention_days": Option(_NUMBER, 30, check=positive, expected="days > 0",
                             help="snapshots older than this are deleted"),
    "retention_max_mb": Option(_NUMBER, 500, check=positive, expected="MiB > 0",
                               help="oldest snapshots are deleted until the total fits"),
    "jpeg_quality": Option(int, 85, check=lambda v: not isinstance(v, bool) and 1 <= v <= 95,
                           expected="an integer 1-95"),
    "analysis_width": Option(int, DEFAULT_ANALYSIS_WIDTH, check=lambda v: not isinstance(v, bool) and 16 <= v <= 4096,
                             expected="pixels 16-4096", help="frames are downscaled to this width for health checks"),
}


def sanitise_tag(tag: str) -> str:
    """File-name-safe tag: the tag comes from people and the network, the name from us."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", tag).strip("-_")[:40]
    return safe or "snap"


def prune_snapshots(directory: Path, now: float, max_age_s: float, max_bytes: int,
                    keep: Path | None = None) -> list[str]:
    """Delete snapshots by age, then oldest first until the total fits; never ``keep``.

    Only ``*.jpg`` files are considered so nothing else placed in the directory
    is ever deleted. Returns the names removed, oldest first.
    """
    entries: list[tuple[float, str, int, Path]] = []
    for path in directory.glob("*.jpg"):
        try:
            st = path.stat()
        except FileNotFoundError:  # removed meanwhile by someone else
            continue
        entries.append((st.st_mtime, path.name, st.st_size, path))
    entries.sort()
    removed: list[str] = []
    kept: list[tuple[float, str, int, Path]] = []
    for entry in entries:
        mtime, name, _, path = entry
        if path != keep and now - mtime > max_age_s:
            path.unlink(missing_ok=True)
            removed.append(name)
        else:
            kept.append(entry)
    total = sum(size for _, _, size, _ in kept)
    for _, name, size, path in kept:
        if total <= max_bytes:
            break
        if path == keep:
            continue
        path.unlink(missing_ok=True)
        removed.append(name)
        total -= size
    return removed


class SnapshotIndex:
    """Retention without listing the directory on every snapshot.

    A check-in waits for its photo, and a month of photos is thousands of files
    (listing 5,000 took 61 ms here). The directory is scanned (and pruned) once, then
    every hour to see files others put there or removed; in between, new snapshots are
    appended and the oldest popped, the same rule as ``prune_snapshots``.
    """

    RESCAN_S = 3600.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._entries: deque[tuple[float, str, int]] | None = None  # (mtime, name, size), oldest first
        self._total = 0
        self._scanned_at = 0.0

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    def add(self, path: Path, size: int, wall: float, max_age_s: float, max_bytes: int) -> list[str]:
        """Record a new snapshot and apply retention; returns the names removed."""
        if self._entries is None or not 0 <= wall - self._scanned_at <= self.RESCAN_S:
            removed = prune_snapshots(self.directory, wall, max_age_s, max_bytes, keep=path)
            self._scan(wall)
            return removed
        self._entries.append((wall, path.name, size))
        self._total += size
        removed: list[str] = []
        while self._entries and self._entries[0][1] != path.name and (
                wall - self._entries[0][0] > max_age_s or self._total > max_bytes):
            _, name, old_size = self._entries.popleft()
            (self.directory / name).unlink(missing_ok=True)
            self._total -= old_size
            removed.append(name)
        return removed

    def _scan(self, wall: float) -> None:
        entries = []
        for path in self.directory.glob("*.jpg"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, path.name, st.st_size))
        self._entries = deque(sorted(entries))
        self._total = sum(e[2] for e in entries)
        self._scanned_at = wall


class CameraBase(Driver):
    """What every camera backend shares; subclasses give ``_open``, ``_close`` and ``_capture``."""

    kind: ClassVar[str] = "camera"
    options: ClassVar[dict[str, Option]] = COMMON_OPTIONS

    def __init__(self, name: str, config: dict[str, Any], bus: Bus,
                 clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, bus, clock, monotonic=monotonic)
        self._running = False
        self._analyzer: HealthAnalyzer | None = None
        self._verdict: Verdict | None = None
        self._checked_at: float | None = None
        self._health_key: tuple[str, str] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: Future[np.ndarray] | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._capture_lock = threading.Lock()
        self._check_lock = threading.RLock()  # one check at a time keeps events in order
        self._index: SnapshotIndex | None = None
        self._index_lock = threading.Lock()

    @abstractmethod
    def _open(self) -> None:
        """Open the camera; raise DeviceAbsent when it (or its library) is not there."""

    @abstractmethod
    def _close(self) -> None:
        ...

    @abstractmethod
    def _capture(self) -> np.ndarray:
        """One frame, HxWx3 uint8 RGB."""

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        with self._check_lock:
            if self._running:
                return
            try:
                self._open()
            except DeviceAbsent as exc:
                log.warning("camera %s absent: %s", self.name, exc)
                self._set_state(ABSENT, str(exc))
                self._emit_health(CameraView.ABSENT, CameraProblem.NONE, {})
                return
            except (DeviceError, OSError, RuntimeError) as exc:
                log.error("camera %s failed to open: %s", self.name, exc)
                self._set_state(FAULT, str(exc))
                self._emit_health(ABNORMAL, NO_FRAMES, {"error": str(exc)})
                return
            self._analyzer = HealthAnalyzer(Thresholds(
                dark=float(self._opt("dark_threshold")), blur=float(self._opt("blur_threshold")),
                frozen_after_s=float(self._opt("frozen_after_s"))))
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"camera-{self.name}-capture")
            self._stop_event.clear()
            self._running = True
            self._check()  # the first verdict is known when start() returns
            self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=float(self._opt("capture_timeout_s")) + 1.0)
        with self._check_lock:
            self._thread = None
            if self._state == STOPPED:
                return
            if self._running:
                self._running = False
                # Close only between captures (a snapshot may be running), but never wait forever.
                idle = self._capture_lock.acquire(timeout=float(self._opt("capture_timeout_s")))
                try:
                    self._close()
                except Exception:  # a failing close must not keep the agent from shutting down
                    log.exception("camera %s: close failed", self.name)
                finally:
                    if idle:
                        self._capture_lock.release()
                if self._executor is not None:
                    self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                self._inflight = None
                self._analyzer = None
            self._health_key = None  # a later start reports its first verdict afresh
            self._set_state(STOPPED, "")

    def _run(self) -> None:
        while not self._stop_event.wait(float(self._opt("interval_s"))):
            try:
                self._check()
            except Exception:  # the health thread must outlive any surprise and keep reporting
                log.exception("camera %s: health check failed", self.name)

    # -- capture and health ----------------------------------------------

    def _grab(self) -> np.ndarray:
        """One frame from the backend within ``capture_timeout_s``, else DeviceTimeout."""
        timeout = float(self._opt("capture_timeout_s"))
        if not self._capture_lock.acquire(timeout=timeout):
            raise DeviceTimeout(f"no frame within {timeout:g} s (camera busy)")
        try:
            if self._executor is None:
                raise DeviceAbsent(f"camera {self.name} is not running")
            if self._inflight is not None and not wait([self._inflight], timeout=timeout).done:
                raise DeviceTimeout("an earlier capture never returned")  # one stuck call is enough
            try:
                self._inflight = future = self._executor.submit(self._capture)
            except RuntimeError as exc:  # executor shut down by a concurrent stop()
                raise DeviceAbsent(f"camera {self.name} is stopping") from exc
            done, _ = wait([future], timeout=timeout)
            if not done:
                raise DeviceTimeout(f"no frame within {timeout:g} s")
            frame = future.result()
        finally:
            self._capture_lock.release()
        if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3
                or frame.shape[2] not in (3, 4)):
            raise ProtocolError(f"camera gave no 8-bit RGB frame: {getattr(frame, 'shape', type(frame))}")
        return frame[:, :, :3]

    def _check(self) -> Verdict | None:
        with self._check_lock:
            analyzer = self._analyzer
            if analyzer is None:
                return None
            error = ""
            try:
                gray = prepare(self._grab(), int(self._opt("analysis_width")))
            except Exception as exc:  # whatever the camera library raises, the answer is "no frames"
                log.warning("camera %s: capture failed: %s", self.name, exc)
                gray, error = None, str(exc) or type(exc).__name__
            verdict = analyzer.observe(gray, self.monotonic())
            if error:
                verdict = Verdict(verdict.state, verdict.reason, {**verdict.metrics, "error": error})
            with self._lock:
                self._verdict = verdict
                self._checked_at = self.clock()
            self._emit_health(verdict.state, verdict.reason, verdict.metrics)
            self._set_state(OK if verdict.state == NORMAL else FAULT, verdict.reason)
            return verdict

    def _emit_health(self, state: str, reason: str, metrics: dict[str, Any]) -> None:
        with self._lock:
            if self._health_key == (state, reason):
                return
            self._health_key = (state, reason)
        self.emit(CameraHealth(self.name, state=state, reason=reason, metrics=dict(metrics), ts=self.clock()))

    # -- what the agent calls ---------------------------------------------

    def snapshot(self, tag: str) -> dict[str, Any]:
        """Store one full frame as JPEG evidence; returns where and its hash, never the image."""
        if not self._running:
            raise DeviceAbsent(f"camera {self.name} is {self._state}")
        frame = self._grab()
        wall = self.clock()
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, "JPEG", quality=int(self._opt("jpeg_quality")))
        data = buf.getvalue()  # hashed and written from the same bytes
        directory = Path(self._opt("snapshot_dir"))
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(wall, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        base = f"{stamp}_{sanitise_tag(tag)}"
        path = directory / f"{base}.jpg"
        n = 1
        while path.exists():  # two snapshots in the same millisecond with the same tag
            n += 1
            path = directory / f"{base}-{n}.jpg"
        tmp = directory / f".{path.name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # evidence: on disk before we say it exists
            os.utime(tmp, (wall, wall))  # retention ages files by the same clock that named them
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._index_lock:  # snapshots come from check-ins and commands at once
            if self._index is None or self._index.directory != directory:
                self._index = SnapshotIndex(directory)
            removed = self._index.add(path, len(data), wall, float(self._opt("retention_days")) * 86400,
                                      int(float(self._opt("retention_max_mb")) * _MIB))
        if removed:
            log.info("camera %s: retention removed %d snapshot(s)", self.name, len(removed))
        return {"file": path.name, "ts": iso_now(wall), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def _snapshot_count(self) -> int:
        if self._index is not None:
            return len(self._index)
        directory = Path(self._opt("snapshot_dir"))
        return sum(1 for _ in directory.glob("*.jpg")) if directory.is_dir() else 0

    def status(self) -> DeviceStatus:
        with self._lock:
            verdict, checked_at = self._verdict, self._checked_at
            state, reason, running = self._state, self._reason, self._running
        details: dict[str, Any] = {
            "health": verdict.state if verdict and running else None,
            "metrics": dict(verdict.metrics) if verdict and running else {},
            "checked_at": iso_now(checked_at) if checked_at and running else None,
            "snapshots": self._snapshot_count(),
        }
        return DeviceStatus(state, reason, details)

    def selftest(self) -> SelftestResult:
        if not self._running:
            step = SelftestStep("camera", False, f"{self._state}: {self._reason}".rstrip(": "))
            return SelftestResult(self.name, self.kind, ok=False, steps=(step,),
                                  skipped=self._state in (ABSENT, STOPPED))  # a faulty camera fails
        try:
            frame = self._grab()
        except Exception as exc:  # any capture failure is the answer of this step
            step = SelftestStep("frame", False, str(exc) or type(exc).__name__)
            return SelftestResult(self.name, self.kind, ok=False, steps=(step,))
        gray = prepare(frame, int(self._opt("analysis_width")))
        light, sharp = brightness(gray), sharpness(gray)
        dark_min, blur_min = float(self._opt("dark_threshold")), float(self._opt("blur_threshold"))
        steps = (
            SelftestStep("frame", True, f"{frame.shape[1]}x{frame.shape[0]}"),
            SelftestStep("not_dark", light >= dark_min, f"brightness {light:.1f} (min {dark_min:g})"),
            SelftestStep("not_blurred", sharp >= blur_min, f"sharpness {sharp:.1f} (min {blur_min:g})"),
        )
        return SelftestResult(self.name, self.kind, ok=all(s.ok for s in steps), steps=steps)
