"""What the board shows, as JSON: built from the store's rows, never from the broker.

The page and the API see the same shapes (a room's tile, its detail, the alerts
needing a person, the push panel, the joint test's progress), so the browser
only renders. Times stay epoch seconds or the rooms' ISO 8601 strings; the
browser formats them in the site's zone (``cfg.site["timezone"]``).

``Updates`` turns the aggregator's "these rooms changed" into one message for
every open board: the changed rooms' tiles, and the alerts, pushes and joint
test only when they changed, so a heartbeat costs one row read, not the whole site.
"""
from __future__ import annotations

import json
import time
from typing import Any

from examroom.contract.topics import ID
from examroom.contract.vocabulary import EventKind
from examroom.drivers.gb11643 import mask_ids_in_text
from examroom.site.ingest import OFFLINE_KEY
from examroom.site.store import Store

ROOM_ID = ID  # the contract's ids (docs/mqtt.md)
GROUP = 8  # rooms one video proctor follows
PUSHES_SHOWN = 5
EVENTS_SHOWN = 200

# the fields that say most about an event of each kind, first in its one-line summary
_SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    EventKind.NOTE: ("text", "author", "by"),
    EventKind.CHECKIN: ("seat", "verdict", "method", "id_masked"),
    EventKind.SWEEP: ("seat", "result", "alarms", "rechecks"),
    EventKind.SUSPECT_CONFIRM: ("seat", "proctor", "confirmations", "passed"),
    EventKind.ATTENDANCE: ("session", "present", "total", "absent", "late_refused"),
    EventKind.SESSION_RECORD: ("session", "present", "total", "absent", "late_refused", "incidents"),
    EventKind.INCIDENT: ("type", "phase", "device", "cause", "duration_s"),
    EventKind.DEVICE: ("device", "state", "reason"),
    EventKind.CAMERA: ("device", "state", "reason"),
    EventKind.AUDIO: ("device", "state", "listening"),
    EventKind.AUDIO_SWITCH: ("device", "source", "reason"),
    EventKind.CLOCK: ("device", "offset_s", "stepped_s", "synced"),
    EventKind.COMMAND: ("command", "ok", "error"),
    EventKind.SELFTEST: ("ok", "absent"),
    EventKind.FORCED: ("action", "by", "reason"),
    EventKind.PUSH: ("push_id", "text", "by"),
    EventKind.PUSH_ACK: ("push_id", "by", "after_s"),
}
SUMMARY_MAX = 200


def _obj(text: str | None) -> dict[str, Any]:
    """A stored payload as a dict; a payload that is not one (kept, flagged) shows as empty."""
    try:
        v = json.loads(text) if text else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _short(v: Any) -> str:
    if isinstance(v, list):
        return f"[{len(v)}]" if len(v) > 3 or any(isinstance(x, (list, dict)) for x in v) \
            else "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def summarize(kind: str, data: Any) -> str:
    """One line for the timeline: the kind's telling fields, then the other plain ones."""
    if not isinstance(data, dict):
        return ""
    first = [k for k in _SUMMARY_KEYS.get(kind, ()) if k in data]
    rest = sorted(k for k, v in data.items() if k not in first and not isinstance(v, dict))
    # ID numbers arrive masked; a room with a bug must still not put one on a screen
    text = mask_ids_in_text(" · ".join(f"{k}={_short(data[k])}" for k in first + rest if data[k] is not None))
    return text if len(text) <= SUMMARY_MAX else text[:SUMMARY_MAX - 1] + "…"


# -- rooms --------------------------------------------------------------------
def _devices(row: dict[str, Any], hb: dict[str, Any], status: dict[str, Any]) -> list[dict[str, str]]:
    """Each device with its reason from the last heartbeat; a status published since (a device
    turned faulty between two beats) has the newer state."""
    beat = hb.get("devices") if isinstance(hb.get("devices"), dict) else {}
    told = status.get("devices") if isinstance(status.get("devices"), dict) else {}
    newer = (row["status_at"] or 0) > (row["heartbeat_at"] or 0)
    out = []
    for name in sorted(set(beat) | set(told)):
        d = beat.get(name) if isinstance(beat.get(name), dict) else {}
        s = told.get(name) if isinstance(told.get(name), dict) else {}
        state, reason = str(d.get("state", s.get("state", ""))), str(d.get("reason", ""))
        if newer and s.get("state") and s["state"] != state:
            state, reason = str(s["state"]), ""
        out.append({"name": str(name), "kind": str(d.get("kind", s.get("kind", ""))), "state": state,
                    "reason": reason})
    return out


def _exam(hb: dict[str, Any]) -> dict[str, Any] | None:
    exam = hb.get("exam")
    if not isinstance(exam, dict) or not exam.get("phase"):
        return None
    return {k: exam.get(k) for k in ("session", "phase", "admitted", "total", "present", "absent", "listening")}


def tile(row: dict[str, Any], open_alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """One room as the board shows it; ``open_alerts``: the room's alerts not cleared."""
    hb, status = _obj(row["heartbeat"]), _obj(row["status"])
    return {
        "room": row["room"], "label": row["label"], "state": row["state"], "state_since": row["state_since"],
        "offline_why": row["offline_why"], "session": row["session"], "heartbeat_at": row["heartbeat_at"],
        "devices": _devices(row, hb, status),
        "exam": _exam(hb),
        "spool": hb["spool"].get("events") if isinstance(hb.get("spool"), dict) else None,
        "alerts": [a["text"] for a in open_alerts
                   if not a["key"].startswith("incident:") and a["key"] != OFFLINE_KEY],
        "incidents": [{"n": a["n"], "text": a["text"], "raised": a["raised"]}
                      for a in open_alerts if a["key"].startswith("incident:")],
        "last_seq": row["last_seq"], "events": row["events"],
    }


def _open_by_room(alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        if a["cleared"] is None:
            out.setdefault(a["room"], []).append(a)
    return out


def tiles(store: Store, alerts: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every room's tile, in room order; ``alerts``: the open ones, when already read."""
    by_room = _open_by_room(store.alerts(unacked_or_open=True) if alerts is None else alerts)
    return [tile(r, by_room.get(r["room"], [])) for r in store.rooms()]


def groups(store: Store) -> list[list[str]]:
    """The rooms in sorted order, eight to a video proctor."""
    ids = [r["room"] for r in store.rooms()]
    return [ids[i:i + GROUP] for i in range(0, len(ids), GROUP)]


def _latest(store: Store, room: str, kind: str) -> dict[str, Any] | None:
    evs = store.events(room=room, kind=kind)
    return evs[-1] if evs else None


def _record_counts(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    """The session record's summary: who came, who did not, what happened."""
    if ev is None or not isinstance(ev.get("data"), dict):
        return None
    d = ev["data"]

    def n(key: str) -> int | None:
        return len(d[key]) if isinstance(d.get(key), list) else None

    return {"ts": ev.get("ts"), "session": d.get("session"), "subject": d.get("subject"),
            "total": d.get("total"), "present": d.get("present"), "absent": n("absent"),
            "late_refused": n("late_refused"), "suspects": n("suspects"), "incidents": n("incidents"),
            "complete": d.get("complete"), "absent_seats": d.get("absent") if isinstance(d.get("absent"), list) else []}


def _attendance(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    if ev is None or not isinstance(ev.get("data"), dict):
        return None
    d = ev["data"]
    return {"ts": ev.get("ts")} | {k: d.get(k) for k in ("session", "total", "present", "absent", "late_refused",
                                                          "suspects", "pending_sweep", "complete")}


def room_detail(store: Store, room: str) -> dict[str, Any] | None:
    """Everything the room page shows; None for a room the site never heard of."""
    row = next((r for r in store.rooms() if r["room"] == room), None)
    if row is None:
        return None
    alerts = store.alerts(room=room)
    events = [{"id": e.get("id"), "seq": e.get("seq"), "kind": e.get("kind"), "ts": e.get("ts"),
               "replayed": bool(e.get("replayed")), "summary": summarize(str(e.get("kind")), e.get("data")),
               "problems": e["problems"]} for e in store.recent_events(room, EVENTS_SHOWN)]
    return {"tile": tile(row, [a for a in alerts if a["cleared"] is None]),
            "events": events, "gaps": store.gaps(room), "alerts": alerts[::-1],
            "session_record": _record_counts(_latest(store, room, EventKind.SESSION_RECORD)),
            "attendance": _attendance(_latest(store, room, EventKind.ATTENDANCE))}


# -- pushes and joint tests ------------------------------------------------------
def push_marks(store: Store, room: str) -> dict[str, dict[str, Any]]:
    """By push id: when the room received it (its ``push`` event) and who acknowledged it."""
    marks: dict[str, dict[str, Any]] = {}
    for kind in (EventKind.PUSH, EventKind.PUSH_ACK):
        for ev in store.events(room=room, kind=kind, limit=100_000):
            d = ev.get("data") if isinstance(ev.get("data"), dict) else {}
            if not isinstance(d.get("push_id"), str):
                continue
            m = marks.setdefault(d["push_id"], {})
            if kind == EventKind.PUSH:
                m.setdefault("delivered_at", ev.get("ts"))
            elif "acked_by" not in m:
                m.update(acked_by=str(d.get("by", "")), after_s=d.get("after_s"), acked_at=ev.get("ts"))
    return marks


def _push_rooms(entry: dict[str, Any]) -> list[str]:
    rooms = entry.get("rooms")
    return [r for r in rooms if isinstance(r, str)] if isinstance(rooms, list) else []


def pushes_view(entries: list[dict[str, Any]], marks: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each push with every room it went to: delivered, acknowledged (by whom, after how long)."""
    out = []
    for e in entries:
        rows = []
        for room in _push_rooms(e):
            m = marks.get(room, {}).get(str(e.get("push_id")), {})
            state = "acked" if "acked_by" in m else "delivered" if m.get("delivered_at") else "pending"
            rows.append({"room": room, "state": state, "delivered_at": m.get("delivered_at"),
                         "acked_by": m.get("acked_by"), "after_s": m.get("after_s"), "acked_at": m.get("acked_at")})
        out.append({"push_id": e.get("push_id"), "text": e.get("text"), "sent_at": e.get("sent_at"), "by": e.get("by"),
                    "rooms": rows, "acked": sum(r["state"] == "acked" for r in rows),
                    "delivered": sum(r["state"] != "pending" for r in rows)})
    return out


def pushes(store: Store, limit: int = PUSHES_SHOWN) -> list[dict[str, Any]]:
    entries = store.log_entries("push", limit)
    return pushes_view(entries, {r: push_marks(store, r) for e in entries for r in _push_rooms(e)})


def jointtest(store: Store) -> dict[str, Any] | None:
    latest = store.log_entries("jointtest", 1)
    return latest[0] if latest else None


def _log_mark(store: Store) -> int:
    """The newest entry of the site's log: it grows when a push is sent or a joint test moves."""
    latest = store.log_entries(limit=1)
    return latest[0]["n"] if latest else 0


def snapshot(store: Store, tz: str) -> dict[str, Any]:
    alerts = store.alerts(unacked_or_open=True)
    return {"now": time.time(), "tz": tz, "rooms": tiles(store, alerts=alerts), "alerts": alerts,
            "pushes": pushes(store), "jointtest": jointtest(store)}


class Updates:
    """Builds the live update after a change, remembering what the boards already have."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._alerts = ""
        self._log = -1
        self._push_entries: list[dict[str, Any]] = []
        self._marks: dict[str, dict[str, dict[str, Any]]] = {}
        self._seen: dict[str, tuple[Any, Any]] = {}

    def update(self, changed: set[str]) -> dict[str, Any] | None:
        """The changed rooms' tiles, plus alerts, pushes and joint test where they changed; None: nothing new."""
        out: dict[str, Any] = {}
        alerts = self.store.alerts(unacked_or_open=True)
        text = json.dumps(alerts)
        if text != self._alerts:
            self._alerts, out["alerts"] = text, alerts
        wanted = changed | {r for e in self._push_entries for r in _push_rooms(e)}
        rows = {r["room"]: r for r in self.store.rooms(wanted)}
        if changed:
            by_room = _open_by_room(alerts)
            out["rooms"] = [tile(rows[r], by_room.get(r, [])) for r in sorted(changed) if r in rows]
        mark = _log_mark(self.store)
        log_moved = mark != self._log
        if log_moved:
            self._log, out["jointtest"] = mark, jointtest(self.store)
            self._push_entries = self.store.log_entries("push", PUSHES_SHOWN)
        if self._refresh_marks(changed, rows) or log_moved:
            out["pushes"] = pushes_view(self._push_entries, self._marks)
        return out | {"now": time.time()} if out else None

    def _refresh_marks(self, changed: set[str], rows: dict[str, dict[str, Any]]) -> bool:
        """Re-read the push events of pushed rooms that stored events since last time (told by
        the room's event count and newest event: cheap reads, where the push events are not)."""
        stale = False
        for room in dict.fromkeys(r for e in self._push_entries for r in _push_rooms(e)):
            if room in self._marks and room not in changed:
                continue
            newest = self.store.recent_events(room, 1)
            seen = (rows.get(room, {}).get("events"), newest[0].get("id") if newest else None)
            if room not in self._marks or seen != self._seen.get(room):
                self._marks[room], self._seen[room] = push_marks(self.store, room), seen
                stale = True
        return stale
