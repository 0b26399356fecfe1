"""The aggregator's rules for what the rooms publish (docs/mqtt.md), on a real store and the
contract's real schemas, message by message: late Wills, duplicates, seq gaps told from
dropped telemetry, invalid payloads kept and flagged, rooms that fall silent."""
from __future__ import annotations

from pathlib import Path

import pytest

from examroom.contract.schemas import PayloadCheck
from examroom.contract.vocabulary import GapVerdict
from examroom.site.ingest import Ingest
from examroom.site.store import Store
from tests.site_lab import envelope, heartbeat, status

BASE = "exam/site01/room101"


class Clock:
    def __init__(self) -> None:
        self.t = 1_780_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def site(tmp_path: Path):
    store = Store(tmp_path / "site.db")
    store.open()
    clock = Clock()
    ingest = Ingest(store, PayloadCheck(), "exam", "site01", offline_after_s=3.0, gap_grace_s=30.0, clock=clock)

    def feed(suffix: str, payload: bytes, room: str = "room101") -> None:
        with store.batch():
            ingest.handle(f"exam/site01/{room}/{suffix}", payload)

    feed.store, feed.ingest, feed.clock = store, ingest, clock
    yield feed
    store.close()


def note(seq: int, eid: str | None = None) -> bytes:
    return envelope(seq, "note", {"text": f"note {seq}"}, eid=eid)


def test_a_late_will_of_an_older_session_is_ignored_and_logged(site):
    site("status", status("online", 5))
    site("status", status("offline", 4))  # the Will of connection 4, delivered after 5's birth
    room = site.store.room("room101")
    assert room["state"] == "online" and room["session"] == 5 and room["label"] == "第101考场"
    assert site.ingest.counts["stale_status"] == 1
    (entry,) = site.store.log_entries("stale_status")
    assert entry["session"] == 4 and entry["current"] == 5
    site("status", status("offline", 5))  # the Will of the current connection counts
    room = site.store.room("room101")
    assert room["state"] == "offline" and room["offline_why"] == "Last Will: connection lost"
    assert [a["key"] for a in site.store.alerts("room101")] == ["offline"]


def test_an_event_sent_twice_is_stored_once(site):
    site("event/note", note(1, eid="e-1"))
    site("event/note", note(1, eid="e-1"))  # a lost PUBACK: the room sends it again
    assert site.store.event_count() == 1
    assert site.store.room("room101")["duplicates"] == 1 and site.ingest.counts["duplicates"] == 1


def test_a_gap_the_room_reported_as_dropped_telemetry_is_not_missing_evidence(site):
    site("heartbeat", heartbeat(1))
    for seq in (1, 2, 5):
        site("event/note", note(seq))
    (gap,) = site.store.gaps("room101")
    assert (gap["first"], gap["last"], gap["verdict"]) == (3, 4, GapVerdict.PENDING)
    site("heartbeat", heartbeat(1, dropped={"device": 2}))  # the box dropped two device events
    (gap,) = site.store.gaps("room101")
    assert gap["verdict"] == GapVerdict.DROPPED_TELEMETRY
    assert not [a for a in site.store.alerts("room101") if a["key"].startswith("gap:")]


def test_an_unexplained_gap_becomes_missing_evidence_after_the_grace_period(site):
    site("heartbeat", heartbeat(1, dropped={"device": 1}))
    for seq in (1, 2, 6):
        site("event/note", note(seq))
    site.clock.t += 29
    site.ingest.tick()
    assert site.store.gaps("room101")[0]["verdict"] == GapVerdict.PENDING  # one drop cannot explain three
    site.clock.t += 2
    with site.store.batch():
        site.ingest.tick()
    (gap,) = site.store.gaps("room101")
    assert gap["verdict"] == GapVerdict.MISSING_EVIDENCE
    (alert,) = [a for a in site.store.alerts("room101") if a["key"] == "gap:3"]
    assert "3-5" in alert["text"] and alert["cleared"] is None


def test_events_that_arrive_late_fill_their_gap_and_read_back_in_seq_order(site):
    for seq in (1, 4):
        site("event/note", note(seq))
    for seq in (3, 2):  # replayed late, out of order
        site("event/note", note(seq))
    (gap,) = site.store.gaps("room101")
    assert gap["verdict"] == GapVerdict.FILLED
    assert [e["seq"] for e in site.store.events("room101")] == [1, 2, 3, 4]


def test_a_box_restart_resets_its_drop_counter_without_losing_what_it_reported(site):
    site("heartbeat", heartbeat(1, dropped={"device": 3}))
    site("heartbeat", heartbeat(2, dropped={"device": 1}))  # restarted: counts from zero again
    assert site.store.room("room101")["dropped_seen"] == 4


def test_invalid_payloads_are_kept_and_flagged_never_dropped(site):
    site("event/note", envelope(1, "note", {"no_text": True}))
    (ev,) = site.store.events("room101")
    assert ev["problems"] and "text" in " ".join(ev["problems"])
    site("event/note", b"{not json")
    site("heartbeat", b'{"session": 1}')
    rejects = site.store.rejects("room101")
    assert [r["topic"].rsplit("/", 1)[-1] for r in rejects] == ["note", "heartbeat"]
    assert rejects[0]["payload"] == "{not json" and "not JSON" in rejects[0]["problems"][0]
    assert site.ingest.counts["invalid"] == 3


def test_a_room_silent_past_its_missed_heartbeats_goes_offline_and_back(site):
    site("status", status("online", 1))
    site("heartbeat", heartbeat(1))
    site.clock.t += 3.5
    with site.store.batch():
        site.ingest.tick()
    room = site.store.room("room101")
    assert room["state"] == "offline" and room["offline_why"].startswith("no heartbeat for")
    site("heartbeat", heartbeat(1))
    assert site.store.room("room101")["state"] == "online"
    (alert,) = site.store.alerts("room101")
    assert alert["key"] == "offline" and alert["cleared"] is not None and alert["acked_by"] is None


def test_room_alerts_are_raised_cleared_and_acknowledged_once(site):
    site("status", status("alert", 1, alerts=["camera: covered", "clock: offset 3 s"]))
    keys = {a["key"]: a for a in site.store.alerts("room101")}
    assert set(keys) == {"camera", "clock"}
    site("status", status("alert", 1, alerts=["camera: covered for 40 s"]))  # the same alert, new words
    open_ = [a for a in site.store.alerts("room101") if a["cleared"] is None]
    assert [a["key"] for a in open_] == ["camera"]
    with site.store.batch():
        assert site.store.ack_alert(keys["camera"]["n"], "王老师", site.clock())
        assert not site.store.ack_alert(keys["camera"]["n"], "someone else", site.clock())
    assert site.store.alerts("room101")[0]["acked_by"] == "王老师"


def test_an_incident_is_an_alert_until_it_ends(site):
    started = {"type": "audio_loss", "device": "broadcast", "session": "eng-pm", "cause": "silence",
               "start": "2026-06-08T15:05:00+08:00", "phase": "started"}
    site("event/incident", envelope(1, "incident", started))
    (alert,) = site.store.alerts("room101")
    assert alert["key"] == "incident:audio_loss:broadcast" and alert["cleared"] is None
    ended = started | {"phase": "ended", "end": "2026-06-08T15:05:09+08:00", "duration_s": 9.0}
    site("event/incident", envelope(2, "incident", ended))
    assert site.store.alerts("room101")[0]["cleared"] is not None


def test_other_sites_broadcasts_and_commands_are_not_rooms(site):
    site("event/note", note(1), room="broadcast")
    with site.store.batch():
        site.ingest.handle("exam/site02/room101/event/note", note(1))
        site.ingest.handle("exam/site01/room101/cmd/ping", b'{"id": 1}')
    assert site.store.rooms() == [] and site.store.event_count() == 0


def test_violation_incidents_are_one_alert_per_seat_and_code(site):
    base = {"type": "violation", "session": "math-am", "phase": "started", "start": "2026-06-07T09:30:00+08:00"}
    site("event/incident", envelope(1, "incident", base | {"seat": "3", "code": "Z01", "text": "携带手机"}))
    site("event/incident", envelope(2, "incident", base | {"seat": "5", "code": "W02", "text": "交头接耳"}))
    alerts = {a["key"]: a["text"] for a in site.store.alerts("room101")}
    assert set(alerts) == {"incident:violation:3:Z01", "incident:violation:5:W02"}
    assert "seat 3, code Z01 携带手机" in alerts["incident:violation:3:Z01"]
    assert site.ingest.counts["invalid"] == 0  # the shape the room publishes (docs/events-checkin.md)


def test_an_id_number_a_room_lets_through_is_masked_on_every_board(site):
    from examroom.site.web_api import summarize

    leaked = "110105199003070017"  # valid check digit: a full ID number in a room's alert
    site("status", status("alert", 1, alerts=[f"camera: seat of {leaked} covered"]))
    (alert,) = site.store.alerts("room101")
    assert leaked not in alert["text"] and "110105********0017" in alert["text"]
    assert leaked not in summarize("note", {"text": f"asked about {leaked}"})
