"""``examroom-agent watch``'s lines: what an aggregator would see, readable."""
from __future__ import annotations

from examroom.agent.watch import describe
from examroom.contract.topics import Topics

T = Topics("exam", "site01", "room101")


def test_first_heartbeat_says_rtt_not_measured_yet():
    line = describe(T.heartbeat, {"state": "online", "spool": {"events": 0}, "rtt_ms": None, "devices": {}}, {})
    assert "rtt not measured yet" in line and "None" not in line
    assert "rtt=1.5ms" in describe(T.heartbeat, {"state": "online", "rtt_ms": 1.5}, {})


def test_events_show_gaps_and_duplicates_per_room():
    seen: dict[str, int] = {}
    assert "(gap" not in describe(T.event("note"), {"seq": 1, "kind": "note", "data": {}}, seen)
    assert "(gap: 2 missing)" in describe(T.event("note"), {"seq": 4, "kind": "note", "data": {}}, seen)
    assert "(duplicate)" in describe(T.event("note"), {"seq": 4, "kind": "note", "data": {}}, seen)
    assert describe("other/topic", {"a": 1}, seen).startswith("other/topic")
