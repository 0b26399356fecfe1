"""Every command the agent answers, and where each may come from.

One table serves the local control socket (proctors and technicians at the
box) and MQTT ``cmd/{name}`` (the site), so both get the same behaviour.
``WHERE`` is the one list of commands: over MQTT only those marked ``site``
are accepted (no simulation, no check-in decisions: those belong to proctors
in the room). How a site request is answered and recorded is
``remote_commands.py``. A command only the site may send (``push``) is refused
on the control socket (``Commands.local``).
"""
from __future__ import annotations

import re
from typing import Any, Callable

from examroom.agent.checkin import CheckinStation
from examroom.agent.control import CALLER, Handler, RequestError
from examroom.agent.devices import Devices, selftest_verdict
from examroom.agent.exam_lock import ExamLock
from examroom.agent.photos import Photos
from examroom.agent.privacy import has_id_like_digits
from examroom.agent.pushes import Pushes
from examroom.agent.trial_reports import TrialReports
from examroom.contract.vocabulary import EventKind, SwitchReason
from examroom.drivers.base import Driver
from examroom.drivers.gb11643 import has_id_shape

Emit = Callable[[str, dict[str, Any]], Any]

LOCAL, SITE = "local", "site"
WHERE: dict[str, frozenset[str]] = {
    "ping": frozenset({LOCAL, SITE}),
    "status": frozenset({LOCAL, SITE}),
    "note": frozenset({LOCAL, SITE}),
    "selftest": frozenset({LOCAL, SITE}),  # from the site: reading steps only (never act)
    "snapshot": frozenset({LOCAL, SITE}),
    "audio_switch": frozenset({LOCAL, SITE}),
    "trial_listening": frozenset({LOCAL, SITE}),
    "sim": frozenset({LOCAL}),
    "checkin_admit": frozenset({LOCAL}),
    "checkin_suspect": frozenset({LOCAL}),
    "checkin_confirm": frozenset({LOCAL}),
    "checkin_leave": frozenset({LOCAL}),
    "checkin_handin": frozenset({LOCAL}),
    "checkin_send_to_verification": frozenset({LOCAL}),
    "checkin_verify": frozenset({LOCAL}),
    "checkin_state": frozenset({LOCAL}),
    "exam_lock": frozenset({LOCAL, SITE}),
    "push": frozenset({SITE}),  # an instruction from above (指令推送): the site pushes, the room answers
    "push_ack": frozenset({LOCAL}),  # ... and a person in the room answers it, never the site
    # the exam-day procedure (docs/procedure.md); handlers given through ``extra``
    "time_check": frozenset({SITE}),  # the site publishes its time before each session; rooms answer their offset
    "clock_confirm": frozenset({LOCAL}),  # a proctor checked the wall clock
    "proctor_signin": frozenset({LOCAL}),  # proctors on duty: names and units stay in the room
    "proctor_list": frozenset({LOCAL}),
    "proctor_check": frozenset({LOCAL}),
    "violation": frozenset({LOCAL}),  # a proctor records a violation by its fact code (violations.py)
    # the seat plan's SHA-256 as the site distributed it (plan_check.py); never from the box, whose
    # own plan it checks: a person there could otherwise vouch for whatever plan is loaded
    "seatplan_expect": frozenset({SITE}),
}
REMOTE = frozenset(name for name, where in WHERE.items() if SITE in where)
MAX_NOTE = 2000
MAX_PUSH = 500
PUSH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _text(args: dict[str, Any], key: str, limit: int = 200) -> str:
    v = args.get(key, "")
    if not isinstance(v, str) or not v.strip():
        raise RequestError(f"{key!r} must be a non-empty string")
    if len(v) > limit:
        raise RequestError(f"{key!r} is longer than {limit} characters")
    return v.strip()


def _arg(args: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None or v == "":
        if required:
            raise RequestError(f"{key!r} is required")
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise RequestError(f"{key!r} must be a string")
    return str(v)


class Commands:
    def __init__(self, *, emit: Emit, devices: Devices,
                 status: Callable[[], dict[str, Any]], scrub: Callable[[str], str],
                 lock: ExamLock, station: Callable[[], CheckinStation | None],
                 photos: Photos, trials: TrialReports, pushes: Pushes | None = None,
                 switch_by: Callable[[str, str], None] = lambda device, by: None,
                 extra: dict[str, Handler] | None = None) -> None:
        """``extra``: the handlers of components that own their commands (procedure steps),
        each also listed in ``WHERE``."""
        self._emit = emit
        self._devices = devices
        self._status = status
        self._scrub = scrub
        self._lock = lock
        self._switch_by = switch_by  # tells the audio watch who asked, for the audio_switch event
        self._station = station  # the room's, once it started (None: no seat plan)
        self._photos = photos
        self._trials = trials
        self._pushes = pushes if pushes is not None else Pushes(emit, scrub)  # without a roster: anyone answers
        self.table: dict[str, Handler] = {
            "ping": self.ping, "status": self.status, "note": self.note, "selftest": self.selftest,
            "snapshot": self.snapshot, "audio_switch": self.audio_switch, "trial_listening": self.trial,
            "sim": self.sim, "checkin_admit": self.admit, "checkin_suspect": self.suspect,
            "checkin_confirm": self.confirm, "checkin_leave": self.leave, "checkin_state": self.checkin_state,
            "checkin_handin": self.handin, "checkin_send_to_verification": self.send_to_verification,
            "checkin_verify": self.verify,
            "exam_lock": self.exam_lock, "push": self.push, "push_ack": self.push_ack, **(extra or {})}
        assert set(self.table) == set(WHERE), "every command is listed in WHERE, and only those"

    @property
    def local(self) -> dict[str, Handler]:
        """The control socket's table: a site-only command is refused there by name, so a
        person at the box cannot fake an instruction from above."""
        def site_only(name: str) -> Handler:
            def refuse(_args: dict[str, Any]) -> dict[str, Any]:
                raise RequestError(f"command {name!r} comes only from the site over MQTT")
            return refuse

        return {name: handler if LOCAL in WHERE[name] else site_only(name) for name, handler in self.table.items()}

    # -- the box ------------------------------------------------------------
    def ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    def status(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._status()

    def note(self, args: dict[str, Any]) -> dict[str, Any]:
        """Free text leaving the box never carries a full ID number or a candidate's name."""
        data = {"text": self._scrub(_text(args, "text", MAX_NOTE))}
        if args.get("author"):
            data["author"] = self._scrub(_text(args, "author", 100))
        data["by"] = _by(args)
        ev = self._emit(EventKind.NOTE, data)
        return {"id": ev.id, "seq": ev.seq}

    def selftest(self, args: dict[str, Any]) -> dict[str, Any]:
        names = args.get("devices") or None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise RequestError("'devices' must be a list of device names")
        for n in names or []:
            self._devices.get(n)
        act, allow_absent = args.get("act"), args.get("allow_absent", False)
        if act is not None and not isinstance(act, bool):
            raise RequestError("'act' must be true, false or absent")
        if not isinstance(allow_absent, bool):
            raise RequestError("'allow_absent' must be true or false")
        if act:  # a relay click or a test tone in a room of candidates
            self._lock.check("selftest acting on outputs (relay switch, test tone)", args, _by(args))
        results = [r.as_dict() for r in self._devices.selftest(names, act)]
        verdict = selftest_verdict(results, allow_absent)
        self._emit(EventKind.SELFTEST, {"ok": verdict["passed"], "results": results, "act": act,
                                        "absent": verdict["absent"], "allow_absent": allow_absent})
        return {**verdict, "results": results, "act": act}

    def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        tag = _arg(args, "tag", False) or "command"
        if has_id_like_digits(tag) or self._scrub(tag) != tag:  # the tag names the published file
            raise RequestError("'tag' holds an ID number or a candidate's name, which may not leave the room")
        return self._photos.take(tag)

    def audio_switch(self, args: dict[str, Any]) -> dict[str, Any]:
        source = _arg(args, "source")
        drv = self._audio_device(_arg(args, "device", False))
        self._lock.check(f"audio_switch to {source}", args, _by(args))
        self._switch_by(drv.name, _by(args))
        return drv.switch_source(source, SwitchReason.COMMAND)

    def exam_lock(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._lock.state()

    def trial(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = args.get("seconds", 10)
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 1 <= seconds <= 300:
            raise RequestError("'seconds' must be a number from 1 to 300")
        return self._trials.keep(self._audio_device(_arg(args, "device", False)).trial(float(seconds)))

    def push(self, args: dict[str, Any]) -> dict[str, Any]:
        push_id = _arg(args, "push_id")
        if not PUSH_ID.fullmatch(push_id or ""):
            raise RequestError("'push_id' must be 1-64 of [A-Za-z0-9_-]")
        return self._pushes.show(push_id, _text(args, "text", MAX_PUSH), _by(args))

    def push_ack(self, args: dict[str, Any]) -> dict[str, Any]:
        """``by`` is the person answering (a roster id when the room has one); the record
        also names the Unix user on the socket, as every decision made at the box does."""
        return self._pushes.ack(_arg(args, "push_id", False), _text(args, "by", 64), _by(args))

    def _audio_device(self, name: str | None) -> Driver:
        if name:
            drv = self._devices.get(name)
            if drv.kind != "audio":
                raise RequestError(f"device {name!r} is a {drv.kind}, not an audio monitor")
            return drv
        drv = self._devices.first("audio")
        if drv is None:
            raise RequestError("no audio device is configured")
        return drv

    def sim(self, args: dict[str, Any]) -> dict[str, Any]:
        """``sim <device|kind|card|alarm|button|armed> words...``: act out hardware on a sim backend."""
        words = args.get("words")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise RequestError("'words' must be a non-empty list of strings, e.g. [\"alarm\", \"on\"]")
        target, rest = words[0], words[1:]
        drivers = self._devices.drivers
        sims = [d for d in drivers.values() if d.backend == "sim"]
        if target in drivers:
            drv, action, params = drivers[target], (rest or [""])[0], rest[1:]
        elif target == "card":
            # An ID number (17 digits, then a digit or X) goes to the ID reader, a hex UID to PC/SC:
            # length alone would send a 9-byte UID (18 hex digits) to the ID reader. A UID of only
            # decimal digits that looks like an ID number reaches PC/SC by naming the device.
            kind = "idcard" if rest and has_id_shape(rest[0]) else "pcsc"
            drv, action, params = _first(sims, kind, target), "card", rest
        elif target in ("alarm", "button", "armed"):
            drv, action, params = _first(sims, "metal_detector", target), target, rest
        else:
            drv, action, params = _first(sims, target, target), (rest or [""])[0], rest[1:]
        if drv.backend != "sim":
            raise RequestError(f"device {drv.name!r} is real hardware ({drv.backend}), not simulated")
        return {"device": drv.name, "result": drv.simulate(action, params)}

    # -- check-in fallbacks: proctors at the box ------------------------------
    def _need_station(self) -> CheckinStation:
        station = self._station()
        if station is None:
            raise RequestError("check-in is not configured (no [checkin] seatplan)")
        return station

    def admit(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().manual_admit(
            seat=_arg(args, "seat", False), id_last6=_arg(args, "id_last6", False),
            ticket_tail=_arg(args, "ticket_tail", False), proctor=_arg(args, "proctor"), by=_by(args))

    def suspect(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().mark_suspect(_arg(args, "seat"), _arg(args, "proctor"),
                                                 _arg(args, "reason", False) or "", by=_by(args))

    def confirm(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().confirm(_arg(args, "seat"), _arg(args, "proctor"), by=_by(args))

    def leave(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().leave(_arg(args, "seat"), by=_by(args))

    def handin(self, args: dict[str, Any]) -> dict[str, Any]:
        """``force`` (with a ``reason``) lets an exception through before the earliest hand-in time."""
        force = args.get("force", False)
        if not isinstance(force, bool):
            raise RequestError("'force' must be true or false")
        return self._need_station().departures.hand_in(_arg(args, "seat"), _arg(args, "proctor"), force=force,
                                            reason=_text(args, "reason", 300) if force else "", by=_by(args))

    def send_to_verification(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().departures.send_to_verification(_arg(args, "seat"), _arg(args, "proctor"), by=_by(args))

    def verify(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().departures.verify(_arg(args, "seat"), _arg(args, "outcome"), _text(args, "point", 100),
                                           _arg(args, "proctor"), by=_by(args))

    def checkin_state(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._need_station().state()


def _by(args: dict[str, Any]) -> str:
    """Who asked: the Unix user on the control socket (SO_PEERCRED), or the site over MQTT."""
    return str(args.get(CALLER) or "unknown")


def _first(sims: list[Driver], kind: str, target: str) -> Driver:
    for d in sims:
        if d.kind == kind:
            return d
    known = ", ".join(sorted({d.kind for d in sims} | {d.name for d in sims})) or "none"
    raise RequestError(f"no simulated device for {target!r} (simulated: {known})")
