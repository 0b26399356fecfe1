"""A room without a seat plan still keeps a record of its sessions: audio losses and clock steps
go on it, and it is written and published at the session's end (with no attendance: nobody
was expected)."""
from __future__ import annotations

import json

import jsonschema

from examroom.agent.devices import Devices
from examroom.agent.metrics import Metrics
from examroom.agent.photos import Photos
from examroom.agent.room import Room
from examroom.drivers.bus import Bus
from examroom.drivers.events import AudioStateChanged, ClockState
from tests.checkin_station import doc_schemas, ts
from tests.schemas import load_schemas


def test_incidents_reach_the_record_of_a_room_without_a_seat_plan(schedule, clock, tmp_path):
    bus, emitted = Bus(), []
    devices = Devices((), bus, Metrics(), clock)
    room = Room("12", schedule, None, tmp_path / "records", tmp_path / "book.journal", False,
                bus, lambda k, d: emitted.append((k, d)), clock, devices, Photos(devices, lambda k, d: None, []))
    room.start()
    assert room.station is None and room.exam_state() == {}

    clock.t = ts("2026-06-08T15:05:00")  # eng-pm's listening window (15:00-15:20)
    bus.publish(AudioStateChanged("broadcast", state="silence", previous="signal", since=clock.t - 2, ts=clock.t))
    clock.t = ts("2026-06-08T15:06:00")
    bus.publish(AudioStateChanged("broadcast", state="signal", previous="silence", since=clock.t, ts=clock.t))
    bus.publish(ClockState("clock", synced=True, offset_s=0.0, source="chrony:ntp1", stepped_s=2.5, ts=clock.t))

    restarted = Room("12", schedule, None, tmp_path / "records", tmp_path / "book.journal", False,
                     bus, lambda k, d: emitted.append((k, d)), clock, devices, Photos(devices, lambda k, d: None, []))
    restarted.start()  # the journal carries the incidents over a restart
    restarted.tick()
    clock.t = ts("2026-06-08T17:00:00")
    restarted.tick()

    kinds = [k for k, _ in emitted]
    assert "attendance" not in kinds
    [record] = [d for k, d in emitted if k == "session_record"]
    assert record["session"] == "eng-pm" and record["seatplan_sha256"] is None and record["seats"] == []
    assert [i["type"] for i in record["incidents"]] == ["audio_loss", "clock_step"]
    assert record["incidents"][0]["duration_s"] == 62.0 and record["incidents"][1]["stepped_s"] == 2.5
    jsonschema.validate(record, doc_schemas()["session_record"], cls=jsonschema.Draft202012Validator)
    for kind in ("incident", "clock"):
        for data in (d for k, d in emitted if k == kind):
            jsonschema.validate(json.loads(json.dumps(data)), load_schemas()[f"data/{kind}"])
    doc = json.loads((tmp_path / "records" / "eng-pm-12.json").read_text(encoding="utf-8"))
    assert doc["seatplan"] is None and len(doc["incidents"]) == 2
