"""Evidence is kept as long as the setting says and no longer: files, snapshots, the journal."""
from __future__ import annotations

import json
import os

from examroom.agent.retention import DAY_S, Retention
from tests.checkin_station import ENG_START, MATH_END, card, station, ts


def test_files_past_the_setting_go_and_younger_ones_stay(tmp_path):
    records, shots = tmp_path / "records", tmp_path / "snapshots" / "2026-06"
    shots.mkdir(parents=True)
    records.mkdir()
    now = 1_800_000_000.0
    old, young = records / "math-am-12.json", records / "eng-pm-12.json"
    for path, age_days in ((old, 214), (young, 100), (shots / "a.jpg", 300), (shots / "b.jpg", 1)):
        path.write_text("x")
        os.utime(path, (now - age_days * DAY_S, now - age_days * DAY_S))
    r = Retention(213, [records, tmp_path / "snapshots", tmp_path / "missing"], lambda: now)
    assert r.due() and r.prune() == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.jpg", "eng-pm-12.json"]
    assert not r.due()  # once a day


def test_the_journal_forgets_sessions_that_ended_long_ago(plan, schedule, emitted, clock, tmp_path):
    journal = tmp_path / "checkin.journal"
    st = station(plan, schedule, lambda k, d: emitted.append((k, d)), clock, tmp_path / "records", journal=journal)
    st.book.start()
    st.on_card(card(1))
    clock.t = MATH_END + 1
    st.book.tick(clock.t)  # math-am's record written
    clock.t = ENG_START - 10 * 60
    st.on_card(card(2))
    sessions = {json.loads(line)["session"] for line in journal.read_text(encoding="utf-8").splitlines()}
    assert sessions == {"math-am", "eng-pm"}
    assert st.book.forget_before(ts("2026-06-07T12:00:00")) == 1  # math-am ended at 11:00
    sessions = {json.loads(line)["session"] for line in journal.read_text(encoding="utf-8").splitlines()}
    assert sessions == {"eng-pm"}
    assert st.book.forget_before(ts("2026-06-07T12:00:00")) == 0
