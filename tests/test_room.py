"""The whole room, end to end: the real agent process, a real Mosquitto, every device simulated.

Driven with the commands a person uses (`sim ...` and the proctors' check-in
commands on the control socket, `examroom-agent ...` on the command line) and
judged only by what the aggregator receives over MQTT, what the agent logs and
the record files it writes. Waits are on messages (watcher.wait_for), never on
sleeps; things with no event of their own (a card lifted off the reader, a
metal alarm counted) are waited for in the heartbeat's device details.
"""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.localbroker import Broker
from tests.agentproc import AgentProcess
from tests.mqttwatch import Message, Watcher
from tests.room_config import Room, room_config

BASE = "exam/site01/room101"
NOT_IN_ROOM_ID = "110105199003070017"  # valid check digit, another room's candidate
CLI = Path(sys.executable).parent / "examroom-agent"


def is_hb(m: Message) -> bool:
    return m.topic == f"{BASE}/heartbeat" and m.json is not None


class Door:
    """The proctors at the door: every step returns when the room has seen it."""

    def __init__(self, agent: AgentProcess, w: Watcher, room: Room) -> None:
        self.agent, self.w, self.room = agent, w, room
        self.cards_read = 0
        self.alarms = 0
        self.rechecks = 0
        self.released: dict[str, float] = {}  # button -> when the sim lets go of it

    def do(self, cmd: str, ok: bool = True, **args) -> dict:
        reply = self.agent.call(cmd, **args)
        assert reply.get("ok") is ok, (cmd, args, reply)
        return reply

    def sim(self, *words: str) -> dict:
        return self.do("sim", words=list(words))

    def next_event(self, kind: str, action, timeout: float = 10) -> dict:
        n = len(self.w.events(kind))
        action()
        return self.w.wait_for(lambda _: len(self.w.events(kind)) > n and self.w.events(kind)[n], timeout)["data"]

    def heartbeat_shows(self, device: str, pred, timeout: float = 10) -> None:
        self.w.wait_for(lambda ms: any(pred(m.json["devices"][device]) for m in ms if is_hb(m)), timeout)

    def tap_id(self, id_number: str, name: str = "") -> dict:
        """Place the ID card, wait for the verdict, lift it and wait until the reader saw it go."""
        data = self.next_event("checkin", lambda: self.sim("card", id_number, *([name] if name else [])))
        self.cards_read += 1
        self.sim("idcard", "remove")
        n = self.cards_read
        self.heartbeat_shows("idcard", lambda d: d["cards_read"] == n and not d["card_present"])
        return data

    def tap_uid(self, uid: str) -> dict:
        data = self.next_event("checkin", lambda: self.sim("card", uid))
        self.sim("campus-card", "remove")
        return data

    def alarm(self) -> None:
        self.alarms += 1
        n = self.alarms
        self.sim("alarm", "on")
        self.heartbeat_shows("detector", lambda d: d["alarms"] == n and d["alarm_active"])
        self.sim("alarm", "off")
        self.heartbeat_shows("detector", lambda d: d["alarms"] == n and not d["alarm_active"])

    def press(self, button: str) -> None:
        """A sim press holds the button `hold_s` and lets go on a timer; nothing reports the
        release, so a second press of the same button is paced (a held button has no edge)."""
        time.sleep(max(0.0, self.released.get(button, 0.0) - time.monotonic()))
        hold = self.sim("button", button)["result"]["hold_s"]
        self.released[button] = time.monotonic() + 2 * hold + 0.05

    def recheck(self) -> None:
        self.rechecks += 1
        n = self.rechecks
        self.press("recheck")
        self.heartbeat_shows("detector", lambda d: d["presses"]["recheck"] == n)

    def clear(self) -> dict:
        return self.next_event("sweep", lambda: self.press("clear"))


@pytest.fixture(scope="module")
def checkin_run(tmp_path_factory):
    """One exam session's entry, run once; the tests below judge it from different sides."""
    tmp = tmp_path_factory.mktemp("checkin")
    broker = Broker(tmp / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp, broker.port, entry_in=1.5, start_in=3, cutoff_after=8, end_after=11,
                               heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            out = {"room": room, "w": w, "replies": {}}
            _entry(Door(agent, w, room), room, out)
            agent.terminate()
            out["log"] = agent.logs()
            out["messages"] = list(w.messages)
            yield out
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()


def _entry(door: Door, room: Room, out: dict) -> None:
    c = room.candidates
    seen = out.setdefault("checkin", {})
    room.wait_until("entry_opens")  # the agent runs before entry opens: its report is complete
    for seat in ("1", "2"):
        seen[seat] = door.tap_id(c[seat].id_number, c[seat].name)
        out.setdefault("sweeps", {})[seat] = door.clear()
    seen["5"] = door.tap_id(c["5"].id_number, c["5"].name)
    door.alarm()
    door.recheck()
    out["sweeps"]["5"] = door.clear()
    seen["7"] = door.tap_id(c["7"].id_number, c["7"].name)
    door.alarm()
    out["sweeps"]["7"] = door.clear()
    seen["8"] = door.tap_uid(c["8"].card_uids[0])
    out["sweeps"]["8"] = door.clear()
    seen["dup"] = door.tap_id(c["1"].id_number, c["1"].name)
    seen["other"] = door.tap_id(NOT_IN_ROOM_ID, "外考生")
    seen["9"] = door.next_event("checkin", lambda: door.do(
        "checkin_admit", id_last6=c["9"].id_number[-6:], proctor="proctor-A"))
    out["sweeps"]["9"] = door.clear()
    seen["10"] = door.tap_id(c["10"].id_number, c["10"].name)
    seen["10-suspect"] = door.next_event("checkin", lambda: door.do(
        "checkin_suspect", seat="10", proctor="proctor-A",
        reason=f"photo unclear: {c['10'].name} {c['10'].id_number}"))
    seen["10-confirm-A"] = door.next_event("suspect_confirm", lambda: door.do(
        "checkin_confirm", seat="10", proctor="proctor-A"))
    out["replies"]["same-proctor"] = door.do("checkin_confirm", ok=False, seat="10", proctor="proctor-A")
    seen["10-admitted"] = door.next_event("checkin", lambda: door.do(
        "checkin_confirm", seat="10", proctor="proctor-B"))
    out["sweeps"]["10"] = door.clear()
    print(f"entry done {room.times['cutoff'] - time.time():.1f} s before the cutoff")
    assert time.time() < room.times["cutoff"], "entry took longer than the compressed timeline allows"
    w = door.w
    out["attendance"] = w.wait_for(lambda _: w.events("attendance"), timeout=room.times["cutoff"] - time.time() + 5)[0]["data"]
    seen["12-late"] = door.tap_id(c["12"].id_number, c["12"].name)
    out["record"] = w.wait_for(lambda _: w.events("session_record"),
                               timeout=room.times["end"] - time.time() + 5)[0]["data"]


def test_checkin_run(checkin_run):
    room: Room = checkin_run["room"]
    ck, sw, c = checkin_run["checkin"], checkin_run["sweeps"], room.candidates
    for seat in ("1", "2", "5", "7", "10"):
        d = ck[seat]
        assert (d["verdict"], d["seat"], d["method"], d["device"]) == ("admitted", seat, "card", "idcard"), d
        assert d["ticket"] == c[seat].ticket and d["id_masked"] == c[seat].id_masked
        assert d["session"] == room.session and d["reentry"] is False and d["sweep_required"] is True
        assert d["snapshot"]["file"].endswith(f"admitted-{room.session}-{seat}.jpg")
        assert (room.snapshot_dir / d["snapshot"]["file"]).is_file()
    assert {ck[s]["seatplan_sha256"] for s in ck if "verdict" in ck[s]} == {hashlib.sha256(room.seatplan.read_bytes()).hexdigest()}
    assert [sw[s]["result"] for s in ("1", "2", "8", "9")] == ["clear"] * 4
    assert (sw["5"]["result"], sw["5"]["alarms"], sw["5"]["rechecks"]) == ("alarm_cleared_after_recheck", 1, 1)
    assert (sw["7"]["result"], sw["7"]["medical_metal_exempt"]) == ("alarm_expected_medical", True)
    assert c["7"].medical_metal and not sw["5"]["medical_metal_exempt"]
    assert all(sw[s]["seat"] == s and sw[s]["unassociated"] is False for s in sw)
    assert (ck["8"]["verdict"], ck["8"]["seat"], ck["8"]["method"], ck["8"]["uid"], ck["8"]["device"]) == (
        "admitted", "8", "uid", c["8"].card_uids[0], "campus-card")
    assert (ck["dup"]["verdict"], ck["dup"]["seat"], ck["dup"]["status"]) == ("duplicate", "1", "admitted")
    other = ck["other"]
    assert (other["verdict"], other["seat"], other["ticket"]) == ("not_in_room", None, None)
    assert other["id_masked"] == "110105********0017"
    m = ck["9"]
    assert (m["verdict"], m["seat"], m["method"], m["lookup"], m["proctor"], m["device"]) == (
        "admitted", "9", "manual", "id_last6", "proctor-A", "manual")
    sus = ck["10-suspect"]
    assert (sus["verdict"], sus["seat"], sus["proctor"]) == ("suspect", "10", "proctor-A")
    assert sus["snapshot"]["sha256"] and c["10"].name not in sus["reason"]
    assert c["10"].id_number not in sus["reason"] and "photo unclear" in sus["reason"]
    first = ck["10-confirm-A"]
    assert (first["seat"], first["confirmations"], first["required"], first["passed"]) == ("10", 1, 2, False)
    assert "proctor-A" in checkin_run["replies"]["same-proctor"]["error"]
    adm = ck["10-admitted"]
    assert (adm["verdict"], adm["lookup"], adm["proctors"]) == ("admitted", "suspect_confirm", ["proctor-A", "proctor-B"])
    confirms = [e["data"] for e in checkin_run["w"].events("suspect_confirm")]
    assert [(d["proctor"], d["confirmations"], d["passed"]) for d in confirms] == [
        ("proctor-A", 1, False), ("proctor-B", 2, True)]

    present = {"1", "2", "5", "7", "8", "9", "10"}
    absent = [s for s in c if s not in present]
    att = checkin_run["attendance"]
    assert (att["session"], att["room"], att["total"], att["present"]) == (room.session, "room101", 30, 7)
    assert att["absent"] == absent and att["late_refused"] == [] and att["suspects"] == []
    # seat 9 (id_last6) and seat 10's admission signed by two proctors both count as manual
    assert att["pending_sweep"] == [] and att["complete"] is True and att["manual_admissions"] == 2
    assert att["cutoff"] == pytest.approx(room.times["cutoff"], abs=0.01)
    late = ck["12-late"]
    assert (late["verdict"], late["seat"]) == ("late_refused", "12")
    assert late["cutoff"] == att["cutoff"] and late["time"] >= late["cutoff"]

    r = checkin_run["record"]
    assert (r["session"], r["room"], r["total"], r["present"], r["complete"]) == (room.session, "room101", 30, 7, True)
    assert r["absent"] == absent and r["late_refused"] == ["12"] and r["manual_admissions"] == 2
    assert r["checkin_events"] == len(checkin_run["w"].events("checkin"))
    assert r["sweeps"]["closed"] == 7 and r["sweeps"]["with_alarm"] == 2
    assert r["sweeps"]["medical_metal_exempt"] == 1 and r["sweeps"]["not_cleared"] == 0
    assert r["sweeps"]["unassociated"] == 0 and r["incidents"] == 0
    assert sorted(f["file"] for f in r["files"]) == [f"{room.session}-room101.csv", f"{room.session}-room101.json"]
    for f in r["files"]:
        assert hashlib.sha256((room.record_dir / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    record = json.loads((room.record_dir / f"{room.session}-room101.json").read_text(encoding="utf-8"))
    assert "410105********001X" in json.dumps(record, ensure_ascii=False)  # seat 1, masked
    raw_csv = (room.record_dir / f"{room.session}-room101.csv").read_bytes()
    assert raw_csv.startswith(b"\xef\xbb\xbf")  # BOM: opens in Excel
    rows = list(csv.DictReader(raw_csv.decode("utf-8-sig").splitlines()))
    cand_rows = {row["seat"]: row for row in rows if row["record"] == "candidate"}
    assert len(cand_rows) == 30 and cand_rows["12"]["status"] == "absent" and cand_rows["9"]["method"] == "manual"
    assert cand_rows["1"]["name"] == c["1"].name  # the local record card carries names


def _id_forms(id_number: str) -> list[str]:
    """The number as text, and as the UCS-2 hex a card frame dump would show."""
    ucs2 = id_number.encode("utf-16-le").hex()
    return [id_number, id_number.lower(), ucs2, ucs2.upper()]


def test_no_personal_data_leaves_the_box(checkin_run):
    """Names and full ID numbers never reach MQTT nor the agent's log, even at DEBUG."""
    room: Room = checkin_run["room"]
    log = checkin_run["log"]
    assert " DEBUG " in log and "card read" in log  # the log really was at DEBUG during the taps
    texts = {f"log {room.config.with_suffix('.log')}": log}
    for i, m in enumerate(checkin_run["messages"]):
        texts[f"message {i} {m.topic}"] = m.raw.decode("utf-8", "replace") + "\n" + (
            json.dumps(m.json, ensure_ascii=False) if m.json is not None else "")
    assert len(texts) > 50
    secrets = {f"ID of seat {c.seat}": _id_forms(c.id_number) for c in room.candidates.values()}
    secrets["ID of the other room's candidate"] = _id_forms(NOT_IN_ROOM_ID)
    secrets.update({f"name of seat {c.seat}": [c.name] for c in room.candidates.values()})
    leaks = [(what, where) for where, text in texts.items() for what, forms in secrets.items()
             if any(f in text for f in forms)]
    assert leaks == []
    masked = [m for m in checkin_run["messages"] if "410105********001X" in m.raw.decode()]
    assert masked, "seat 1's masked ID number should be in its checkin events"
