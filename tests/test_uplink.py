"""The aggregator's contract, end to end: real agent process, real Mosquitto."""
from __future__ import annotations

import time
from pathlib import Path

from tests.agentproc import AgentProcess, write_config
from devkit.localbroker import Broker
from tests.mqttwatch import Watcher


def _status(w: Watcher, state: str, session: int | None = None):
    return lambda ms: [m.json for m in ms if m.topic.endswith("/status") and m.json
                       and m.json["state"] == state and (session is None or m.json["session"] == session)]


def test_birth_heartbeat_and_clean_offline(make_agent, watcher: Watcher) -> None:
    agent = make_agent(heartbeat_s=0.2).start()
    birth = watcher.wait_for(_status(watcher, "online"))[0]
    assert birth["room"] == "room101" and birth["site"] == "site01"
    assert birth["room_label"] == "测试考点 第101考场"
    assert birth["session"] >= 1 and birth["version"]
    retained = [m for m in watcher.on("status")]
    assert retained[0].topic == "exam/site01/room101/status"
    watcher.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/heartbeat")]) >= 5)
    hb = [m.json for m in watcher.on("heartbeat")]
    times = [time.mktime(time.strptime(h["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + float(h["ts"][19:23])
             for h in hb]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.1 <= g <= 0.6 for g in gaps), gaps  # cadence of interval_s=0.2
    assert {"uptime_s", "spool", "rtt_ms", "devices", "host", "session"} <= set(hb[-1])
    assert hb[-1]["spool"]["events"] == 0
    assert {h["session"] for h in hb} == {birth["session"]}  # every beat is of this boot's session
    ups = [h["uptime_s"] for h in hb]
    assert ups == sorted(ups) and ups[-1] > ups[0], ups  # one clock, counting up
    assert agent.terminate() == 0
    off = watcher.wait_for(_status(watcher, "offline"))[0]
    assert off["session"] == birth["session"] and off.get("clean") is True


def test_last_will_on_sigkill_and_session_grows(make_agent, watcher: Watcher) -> None:
    agent = make_agent()
    agent.start()
    first = watcher.wait_for(_status(watcher, "online"))[0]["session"]
    agent.kill()
    will = watcher.wait_for(_status(watcher, "offline"))[0]
    assert will["session"] == first and "clean" not in will
    agent.start()
    # a late Will of session `first` cannot be mistaken for now: the new birth has a higher one
    watcher.wait_for(lambda ms: [m for m in _status(watcher, "online")(ms) if m["session"] > first])


def test_retained_status_seen_by_late_subscriber(make_agent, broker: Broker) -> None:
    make_agent().start()
    with Watcher(broker.port) as early:
        early.wait_for(_status(early, "online"))
    with Watcher(broker.port) as late:
        got = late.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/status")])
        assert got[0].retain and got[0].json["state"] == "online"


def test_notes_while_connected(make_agent, watcher: Watcher) -> None:
    agent = make_agent().start()
    watcher.wait_for(_status(watcher, "online"))
    seqs = [agent.call("note", text=f"clock checked {i}", author="tech")["seq"] for i in range(5)]
    notes = watcher.wait_for(lambda ms: (e := [m.json for m in ms if "/event/note" in m.topic])[4:] and e)
    assert [n["seq"] for n in notes] == seqs == sorted(seqs)
    assert [n["data"]["text"] for n in notes] == [f"clock checked {i}" for i in range(5)]
    assert all(not n["replayed"] and n["kind"] == "note" and n["data"]["author"] == "tech" for n in notes)
    assert len({n["id"] for n in notes}) == 5
    assert notes[0]["ts"][-6] in "+-"  # ISO 8601 with an offset
    # the spool empties once the broker acknowledged: a later heartbeat says so
    n = len(watcher.on("heartbeat"))
    watcher.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/heartbeat")][n:]
                     and [m for m in ms if m.topic.endswith("/heartbeat")][-1].json["spool"]["events"] == 0)
    assert agent.call("status")["broker"]["connected"]


def test_outage_replays_in_order(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "b", persistence=True).start()
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "room101.sock")
    try:
        with Watcher(broker.port, persistent=True) as w:
            agent.start()
            w.wait_for(_status(w, "online"))
            before = agent.call("note", text="before")["seq"]
            w.wait_for(lambda ms: [m for m in ms if "/event/note" in m.topic])
            broker.stop()
            offline = [agent.call("note", text=f"offline {i}")["seq"] for i in range(20)]
            st = agent.call("status")
            assert not st["broker"]["connected"] and st["spool"]["events"] == 20
            broker.start()
            notes = w.wait_for(lambda ms: (e := [m.json for m in ms if "/event/note" in m.topic])[20:] and e,
                               timeout=20)
        got = [n["seq"] for n in notes]
        assert got[0] == before
        replayed = [n for n in notes if n["seq"] in offline]
        assert [n["seq"] for n in replayed] == offline  # every one, in order
        assert all(n["replayed"] for n in replayed)
        assert not notes[0]["replayed"]
    finally:
        agent.kill()
        broker.kill()


def test_sigkill_restart_loses_nothing(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "b", persistence=True).start()
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "room101.sock")
    try:
        with Watcher(broker.port, persistent=True) as w:
            agent.start()
            w.wait_for(_status(w, "online"))
            broker.stop()  # events pile up in the spool ...
            made = [agent.call("note", text=f"n{i}")["seq"] for i in range(30)]
            agent.kill()   # ... and the agent dies with all of them unsent
            broker.start()
            agent.start()
            more = agent.call("note", text="after restart")["seq"]
            assert more > made[-1]  # seq continues across the crash
            notes = w.wait_for(lambda ms: (e := [m.json for m in ms if "/event/note" in m.topic])[30:] and e,
                               timeout=20)
        seqs = [n["seq"] for n in notes]
        assert sorted(set(seqs)) == made + [more]
        assert seqs == sorted(seqs)  # delivered in order
    finally:
        agent.kill()
        broker.kill()


def test_spool_bound_keeps_evidence(make_agent, broker: Broker, watcher: Watcher) -> None:
    agent = make_agent(max_bytes=65536).start()
    watcher.wait_for(_status(watcher, "online"))
    broker.kill()
    for i in range(200):
        agent.call("note", text="x" * 400)
    st = agent.call("status")
    assert st["spool"]["events"] == 200  # every note kept, though over the bound
    assert st["spool"]["overfull"] is True
    assert any("spool" in a for a in st["alerts"]) and st["state"] == "alert"


def test_mqtt_command_request_response(make_agent, broker: Broker, watcher: Watcher) -> None:
    import json

    import paho.mqtt.publish as publish

    make_agent().start()
    watcher.wait_for(_status(watcher, "online"))
    base = "exam/site01/room101"
    publish.single(f"{base}/cmd/note", json.dumps({"id": "r1", "args": {"text": "from the office"}}),
                   hostname="127.0.0.1", port=broker.port, qos=1)
    publish.single(f"{base}/cmd/ping", b"{not json", hostname="127.0.0.1", port=broker.port, qos=1)
    publish.single(f"{base}/cmd/sim", json.dumps({"id": "r3", "args": {"words": ["alarm", "on"]}}),
                   hostname="127.0.0.1", port=broker.port, qos=1)
    publish.single("exam/site01/broadcast/cmd/ping", json.dumps({"id": "all"}),
                   hostname="127.0.0.1", port=broker.port, qos=1)
    replies = watcher.wait_for(lambda ms: (r := [m.json for m in ms if "/reply/" in m.topic])[3:] and r)
    by_id = {r["request_id"]: r for r in replies}
    assert by_id["r1"]["ok"] and by_id["r1"]["seq"] >= 1
    assert by_id[None]["ok"] is False and "JSON" in by_id[None]["error"]
    assert by_id["r3"]["ok"] is False and "not accepted over MQTT" in by_id["r3"]["error"]
    assert by_id["all"]["ok"] and by_id["all"]["pong"]
    watcher.wait_for(lambda ms: [m for m in ms if m.json and m.json.get("data", {}).get("text") == "from the office"])
    cmds = watcher.wait_for(lambda ms: (c := [m.json for m in ms if "/event/command" in m.topic])[3:] and c)
    assert {c["data"]["command"] for c in cmds} == {"note", "ping", "sim"}


def test_note_never_carries_a_full_id_number(make_agent, watcher: Watcher) -> None:
    agent = make_agent().start()
    watcher.wait_for(_status(watcher, "online"))
    agent.call("note", text="seat 12 (410105199001011234) felt ill, left at 9:40")
    note = watcher.wait_for(lambda ms: [m for m in ms if "/event/note" in m.topic])[0]
    assert note.json["data"]["text"] == "seat 12 (410105********1234) felt ill, left at 9:40"
    assert b"199001011234" not in note.raw
