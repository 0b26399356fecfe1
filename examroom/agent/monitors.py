"""What device happenings mean for the exam: audio loss during listening, camera and clock state.

The drivers report facts (the feed went silent at 10:31:02.4); these watchers
add the exam's meaning (that is an incident, because the listening window of
session ``eng-am`` is open) and decide what to do (switch to the backup source
when configured). They emit through the agent's ``emit`` and never touch MQTT.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from examroom.agent import human_time
from examroom.agent.events import iso_now
from examroom.agent.schedule import Schedule
from examroom.contract.vocabulary import (AUDIO_LOSS_FEEDS, EventKind, Incident, IncidentPhase, IncidentType,
                                          SwitchReason)
from examroom.drivers.events import AudioSourceSwitched, AudioStateChanged, CameraHealth, ClockState

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
Record = Callable[[Incident], Any]


class AudioWatch:
    """Turns a loss of the broadcast feed inside a listening window into an incident.

    A loss is only a state change outside listening windows. Inside one, the
    incident opens at once with the time the level dropped (the driver's
    ``since``, never earlier than the window's start), the room turns to alert,
    and it closes with its end time and duration when the signal returns or the
    window ends. Closed incidents also go to the session record.
    """

    def __init__(self, schedule: Schedule | None, emit: Emit, clock: Callable[[], float],
                 record: Record | None = None,
                 switch_backup: Callable[[str], Any] | None = None) -> None:
        self.schedule = schedule
        self.emit = emit
        self.clock = clock
        self.record = record
        self.switch_backup = switch_backup
        self._lock = threading.Lock()
        self._state: dict[str, tuple[str, float]] = {}   # device -> (state, since)
        self._open: dict[str, dict[str, Any]] = {}       # device -> open incident
        self._by: dict[str, str] = {}                     # device -> who asked for its next switch

    def on_state(self, ev: AudioStateChanged) -> None:
        with self._lock:
            self._state[ev.device] = (ev.state, ev.since)
        listening = self._window(ev.since) is not None
        self.emit(EventKind.AUDIO, {"device": ev.device, "state": ev.state, "previous": ev.previous,
                            "since": iso_now(ev.since), "rms_dbfs": ev.rms_dbfs,
                            "peak_dbfs": ev.peak_dbfs, "listening": listening})
        self.evaluate()

    def switch_by(self, device: str, by: str) -> None:
        with self._lock:
            self._by[device] = by

    def on_switch(self, ev: AudioSourceSwitched) -> None:
        data = {"device": ev.device, "source": ev.source, "reason": ev.reason}
        with self._lock:
            by = self._by.pop(ev.device, None)
        if by is not None and ev.reason == SwitchReason.COMMAND:
            data["by"] = by
        self.emit(EventKind.AUDIO_SWITCH, data)

    def _window(self, ts: float) -> tuple[Any, Any] | None:
        return self.schedule.listening_at(ts) if self.schedule is not None else None

    def evaluate(self) -> None:
        """Open or close incidents; runs on every state change and on the agent's tick."""
        now = self.clock()
        with self._lock:
            actions = []
            for device, (state, since) in self._state.items():
                incident = self._open.get(device)
                if incident is None and state in AUDIO_LOSS_FEEDS:
                    found = self._window(now)
                    if found is not None:
                        session, window = found
                        start = max(since, window.start)
                        incident = {"type": IncidentType.AUDIO_LOSS, "device": device, "session": session.id,
                                    "cause": state, "start": iso_now(start), "_start": start,
                                    "_window_end": window.end}
                        self._open[device] = incident
                        actions.append(("open", incident))
                elif incident is not None and (state not in AUDIO_LOSS_FEEDS or now >= incident["_window_end"]):
                    end = since if state not in AUDIO_LOSS_FEEDS else incident["_window_end"]
                    end = min(max(end, incident["_start"]), incident["_window_end"])
                    del self._open[device]
                    actions.append(("close", {**incident, "end": iso_now(end),
                                              "duration_s": round(end - incident["_start"], 2)}))
        for what, incident in actions:
            public = {k: v for k, v in incident.items() if not k.startswith("_")}
            if what == "open":
                log.warning("audio loss on %s during listening (session %s)", public["device"], public["session"])
                self.emit(EventKind.INCIDENT, {**public, "phase": IncidentPhase.STARTED})
                if self.switch_backup is not None:
                    self.switch_backup(public["device"])
            else:
                self.emit(EventKind.INCIDENT, {**public, "phase": IncidentPhase.ENDED})
                if self.record is not None:
                    self.record(Incident(IncidentType.AUDIO_LOSS, {k: v for k, v in public.items() if k != "type"}))

    def alerts(self) -> list[str]:
        with self._lock:
            # a person reads it (status, the site's board): the time of day in the exam's zone
            return [f"{d}: audio {i['cause']} during listening since {human_time.clock(i['start'])}"
                    for d, i in self._open.items()]


class CameraWatch:
    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def on_health(self, ev: CameraHealth) -> None:
        self.emit(EventKind.CAMERA, {"device": ev.device, "state": ev.state, "reason": ev.reason,
                             "metrics": ev.metrics})


class ClockWatch:
    """A step of the wall clock during a session goes on that session's record: times in the
    record before and after it are not comparable without knowing it happened.

    "During" means the room clock read a time between the session's entry opening and its
    end just before or just after the step (``record``'s ``during``); a step between
    sessions is only the ``clock`` event, never a note on the next session's record.
    """

    def __init__(self, emit: Emit, clock: Callable[[], float],
                 record: Callable[..., str | None] | None = None) -> None:
        self.emit = emit
        self.clock = clock
        self.record = record

    def on_clock(self, ev: ClockState) -> None:
        data = {"device": ev.device, "synced": ev.synced, "offset_s": ev.offset_s,
                "source": ev.source, "stepped_s": ev.stepped_s}
        self.emit(EventKind.CLOCK, data)
        if ev.stepped_s is None or self.record is None:
            return
        now = self.clock()
        session = self.record(Incident(IncidentType.CLOCK_STEP, {"time": iso_now(ev.ts), **data}),
                              during=(now, now - ev.stepped_s))
        if session is None:
            log.info("clock stepped %+.3f s outside any exam session: on no session record", ev.stepped_s)
        else:
            log.warning("clock stepped %+.3f s during session %s: noted on its record", ev.stepped_s, session)
