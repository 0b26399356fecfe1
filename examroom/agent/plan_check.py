"""Is the seat plan on this box the one the site distributed, and are its photos here?

A hash computed and published is not a hash checked: the site distributes each
room's expected SHA-256 (``[procedure] seatplan_sha256`` in the room's bundle,
or the SITE command ``seatplan_expect``), and while the loaded plan's differs the
box refuses to open entry. A wrong plan admits the wrong people and turns the
right ones away (``not_in_room``), so refusing everyone with a verdict that says
why (``plan_unverified``) is the safer failure: the proctors fall back to the
site's paper list and call the exam office, and the room's status says ``alert``.

The site's expectation is kept in the spool's meta table, so a restart does not
reopen entry. It gives way when the bundle's own value changes (a new bundle is
newer than the command that corrected the old one).

Photos (the ``photo`` column) are what the proctor compares faces with (三验):
each is looked up at start and on every check, and a missing, unreadable or
non-image file is a finding, listed by seat only (photo file names are often ID
numbers).

Lock order: the station calls ``refusal`` under the session book's lock; this
module never takes the book's lock while holding its own, so the two cannot
deadlock.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol
from zoneinfo import ZoneInfo

from examroom.agent.control import CALLER, RequestError
from examroom.agent.seatplan import SeatPlan
from examroom.contract.vocabulary import EventKind, Incident, IncidentType, PlanCheckTrigger

log = logging.getLogger(__name__)

META_KEY = "seatplan_expect"
SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG

Emit = Callable[[str, dict[str, Any]], Any]
Record = Callable[[Incident], "str | None"]  # the session that took the incident, or None


class Meta(Protocol):
    """Where the site's expectation survives a restart (the spool's meta table)."""

    def get_meta(self, key: str, default: str | None = None) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


def photo_problem(path: Path) -> str | None:
    """None for a readable JPEG or PNG (judged by its first bytes, not its name); else why not."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    if not head.startswith(IMAGE_MAGIC):
        return "not a JPEG or PNG"
    return None


def describe(state: dict[str, Any]) -> str:
    """One line for a person (``examroom-agent status``) from ``PlanCheck.state()``."""
    sha, exp = state["seatplan_sha256"][:12], (state["expected_sha256"] or "")[:12]
    if state["entry_blocked"]:
        line = (f"{sha} DOES NOT MATCH the site's {exp} ({state['expected_from']}): entry is shut, "
                "every admission is refused")
    elif state["verified"]:
        line = f"{sha} verified against the site's SHA-256 ({state['expected_from']})"
    else:
        line = f"{sha} not verified: no expected SHA-256 was distributed"
    missing = state["photos_missing"]
    if missing:
        line += (f"; photos missing or unusable for {len(missing)} of {state['photos_named']} seat(s): "
                 f"{', '.join(missing)}")
    return line


class PlanCheck:
    def __init__(self, plan: SeatPlan | None, expected: str, photo_dir: str, meta: Meta, emit: Emit,
                 clock: Callable[[], float], zone: str, record: Record,
                 exam_lock: Callable[[str, dict[str, Any], str], None] = lambda action, args, by: None) -> None:
        """``expected``: the bundle's ``[procedure] seatplan_sha256`` ("" when none);
        ``photo_dir``: where the photos are ("" beside the plan file)."""
        self._plan = plan
        self._configured = expected
        self._photo_dir = Path(photo_dir) if photo_dir else (Path(plan.file).parent if plan and plan.file else None)
        self._meta = meta
        self._emit = emit
        self._clock = clock
        self._zone = ZoneInfo(zone)
        self._record = record
        self._exam_lock = exam_lock  # a new expectation can shut entry: not mid-entry without force
        self._lock = threading.Lock()
        self._expected: str | None = expected or None
        self._from: str | None = "config" if expected else None
        self._missing: list[str] = []
        self._named = 0

    @property
    def active(self) -> bool:
        """Only a room with a seat plan checks anyone in, so only it has a plan to verify."""
        return self._plan is not None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """After the spool opened (the stored expectation) and the room started (its record),
        before any device reads a card."""
        if self._plan is None:
            return
        stored = self._stored()
        if stored is not None:
            with self._lock:
                self._expected, self._from = stored, "site"
        self._check_photos()
        state = self.state()
        if state["entry_blocked"]:
            log.error("seat plan %s", describe(state))
        else:
            log.info("seat plan %s", describe(state))
        try:
            self._publish(PlanCheckTrigger.START)
        except Exception:  # a full disk says so in the alerts; the check itself stands
            log.exception("the plan_check event could not be stored")

    def _stored(self) -> str | None:
        """The site's expectation, if it was made against the bundle still configured."""
        raw = self._meta.get_meta(META_KEY) or ""
        try:
            stored = json.loads(raw) if raw else None
            if stored is None:
                return None
            if stored["config"] != self._configured:
                log.warning("seatplan_expect %s from %s was made against another bundle: the bundle's "
                            "seatplan_sha256 applies now", str(stored["sha256"])[:12], stored.get("by"))
                self._meta.set_meta(META_KEY, "")
                return None
            sha = str(stored["sha256"])
        except (ValueError, KeyError, TypeError) as e:
            log.error("stored seatplan_expect unreadable (%s): ignored", e)
            return None
        return sha if SHA256.fullmatch(sha) else None

    def _check_photos(self) -> None:
        assert self._plan is not None
        missing, named = [], 0
        for cand in self._plan.candidates:
            if not cand.photo:
                continue
            named += 1
            base = self._photo_dir or Path(".")
            problem = photo_problem(base / cand.photo)
            if problem is not None:
                missing.append(cand.seat)
                log.warning("seat %s: photo %s", cand.seat, problem)  # never the file name: often an ID number
        with self._lock:
            self._missing, self._named = missing, named

    # -- what the rest of the room asks ----------------------------------------------------------

    def refusal(self) -> str | None:
        """Why entry is shut (the ``reason`` of a ``plan_unverified`` check-in), None when open."""
        with self._lock:
            if self._plan is None or self._expected is None or self._expected == self._plan.sha256:
                return None
            return (f"seat plan not verified: this box has {self._plan.sha256[:12]}, "
                    f"the site expects {self._expected[:12]}")

    def alerts(self) -> list[str]:
        reason = self.refusal()
        if reason is None:
            return []
        return [(f"{reason} ({self._from}): entry is shut, every admission is refused as plan_unverified; "
                 "use the site's paper list and call the exam office")]

    def state(self) -> dict[str, Any]:
        """The exam state's ``plan_check`` (heartbeat, status): seats only, never file names."""
        if self._plan is None:
            return {}
        with self._lock:
            verified = self._expected == self._plan.sha256
            return {"seatplan_sha256": self._plan.sha256, "expected_sha256": self._expected,
                    "expected_from": self._from, "verified": verified,
                    "entry_blocked": self._expected is not None and not verified,
                    "photos_named": self._named, "photos_missing": list(self._missing)}

    # -- the site's command ----------------------------------------------------------------------

    def expect(self, args: dict[str, Any]) -> dict[str, Any]:
        """``seatplan_expect {"sha256": ...}`` (SITE only): the plan the site distributed."""
        if self._plan is None:
            raise RequestError("this room has no seat plan ([checkin] seatplan): nothing to verify")
        sha = args.get("sha256")
        if not isinstance(sha, str) or not SHA256.fullmatch(sha.strip().lower()):
            raise RequestError("'sha256' must be the seat plan's SHA-256: 64 hex characters")
        sha = sha.strip().lower()
        by = str(args.get(CALLER) or "unknown")
        with self._lock:
            shuts = sha != self._expected and sha != self._plan.sha256
        if shuts:  # the plan's own hash (re)opens entry, the same value changes nothing: no lock to ask
            self._exam_lock("a new seat-plan expectation (seatplan_expect), which can shut entry", args, by)
        now = self._clock()
        self._meta.set_meta(META_KEY, json.dumps({"sha256": sha, "config": self._configured, "by": by,
                                                  "time": self._iso(now)}))
        with self._lock:
            changed = sha != self._expected
            self._expected, self._from = sha, "site"
        self._check_photos()
        state = self.state()
        log.warning("seatplan_expect from %s: seat plan %s", by, describe(state))
        if changed:
            self._publish(PlanCheckTrigger.SEATPLAN_EXPECT, by)
        return {"changed": changed, "plan_check": state}

    # -- publishing ------------------------------------------------------------------------------

    def _iso(self, t: float) -> str:
        return datetime.fromtimestamp(t, self._zone).isoformat(timespec="milliseconds")

    def _publish(self, trigger: PlanCheckTrigger, by: str | None = None) -> None:
        """The event; first, a finding (or the site's change) on the session record."""
        state = self.state()
        time = self._iso(self._clock())
        recorded_on = None
        if state["entry_blocked"] or state["photos_missing"] or trigger == PlanCheckTrigger.SEATPLAN_EXPECT:
            fields = {"time": time, **{k: state[k] for k in ("seatplan_sha256", "verified", "entry_blocked",
                                                             "photos_missing")}}
            if state["expected_sha256"]:
                fields["expected_sha256"] = state["expected_sha256"]
            recorded_on = self._record(Incident(IncidentType.PLAN_CHECK, fields))
        data = {**state, "trigger": trigger, "time": time, "recorded_on": recorded_on}
        if by is not None:
            data["by"] = by
        self._emit(EventKind.PLAN_CHECK, data)
