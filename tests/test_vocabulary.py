"""The contract's words in code equal the words in the docs' JSON Schemas, both ways.

The enums of ``examroom.contract.vocabulary`` are what the agent emits and the
site side reads; the schemas in docs/ are what an aggregator is promised. A
value added on one side only fails here.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

import pytest

from examroom.contract import vocabulary as v
from examroom.contract.topics import Topic, Topics
from examroom import drivers
from tests.schemas import load_schemas


def at(schema: dict[str, Any], *path: str | int) -> Any:
    """Walk a schema: names go through ``properties`` (and ``items`` of arrays), ints pick a ``oneOf``."""
    node: Any = schema
    for step in path:
        if isinstance(step, int):
            node = node["oneOf"][step]
            continue
        if "properties" not in node and "items" in node:
            node = node["items"]
        node = node["properties"][step]
    return node


def enum(schema: dict[str, Any], *path: str | int) -> set[Any]:
    found = at(schema, *path)
    values = found["enum"] if "enum" in found else found["items"]["enum"]
    return {x for x in values if x is not None}


SCHEMAS = load_schemas()

CASES: list[tuple[type[Enum], str, tuple[str | int, ...]]] = [
    (v.Verdict, "data/checkin", ("verdict",)),
    (v.Method, "data/checkin", ("method",)),
    (v.Lookup, "data/checkin", ("lookup",)),
    (v.SweepResult, "data/sweep", (0, "result")),
    (v.SweepTrigger, "data/sweep", (1, "trigger")),
    (v.AttendanceStatus, "data/session_record", ("seats", "status")),
    (v.IncidentType, "data/session_record", ("incidents", "type")),
    (v.IncidentPhase, "data/incident", ("phase",)),
    (v.RoomState, "status", ("state",)),
    (v.Phase, "heartbeat", ("exam", "phase")),
    (v.AudioFeed, "data/audio", ("state",)),
    (v.CameraView, "data/camera", ("state",)),
    (v.AudioSource, "data/audio_switch", ("source",)),
    (v.SwitchReason, "data/audio_switch", ("reason",)),
]


@pytest.mark.parametrize("words,schema,path", CASES, ids=[c[0].__name__ for c in CASES])
def test_enum_equals_the_documented_enum(words: type[Enum], schema: str, path: tuple[str | int, ...]) -> None:
    assert {w.value for w in words} == enum(SCHEMAS[schema], *path)


def test_camera_problems_are_the_documented_reasons() -> None:
    assert {p.value for p in v.CameraProblem} == set(at(SCHEMAS["data/camera"], "reason")["enum"])


def test_device_states_are_the_documented_ones_for_every_kind() -> None:
    code = {s.value for s in v.DeviceState}
    for kind in drivers.kinds():
        assert enum(SCHEMAS[f"device/{kind}"], "state") == code, kind
    assert enum(SCHEMAS["data/device"], "state") == code


def test_every_event_kind_has_a_data_schema_and_every_data_schema_a_kind() -> None:
    documented = {name.removeprefix("data/") for name in SCHEMAS if name.startswith("data/")}
    assert {k.value for k in v.EventKind} == documented


def test_evidence_is_every_kind_but_device_telemetry() -> None:
    assert v.EVIDENCE_KINDS == set(v.EventKind) - {v.EventKind.DEVICE}
    assert "note" in v.EVIDENCE_KINDS and "device" not in v.EVIDENCE_KINDS  # plain strings look up too


def test_words_are_their_strings_on_the_wire() -> None:
    import json
    assert json.dumps({"verdict": v.Verdict.ADMITTED}) == '{"verdict": "admitted"}'
    assert f"{v.EventKind.SESSION_RECORD}" == "session_record" and str(v.Phase.ENTRY) == "entry"


def test_topics_build_and_parse_every_channel() -> None:
    t = Topics("exam", "site01", "room101")
    assert (t.status, t.heartbeat, t.event("checkin"), t.reply("ping"), t.cmd("ping")) == (
        "exam/site01/room101/status", "exam/site01/room101/heartbeat", "exam/site01/room101/event/checkin",
        "exam/site01/room101/reply/ping", "exam/site01/room101/cmd/ping")
    assert t.commands == "exam/site01/room101/cmd/+" and t.site_broadcast.commands == "exam/site01/broadcast/cmd/+"
    assert Topics.site_filter("exam", "site01") == "exam/site01/#"
    assert Topics.parse(t.event("checkin")) == Topic("exam", "site01", "room101", "event", "checkin")
    assert Topics.parse(t.status) == Topic("exam", "site01", "room101", "status")
    assert Topics.parse(t.site_broadcast.cmd("ping")).broadcast  # type: ignore[union-attr]
    for other in ("exam/site01/room101", "exam/site01/room101/status/x", "exam/site01/room101/event/",
                  "exam/site01/room101/unknown/x", "$SYS/broker/uptime"):
        assert Topics.parse(other) is None, other
