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
    HANDED_IN = "handed_in"  # 交卷: handed in and left for good
    REENTRY_REFUSED = "reentry_refused"  # the seat's check is closed (handed in, or refused as an impostor)
    SENT_TO_VERIFICATION = "sent_to_verification"  # a suspect goes to the site's identity-verification point
    IDENTITY_REFUSED = "identity_refused"  # the verification point found an impostor (替考): never admitted
    PLAN_UNVERIFIED = "plan_unverified"  # the seat plan differs from the site's SHA-256: entry stays shut


class SeatStatus(Word):
    """Where a candidate is during the session, as the station tracks it."""

    ABSENT = "absent"
    ADMITTED = "admitted"
    SUSPECT = "suspect"
    OUT = "out"  # left the room (escorted), may come back
    AT_VERIFICATION = "at_verification"  # a suspect at the identity-verification point, outcome pending
    HANDED_IN = "handed_in"  # final: no re-entry
    IDENTITY_REFUSED = "identity_refused"  # final: an impostor, not the seat's candidate


# counted present at attendance (a candidate who handed in sat the exam)
PRESENT = (SeatStatus.ADMITTED, SeatStatus.SUSPECT, SeatStatus.OUT, SeatStatus.AT_VERIFICATION,
           SeatStatus.HANDED_IN)
OPEN_SUSPECTS = (SeatStatus.SUSPECT, SeatStatus.AT_VERIFICATION)  # identity not settled yet
CLOSED = (SeatStatus.HANDED_IN, SeatStatus.IDENTITY_REFUSED)  # the seat's check is over: nobody enters on it


class VerificationOutcome(Word):
    """What the site's identity-verification point found: the ``outcome`` a proctor gives
    ``checkin_verify``; on the wire as the verdict it leads to (``admitted`` with lookup
    ``verification``, or ``identity_refused``)."""

    CONFIRMED = "confirmed"  # the candidate is who the card says: admitted
    REFUSED = "refused"      # an impostor (替考): never admitted, the seat is closed


class AttendanceStatus(Word):
    """A seat's line in the published record (``session_record.seats[].status``)."""

    PRESENT = "present"
    ABSENT = "absent"
    SUSPECT = "suspect"
    HANDED_IN = "handed_in"  # present, and left before the end
    IDENTITY_REFUSED = "identity_refused"  # neither present nor absent: an impostor came


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
    VERIFICATION = "verification"  # a suspect whose identity the site's verification point confirmed


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
    EXAM_SIGNAL = "exam_signal"  # entry, start, end warning, end: due by the room's clock (time_signals.py)
    TIME_CHECK = "time_check"  # the room's clock against the site's published time (clock_check.py)
    CLOCK_CONFIRM = "clock_confirm"  # a proctor checked the room's wall clock
    PROCTOR_SIGNIN = "proctor_signin"  # a roster proctor on duty for a session (proctors.py)
    PROCTOR_CHECK = "proctor_check"  # the room's proctors against the province's rules
    PLAN_CHECK = "plan_check"  # the seat plan against the site's SHA-256, and its photos (plan_check.py)
    VIOLATION = "violation"  # a proctor recorded a violation by the province's fact code (violations.py)


class ExamSignal(Word):
    """Which signal of a session (``exam_signal.signal``), in the order they are due."""

    ENTRY = "entry"  # candidates may enter (entry opens)
    START = "start"
    END_WARNING = "end_warning"  # the reminder [procedure] end_warning_min before the end
    END = "end"


class CheckTrigger(Word):
    """What made the proctor check run (``proctor_check.trigger``)."""

    ENTRY = "entry"  # entry opened: once per session
    DEMAND = "demand"  # someone asked (examroom-agent proctor check)
    SIGNIN = "signin"  # a sign-in after a check of the same session: the finding may have cleared


class PlanCheckTrigger(Word):
    """What made the seat-plan check run (``plan_check.trigger``)."""

    START = "start"  # the agent started: the plan and its photos as loaded
    SEATPLAN_EXPECT = "seatplan_expect"  # the site sent the expected SHA-256


# Evidence is what a cheating case or an incident report may rest on: never dropped from the
# spool. Telemetry (device state changes) may be dropped oldest first when the spool is full.
EVIDENCE_KINDS = frozenset(EventKind) - {EventKind.DEVICE}


class IncidentType(Word):
    """What went wrong, on the session record (``incidents[].type``) and in ``incident`` events."""

    AUDIO_LOSS = "audio_loss"
    CLOCK_STEP = "clock_step"
    TRIAL_LISTENING = "trial_listening"
    PLAN_CHECK = "plan_check"  # the seat plan unverified or photos missing (or the site's new expectation)
    VIOLATION = "violation"  # an escalated violation: the site office was told at once


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
