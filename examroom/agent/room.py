"""The room: wires device events to the exam components and says online or alert, and why.

This is where the agent's two halves meet: drivers publish hardware facts on
the bus, and the room hands them to the check-in station and the watchers,
which give them exam meaning and emit events. Alerts are derived every time
from the devices, the watchers and the spool rather than stored, so the status
can never disagree with what the heartbeat shows.
"""
from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from examroom.agent.checkin import CheckinStation
from examroom.agent.control import RequestError
from examroom.agent.events import iso_now
from examroom.agent.monitors import AudioWatch, CameraWatch, ClockWatch
from examroom.agent.schedule import Schedule
from examroom.agent.seatplan import load_seatplan
from examroom.drivers.base import OK
from examroom.drivers.gb11643 import mask_ids_in_text
from examroom.drivers.events import (NO_INPUT, AudioLevels, AudioSourceSwitched, AudioStateChanged,
                            CameraHealth, CardPresented, ClockState, DeviceStateChanged, MetalAlarm,
                            ReaderGarbage, SweepButton)

if TYPE_CHECKING:
    from examroom.agent.daemon import Agent

log = logging.getLogger(__name__)


def _arg(args: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None or v == "":
        if required:
            raise RequestError(f"{key!r} is required")
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise RequestError(f"{key!r} must be a string")
    return str(v)


class Room:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.station: CheckinStation | None = None
        self.audio: AudioWatch | None = None
        self._cameras: list[str] = []  # configured camera names, known before the drivers exist
        # check-in photos are taken here, one at a time and in order, so the door never waits
        # for capture + JPEG + fsync; a second worker would only race the first for the camera
        self._shots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkin-snapshot")

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        """Load exam data and subscribe; before devices start, so no early event is missed."""
        a, cfg = self.agent, self.agent.config
        schedule = cfg.schedule
        self._cameras = [dc.name for dc in cfg.devices if dc.kind == "camera"]
        if cfg.checkin["seatplan"]:
            plan = load_seatplan(cfg.checkin["seatplan"], cfg.room["id"])
            if schedule is None:  # seat plans travel before the day's timetable: every card is "outside_window"
                log.warning("seat plan loaded but no [[exam]] session configured: check-in stays closed")
            self.station = CheckinStation(plan, schedule or Schedule(()), a.emit, a.clock, cfg.checkin["record_dir"],
                                          snapshot=self._snapshot_for_checkin if self._cameras else None,
                                          journal_path=cfg.checkin["journal"])
            self.station.start()
            bus = a.bus
            bus.subscribe(CardPresented, self._on_card)
            bus.subscribe(MetalAlarm, self.station.on_metal_alarm)
            bus.subscribe(SweepButton, self.station.on_sweep_button)
            log.info("check-in station: %d candidates, seat plan sha256 %s", len(plan), plan.sha256[:12])
        self.audio = AudioWatch(schedule, a.emit, a.clock,
                                record=self.station.add_incident if self.station else None,
                                switch_backup=self._auto_backup if cfg.listening["auto_switch_backup"] else None)
        a.bus.subscribe(AudioStateChanged, self.audio.on_state)
        a.bus.subscribe(AudioSourceSwitched, self.audio.on_switch)
        a.bus.subscribe(AudioLevels, self._on_levels)
        a.bus.subscribe(AudioStateChanged, self._on_audio_state_metric)
        a.bus.subscribe(CameraHealth, CameraWatch(a.emit).on_health)
        a.bus.subscribe(ClockState, ClockWatch(a.emit, a.clock,
                                               self.station.add_incident if self.station else None).on_clock)
        a.bus.subscribe(ClockState, self._on_clock_metric)
        a.bus.subscribe(DeviceStateChanged, self._on_device)
        a.bus.subscribe(ReaderGarbage, self._on_garbage)
        for name, fn in {"checkin_admit": self.cmd_admit, "checkin_suspect": self.cmd_suspect,
                         "checkin_confirm": self.cmd_confirm, "checkin_leave": self.cmd_leave,
                         "checkin_state": self.cmd_state, "snapshot": self.cmd_snapshot,
                         "audio_switch": self.cmd_audio_switch,
                         "trial_listening": self.cmd_trial}.items():
            a.commands.register(name, fn)

    def stop(self) -> None:
        """Waits for the photos already asked for: each one's ``snapshot`` event is evidence the
        aggregator joins to a ``checkin``, and the camera and spool are still running here."""
        self._shots.shutdown(wait=True)

    def tick(self) -> None:
        if self.station is not None:
            self.station.tick(self.agent.clock())
        if self.audio is not None:
            self.audio.evaluate()

    # -- state --------------------------------------------------------------
    def state(self) -> tuple[str, list[str]]:
        alerts = self.agent.devices.needing_attention()
        if self.audio is not None:
            alerts += self.audio.alerts()
        for what, error in self.agent.loop_errors.items():
            alerts.append(f"agent: {what} failing: {error}")
        if self.agent.uplink.rejected:
            alerts.append(f"broker: refused {self.agent.uplink.rejected} event(s) (ACL or size); "
                          "they stay in the spool")
        if self.agent.spool.overfull:
            alerts.append("spool: full of evidence not yet delivered; free space or restore the network")
        return ("alert" if alerts else "online"), alerts

    def scrub(self, text: str) -> str:
        """Free text leaving the box (a note) never carries a full ID number or a candidate's
        name: a proctor types what is in front of them. The station scrubs its own free text
        (suspect reasons, proctors) the same way, with the same seat plan."""
        return self.station.scrub(text) if self.station is not None else mask_ids_in_text(text)

    def exam_state(self) -> dict[str, Any]:
        return self.station.state() if self.station is not None else {}

    # -- bus listeners ------------------------------------------------------
    def _on_card(self, ev: CardPresented) -> None:
        assert self.station is not None
        self.station.on_card(ev)

    def _on_device(self, ev: DeviceStateChanged) -> None:
        drv = self.agent.devices.drivers.get(ev.device)
        self.agent.emit("device", {"device": ev.device, "kind": drv.kind if drv else None,
                                   "state": ev.state, "reason": ev.reason})

    def _on_garbage(self, ev: ReaderGarbage) -> None:
        self.agent.metrics.garbage.labels(device=ev.device).inc(ev.count)
        log.warning("reader %s sent data we refused (%s, %d)", ev.device, ev.reason, ev.count)

    def _on_levels(self, ev: AudioLevels) -> None:
        self.agent.metrics.audio_rms.labels(device=ev.device).set(ev.rms_dbfs)
        self.agent.metrics.audio_peak.labels(device=ev.device).set(ev.peak_dbfs)

    def _on_audio_state_metric(self, ev: AudioStateChanged) -> None:
        """No input, no level: NaN, or a dashboard keeps showing the last reading of a lost feed."""
        if ev.state == NO_INPUT:
            self.agent.metrics.audio_rms.labels(device=ev.device).set(math.nan)
            self.agent.metrics.audio_peak.labels(device=ev.device).set(math.nan)

    def _on_clock_metric(self, ev: ClockState) -> None:
        if ev.offset_s is not None:
            self.agent.metrics.clock_offset.labels(device=ev.device).set(ev.offset_s)

    # -- devices used by the exam -------------------------------------------
    def _camera(self):
        cams = [d for d in self.agent.devices.of_kind("camera") if d.status().state == OK]
        return cams[0] if cams else None

    def _snapshot_for_checkin(self, tag: str, about: dict[str, Any]) -> None:
        """The station's photo of a verdict: queued, so the station lock (which also orders metal
        alarms and sweep buttons) is never held for the camera."""
        self._shots.submit(self._take_checkin_snapshot, tag, about)

    def _take_checkin_snapshot(self, tag: str, about: dict[str, Any]) -> None:
        """Every request ends in one ``snapshot`` event naming its check-in in ``for``: the photo,
        or why there is none, so an aggregator waiting on a pending marker always hears back."""
        cam = self._camera()
        try:
            if cam is None:
                raise RuntimeError("no working camera")
            data = {"device": cam.name, **cam.snapshot(tag)}
        except Exception as e:  # a failing camera costs the photo, never the worker
            log.warning("check-in snapshot %s failed: %s", tag, e)
            data = {"device": cam.name if cam else self._cameras[0], "error": str(e)}
        try:
            self.agent.emit("snapshot", {**data, "for": about})
        except Exception:  # nobody reads this worker's futures: say it here
            log.exception("snapshot event for check-in %s not spooled", about.get("id"))

    def _audio_device(self, name: str | None):
        if name:
            drv = self.agent.devices.get(name)
            if drv.kind != "audio":
                raise RequestError(f"device {name!r} is a {drv.kind}, not an audio monitor")
            return drv
        drv = self.agent.devices.first("audio")
        if drv is None:
            raise RequestError("no audio device is configured")
        return drv

    def _auto_backup(self, device: str) -> None:
        try:
            drv = self.agent.devices.get(device)
            if drv.levels().get("source") == "primary":
                drv.switch_source("backup", "auto")
        except (OSError, ValueError, LookupError) as e:
            log.error("automatic switch to the backup audio source failed: %s", e)

    # -- commands -----------------------------------------------------------
    def _need_station(self) -> CheckinStation:
        if self.station is None:
            raise RequestError("check-in is not configured (no [checkin] seatplan)")
        return self.station

    def cmd_admit(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().manual_admit(
            seat=_arg(args, "seat", False), id_last6=_arg(args, "id_last6", False),
            ticket_tail=_arg(args, "ticket_tail", False), proctor=_arg(args, "proctor"))

    def cmd_suspect(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().mark_suspect(_arg(args, "seat"), _arg(args, "proctor"),
                                                 _arg(args, "reason", False) or "")

    def cmd_confirm(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().confirm(_arg(args, "seat"), _arg(args, "proctor"))

    def cmd_leave(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().leave(_arg(args, "seat"))

    def cmd_state(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().state()

    def cmd_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        cam = self._camera()
        if cam is None:
            raise RequestError("no working camera is configured")
        shot = cam.snapshot(_arg(args, "tag", False) or "command")
        self.agent.emit("snapshot", {"device": cam.name, **shot})
        return shot

    def cmd_audio_switch(self, args: dict[str, Any]) -> dict[str, Any]:
        source = _arg(args, "source")
        return self._audio_device(_arg(args, "device", False)).switch_source(source, "command")

    def cmd_trial(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = args.get("seconds", 10)
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 1 <= seconds <= 300:
            raise RequestError("'seconds' must be a number from 1 to 300")
        report = self._audio_device(_arg(args, "device", False)).trial(float(seconds))
        record_dir = Path(self.agent.config.checkin["record_dir"])
        record_dir.mkdir(parents=True, exist_ok=True)
        stamp = iso_now(self.agent.clock()).replace(":", "")[:17]
        path = record_dir / f"trial-listening-{self.agent.config.room['id']}-{stamp}.json"
        path.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        self.agent.emit("trial_listening", {**report, "file": path.name})
        if self.station is None:
            session, note = None, "check-in is not configured (no [checkin] seatplan): there is no session record"
        else:
            session = self.station.add_incident(trial_summary(report, path.name))
            note = (f"kept with the record of session {session}" if session is not None else
                    "no session record is open (none scheduled, or the last one's record is already written)")
        if session is None:
            log.warning("trial listening %s is on no session record: %s", path.name, note)
        return {**report, "file": str(path), "recorded_on": session, "record": note}


def trial_summary(report: dict[str, Any], file: str) -> dict[str, Any]:
    """What the session record keeps of a trial listening: enough to show the room passed,
    with the report file's name for the full detail."""
    silences = report.get("silences") or []
    return {"type": "trial_listening", "start": report.get("start"), "end": report.get("end"),
            "duration_s": report.get("measured_s"), "device": report.get("device"),
            "source": report.get("source"), "mean_dbfs": report.get("mean_dbfs"),
            "peak_dbfs": report.get("peak_dbfs"), "silences": len(silences),
            "silent_s": round(sum(x.get("duration_s", 0) for x in silences), 3),
            "clipping_s": (report.get("clipping") or {}).get("seconds"),
            "problems": report.get("problems", []), "pass": report.get("pass"), "file": file}
