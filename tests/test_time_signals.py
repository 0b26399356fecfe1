"""Time signals and the room clock (docs/procedure.md): the exam signals fall due once each per
session, restarts included; the site's ``time_check`` is answered with the room clock's offset;
a proctor's ``clock confirm`` goes on the record.

In-process cases move a fake clock through a timetable; the end-to-end cases run a real agent
against a real Mosquitto, send the broadcast ``time_check`` as the site does (MQTT v5 Response
Topic and Correlation Data) and SIGKILL the agent mid-session. Every payload is validated
against the docs' schemas and scanned for the proctors' names and units.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from examroom.agent.clock_check import ClockCheck
from examroom.agent.control import CALLER, RequestError
from examroom.agent.privacy import Scrubber
from examroom.agent.proctors import Roster
from examroom.agent.schedule import parse_sessions
from examroom.agent.seatplan import SeatPlan
from examroom.agent.session_book import SessionBook
from examroom.agent.time_signals import TimeSignals, due_times
from examroom.contract.topics import Topics
from examroom.contract.vocabulary import ExamSignal
from tests.agentproc import AgentProcess, write_config
from tests.mqttwatch import Watcher
from tests.schemas import load_schemas, validator

BJ = timezone(timedelta(hours=8))
ZONE = ZoneInfo("Asia/Shanghai")
TOPICS = Topics("exam", "site01", "room101")
ROSTER = [{"id": "P01", "name": "王老师", "unit": "第一中学", "sex": "F"},
          {"id": "P02", "name": "赵老师", "unit": "第二中学", "sex": "M"}]
PRIVATE = ("王老师", "赵老师", "第一中学", "第二中学")  # never in a payload that leaves the room
ROSTER_TOML = "".join(f'\n[[proctor]]\nid = "{p["id"]}"\nname = "{p["name"]}"\nunit = "{p["unit"]}"\nsex = "{s}"\n'
                      for p, s in zip(ROSTER, ("女", "男"), strict=True))


def at(text: str) -> float:
    return datetime.fromisoformat(text + "+08:00").timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, BJ).isoformat(timespec="milliseconds")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def checked(emitted: list[tuple[str, dict]]) -> None:
    """Every payload matches its documented schema and names no proctor."""
    for kind, data in emitted:
        errors = list(validator(f"data/{kind}").iter_errors(json.loads(json.dumps(data))))
        assert errors == [], (kind, data, errors)
        text = json.dumps(data, ensure_ascii=False)
        assert not any(p in text for p in PRIVATE), text


class Desk:
    """A session book on a journal with the signals and the clock check attached, as the daemon wires them."""

    def __init__(self, tmp: Path, clock: Clock, warning_min: float = 15, sessions: list | None = None) -> None:
        self.tmp, self.clock, self.emitted = tmp, clock, []
        self.schedule = parse_sessions(sessions or [
            {"id": "math-am", "subject": "Maths", "start": "2026-06-07T09:00:00+08:00",
             "end": "2026-06-07T11:00:00+08:00"},
            {"id": "eng-pm", "subject": "English", "start": "2026-06-07T15:00:00+08:00",
             "end": "2026-06-07T17:00:00+08:00"}], "agent.toml")
        self.warning_min = warning_min
        self.start()

    def start(self) -> None:
        """(Re)start: a new book replays the journal the previous one wrote."""
        def emit(kind: str, data: dict) -> None:
            self.emitted.append((str(kind), data))

        self.book = SessionBook(self.schedule, SeatPlan.empty("101"), emit, self.clock, self.tmp / "records",
                                Scrubber(), self.tmp / "book.journal")
        TimeSignals(self.warning_min).attach(self.book)
        roster = Roster(ROSTER)
        self.check = ClockCheck(emit, self.clock, 1.0, lambda: self.ntp, lambda who: roster.signature(who, str),
                                roster.scrub, ZONE)
        self.check.attach(self.book)
        self.ntp: dict | None = None
        self.book.start()

    def tick(self, when: str) -> list[tuple[str, dict]]:
        """Move the clock, tick, and return what that tick emitted."""
        before = len(self.emitted)
        self.clock.t = at(when)
        self.book.tick(self.clock.t)
        return self.emitted[before:]

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.emitted if k == kind]


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    return Desk(tmp_path, Clock(at("2026-06-07T08:00:00")))


def test_the_vocabulary_is_the_documented_one() -> None:
    schemas = load_schemas()
    assert {s.value for s in ExamSignal} == set(schemas["data/exam_signal"]["properties"]["signal"]["enum"])
    record = schemas["data/session_record"]["properties"]["signals"]["items"]["properties"]["signal"]
    assert {s.value for s in ExamSignal} == set(record["enum"])


def test_each_signal_falls_due_once_at_its_time(desk: Desk) -> None:
    assert desk.tick("2026-06-07T08:29:59.9") == []
    for when, signal in (("2026-06-07T08:30:00", "entry"), ("2026-06-07T09:00:00", "start"),
                         ("2026-06-07T10:45:00", "end_warning")):
        [(kind, data)] = desk.tick(when)
        assert (kind, data["signal"], data["session"], data["delay_s"]) == ("exam_signal", signal, "math-am", 0.0)
        assert datetime.fromisoformat(data["at"]).timestamp() == at(when)
        assert desk.tick(when + ".4") == []  # ticked again: nothing more
    emitted = desk.tick("2026-06-07T11:00:00")
    assert [(k, d.get("signal")) for k, d in emitted] == [("exam_signal", "end"), ("session_record", None)]
    record = emitted[1][1]
    assert [s["signal"] for s in record["signals"]] == ["entry", "start", "end_warning", "end"]
    assert desk.tick("2026-06-07T12:00:00") == []
    assert [d["signal"] for d in desk.of("exam_signal")] == ["entry", "start", "end_warning", "end"]
    checked(desk.emitted)
    files = json.loads((desk.tmp / "records" / "math-am-101.json").read_text(encoding="utf-8"))
    assert [s["signal"] for s in files["signals"]] == ["entry", "start", "end_warning", "end"]
    assert "signal" in (desk.tmp / "records" / "math-am-101.csv").read_text(encoding="utf-8-sig")


def test_a_restart_sends_none_twice_and_a_missed_one_late_with_its_delay(desk: Desk) -> None:
    desk.tick("2026-06-07T09:00:00.3")
    assert [(d["signal"], d["delay_s"]) for d in desk.of("exam_signal")] == [("entry", 1800.3), ("start", 0.3)]
    desk.clock.t = at("2026-06-07T10:50:00")  # the box was off from 09:00 to 10:50
    desk.start()
    emitted = desk.tick("2026-06-07T10:50:00")
    assert [(d["signal"], d["delay_s"]) for _, d in emitted] == [("end_warning", 300.0)]
    desk.start()
    assert desk.tick("2026-06-07T10:50:01") == []
    desk.tick("2026-06-07T11:00:00")
    assert [d["signal"] for d in desk.of("exam_signal")] == ["entry", "start", "end_warning", "end"]
    [record] = desk.of("session_record")
    assert [s["delay_s"] for s in record["signals"]] == [1800.3, 0.3, 300.0, 0.0]
    checked(desk.emitted)


def test_a_session_over_before_the_agent_started_gets_no_signals(tmp_path: Path) -> None:
    desk = Desk(tmp_path, Clock(at("2026-06-07T12:00:00")))
    assert desk.tick("2026-06-07T12:00:01") == []
    assert [d["signal"] for _, d in desk.tick("2026-06-07T14:30:00")] == ["entry"]  # the next one does


def test_a_short_session_gets_its_end_warning_with_the_start_and_entry_at_start_comes_first() -> None:
    s = parse_sessions([{"id": "x", "subject": "X", "start": "2026-06-07T09:00:00+08:00",
                         "end": "2026-06-07T09:10:00+08:00", "entry_before_min": 0, "late_cutoff_min": 5}],
                       "agent.toml").sessions[0]
    assert due_times(s, 15) == [(ExamSignal.ENTRY, s.start), (ExamSignal.START, s.start),
                                (ExamSignal.END_WARNING, s.start), (ExamSignal.END, s.end)]


# -- the site's time and the proctor's confirmation ------------------------------------------

def test_time_check_answers_the_offset_and_whether_it_is_within_tolerance(desk: Desk) -> None:
    desk.clock.t = at("2026-06-07T08:45:00")
    fast = desk.check.time_check({"site_time": iso(desk.clock.t - 0.4), CALLER: "site (x)"})
    assert (fast["offset_s"], fast["clock_ok"], fast["ntp"], fast["session"]) == (0.4, True, None, "math-am")
    assert "ok" not in fast  # a reply's ok is the request's: the control socket and MQTT add it
    assert datetime.fromisoformat(fast["box_time"]).utcoffset() == timedelta(hours=8)
    desk.ntp = {"device": "clock", "kind": "clock", "state": "ok", "synced": True, "offset_s": 0.002,
                "source": "chrony:ntp1", "steps": 0}
    slow = desk.check.time_check({"site_time": datetime.fromtimestamp(desk.clock.t + 2.5, timezone.utc).isoformat()})
    assert (slow["offset_s"], slow["clock_ok"], slow["tolerance_s"]) == (-2.5, False, 1.0)
    assert slow["ntp"] == {"device": "clock", "synced": True, "offset_s": 0.002, "source": "chrony:ntp1"}
    for bad in ("2026-06-07T08:45:00", "yesterday", 1780793100, None, "2026-06-07T08:45:00+08:00" * 4):
        with pytest.raises(RequestError, match="site_time"):
            desk.check.time_check({"site_time": bad})
    assert [(d["offset_s"], d["ok"]) for d in desk.of("time_check")] == [(0.4, True), (-2.5, False)]
    desk.tick("2026-06-07T11:00:00")
    [record] = desk.of("session_record")
    assert [(c["offset_s"], c["ok"]) for c in record["clock_checks"]["time_checks"]] == [(0.4, True), (-2.5, False)]
    checked(desk.emitted)


def test_clock_confirm_signs_with_a_roster_id_and_goes_on_the_record_of_the_session_ahead(desk: Desk) -> None:
    desk.clock.t = at("2026-06-07T11:30:00")  # between sessions: the afternoon's
    done = desk.check.confirm({"by": " p01 ", "note": "王老师 and 赵老师 checked it", CALLER: "alice"})
    assert (done["session"], done["by"], done["user"]) == ("eng-pm", "P01", "alice")
    assert "王老师" not in done["note"] and "***" in done["note"]
    with pytest.raises(RequestError, match="roster"):
        desk.check.confirm({"by": "P09"})
    with pytest.raises(RequestError, match="note"):
        desk.check.confirm({"by": "P01", "note": "x" * 301})
    desk.clock.t = at("2026-06-07T18:00:00")  # after the last session: the event only
    assert desk.check.confirm({"by": "P02"})["session"] is None
    desk.tick("2026-06-07T17:00:00")
    [record] = [r for r in desk.of("session_record") if r["session"] == "eng-pm"]
    assert record["clock_checks"]["confirmations"] == [{"by": "P01", "at": done["at"]}]
    checked(desk.emitted)


def test_without_a_roster_a_signature_holding_a_name_or_id_number_is_refused() -> None:
    scrub = Scrubber(["张三"])
    assert Roster([]).signature("lw", scrub) == "lw"
    for bad in ("张三", "410105200806060353", "", "x" * 65, None):
        with pytest.raises(RequestError, match="by"):
            Roster([]).signature(bad, scrub)


# -- end to end: a real agent, a real broker ---------------------------------------------------

def _schedule(now: float, entry: float, start: float, end: float) -> str:
    return (f'[[exam]]\nid = "e2e"\nsubject = "Maths (e2e)"\nstart = "{iso(now + start)}"\nend = "{iso(now + end)}"\n'
            f"entry_before_min = {(start - entry) / 60!r}\nlate_cutoff_min = 0.02\n")


def _scan(w: Watcher) -> None:
    """Every message the site received: no proctor's name or unit, and each event valid."""
    for m in list(w.messages):
        text = m.raw.decode(errors="replace")
        assert not any(p in text for p in PRIVATE), (m.topic, text)
        if "/event/" in m.topic:
            kind = m.topic.rsplit("/", 1)[-1]
            assert list(validator(f"data/{kind}").iter_errors(m.json["data"])) == [], m


class Site:
    """The site's side of ``time_check``: a broadcast with a Response Topic, the reply read back."""

    def __init__(self, port: int) -> None:
        self.replies: list[tuple[dict, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(TOPICS.reply("site-desk"), qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.replies.append((json.loads(msg.payload), getattr(msg.properties, "CorrelationData", b"")))
            self.cond.notify_all()

    def time_check(self, site_time: str, rid: str) -> tuple[dict, bytes]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = TOPICS.reply("site-desk"), rid.encode()
        self.client.publish(TOPICS.site_broadcast.cmd("time_check"),
                            json.dumps({"id": rid, "args": {"site_time": site_time}}), qos=1, properties=props)
        with self.cond:
            assert self.cond.wait_for(lambda: any(r["request_id"] == rid for r, _ in self.replies), 10)
            return next((r, c) for r, c in self.replies if r["request_id"] == rid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_broadcast_time_check_is_answered_with_the_room_clocks_offset(make_agent, broker, watcher: Watcher):
    now = time.time()
    agent = make_agent(extra="[procedure]\nclock_tolerance_s = 1.0\n" + ROSTER_TOML
                       + '[[device]]\nkind = "clock"\nname = "clock"\nbackend = "sim"\noffset_s = 0.25\n'
                       + _schedule(now, 600, 900, 1200)).start()
    # commands are not queued for a room that is not connected: wait for its birth (sent after it subscribed)
    watcher.wait_for(lambda ms: any(m.topic.endswith("/status") and (m.json or {}).get("state") in ("online", "alert")
                                    for m in ms))
    site = Site(broker.port)
    try:
        good, corr = site.time_check(iso(time.time()), "tc-1")
        assert corr == b"tc-1" and good["ok"] is True and good["clock_ok"] is True and good["command"] == "time_check"
        assert abs(good["offset_s"]) < 0.5 and good["session"] == "e2e"
        assert good["ntp"] == {"device": "clock", "synced": True, "offset_s": 0.25, "source": "sim"}
        slow, _ = site.time_check(iso(time.time() + 5), "tc-2")  # the box is 5 s behind the site
        assert slow["ok"] is True and slow["clock_ok"] is False and -5.5 < slow["offset_s"] < -4.5
        bad, _ = site.time_check("08:45", "tc-3")
        assert bad["ok"] is False and "site_time" in bad["error"]
        for reply in (good, slow, bad):
            assert list(validator("reply").iter_errors(reply)) == []
        checks = watcher.wait_for(lambda _: len(watcher.events("time_check")) >= 2 and watcher.events("time_check"))
        assert [e["data"]["ok"] for e in checks] == [True, False]
        local = agent.call("time_check", site_time=iso(time.time()))
        assert local["error"].startswith("command 'time_check' comes only from the site")
        agent.call("note", text="marker")  # events come in seq order: once the marker is here, all are
        watcher.wait_for(lambda _: watcher.events("note"))
        assert [e["data"]["ok"] for e in watcher.events("command") if e["data"]["command"] == "time_check"] == [
            True, True, False]
        _scan(watcher)
    finally:
        site.close()


def test_signals_go_out_once_each_across_a_kill_and_clock_confirm_is_recorded(tmp_path: Path, broker,
                                                                                  watcher: Watcher):
    now = time.time()
    cfg = write_config(tmp_path, broker.port, extra="[procedure]\nend_warning_min = 0.05\n" + ROSTER_TOML
                       + _schedule(now, 3, 5, 13))  # entry +3 s, start +5 s, warning +10 s, end +13 s
    agent = AgentProcess(cfg, tmp_path / "room101.sock").start()
    cli = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "clock", "confirm", "--config", str(cfg),
                          "--by", "p02", "--note", "checked against 王老师's watch"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0 and "confirmed by P02" in cli.stdout and "session e2e" in cli.stdout, cli
    def signals() -> dict[str, dict]:
        return {e["id"]: e["data"] for e in watcher.events("exam_signal")}  # by event id: de-duplicated

    watcher.wait_for(lambda _: len(signals()) >= 2, timeout=10)
    agent.kill()  # SIGKILL right after the start signal
    while time.time() < now + 10.5:  # down while the end warning falls due
        time.sleep(0.1)
    agent = AgentProcess(cfg, tmp_path / "room101.sock").start()
    try:
        [record] = watcher.wait_for(lambda _: watcher.events("session_record"), timeout=15)
        got = sorted(signals().values(), key=lambda d: d["at"])
        assert [d["signal"] for d in got] == ["entry", "start", "end_warning", "end"]
        due = {"entry": 3, "start": 5, "end_warning": 10, "end": 13}
        for d in got:
            assert abs(datetime.fromisoformat(d["at"]).timestamp() - (now + due[d["signal"]])) < 0.01, d
        assert got[2]["delay_s"] > 0.3  # noticed only when the agent was back
        assert got[1]["delay_s"] < 2.0 and got[3]["delay_s"] < 2.0  # the agent ran then: a tick or two
        data = record["data"]
        assert [s["signal"] for s in data["signals"]] == ["entry", "start", "end_warning", "end"]
        assert [c["by"] for c in data["clock_checks"]["confirmations"]] == ["P02"]
        [confirm] = [e["data"] for e in watcher.events("clock_confirm")]
        assert confirm["session"] == "e2e" and "王老师" not in confirm["note"]
        _scan(watcher)
    finally:
        agent.kill()
