"""Approved special items (考生因身体原因需要带入考场的特殊物品): listed per seat in the seat
plan, recorded with the seat's sweep on the room's record; only their number leaves the box."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from examroom.agent.errors import ConfigError
from examroom.agent.seatplan import load_seatplan
from examroom.drivers.events import SweepButton
from tests.checkin_station import ID, MATH_END, NAMES, card, kinds, station

HEADER = "room,seat,ticket,name,id_number,card_uids,photo,medical_metal,special_items"


def plan_file(tmp_path: Path, items: str) -> Path:
    p = tmp_path / "seats.csv"
    rows = [HEADER] + [f"12,{s},2026{s:04d},{NAMES[s]},{ID[s]},,,false,{items if s == 1 else ''}" for s in (1, 2)]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_special_items_go_on_the_record_and_only_their_number_is_published(tmp_path, schedule, clock, emitted):
    plan = load_seatplan(plan_file(tmp_path, "助听器、胰岛素笔"), "12")
    assert plan.by_seat("1").special_items == ("助听器", "胰岛素笔") and plan.by_seat("2").special_items == ()
    st = station(plan, schedule, lambda k, d: emitted.append((k, d)), clock, tmp_path / "records")
    st.book.start()
    st.on_card(card(1))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(2))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    assert [s["special_items"] for s in kinds(emitted, "sweep")] == [2, 0]
    st.book.tick(MATH_END)
    st.book.tick(MATH_END + 5)
    assert "助听器" not in json.dumps([d for _, d in emitted], ensure_ascii=False)  # a health hint stays here
    doc = json.loads((tmp_path / "records/math-am-12.json").read_text(encoding="utf-8"))
    assert {c["seat"]: c["special_items"] for c in doc["candidates"]} == {"1": ["助听器", "胰岛素笔"], "2": []}
    with open(tmp_path / "records/math-am-12.csv", encoding="utf-8-sig", newline="") as f:
        rows = {r["seat"]: r for r in csv.DictReader(f) if r["record"] == "candidate"}
    assert rows["1"]["special_items"] == "助听器; 胰岛素笔"


def test_an_unusable_special_items_cell_is_named_with_its_row(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(plan_file(tmp_path, "x" * 41), "12")
    assert "row 2.special_items: expected approved items of at most 40 characters" in str(e.value)
