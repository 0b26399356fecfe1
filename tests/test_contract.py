"""The MQTT contract pages are the truth the aggregator builds on: check them against a live room.

Every ```json schema:NAME block of docs/mqtt.md, docs/events-checkin.md and
docs/events-devices.md must be valid JSON and a valid JSON Schema 2020-12, and
no schema may hide in another fence (tests/schemas.py reads them).
Then one compressed exam session runs in a simulated room (real agent, real
Mosquitto) and every message the aggregator receives is validated: status,
heartbeat, every event envelope and its data against ``data/<kind>`` (a kind
without a documented schema fails), and every command reply. Each device entry
of a heartbeat (and of the ``status`` reply) is also validated against
``device/<kind>``, whose schemas accept no undocumented field: a driver that adds
a field or changes a type without documenting it fails here.
"""
from __future__ import annotations

import json
import time
from typing import NoReturn

import pytest
from jsonschema import Draft202012Validator

from examroom import drivers
from examroom.agent.config import DeviceConfig
from examroom.agent.devices import Devices
from devkit.localbroker import Broker
from examroom.agent.metrics import Metrics
from examroom.drivers.bus import Bus
from examroom.contract.topics import Topics
from tests.agentproc import AgentProcess
from tests.mqttwatch import Watcher
from tests.room_config import BASE, TOPICS, Aggregator, Door, room_config, settled, wait_kind
from tests.schemas import DOCS, PAGES, doc_blocks, load_schemas, page_blocks, validator


def test_every_schema_block_is_valid():
    schemas = load_schemas()
    assert {"status", "heartbeat", "event", "reply"} <= set(schemas)
    device_kinds = {"audio", "audio_switch", "incident", "camera", "clock", "device", "snapshot", "trial_listening"}
    checkin_kinds = {"checkin", "sweep", "suspect_confirm", "attendance", "session_record"}
    assert {f"data/{k}" for k in device_kinds | checkin_kinds | {"note", "selftest", "command"}} <= set(schemas)
    assert {f"device/{k}" for k in drivers.kinds()} <= set(schemas), "a driver kind without a device schema"


def test_every_schema_in_the_docs_is_fenced_json_schema():
    """One fence style: a schema is ```json schema:NAME, an example plain ```json. A schema in any
    other fence (or on a page the contract does not read) would be skipped, so it fails here."""
    for page in sorted(p.name for p in DOCS.glob("*.md")):
        blocks, problems = page_blocks(page, (DOCS / page).read_text(encoding="utf-8"))
        assert problems == [], "\n".join(problems)
        assert not blocks or page in PAGES, f"{page} publishes schemas but is not a contract page: add it to PAGES"
    assert all(name for _, name, _ in doc_blocks())


def test_a_schema_in_another_fence_fails_loudly():
    text = "\n".join([
        "```json schema:data/good", '{"type": "object", "properties": {"a": {"type": "string"}}}', "```",
        "```json", '{"type": "silence", "device": "broadcast"}', "```",  # an example, "type" and all
        "```json", '{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}', "```",
        "```json schema", '{"type": "object", "required": ["a"]}', "```",  # no NAME
        "```JSON", '{"oneOf": [{"type": "object"}]}', "```",
        "```json schema:data/other", '{"$id": "examroom/good.json", "type": "object"}', "```",
    ]) + "\n"
    blocks, problems = page_blocks("x.md", text)
    assert [name for _, name, _ in blocks] == ["data/good", "data/other"]
    assert [p.split(":")[1] for p in problems] == ["7", "10", "13", "16"], problems
    assert "plain ```json fence" in problems[0] and "```json schema:" in problems[1] and "```JSON" in problems[2]
    assert "names data/good" in problems[3]


@pytest.fixture
def sim_devices():
    """One device of every kind on its sim backend, started as the agent starts them."""
    devices = Devices(tuple(DeviceConfig(k, k, "sim", {}) for k in drivers.kinds()), Bus(), Metrics())
    devices.start()
    try:
        yield devices
    finally:
        devices.stop()


def test_device_schemas_accept_real_entries_and_refuse_wrong_ones(sim_devices):
    """The device schemas are strict: a wrong type, an undocumented or a missing field fails."""
    for name, entry in sim_devices.statuses().items():
        v = validator(f"device/{entry['kind']}")
        assert list(v.iter_errors(entry)) == [], name
        assert not v.is_valid({**entry, "undocumented": 1}), name
        for key in entry:
            assert not v.is_valid({**entry, key: [key]}), f"{name}.{key} accepts any type"
            if key not in ("state", "reason", "sam_id"):  # sam_id: only once the SAM answered
                assert not v.is_valid({k: x for k, x in entry.items() if k != key}), f"{name}.{key} is optional"


def test_a_device_whose_status_fails_still_matches_its_schema(sim_devices, monkeypatch):
    """A driver bug in status() is reported as fault without the kind's fields, and documented so."""
    def broken(self):
        raise RuntimeError("driver bug")

    for drv in sim_devices.drivers.values():
        monkeypatch.setattr(type(drv), "status", broken)
    for name, entry in sim_devices.statuses().items():
        assert entry["reason"] == "status failed: driver bug", entry
        v = validator(f"device/{entry['kind']}")
        assert list(v.iter_errors(entry)) == [], name
        assert not v.is_valid({**entry, "state": "ok"}), name


def _session(door: Door, agg: Aggregator, room, w: Watcher) -> None:
    """One compressed session that makes the room publish every kind it has."""
    c = room.candidates
    door.tap_id(c["1"].id_number)
    door.alarm()
    door.clear()
    door.clear()  # nothing pending: an unassociated sweep
    door.tap_uid("0A0B0C0D")  # unknown_card
    door.tap_id("410105200801011230")  # a wrong check digit: invalid_id
    door.do("checkin_admit", seat="2", proctor="P1")
    door.do("checkin_suspect", seat="3", proctor="P1", reason="no photo match")
    door.do("checkin_confirm", seat="3", proctor="P1")
    door.do("checkin_confirm", seat="3", proctor="P2")
    door.do("checkin_leave", seat="2")  # pending sweep closed as left_before_clear
    mark = len(w.messages)
    door.sim("camera", "black")
    wait_kind(w, mark, "camera", lambda d: d["state"] == "abnormal")
    door.tap_uid("0A0B0C0E")  # no working camera: the photo's answer is the error variant
    wait_kind(w, mark, "snapshot", lambda d: "error" in d)
    mark = len(w.messages)
    door.sim("camera", "normal")
    wait_kind(w, mark, "camera", lambda d: d["state"] == "normal")  # snapshots need a working camera
    door.sim("clock", "offset", "2")
    door.sim("clock", "offset", "0")
    for name, args, ok in (("ping", {}, True), ("status", {}, True), ("note", {"text": "bag 3 opened"}, True),
                           ("selftest", {}, True), ("snapshot", {"tag": "patrol"}, True),
                           ("audio_switch", {"source": "backup"}, False),  # entry is open: the exam lock
                           ("audio_switch", {"source": "backup", "force": True, "reason": "feed crackles"}, True),
                           ("audio_switch", {"source": "primary", "force": True, "reason": "fixed"}, True),
                           ("trial_listening", {"seconds": 1}, True),
                           ("checkin_admit", {"seat": "4", "proctor": "remote"}, False), ("audio_switch", {}, False)):
        reply = agg.call(name, args)
        assert reply["ok"] is ok, reply
    w.wait_for(lambda _: w.events("attendance"), timeout=room.times["cutoff"] - time.time() + 5)
    door.tap_id(c["4"].id_number)  # late_refused
    room.wait_until("listen_start", 0.1)
    mark = len(w.messages)
    door.sim("broadcast", "silence")
    wait_kind(w, mark, "incident", lambda d: d["phase"] == "started")
    door.sim("broadcast", "level", "-20")
    wait_kind(w, mark, "incident", lambda d: d["phase"] == "ended")
    w.wait_for(lambda _: w.events("session_record"), timeout=room.times["end"] - time.time() + 5)


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    broker = Broker(tmp / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp, broker.port, start_in=1.5, cutoff_after=4, end_after=10.5,
                               listening=(9, 11), heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            settled(w)
            agg = Aggregator(broker.port, w)
            try:
                _session(Door(agent, w, room), agg, room, w)
            finally:
                agg.close()
            assert agent.terminate() == 0
            w.wait_for(lambda ms: any(m.topic == TOPICS.status and (m.json or {}).get("clean") for m in ms))
            yield list(w.messages)
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()


def test_every_message_matches_the_contract(received):
    schemas = load_schemas()
    fmt = Draft202012Validator.FORMAT_CHECKER  # date-time is checked (rfc3339-validator)
    validators = {name: Draft202012Validator(s, format_checker=fmt) for name, s in schemas.items()}
    problems: list[str] = []
    seen: dict[str, int] = {}
    device_kinds: set[str] = set()

    def check(name: str, payload, where: str) -> None:
        if name not in validators:
            problems.append(f"{where}: no documented schema:{name}")
            return
        for err in validators[name].iter_errors(payload):
            path = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{where}: schema:{name} at /{path}: {err.message}")

    def check_devices(devices, where: str) -> set[str]:
        """Each entry against the schema of its kind; returns the kinds seen."""
        if not isinstance(devices, dict):
            return set()  # the heartbeat's own schema says what is wrong
        kinds = set()
        for name, entry in devices.items():
            kind = str(entry.get("kind")) if isinstance(entry, dict) else "?"
            kinds.add(kind)
            check(f"device/{kind}", entry, f"{where} devices/{name}")
        return kinds

    def refuse(constant: str) -> NoReturn:
        raise ValueError(f"{constant} is not JSON")

    for i, m in enumerate(received):
        where = f"#{i} {m.topic}"
        topic = Topics.parse(m.topic)
        channel = topic.channel if topic is not None and topic.base == BASE else ""
        if m.json is None:
            problems.append(f"{where}: not JSON: {m.raw[:80]!r}")
            continue
        try:  # Python's json reads NaN and Infinity; an aggregator's JSON parser does not
            json.loads(m.raw, parse_constant=refuse)
        except ValueError as e:
            problems.append(f"{where}: {e}")
        if channel in ("status", "heartbeat"):
            check(channel, m.json, where)
            if channel == "heartbeat":
                device_kinds |= check_devices(m.json.get("devices"), where)
        elif channel == "event":
            kind = topic.name
            check("event", m.json, where)
            if m.json.get("kind") != kind:
                problems.append(f"{where}: envelope kind {m.json.get('kind')!r} on topic of {kind!r}")
            check(f"data/{kind}", m.json.get("data"), f"{where} data")
        elif channel == "reply":
            check("reply", m.json, where)
            if topic.name == "status":
                check_devices(m.json.get("devices"), where)
            if m.json.get("command") != topic.name:
                problems.append(f"{where}: reply names command {m.json.get('command')!r}")
        elif channel == "cmd":
            continue  # what the test itself sent as the aggregator
        else:
            problems.append(f"{where}: a topic the contract does not list")
        rest = m.topic.removeprefix(BASE + "/") if channel else ""
        seen[rest] = seen.get(rest, 0) + 1
    assert problems == [], "\n".join(problems[:40])

    kinds = {t.split("/", 1)[1] for t in seen if t.startswith("event/")}
    expected = {"checkin", "sweep", "suspect_confirm", "attendance", "session_record", "audio", "audio_switch",
                "incident", "camera", "clock", "device", "snapshot", "trial_listening", "note", "selftest",
                "command", "forced"}
    assert expected <= kinds, f"the session did not exercise {sorted(expected - kinds)}"
    assert set(drivers.kinds()) <= device_kinds, f"no heartbeat showed {sorted(set(drivers.kinds()) - device_kinds)}"
    verdicts = {m.json["data"]["verdict"] for m in received if m.topic == TOPICS.event("checkin")}
    photos = [m.json["data"] for m in received if m.topic == TOPICS.event("snapshot")]
    assert {"error" in p for p in photos if "for" in p} == {True, False}, "both kinds of check-in photo answer"
    assert {"admitted", "unknown_card", "invalid_id", "suspect", "left", "late_refused"} <= verdicts
    states = {m.json["state"] for m in received if m.topic == TOPICS.status}
    assert {"online", "alert", "offline"} <= states
    assert sum(n for t, n in seen.items() if t.startswith("reply/")) == 11
