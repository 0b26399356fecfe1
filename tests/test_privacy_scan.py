"""A privacy scan of a whole simulated exam session, run by the real agent process.

Proctors do what proctors do: candidates tap ID cards (one from another room) and a campus
card, a proctor signs with a hyphenated ID number and with a name in pinyin (both refused),
a suspect is marked with a reason that reads out a split ID number, a name in pinyin and a
name with a space, notes carry the same forms (one from the site, over MQTT), a snapshot is
taken with a tag; the session ends and writes its record. Then everything the box let out
or left behind is read:

* every MQTT payload the aggregator saw, but the commands the site itself published;
* the agent's log (at DEBUG);
* the spool: every row of every table, and the raw bytes of the database files;
* the check-in journal;
* the session record files (JSON, CSV), the box's own printed record;
* the name of every file under the agent's state directories (records, snapshots, spool,
  journal, socket, log).

Full ID numbers, in any form (split, full-width, lower-case x, UCS-2 hex), may be nowhere.
Names, in any form (as written, spaced, pinyin either order), may be nowhere but the record
files, which carry them by design like the seat plan they come from.

The detectors here are written apart from the scrubber (only pypinyin is shared), so a rule
missing from the scrubber is not missing from the scan too.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
import unicodedata
from pathlib import Path

import pytest
from pypinyin import lazy_pinyin

from devkit.localbroker import Broker
from tests.agentproc import AgentProcess
from tests.checkin_station import FULL_ID
from tests.mqttwatch import Watcher
from tests.room_config import TOPICS, Aggregator, Door, Room, room_config

NOT_IN_ROOM_ID = "110105199003070017"  # valid check digit, another room's candidate
NOT_IN_ROOM_NAME = "外考生"


def fw(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def split4(n: str, sep: str = " ") -> str:
    return sep.join(n[i:i + 4] for i in range(0, len(n), 4))


def pinyin(name: str, given_first: bool = False, sep: str = " ") -> str:
    syl = [s.capitalize() for s in lazy_pinyin(name)]
    return sep.join(syl[1:] + syl[:1] if given_first else syl)


@pytest.fixture(scope="module")
def exam_day(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    broker = Broker(tmp / "broker").start()
    agent = None
    try:
        with Watcher(broker.port) as w:
            room = room_config(tmp, broker.port, entry_in=1.5, start_in=3, cutoff_after=8, end_after=11,
                               heartbeat_s=0.2)
            agent = AgentProcess(room.config, room.socket).start()
            site = Aggregator(broker.port, w)
            out = {"room": room, "tmp": tmp, "w": w, "replies": {}, "events": {}}
            try:
                _session(Door(agent, w, room), site, room, out)
            finally:
                site.close()
            agent.terminate()
            out["log"] = agent.logs()
            out["messages"] = list(w.messages)
            yield out
    finally:
        if agent is not None:
            agent.kill()
        broker.kill()


def _session(door: Door, site: Aggregator, room: Room, out: dict) -> None:
    c, ev, replies = room.candidates, out["events"], out["replies"]
    room.wait_until("entry_opens")
    ev["1"] = door.tap_id(c["1"].id_number, c["1"].name)  # 41010520090202001X: an X check character
    door.clear()
    ev["2"] = door.tap_id(c["2"].id_number, c["2"].name)
    ev["8"] = door.tap_uid(c["8"].card_uids[0])
    ev["other"] = door.tap_id(NOT_IN_ROOM_ID, NOT_IN_ROOM_NAME)
    # signatures that would put a number or a name on the record and the aggregator
    for what, sig in (("hyphenated id", "-".join((c["3"].id_number[:6], c["3"].id_number[6:14],
                                                     c["3"].id_number[14:]))),
                      ("split id", f"P3 {split4(c['3'].id_number)}"),
                      ("pinyin name", pinyin(c["3"].name))):
        replies[what] = door.agent.call("checkin_admit", seat="3", proctor=sig)  # judged by the tests
    ev["14"] = door.next_event("checkin", lambda: door.do("checkin_admit", seat="14", proctor="proctor-A"))
    reason = (f"photo unclear: {split4(c['10'].id_number)}, looks like {pinyin(c['11'].name)} "
              f"or {' '.join(c['13'].name)}; card {c['10'].id_number.lower()}x")
    ev["10-suspect"] = door.next_event("checkin", lambda: door.do(
        "checkin_suspect", seat="10", proctor="proctor-A", reason=reason))
    door.next_event("suspect_confirm", lambda: door.do("checkin_confirm", seat="10", proctor="proctor-A"))
    ev["10-admitted"] = door.next_event("checkin", lambda: door.do("checkin_confirm", seat="10", proctor="proctor-B"))
    ev["note"] = door.next_event("note", lambda: door.do(
        "note", text=(f"{c['4'].name[0]}\u3000{c['4'].name[1]} ({fw(c['4'].id_number)}) asked for water; "
                      f"{pinyin(c['5'].name, given_first=True)} showed ID{c['5'].id_number}abc; "
                      f"{pinyin(c['6'].name, sep='').lower()} has "
                      f"{c['6'].id_number[:6]}-{c['6'].id_number[6:14]}-{c['6'].id_number[14:]}"),
        author=f"proctor of {c['7'].name[0]} {c['7'].name[1]}"))
    n = len(door.w.events("note"))
    reply = site.call("note", {"text": f"site: {split4(c['9'].id_number, '.')} is {pinyin(c['9'].name, sep='-')}",
                               "author": pinyin(c["9"].name, given_first=True)})
    assert reply["ok"] is True, reply
    ev["site-note"] = door.w.wait_for(lambda _: len(door.w.events("note")) > n and door.w.events("note")[n])["data"]
    ev["snapshot"] = door.do("snapshot", tag="door-2")
    assert time.time() < room.times["cutoff"], "the session's entry took longer than its timeline"
    w = door.w
    ev["record"] = w.wait_for(lambda _: w.events("session_record"),
                              timeout=room.times["end"] - time.time() + 8)[0]["data"]


# -- detectors, independent of the scrubber --------------------------------------------------

_ESC = re.compile(r"\\u([0-9a-fA-F]{4})")
_SEPS = re.compile(r"[\s\-\u2010-\u2015\u2212.\u00b7\u2022\u30fb_\u200b\u00ad\ufeff]+")


def readable(text: str) -> str:
    """What a person reads in ``text``: JSON escapes decoded, full-width forms plain."""
    return unicodedata.normalize("NFKC", _ESC.sub(lambda m: chr(int(m.group(1), 16)), text))


def id_leaks(text: str, ids: dict[str, str]) -> list[str]:
    """The numbers ``text`` shows, by whom: as typed, split, full-width, lower-case x, or as
    the UCS-2 hex of a card frame; and any valid-looking 18-character number at all."""
    flat = _SEPS.sub("", readable(text)).upper()
    found = [who for who, n in ids.items()
             if n in flat or n.encode("utf-16-le").hex() in text.lower()]
    found += [f"unknown number {m.group(0)[:6]}..." for m in FULL_ID.finditer(readable(text))
              if m.group(0).upper() not in ids.values()]
    return found


def _pinyin_forms(name: str) -> list[re.Pattern]:
    syl = lazy_pinyin(name)
    sep = r"[\s\-_.,'\u00b7]*"
    return [re.compile(rf"(?<![a-z]){sep.join(order)}(?![a-z])")
            for order in (syl, syl[1:] + syl[:1])]


def name_leaks(text: str, names: dict[str, str]) -> list[str]:
    t = readable(text)
    flat = _SEPS.sub("", t)
    latin = "".join(ch for ch in unicodedata.normalize("NFKD", t) if not unicodedata.combining(ch)).lower()
    return [who for who, name in names.items()
            if name in flat or any(p.search(latin) for p in _pinyin_forms(name))]


# -- what the box let out and left behind ---------------------------------------------------

def _spool_texts(path: Path) -> dict[str, str]:
    texts = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            for i, row in enumerate(con.execute(f'SELECT * FROM "{t}"')):
                cells = []
                for v in row:
                    if isinstance(v, bytes):
                        v = v.decode("utf-8", "replace")
                    if isinstance(v, str):
                        try:
                            v = json.dumps(json.loads(v), ensure_ascii=False)
                        except ValueError:
                            pass
                    cells.append(str(v))
                texts[f"spool {t} row {i}"] = " | ".join(cells)
    finally:
        con.close()
    for f in path.parent.glob(path.name + "*"):  # the database, its WAL, deleted rows in free pages
        texts[f"spool file {f.name}"] = f.read_bytes().decode("utf-8", "replace")
    return texts


def artefacts(day: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(texts that must hold no name and no full ID, the record's texts: no full ID)."""
    room: Room = day["room"]
    tmp: Path = day["tmp"]
    out = {"log": day["log"]}
    for i, m in enumerate(day["messages"]):
        if m.topic.startswith(f"{TOPICS.base}/cmd/"):
            continue  # published by the site (the test's aggregator), not by the box
        out[f"mqtt {i} {m.topic}"] = m.topic + "\n" + m.raw.decode("utf-8", "replace") + "\n" + (
            json.dumps(m.json, ensure_ascii=False) if m.json is not None else "")
    out.update(_spool_texts(tmp / "room101-spool.db"))
    out["journal"] = (tmp / "room101-checkin.journal").read_text(encoding="utf-8")
    names = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_relative_to(tmp / "broker")]
    out["file names"] = "\n".join(names)
    record = {f"record {p.name}": p.read_bytes().decode("utf-8-sig", "replace")
              for p in room.record_dir.iterdir() if p.is_file() and p.suffix != ".html"}
    # the printable record card goes on paper and leaves the room: no name on it, so it is scanned
    out.update({f"card {p.name}": p.read_text(encoding="utf-8") for p in room.record_dir.glob("*.html")})
    return out, record


def test_the_scan_is_not_vacuous(exam_day):
    """The texts were there to scrub, and were scrubbed (not dropped)."""
    room: Room = exam_day["room"]
    c, ev = room.candidates, exam_day["events"]
    texts, record = artefacts(exam_day)
    assert " DEBUG " in texts["log"] and "card read" in texts["log"]
    assert sum(k.startswith("mqtt ") for k in texts) > 50 and sum(k.startswith("spool ") for k in texts) > 10
    assert texts["journal"].count("\n") > 5
    assert sorted(record) == [f"record {room.session}-room101.csv", f"record {room.session}-room101.json"]
    assert "考场记事卡" in texts[f"card {room.session}-room101.html"]
    assert any(cand.name in record[f"record {room.session}-room101.csv"] for cand in c.values())
    assert ev["snapshot"]["file"].endswith("_door-2.jpg")
    assert re.search(r"snapshots/\S+_door-2\.jpg", texts["file names"])
    assert all(r["ok"] is False and "staff number or initials" in r["error"] for r in exam_day["replies"].values())
    reason = ev["10-suspect"]["reason"]
    assert reason == f"photo unclear: {c['10'].id_masked}, looks like *** or ***; card {c['10'].id_masked}x"
    note = ev["note"]
    assert note["text"] == (f"*** ({c['4'].id_masked}) asked for water; *** showed ID{c['5'].id_masked}abc; "
                            f"*** has {c['6'].id_masked}")
    assert note["author"] == "proctor of ***"
    site_note = ev["site-note"]
    assert (site_note["text"], site_note["author"]) == (f"site: {c['9'].id_masked} is ***", "***")
    assert ev["10-admitted"]["proctors"] == ["proctor-A", "proctor-B"]


def test_no_full_id_number_anywhere(exam_day):
    room: Room = exam_day["room"]
    ids = {f"seat {s}": cand.id_number for s, cand in room.candidates.items()}
    ids["another room's candidate"] = NOT_IN_ROOM_ID
    texts, record = artefacts(exam_day)
    leaks = [(who, where) for where, text in {**texts, **record}.items() for who in id_leaks(text, ids)]
    assert leaks == []


def test_no_name_outside_the_box_s_own_record(exam_day):
    room: Room = exam_day["room"]
    names = {f"seat {s}": cand.name for s, cand in room.candidates.items()}
    names["another room's candidate"] = NOT_IN_ROOM_NAME
    texts, _ = artefacts(exam_day)
    leaks = [(who, where) for where, text in texts.items() for who in name_leaks(text, names)]
    assert leaks == []


def test_the_detectors_catch_every_form():
    """The scan's own detectors, on leaks written every way the scrubber must catch."""
    n, name = "41010520080707006X", "杨丽"
    for text in (n, n.lower(), split4(n), "-".join((n[:6], n[6:14], n[14:])), fw(n), f"ID{n}abc",
                 json.dumps(fw(n)), n.encode("utf-16-le").hex().upper(), "4101\u200b0520080707006X"):
        assert id_leaks(text, {"seat 6": n}) == ["seat 6"], text
    assert id_leaks("110105199003070017", {}) == ["unknown number 110105..."]
    for text in (name, "杨 丽", "杨\u3000丽", json.dumps(name), "Yang Li", "yangli", "Li Yang", "LI-YANG",
                 "Yáng Lì", fw("Yang Li")):
        assert name_leaks(text, {"seat 6": name}) == ["seat 6"], text
    for text in (f"{n[:6]}********{n[-4:]}", "yanglin", "Yang", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934c"):
        assert id_leaks(text, {"seat 6": n}) == [] and name_leaks(text, {"seat 6": name}) == [], text
