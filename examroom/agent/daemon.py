"""The agent's lifecycle: spool, devices, uplink, control socket, heartbeat.

Start order matters: the spool first (nothing may be emitted before it is
durable), then the room's listeners, the devices, the uplink, the control
socket, then READY=1. Before any of it, the instance lock (run_agent) and a
live agent on the control socket are checked, and a start that fails part-way
stops what had started. Stop: the control socket first (no new requests), then
the room, the uplink (a retained "offline" said explicitly so the aggregator
does not wait for the keep-alive), the devices, and the spool last.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from examroom import __version__
from examroom.agent.alerts import room_state
from examroom.agent.commands import Commands
from examroom.agent.config import Config
from examroom.agent.control import ControlServer
from examroom.agent.devices import Devices
from examroom.agent.disk_reserve import DiskFull
from examroom.agent.door import Door
from examroom.agent.events import Event, iso_now
from examroom.agent.exam_lock import ExamLock
from examroom.agent.hostinfo import host_health
from examroom.agent.instance import InstanceLock, StartFailed
from examroom.agent.metrics import Metrics
from examroom.agent.metrics_bridge import MetricsBridge
from examroom.agent.photos import Photos
from examroom.agent.plan_check import PlanCheck
from examroom.agent.procedure import Procedure
from examroom.agent.pushes import Pushes
from examroom.agent.remote_commands import RemoteCommands
from examroom.agent.retention import Retention
from examroom.agent.room import Room
from examroom.agent.sdnotify import notify, watchdog_interval_s
from examroom.agent.seatplan import SeatPlan
from examroom.agent.spool import Spool
from examroom.agent.trial_reports import TrialReports
from examroom.agent.uplink import Uplink
from examroom.contract.vocabulary import RoomState
from examroom.drivers.bus import Bus

log = logging.getLogger(__name__)


class Agent:
    """Builds every component with the collaborators it needs, and runs the main loop.

    The wiring is all here: no component is handed the agent itself, so each one's
    constructor says what it depends on.
    """

    def __init__(self, config: Config, plan: SeatPlan | None, clock: Callable[[], float] = time.time) -> None:
        """``plan``: the room's seat plan, loaded (and checked) once by the caller; None when
        the room checks nobody in. Explicit, so no caller forgets it and loses check-in."""
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.bus = Bus()
        self.spool = Spool(config.spool["path"], config.spool["max_bytes"], config.spool["sync"],
                           on_drop=lambda kind: self.metrics.dropped.labels(kind=kind).inc())
        self.devices = Devices(config.devices, self.bus, self.metrics, clock)
        self.metrics_bridge = MetricsBridge(self.bus, self.metrics)
        self.photos = Photos(self.devices, self.emit, [dc.name for dc in config.devices if dc.kind == "camera"])
        ck = config.checkin
        zone = ZoneInfo(config.procedure["timezone"])  # the offset of every time the room publishes
        self.exam_lock = ExamLock(config.schedule, clock, self.emit, lambda text: self.room.scrub(text))
        self.plan_check = PlanCheck(plan, config.procedure["seatplan_sha256"], config.procedure["photo_dir"],
                                    self.spool, self.emit, clock, config.procedure["timezone"],
                                    record=lambda incident: self.room.note_incident(incident),
                                    exam_lock=self.exam_lock.check)
        self.room = Room(config.room["id"], config.schedule, plan, ck["record_dir"], ck["journal"],
                         config.listening["auto_switch_backup"], self.bus, self.emit, clock, self.devices,
                         self.photos, roster=[p["id"] for p in config.proctors],
                         staff_names=[p["name"] for p in config.proctors],
                         handin_not_before_end_min=config.procedure["handin_not_before_end_min"],
                         gate=self.plan_check.refusal, zone=zone)
        self.pushes = Pushes(self.emit, self.room.scrub, [p["id"] for p in config.proctors], clock)
        self.procedure = Procedure(config, self.emit, clock, self.room.scrub, self._clock_device)
        self.commands = Commands(
            emit=self.emit, devices=self.devices, status=self.status, scrub=self.room.scrub,
            lock=self.exam_lock,
            station=lambda: self.room.station, photos=self.photos,
            trials=TrialReports(ck["record_dir"], config.room["id"], self.emit, clock, self.room.note_incident,
                                zone),
            pushes=self.pushes, switch_by=self.room.switch_by,
            extra={**self.procedure.commands(), "seatplan_expect": self.plan_check.expect})
        self.retention = Retention(
            config.retention["keep_days"],
            [ck["record_dir"], *(dc.options["snapshot_dir"] for dc in config.devices if dc.options.get("snapshot_dir"))],
            clock, forget_sessions=lambda t: self.room.book.forget_before(t) if self.room.book else 0)
        self.remote = RemoteCommands(self.commands.table, self.emit, self._reply, config.topics)
        self.uplink = Uplink(config.mqtt, config.topics, self.spool, self.metrics, self._birth, self._will,
                             self.remote.on_mqtt)
        self.control = ControlServer(config.control["socket"], self.commands.local)
        self.started_mono = time.monotonic()
        self.last_heartbeat: str | None = None
        self._stop = threading.Event()
        self._metrics_server: Any = None
        self.loop_errors: dict[str, str] = {}  # main-loop step -> last error, shown as alerts
        self._published_state = ""
        self.door = Door.from_config(config, self.emit, clock, self.room.exam_state, self.plan_check.refusal)
        self._listeners = [self.door.on_event]  # what emit fans each stored event out to: queue and return

    # -- events -------------------------------------------------------------
    def emit(self, kind: str, data: dict[str, Any]) -> Event | None:
        """Commit an event to the spool, then let the uplink send it. Thread-safe: the
        spool's lock orders concurrent events; seq is their order."""
        try:
            ev = self.spool.append(kind, data, self.uplink.session, self.uplink.connected, now=self.clock())
        except DiskFull:
            self.metrics.unstored.labels(kind=kind).inc()
            raise  # the caller says so: a command's reply, a listener's log line
        if ev is not None:  # None: telemetry refused by a full spool, counted by on_drop
            self.metrics.spooled.labels(kind=kind).inc()
            self.uplink.offer(ev)
            for listener in self._listeners:  # after the spool: a listener sees only what is on record
                try:
                    listener(kind, data)
                except Exception:  # the caller's event is stored and on its way: never undo that
                    log.exception("a listener of %s events failed", kind)
        return ev

    def _reply(self, topic: str, payload: dict[str, Any], correlation: Any) -> None:
        self.uplink.publish_reply(topic, payload, correlation)

    def _attach_procedure(self) -> None:
        self.procedure.attach(self.room.book)

    def _clock_device(self) -> dict[str, Any] | None:
        """The first clock device's status entry and name: time_check's NTP view."""
        return next(({"device": n, **d} for n, d in self.devices.statuses().items() if d["kind"] == "clock"), None)

    def room_state(self) -> tuple[RoomState, list[str]]:
        return room_state(self.devices.needing_attention(),
                          [*self.room.alerts(), *self.procedure.alerts(),
                           *self.plan_check.alerts(), *self.door.alerts()],
                          self.loop_errors,
                          self.uplink.rejected, self.spool.overfull, self.spool.disk_full, self.spool.unstored)

    # -- payloads -----------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        c = self.config
        return {"site": c.site["id"], "site_name": c.site["name"],
                "room": c.room["id"], "room_label": c.room["label"]}

    def _birth(self, session: int) -> dict[str, Any]:
        state, alerts = self.room_state()
        self._published_state = f"{state}|{alerts}|{session}"  # birth is a status publication
        return {"state": state, "session": session, "ts": iso_now(self.clock()), **self._identity(),
                "version": __version__, "alerts": alerts,
                "devices": {n: {"kind": d["kind"], "state": d["state"]}
                            for n, d in self.devices.statuses().items()}}

    def _will(self, session: int) -> dict[str, Any]:
        return {"state": "offline", "session": session, "ts": iso_now(self.clock()), **self._identity()}

    def heartbeat(self) -> dict[str, Any]:
        self.spool.check_space()  # a full disk clears by itself once space returns
        depth = self.spool.depth()
        self.metrics.spool_depth.set(depth["events"])
        self.metrics.spool_bytes.set(depth["bytes"])
        state, alerts = self.room_state()
        return {
            "ts": iso_now(self.clock()), "session": self.uplink.session, "state": state,
            "alerts": alerts, "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "spool": {"events": depth["events"], "bytes": depth["bytes"],
                      "oldest_age_s": depth["oldest_age_s"], "overfull": depth["overfull"],
                      "dropped": depth["dropped"], "disk_full": depth["disk_full"],
                      "unstored": depth["unstored"]},
            "rtt_ms": self.uplink.rtt_ms,
            "devices": self.devices.statuses(),
            "exam": self._exam_state(),
            "host": host_health(str(Path(self.config.spool["path"]).parent)),
        }

    def _exam_state(self) -> dict[str, Any]:
        """The station's state, and whether its seat plan is the one the site distributed."""
        exam = self.room.exam_state()
        if self.plan_check.active:
            exam = {**exam, "plan_check": self.plan_check.state()}
        return exam

    def status(self) -> dict[str, Any]:
        state, alerts = self.room_state()
        return {"agent": {"version": __version__, "pid": os.getpid(), **self._identity()},
                "broker": {"connected": self.uplink.connected, "session": self.uplink.session,
                           "host": self.config.mqtt["host"], "port": self.config.mqtt["port"],
                           "rtt_ms": self.uplink.rtt_ms},
                "state": state, "alerts": alerts,
                "spool": self.spool.depth(), "last_heartbeat": self.last_heartbeat,
                "devices": self.devices.statuses(), "exam": self._exam_state(),
                "pushes": self.pushes.pending()}

    def publish_state_if_changed(self) -> None:
        """The retained status follows the room between online and alert."""
        state, alerts = self.room_state()
        key = f"{state}|{alerts}|{self.uplink.session}"
        if key != self._published_state and self.uplink.connected:
            if self.uplink.publish_live("status", self._birth(self.uplink.session), retain=True):
                self._published_state = key

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Start whole or not at all: on any failure what had started is stopped again
        (a retained "offline" follows a birth already sent), and the error goes up; an
        OSError or SQLite error becomes StartFailed naming the part that failed."""
        self.control.check_free()  # before the spool and the broker: a second agent touches nothing
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"spool {self.config.spool['path']}", self.spool.open),
            ("room", self.room.start),  # listeners before devices: nothing a device says at start is lost
            ("exam procedure", self._attach_procedure),
            ("seat plan check", self.plan_check.start),  # before devices: no card is read before it decided
            ("door feedback", self.door.start),  # a GPIO or a port it cannot have is an alert, not a failed start
            ("metrics bridge", self.metrics_bridge.start),
            ("devices", self.devices.start),
            ("uplink", self.uplink.start),
            (f"control socket {self.control.path}", self.control.start)]
        listen = self.config.metrics["listen"]
        if listen:
            steps.append((f"metrics listener {listen}", lambda: self._serve_metrics(listen)))
        for what, step in steps:
            try:
                step()
            except BaseException as e:
                self._abort_start(what)
                if isinstance(e, (OSError, sqlite3.Error)):
                    raise StartFailed(f"the agent could not start its {what}: {e}") from e
                raise
        notify("READY=1")
        log.info("agent ready: %s", self.config.base_topic)

    def _serve_metrics(self, listen: str) -> None:
        self._metrics_server = self.metrics.serve(listen)

    def _abort_start(self, what: str) -> None:
        try:
            self.stop()
        except Exception:  # the first error is the one to report
            log.exception("stopping after the failed start of the %s failed too", what)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Main loop: heartbeat, exam ticks, watchdog. Returns when asked to stop."""
        interval = float(self.config.heartbeat["interval_s"])
        wd = watchdog_interval_s()
        next_beat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                self._step("heartbeat", self._beat)
            self._step("exam tick", self.room.tick)
            if self.retention.due():
                self._step("retention", self.retention.prune)
            self._step("status", self.publish_state_if_changed)
            if wd is not None and self.uplink.alive():
                notify("WATCHDOG=1")  # a dead uplink thread lets systemd restart us
            wait = min(next_beat - time.monotonic(), 0.5, wd or 0.5)
            self._stop.wait(max(wait, 0.01))

    def _beat(self) -> None:
        hb = self.heartbeat()
        if self.uplink.publish_live("heartbeat", hb, probe=True):
            self.last_heartbeat = hb["ts"]

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        """One failing step (a record file that cannot be written) must not end the daemon:
        a restart would fail the same way and stop the card readers with it."""
        try:
            fn()
            self.loop_errors.pop(what, None)
        except Exception as e:
            if what not in self.loop_errors:
                log.exception("%s failed", what)
            self.loop_errors[what] = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        notify("STOPPING=1")
        self.control.stop()
        self.door.stop()
        self.photos.stop()
        self.uplink.stop()
        self.devices.stop()
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
        self.spool.close()


def run_agent(config: Config, plan: SeatPlan | None) -> int:
    """Run until SIGTERM/SIGINT. The instance lock comes first, before anything is opened,
    and is held until the process ends; AlreadyRunning and StartFailed go to the CLI."""
    os.umask(0o027)  # records, snapshots and reports hold personal data: not world-readable
    lock = InstanceLock(config.spool["path"]).acquire()
    try:
        # and one per control socket: a second agent on another spool must never take over
        # a live agent's socket, however busy that agent is when the second one looks
        socket_lock = InstanceLock(config.control["socket"]).acquire()
    except BaseException:
        lock.release()
        raise
    try:
        agent = Agent(config, plan)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.request_stop())
        agent.start()
        try:
            agent.run()
        finally:
            agent.stop()
    finally:
        socket_lock.release()
        lock.release()
    return 0
