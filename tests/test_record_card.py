"""The room record card (考场记事卡): written beside the record files at the session's end, listed
in the record's ``files`` with its SHA-256, printed again by ``examroom-agent record card``.

In-process on the check-in station's fixtures, then one exam session of a real agent (sim
devices, a real Mosquitto) where a proctor records an escalated violation with the CLI and
the site sees the incident and the alert, and the card of the record names the violation."""
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devkit.localbroker import Broker
from examroom.agent.config import load
from examroom.agent.monitors import ClockWatch
from examroom.agent.record_card import RecordCard
from examroom.agent.violations import Violations, load_codes
from examroom.contract.vocabulary import Incident, IncidentType
from examroom.drivers.events import ClockState
from tests.agentproc import AgentProcess, write_config
from tests.checkin_station import FULL_ID, ID, MATH_END, MATH_START, NAMES, card, kinds, ts
from tests.mqttwatch import Watcher
from tests.room_config import TOPICS, room_config, wait_kind, wait_status

EXTERNAL = re.compile(r"<script|<link|<img|<iframe|@import|url\(|src=|https?://", re.I)


def session_with_everything(st, clock):
    """Seats 1-3 in (3 late), 4 refused late, 5 never came; a violation of each kind; an audio
    loss and a clock step on the record."""
    v = Violations(load_codes(), lambda k, d: None, clock, st.scrub, str, ZoneInfo("Asia/Shanghai"))
    v.attach(st.book)
    st.on_card(card(1))
    st.manual_admit(seat=2, proctor="P1")
    clock.t = MATH_START + 10 * 60
    st.on_card(card(3))
    clock.t = ts("2026-06-07T09:20:00")
    st.on_card(card(4))  # late_refused
    st.book.add_incident(Incident(IncidentType.AUDIO_LOSS, {
        "device": "broadcast", "cause": "silence", "start": "2026-06-07T09:30:00.000+08:00",
        "end": "2026-06-07T09:30:03.500+08:00", "duration_s": 3.5}))
    ClockWatch(lambda k, d: None, clock, st.book.add_incident).on_clock(
        ClockState("clock", synced=True, offset_s=0.01, source="ntp", stepped_s=2.0, ts=clock.t))
    clock.t = ts("2026-06-07T09:40:12")
    v.record("1", "W04", "P1", "proctor", note=f"与 {NAMES[2]} 交谈")
    v.record("3", "Z04", "P2", "proctor")


@pytest.fixture
def written(make, clock, emitted, tmp_path):
    """The session's record, with the card as the daemon wires it (for the config of room 12)."""
    cfg = load(write_config(tmp_path, 1883, room="12"))
    st = make()
    RecordCard.for_config(cfg).attach(st.book)
    session_with_everything(st, clock)
    st.book.tick(MATH_END)
    (rec,) = kinds(emitted, "session_record")
    return cfg, rec, tmp_path / "records"


def test_the_card_is_written_beside_the_record_and_listed_with_its_sha256(written):
    _, rec, records = written
    assert [f["file"] for f in rec["files"]] == ["math-am-12.json", "math-am-12.csv", "math-am-12.html"]
    for f in rec["files"]:
        assert hashlib.sha256((records / f["file"]).read_bytes()).hexdigest() == f["sha256"], f["file"]


def test_the_card_has_the_cards_fields_and_nothing_personal(written):
    _, rec, records = written
    html = (records / "math-am-12.html").read_text(encoding="utf-8")
    for heading in ("考场记事卡", "考点", "考场", "科目", "考试时间", "应考人数", "实考人数", "缺考考生",
                    "违纪/违规", "备注", "监考员签名"):
        assert heading in html, heading
    assert "Test site（site01）" in html and "测试考点 第101考场（12）" in html and "Maths" in html
    assert "2026-06-07 09:00–11:00" in html  # the exam's zone, whatever this machine's is
    assert "<th>应考人数</th><td>5</td>" in html and "<th>实考人数</th><td>3</td>" in html
    absent = html.split('id="absent"')[1].split("</table>")[0]
    assert rec["absent"] == ["4", "5"]
    assert "<td>4</td><td>20260004</td>" in absent and "<td>5</td><td>20260005</td>" in absent
    rows = html.split('id="violations"')[1].split("</table>")[0]
    assert "<td>09:40:12</td><td>1</td><td>20260001</td><td>W04</td>" in rows and "交头接耳" in rows
    assert "<td>Z04</td>" in rows and "已报告" in rows and "与 *** 交谈" in rows
    remarks = html.split('id="remarks"')[1].split("</ul>")[0]
    assert "统一音源中断 09:30:00–09:30:03（3.5 秒，设备 broadcast，无声）" in remarks
    assert "时钟跳变" in remarks and "+2.000 秒" in remarks
    assert "迟到未准入考场：4号（20260004）" in remarks and "人工核验入场 1 人" in remarks
    assert "3号座位违规（Z04）已即时报告考务办公室 09:40:12" in remarks
    assert html.count("<span></span>") == 3  # two proctors sign, and the date
    for name in NAMES.values():
        assert name not in html
    assert not FULL_ID.search(html) and ID[1][-4:] not in html  # not even a masked ID number
    assert not EXTERNAL.search(html)  # prints the same anywhere: inline CSS, nothing fetched


def test_times_are_in_the_exams_zone(written):
    cfg, _, records = written
    doc = json.loads((records / "math-am-12.json").read_text(encoding="utf-8"))
    utc = RecordCard("site", "room", ZoneInfo("UTC")).html(doc)
    assert "2026-06-07 01:00–03:00" in utc and "<td>01:40:12</td>" in utc and "UTC 时区" in utc
    assert "Asia/Shanghai 时区" in RecordCard.for_config(cfg).html(doc)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)


def test_record_card_prints_the_card_again_from_the_json(written, tmp_path):
    cfg, rec, records = written
    card_file = records / "math-am-12.html"
    listed = {f["file"]: f["sha256"] for f in rec["files"]}["math-am-12.html"]
    done = cli(Path(cfg.file), "record", "card", "math-am")
    assert done.returncode == 0 and "already this card" in done.stdout and listed in done.stdout, done.stderr
    out = tmp_path / "again.html"
    done = cli(Path(cfg.file), "record", "card", "math-am", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == card_file.read_bytes()
    card_file.unlink()  # the paper copy and the file lost: the card comes back, byte for byte
    assert cli(Path(cfg.file), "record", "card", "math-am").returncode == 0
    assert hashlib.sha256(card_file.read_bytes()).hexdigest() == listed
    card_file.write_text("changed", encoding="utf-8")  # the listed card is evidence: never overwritten
    done = cli(Path(cfg.file), "record", "card", "math-am")
    assert done.returncode == 1 and "--out" in done.stderr and card_file.read_text() == "changed"
    done = cli(Path(cfg.file), "record", "card", "eng-pm")
    assert done.returncode == 1 and "no record of session eng-pm" in done.stderr
    assert cli(Path(cfg.file), "record", "card", "../x").returncode == 2


def status_index(w: Watcher, start: int, pred) -> int | None:
    """Where the first retained status from ``start`` on that satisfies ``pred`` is."""
    return next((i for i, m in enumerate(w.messages[start:], start)
                 if m.topic == TOPICS.status and m.json is not None and pred(m.json)), None)


def violation_alert(status: dict) -> bool:
    return any("violation Z04 at seat 2" in a for a in status.get("alerts", []))


def test_an_exam_session_end_to_end(tmp_path):
    """A proctor records an escalated violation with the CLI during the exam: the site gets the
    violation, the incident at once and the alert on the room's status; at the end the alert
    goes, the incident ends, and the record's card lists the violation."""
    broker = Broker(tmp_path / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp_path, broker.port, start_in=1.0, cutoff_after=3, end_after=8, heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            wait_status(w, 0, "online")
            c = room.candidates
            assert agent.call("checkin_admit", seat="2", proctor="P1")["ok"]
            mark = len(w.messages)
            done = cli(room.config, "violation", "--seat", "2", "--code", "z04", "--by", "P01",
                       "--note", f"{c['2'].name} 的手机")
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("VIOLATION Z04 (") and "reported to the site office" in done.stdout
            assert c["2"].name not in done.stdout
            ev = wait_kind(w, mark, "violation")
            assert (ev["seat"], ev["code"], ev["escalated"], ev["by"]) == ("2", "Z04", True, "P01")
            assert c["2"].name not in ev["note"] and "***" in ev["note"]
            inc = wait_kind(w, mark, "incident", lambda d: d["type"] == "violation")
            assert (inc["phase"], inc["seat"], inc["code"], inc["start"]) == ("started", "2", "Z04", ev["time"])
            alert_at = w.wait_for(lambda _: status_index(w, mark, violation_alert))
            assert w.messages[alert_at].json["state"] == "alert"
            bad = cli(room.config, "violation", "--seat", "2", "--code", "Z4", "--by", "P01")
            assert bad.returncode == 1 and "closest: Z04" in bad.stderr

            rec = wait_kind(w, mark, "session_record", timeout=room.times["end"] - time.time() + 10)
            ended = wait_kind(w, mark, "incident", lambda d: d["type"] == "violation" and d["phase"] == "ended")
            assert ended["start"] == inc["start"] and ended["duration_s"] > 0
            w.wait_for(lambda _: status_index(w, alert_at + 1, lambda s: not violation_alert(s)))
            assert [v["code"] for v in rec["violations"]] == ["Z04"]
            assert [i["type"] for i in rec["incidents"]].count("violation") == 1
            files = {f["file"]: f["sha256"] for f in rec["files"]}
            card_file = room.record_dir / f"{room.session}-room101.html"
            assert hashlib.sha256(card_file.read_bytes()).hexdigest() == files[card_file.name]
            html = card_file.read_text(encoding="utf-8")
            assert "<td>Z04</td>" in html and "已报告" in html and "郑州一中考点 第101考场" in html
            assert not any(x.name in html for x in c.values())
            assert agent.terminate() == 0
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()
