"""Site commands over MQTT: every request answered exactly once with its id, every one recorded,
retained ones never run. Unit cases drive RemoteCommands directly; the retained case runs the
real agent against a real Mosquitto."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import paho.mqtt.publish as publish
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examroom.agent.remote_commands import MAX_REMOTE_RUNNING, RemoteCommands
from examroom.contract.topics import Topics
from tests.mqttwatch import Watcher

TOPICS = Topics("exam", "site01", "room101")


class Desk:
    """RemoteCommands with a table whose ``hold`` command blocks until released."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.replies: list[tuple[str, dict, object]] = []
        self.cond = threading.Condition()
        self.release = threading.Event()
        self.running = 0
        table = {"ping": lambda a: {"pong": True}, "status": self._hold, "note": lambda a: {"echo": a}}
        self.remote = RemoteCommands(table, self._emit, self._reply, TOPICS)

    def _hold(self, _args: dict) -> dict:
        with self.cond:
            self.running += 1
            self.cond.notify_all()
        self.release.wait(10)
        return {"held": True}

    def _emit(self, kind: str, data: dict) -> None:
        json.dumps(data).encode()  # what the spool would store must be storable
        with self.cond:
            self.events.append((str(kind), data))

    def _reply(self, topic: str, payload: dict, correlation: object) -> None:
        with self.cond:
            self.replies.append((topic, payload, correlation))
            self.cond.notify_all()

    def send(self, name: str, payload: bytes, retained: bool = False, **props: object) -> None:
        self.remote.on_mqtt(TOPICS.cmd(name), payload, SimpleNamespace(**props) if props else None, retained)

    def wait_replies(self, n: int) -> list[dict]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.replies) >= n, 10), self.replies
            return [p for _, p, _ in self.replies]


def test_a_busy_refusal_names_the_request_and_is_recorded():
    desk = Desk()
    for i in range(MAX_REMOTE_RUNNING):
        desk.send("status", json.dumps({"id": f"s{i}"}).encode())
    with desk.cond:
        assert desk.cond.wait_for(lambda: desk.running == MAX_REMOTE_RUNNING, 10)
    desk.send("ping", b'{"id": "late"}', ResponseTopic=TOPICS.reply("x"), CorrelationData=b"c1")
    [busy] = desk.wait_replies(1)
    assert busy == {"ok": False, "error": busy["error"], "request_id": "late", "command": "ping"}
    assert busy["error"].startswith("busy") and desk.replies[0][0] == TOPICS.reply("x")
    assert desk.replies[0][2] == b"c1"
    assert desk.events[-1] == ("command", {"command": "ping", "topic": TOPICS.cmd("ping"), "request_id": "late",
                                           "ok": False, "error": busy["error"]})
    desk.release.set()
    replies = desk.wait_replies(1 + MAX_REMOTE_RUNNING)
    assert sorted(r["request_id"] for r in replies[1:]) == [f"s{i}" for i in range(MAX_REMOTE_RUNNING)]


def test_deep_nesting_and_huge_numbers_are_answered_with_their_id():
    desk = Desk()
    desk.send("note", b'{"id": "deep", "args": {"x": ' + b"[" * 20000 + b"]" * 20000 + b"}}")
    desk.send("note", b'{"id": "big", "args": {"x": ' + b"9" * 5000 + b"}}")
    desk.send("note", b'{"args": {"x": 1}, "id": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    replies = desk.wait_replies(3)
    assert [(r["request_id"], r["ok"]) for r in replies] == [("deep", False), ("big", False), (None, False)]
    assert "nested deeper" in replies[0]["error"] and "too long" in replies[1]["error"]
    assert [d["request_id"] for k, d in desk.events if k == "command"] == ["deep", "big", None]


def test_a_retained_command_never_runs_but_is_answered_and_recorded():
    desk = Desk()
    desk.send("note", b'{"id": "old", "args": {"text": "switch"}}', retained=True)
    [reply] = desk.wait_replies(1)
    assert reply["request_id"] == "old" and reply["ok"] is False and "retained" in reply["error"]
    assert "echo" not in reply and desk.events[0][1]["ok"] is False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=30).map(lambda v: json.dumps({"id": "fz", "args": v}).encode())))
def test_fuzzed_payloads_get_exactly_one_reply(payload: bytes):
    desk = Desk()
    desk.send("note", payload)
    [reply] = desk.wait_replies(1)
    assert set(reply) >= {"ok", "request_id", "command"} and reply["command"] == "note"
    assert len([k for k, _ in desk.events if k == "command"]) == 1


def test_a_retained_command_on_the_broker_does_not_run_when_the_agent_connects(make_agent, broker, watcher: Watcher):
    """A retained audio_switch re-ran at every reconnect, inside the listening window."""
    publish.single(TOPICS.cmd("note"), json.dumps({"id": "stale", "args": {"text": "retained"}}),
                   hostname="127.0.0.1", port=broker.port, qos=1, retain=True)
    agent = make_agent().start()
    watcher.wait_for(lambda ms: [m for m in ms if m.topic == TOPICS.status and (m.json or {}).get("state") == "online"])
    publish.single(TOPICS.cmd("ping"), json.dumps({"id": "after"}), hostname="127.0.0.1", port=broker.port, qos=1)
    watcher.wait_for(lambda ms: [m for m in ms if m.topic == TOPICS.reply("ping")])
    agent.call("note", text="marker")  # events are in seq order: once it is here, any earlier one is too
    watcher.wait_for(lambda ms: [m for m in ms if m.topic == TOPICS.event("note")
                                 and m.json["data"]["text"] == "marker"])
    notes = [m.json["data"]["text"] for m in watcher.messages if m.topic == TOPICS.event("note")]
    assert notes == ["marker"]
    assert not [m for m in watcher.messages if m.topic == TOPICS.reply("note")]


def test_a_response_topic_outside_the_rooms_reply_tree_is_refused_by_the_room():
    desk = Desk()
    desk.send("ping", b'{"id": "spoof"}', ResponseTopic="exam/site01/room102/status")
    [reply] = desk.wait_replies(1)
    assert desk.replies[0][0] == TOPICS.reply("ping")  # answered where the room may write
    assert reply["ok"] is False and "outside" in reply["error"] and reply["request_id"] == "spoof"
