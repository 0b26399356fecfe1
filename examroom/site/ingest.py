"""What the aggregator does with each message of the site: the contract's rules for a
subscriber (docs/mqtt.md), applied and kept.

* A status whose ``session`` is older than the last one seen is a late Will: ignored
  (and logged), never believed.
* Events are unique by ``id``; a room's ``seq`` only grows, so a jump is a gap. A gap
  is telemetry the box dropped when its spool was full only if the box's drop counter
  (``spool.dropped`` in its heartbeats) grew by as many; a gap nothing explains within
  ``gap_grace_s`` is missing evidence, an alert for a person.
* A room is offline from its Will, its clean goodbye, or ``offline_after_s`` without a
  heartbeat.
* Every payload is checked against the contract's schemas; an invalid one is kept and
  flagged, never dropped.

Every call runs inside the store's batch (the subscriber's transaction): nothing here
commits on its own, so what is acknowledged to the broker is exactly what is stored.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from examroom.contract.schemas import PayloadCheck
from examroom.contract.topics import BROADCAST, Topics
from examroom.contract.vocabulary import EventKind, GapVerdict, IncidentPhase, RoomState
from examroom.site.store import Store

log = logging.getLogger(__name__)

OFFLINE_KEY = "offline"


def alert_key(reason: str) -> str:
    """An alert's identity is the word before its colon (``camera: dark`` -> ``camera``), so a
    reason whose details change (a growing count) stays one alert."""
    return reason.split(":", 1)[0].strip()[:80] or reason[:80]


def _dropped_total(hb: dict[str, Any]) -> int | None:
    dropped = hb.get("spool", {}).get("dropped") if isinstance(hb.get("spool"), dict) else None
    if not isinstance(dropped, dict):
        return None
    return sum(v for v in dropped.values() if isinstance(v, int))


class Ingest:
    def __init__(self, store: Store, check: PayloadCheck, prefix: str, site: str,
                 offline_after_s: float, gap_grace_s: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.check = check
        self.prefix = prefix
        self.site = site
        self.offline_after_s = offline_after_s
        self.gap_grace_s = gap_grace_s
        self.clock = clock
        self.changed: set[str] = set()  # rooms changed since the board was last told
        self.counts = {"messages": 0, "events": 0, "duplicates": 0, "invalid": 0, "stale_status": 0}

    # -- one message ------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        self.counts["messages"] += 1
        t = Topics.parse(topic)
        if t is None or t.prefix != self.prefix or t.site != self.site:
            return  # not of this site's contract (a bridge's own topics)
        if t.room == BROADCAST or t.channel == "cmd":
            return  # the site's own commands
        now = self.clock()
        try:
            body = json.loads(payload)
        except ValueError as e:
            self._reject(t.room, topic, payload, [f"not JSON: {e}"], now)
            return
        if t.channel == "status":
            self._status(t.room, topic, payload, body, now)
        elif t.channel == "heartbeat":
            self._heartbeat(t.room, topic, payload, body, now)
        elif t.channel == "event" and t.name:
            self._event(t.room, t.name, payload, body, now)
        elif t.channel == "reply":
            problems = self.check.reply(body)
            if problems:
                self._reject(t.room, topic, payload, problems, now)

    def _reject(self, room: str | None, topic: str, payload: bytes, problems: list[str], now: float) -> None:
        self.counts["invalid"] += 1
        log.warning("invalid payload on %s (kept, flagged): %s", topic, "; ".join(problems)[:300])
        self.store.add_reject(room, topic, payload, problems, now)
        if room:
            self.changed.add(room)

    # -- status ---------------------------------------------------------------
    def _status(self, room: str, topic: str, payload: bytes, body: Any, now: float) -> None:
        problems = self.check.status(body)
        if problems:
            self._reject(room, topic, payload, problems, now)
        if not isinstance(body, dict) or body.get("state") not in set(RoomState) \
                or not isinstance(body.get("session"), int):
            return
        row = self.store.room(room)
        session = body["session"]
        if session < row["session"]:
            self.counts["stale_status"] += 1
            log.info("room %s: status of session %d ignored (session %d seen): a late Will",
                     room, session, row["session"])
            self.store.record("stale_status", {"room": room, "session": session, "current": row["session"],
                                               "state": body["state"]}, now)
            return
        state = body["state"]
        fields: dict[str, Any] = {"session": session, "status": json.dumps(body, ensure_ascii=False),
                                  "status_at": now}
        if isinstance(body.get("room_label"), str):
            fields["label"] = body["room_label"]
        if state == RoomState.OFFLINE:
            fields["offline_why"] = "clean shutdown" if body.get("clean") else "Last Will: connection lost"
        self._set_state(room, row, state, now, fields)
        alerts = body.get("alerts") if isinstance(body.get("alerts"), list) else []
        if state != RoomState.OFFLINE:
            self._sync_alerts(room, [str(a) for a in alerts], now)

    def _set_state(self, room: str, row: dict[str, Any], state: str, now: float,
                   fields: dict[str, Any] | None = None) -> None:
        fields = dict(fields or {})
        if state != row["state"]:
            fields["state_since"] = now
        if state != RoomState.OFFLINE:
            fields.setdefault("offline_why", "")
        fields["state"] = state
        self.store.update_room(room, **fields)
        open_keys = self.store.open_alert_keys(room)
        if state == RoomState.OFFLINE and OFFLINE_KEY not in open_keys:
            self.store.raise_alert(room, OFFLINE_KEY, f"offline: {fields.get('offline_why') or row['offline_why']}",
                                   now)
        elif state != RoomState.OFFLINE and OFFLINE_KEY in open_keys:
            self.store.clear_alert(open_keys[OFFLINE_KEY], now)
        self.changed.add(room)

    def _sync_alerts(self, room: str, reasons: list[str], now: float, prefix: str = "") -> None:
        """The room's alerts as the site's: a new reason is raised, a gone one cleared (an
        alert stays on the board until a person acknowledged it, cleared or not)."""
        wanted = {prefix + alert_key(r): r for r in reasons}
        open_keys = self.store.open_alert_keys(room)
        for key, text in wanted.items():
            if key not in open_keys:
                self.store.raise_alert(room, key, text, now)
        for key, n in open_keys.items():
            if key.startswith(prefix) and key not in wanted and key != OFFLINE_KEY \
                    and not key.startswith(("incident:", "gap:")):
                self.store.clear_alert(n, now)

    # -- heartbeat ------------------------------------------------------------
    def _heartbeat(self, room: str, topic: str, payload: bytes, body: Any, now: float) -> None:
        problems = self.check.heartbeat(body)
        if problems:
            self._reject(room, topic, payload, problems, now)
        if not isinstance(body, dict) or not isinstance(body.get("session"), int):
            return
        row = self.store.room(room)
        if body["session"] < row["session"]:
            return  # a heartbeat of an earlier connection, delivered late
        fields: dict[str, Any] = {"session": body["session"], "heartbeat": json.dumps(body, ensure_ascii=False),
                                  "heartbeat_at": now}
        total = _dropped_total(body)
        if total is not None:
            # the box counts since its start: a smaller total means it restarted
            grew = total if total < row["dropped_last"] else total - row["dropped_last"]
            fields.update(dropped_last=total, dropped_seen=row["dropped_seen"] + grew)
        state = body.get("state") if body.get("state") in (RoomState.ONLINE, RoomState.ALERT) else row["state"]
        self._set_state(room, row, state, now, fields)
        if isinstance(body.get("alerts"), list):
            self._sync_alerts(room, [str(a) for a in body["alerts"]], now)
        self._decide_gaps(room, now)

    # -- events ---------------------------------------------------------------
    def _event(self, room: str, kind: str, payload: bytes, body: Any, now: float) -> None:
        problems = self.check.event(kind, body)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            self._reject(room, f"{self.prefix}/{self.site}/{room}/event/{kind}", payload,
                         problems or ["no event id"], now)
            return
        if problems:
            self.counts["invalid"] += 1
            log.warning("room %s: invalid %s event %s (kept, flagged): %s", room, kind, body.get("id"),
                        "; ".join(problems)[:300])
        row = self.store.room(room)
        if not self.store.add_event(room, body, payload.decode("utf-8", "replace"), problems, now):
            self.counts["duplicates"] += 1
            self.store.update_room(room, duplicates=row["duplicates"] + 1)
            return
        self.counts["events"] += 1
        fields: dict[str, Any] = {"events": row["events"] + 1}
        seq = body.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if row["last_seq"] and seq > row["last_seq"] + 1:
                self.store.add_gap(room, row["last_seq"] + 1, seq - 1, now)
                log.warning("room %s: seq %d follows %d: gap %d-%d", room, seq, row["last_seq"],
                            row["last_seq"] + 1, seq - 1)
            if seq > row["last_seq"]:
                fields["last_seq"] = seq
            elif row["last_seq"]:
                self._fill(room, seq, now)
        self.store.update_room(room, **fields)
        if kind == EventKind.INCIDENT:
            self._incident(room, body.get("data", {}), now)
        self.changed.add(room)
        if row["last_seq"] and isinstance(seq, int) and seq > row["last_seq"] + 1:
            self._decide_gaps(room, now)

    def _incident(self, room: str, data: dict[str, Any], now: float) -> None:
        """An audio loss is one alert per device; a violation one per seat and code."""
        if data.get("device") is not None:
            where = f"{data.get('device')}"
            what = f"on {data.get('device')}"
        else:
            where = f"{data.get('seat')}:{data.get('code')}"
            what = f"seat {data.get('seat')}, code {data.get('code')} {data.get('text') or ''}".rstrip()
        key = f"incident:{data.get('type')}:{where}"
        open_keys = self.store.open_alert_keys(room)
        if data.get("phase") == IncidentPhase.STARTED and key not in open_keys:
            self.store.raise_alert(room, key, f"incident {data.get('type')} {what} "
                                              f"(exam session {data.get('session')})", now)
        elif data.get("phase") == IncidentPhase.ENDED and key in open_keys:
            self.store.clear_alert(open_keys[key], now)

    # -- gaps -----------------------------------------------------------------
    def _fill(self, room: str, seq: int, now: float) -> None:
        """A late event inside a gap: the gap is filled once every seq of it is stored."""
        for gap in self.store.gaps(room):
            if gap["first"] <= seq <= gap["last"] and gap["verdict"] != GapVerdict.FILLED:
                if self.store.has_seq(room, gap["first"], gap["last"]) == gap["last"] - gap["first"] + 1:
                    self.store.decide_gap(room, gap["first"], GapVerdict.FILLED, now)
                    key = f"gap:{gap['first']}"
                    n = self.store.open_alert_keys(room).get(key)
                    if n is not None:
                        self.store.clear_alert(n, now)

    def _decide_gaps(self, room: str, now: float) -> None:
        """Explain pending gaps oldest first by the drops the box reported; what stays
        unexplained past the grace period is missing evidence."""
        pending = self.store.gaps(room, GapVerdict.PENDING)
        if not pending:
            return
        row = self.store.room(room)
        used = row["dropped_used"]
        for gap in pending:
            size = gap["last"] - gap["first"] + 1
            if row["dropped_seen"] - used >= size:
                used += size
                self.store.decide_gap(room, gap["first"], GapVerdict.DROPPED_TELEMETRY, now)
            elif now - gap["opened"] >= self.gap_grace_s:
                self.store.decide_gap(room, gap["first"], GapVerdict.MISSING_EVIDENCE, now)
                self.store.raise_alert(room, f"gap:{gap['first']}",
                                       f"missing evidence: events {gap['first']}-{gap['last']} never arrived "
                                       f"and the room reported no dropped telemetry for them", now)
        if used != row["dropped_used"]:
            self.store.update_room(room, dropped_used=used)
        self.changed.add(room)

    # -- the clock's work -----------------------------------------------------------
    def tick(self) -> None:
        """Rooms silent for ``offline_after_s`` go offline; pending gaps are decided."""
        now = self.clock()
        for row in self.store.rooms():
            last = max(row["heartbeat_at"] or 0, row["status_at"] or 0)
            if row["state"] in (RoomState.ONLINE, RoomState.ALERT) and last and now - last > self.offline_after_s:
                log.warning("room %s: no heartbeat for %.0f s: offline", row["room"], now - last)
                self._set_state(row["room"], row, RoomState.OFFLINE, now,
                                {"offline_why": f"no heartbeat for {now - last:.0f} s"})
            self._decide_gaps(row["room"], now)
