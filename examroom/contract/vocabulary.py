"""Every word of the contract that is a value: phases, verdicts, statuses, kinds, incidents.

The enums subclass ``str`` so a member is the very string that goes on the
wire (``json.dumps(Verdict.ADMITTED)`` is ``"admitted"``) and compares equal to
it, so journals written before this module existed replay unchanged. The JSON
Schemas in ``docs/`` list the same values; ``tests/test_vocabulary.py`` holds
each enum equal to its schema enum, both ways.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Word(str, Enum):
    """A contract value: prints and serialises as its string."""

    def __str__(self) -> str:
        return self.value


class Phase(Word):
    """Where a session stands at an instant (``schedule.Session.phase``)."""

    BEFORE_ENTRY = "before_entry"
    ENTRY = "entry"                  # entry open, exam not started
    IN_PROGRESS = "in_progress"      # started, late entry still allowed until the cutoff
    CUTOFF_PASSED = "cutoff_passed"  # no new entries (may begin before the start: listening exams)
    ENDED = "ended"


class Verdict(Word):
    """The outcome of one check at the door (``checkin.verdict``)."""

    ADMITTED = "admitted"
    DUPLICATE = "duplicate"
    NOT_IN_ROOM = "not_in_room"
    UNKNOWN_CARD = "unknown_card"
    LATE_REFUSED = "late_refused"
    OUTSIDE_WINDOW = "outside_window"
    INVALID_ID = "invalid_id"
    EXPIRED_CARD = "expired_card"
    SUSPECT = "suspect"
    LEFT = "left"


class SeatStatus(Word):
    """Where a candidate is during the session, as the station tracks it."""

    ABSENT = "absent"
    ADMITTED = "admitted"
    SUSPECT = "suspect"
    OUT = "out"  # left the room (escorted), may come back


PRESENT = (SeatStatus.ADMITTED, SeatStatus.SUSPECT, SeatStatus.OUT)  # counted present at attendance


class AttendanceStatus(Word):
    """A seat's line in the published record (``session_record.seats[].status``)."""

    PRESENT = "present"
    ABSENT = "absent"
    SUSPECT = "suspect"


class Method(Word):
    """How a candidate was identified (``checkin.method``)."""

    CARD = "card"      # the ID card's chip, read by the ID reader
    UID = "uid"        # a campus card's UID registered in the seat plan
    MANUAL = "manual"  # a proctor, by seat, ID ending or ticket ending


class Lookup(Word):
    """How a proctor found the candidate for a manual admission (``checkin.lookup``)."""

    SEAT = "seat"
    ID_LAST6 = "id_last6"
    TICKET_TAIL = "ticket_tail"
    SUSPECT_CONFIRM = "suspect_confirm"


class SweepTrigger(Word):
    """What a detector or a sweep button said (``sweep.trigger`` when unassociated)."""

    ALARM = "alarm"
    RECHECK = "recheck"
    CLEAR = "clear"


class SweepResult(Word):
    """How a candidate's sweep ended (``sweep.result``)."""

    CLEAR = "clear"
    ALARM_CLEARED_AFTER_RECHECK = "alarm_cleared_after_recheck"
    ALARM_CLEARED_WITHOUT_RECHECK = "alarm_cleared_without_recheck"
    ALARM_EXPECTED_MEDICAL = "alarm_expected_medical"
    LEFT_BEFORE_CLEAR = "left_before_clear"
    NOT_CLEARED = "not_cleared"


class EventKind(Word):
    """The ``kind`` of an event and the last level of its topic (``event/{kind}``)."""

    NOTE = "note"
    CHECKIN = "checkin"
    SWEEP = "sweep"
    SUSPECT_CONFIRM = "suspect_confirm"
    ATTENDANCE = "attendance"
    SESSION_RECORD = "session_record"
    INCIDENT = "incident"
    TRIAL_LISTENING = "trial_listening"
    SNAPSHOT = "snapshot"
    SELFTEST = "selftest"
    COMMAND = "command"
    AUDIO = "audio"
    AUDIO_SWITCH = "audio_switch"
    CAMERA = "camera"
    CLOCK = "clock"
    DEVICE = "device"
    FORCED = "forced"  # a disruptive action forced through the exam lock
    PUSH = "push"  # an instruction pushed by the site, shown in the room (指令推送)
    PUSH_ACK = "push_ack"  # a person in the room answered it


# Evidence is what a cheating case or an incident report may rest on: never dropped from the
# spool. Telemetry (device state changes) may be dropped oldest first when the spool is full.
EVIDENCE_KINDS = frozenset(EventKind) - {EventKind.DEVICE}


class IncidentType(Word):
    """What went wrong, on the session record (``incidents[].type``) and in ``incident`` events."""

    AUDIO_LOSS = "audio_loss"
    CLOCK_STEP = "clock_step"
    TRIAL_LISTENING = "trial_listening"


class IncidentPhase(Word):
    STARTED = "started"
    ENDED = "ended"


class RoomState(Word):
    """The retained ``status``: ``alert`` says a person is needed, and the alerts say why."""

    ONLINE = "online"
    ALERT = "alert"
    OFFLINE = "offline"


class DeviceState(Word):
    OK = "ok"            # present and working
    ABSENT = "absent"    # not found: no hardware, no library, no service
    FAULT = "fault"      # present but not working right (needs a person)
    STOPPED = "stopped"  # not started yet, or stopped


class CameraView(Word):
    """What the camera's picture shows (``camera.state``)."""

    NORMAL = "normal"
    ABNORMAL = "abnormal"
    ABSENT = "absent"  # no camera to look through


class CameraProblem(Word):
    """Why the picture is abnormal (``camera.reason``; empty when normal)."""

    NONE = ""
    DARK = "dark"        # covered lens, lights off
    FROZEN = "frozen"    # the picture stopped changing
    BLURRED = "blurred"  # out of focus, fogged, smeared
    NO_FRAMES = "no_frames"


class AudioFeed(Word):
    """What the broadcast input carries (``audio.state``)."""

    SIGNAL = "signal"
    SILENCE = "silence"
    CLIPPING = "clipping"
    NO_INPUT = "no_input"


AUDIO_LOSS_FEEDS = frozenset({AudioFeed.SILENCE, AudioFeed.NO_INPUT})


class AudioSource(Word):
    PRIMARY = "primary"
    BACKUP = "backup"


class SwitchReason(Word):
    """Who moved the audio relay (``audio_switch.reason``)."""

    COMMAND = "command"
    AUTO = "auto"
    SELFTEST = "selftest"


@dataclass(frozen=True)
class Incident:
    """One incident for a session record: its type and its fields in the order they are
    published. A ``session`` among the fields names the record that takes it; without one,
    the session the room is in (or waiting for) does."""

    type: IncidentType
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def session(self) -> str | None:
        s = self.fields.get("session")
        return str(s) if s is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type.value, **self.fields}


class GapVerdict(Word):
    """What the aggregator concluded about a jump in a room's ``seq`` (docs/site.md)."""

    PENDING = "pending"  # not explained yet: the box's drop counter may still come
    DROPPED_TELEMETRY = "dropped_telemetry"  # the box's spool dropped as many telemetry events
    MISSING_EVIDENCE = "missing_evidence"  # unexplained: events that should exist never arrived
    FILLED = "filled"  # the missing events arrived late after all
