"""The exam side of the box: the session book, the check-in station and the watchers, on the bus.

This is where the agent's two halves meet: drivers publish hardware facts on
the bus, and the room hands them to the components that give them exam
meaning (a card is a verdict, a silent feed in a listening window is an
incident) and emit events. It holds no MQTT and no Agent: it is given the
bus, ``emit``, the clock, the devices and the exam data, and wired by the daemon.
"""
from __future__ import annotations

import logging
from datetime import tzinfo
from pathlib import Path
from typing import Any, Callable, Iterable

from examroom.agent.checkin import CheckinStation
from examroom.agent.devices import Devices
from examroom.agent.monitors import AudioWatch, CameraWatch, ClockWatch, Emit
from examroom.agent.photos import Photos
from examroom.agent.privacy import Scrubber
from examroom.agent.schedule import Schedule
from examroom.agent.seatplan import SeatPlan
from examroom.agent.session_book import SessionBook
from examroom.contract.vocabulary import AudioSource, EventKind, Incident, SwitchReason
from examroom.drivers.bus import Bus
from examroom.drivers.events import (AudioSourceSwitched, AudioStateChanged, CameraHealth, CardPresented,
                                     ClockState, DeviceStateChanged, MetalAlarm, SweepButton)

log = logging.getLogger(__name__)


class Room:
    def __init__(self, room_id: str, schedule: Schedule | None, plan: SeatPlan | None,
                 record_dir: str | Path, journal: str | Path, auto_switch_backup: bool,
                 bus: Bus, emit: Emit, clock: Callable[[], float], devices: Devices, photos: Photos,
                 roster: list[str] | None = None, handin_not_before_end_min: float = 0.0,
                 gate: Callable[[], str | None] | None = None, zone: tzinfo | None = None,
                 staff_names: Iterable[str] = ()) -> None:
        """``zone``: the exam's (``[procedure] timezone``): the offset of the times the book publishes."""
        self._gate = gate  # why entry is shut (an unverified seat plan), None when open
        self._zone = zone
        self._room_id = room_id
        self._schedule = schedule
        self._plan = plan
        self._record_dir = record_dir
        self._journal = journal
        self._auto_switch_backup = auto_switch_backup
        self._bus = bus
        self._emit = emit
        self._clock = clock
        self._devices = devices
        self._photos = photos
        self._roster = roster or []
        self._handin_not_before_end_min = handin_not_before_end_min  # [procedure]: the province's rule
        # one scrubber knows every name of the room: candidates' and the proctors' (a note, a
        # reason or a verification point typed at the box may hold either)
        self.scrub = Scrubber([*(c.name for c in plan.candidates), *staff_names] if plan is not None
                              else list(staff_names))
        self.book: SessionBook | None = None
        self.station: CheckinStation | None = None
        self.audio: AudioWatch | None = None

    def start(self) -> None:
        """Replay the book and subscribe; before devices start, so no early event is missed."""
        if self._schedule is not None or self._plan is not None:
            # a room without a seat plan still keeps a record of its sessions' incidents
            self.book = SessionBook(self._schedule or Schedule(()), self._plan or SeatPlan.empty(self._room_id),
                                    self._emit, self._clock, self._record_dir, self.scrub, self._journal,
                                    zone=self._zone)
            self.book.start()
        if self._plan is not None:
            assert self.book is not None
            if self._schedule is None:  # seat plans travel before the day's timetable: every card is "outside_window"
                log.warning("seat plan loaded but no [[exam]] session configured: check-in stays closed")
            self.station = CheckinStation(self.book, self._clock, self.scrub,
                                          snapshot=self._photos.for_checkin if self._photos.configured else None,
                                          roster=self._roster,
                                          handin_not_before_end_min=self._handin_not_before_end_min,
                                          gate=self._gate)
            self._bus.subscribe(CardPresented, self.station.on_card)
            self._bus.subscribe(MetalAlarm, self.station.sweeps.on_metal_alarm)
            self._bus.subscribe(SweepButton, self.station.sweeps.on_sweep_button)
            log.info("check-in station: %d candidates, seat plan sha256 %s", len(self._plan), self._plan.sha256[:12])
        record = self.book.add_incident if self.book is not None else None
        self.audio = AudioWatch(self._schedule, self._emit, self._clock, record=record,
                                switch_backup=self._auto_backup if self._auto_switch_backup else None)
        self._bus.subscribe(AudioStateChanged, self.audio.on_state)
        self._bus.subscribe(AudioSourceSwitched, self.audio.on_switch)
        self._bus.subscribe(CameraHealth, CameraWatch(self._emit).on_health)
        self._bus.subscribe(ClockState, ClockWatch(self._emit, self._clock, record).on_clock)
        self._bus.subscribe(DeviceStateChanged, self._on_device)

    def switch_by(self, device: str, by: str) -> None:
        """Who asked for the next switch of ``device``: its audio_switch event says so."""
        if self.audio is not None:
            self.audio.switch_by(device, by)

    def note_incident(self, incident: Incident) -> str | None:
        """On the record of the session it names or prepares; None when no record took it."""
        return self.book.add_incident(incident) if self.book is not None else None

    def tick(self) -> None:
        if self.book is not None:
            self.book.tick(self._clock())
        if self.audio is not None:
            self.audio.evaluate()

    def alerts(self) -> list[str]:
        return self.audio.alerts() if self.audio is not None else []

    def exam_state(self) -> dict[str, Any]:
        return self.station.state() if self.station is not None else {}

    def _on_device(self, ev: DeviceStateChanged) -> None:
        drv = self._devices.drivers.get(ev.device)
        self._emit(EventKind.DEVICE, {"device": ev.device, "kind": drv.kind if drv else None,
                                      "state": ev.state, "reason": ev.reason})

    def _auto_backup(self, device: str) -> None:
        try:
            drv = self._devices.get(device)
            if drv.levels().get("source") == AudioSource.PRIMARY:
                drv.switch_source(AudioSource.BACKUP, SwitchReason.AUTO)
        except (OSError, ValueError, LookupError) as e:
            log.error("automatic switch to the backup audio source failed: %s", e)
