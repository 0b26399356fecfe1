import hashlib
import json
import re

import pytest

from agent.errors import ConfigError
from agent.seatplan import load_seatplan
from drivers.gb11643 import check_digit, mask_id


def make_id(first17: str) -> str:
    return first17 + check_digit(first17)


ID1 = make_id("41010520080101123")
ID2 = make_id("41010520080202234")
ID3 = make_id("41010520080303345")
BAD = ID1[:17] + ("0" if ID1[17] != "0" else "1")

HEADER = "seat,ticket,name,id_number,card_uids,photo,medical_metal\n"


def write(tmp_path, text, name="plan.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(exc):
    return [(p.key, p.message, p.value) for p in exc.value.problems]


def test_csv_loads_with_lookups_and_hash(tmp_path):
    p = write(tmp_path, HEADER
              + f"01,T001,张三,{ID1},04a1b2c3;04D5E6F7,z.jpg,否\n"
              + f"2,T002,李四,{ID2.lower()},,,true\n\n")
    plan = load_seatplan(p, "12")
    assert plan.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert plan.seats() == ["1", "2"]
    c1 = plan.by_seat(1)
    assert c1 is plan.by_seat("01") and c1 is plan.by_id(ID1) and c1 is plan.by_ticket("T001")
    assert plan.by_uid("04:a1:b2:c3") is c1 and plan.by_uid("04D5E6F7") is c1
    assert c1.card_uids == ("04A1B2C3", "04D5E6F7") and c1.photo == "z.jpg" and not c1.medical_metal
    assert plan.by_seat(2).medical_metal
    assert plan.by_id_last6(ID2[-6:]) == [plan.by_seat(2)]
    assert plan.by_ticket_tail("002") == [plan.by_seat(2)]
    assert plan.by_uid("FFFFFFFF") is None and plan.by_id_last6("123") == []
    assert ID1 not in repr(c1) and "张三" not in repr(c1) and mask_id(ID1) in repr(c1)


def test_json_list_and_room_object(tmp_path):
    rows = [{"seat": 1, "ticket": "T1", "name": "A", "id_number": ID1, "card_uids": ["A1B2C3D4"],
             "medical_metal": True},
            {"seat": "2", "ticket": "T2", "name": "B", "id_number": ID2}]
    plan = load_seatplan(write(tmp_path, json.dumps(rows), "p.json"), "7")
    assert plan.by_uid("a1b2c3d4").seat == "1" and plan.by_seat(1).medical_metal
    plan = load_seatplan(write(tmp_path, json.dumps({"room": "07", "candidates": rows}), "q.json"), "7")
    assert len(plan) == 2


def test_ambiguous_last6_returns_all(tmp_path):
    tail = ID1[12:17]
    twin = next(make_id(f"{r}20080101{tail[2:]}") for r in range(110000, 999999)
                if make_id(f"{r}20080101{tail[2:]}")[-6:] == ID1[-6:] and str(r) != ID1[:6])
    plan = load_seatplan(write(tmp_path, HEADER + f"1,T1,A,{ID1},,,\n2,T2,B,{twin},,,\n"), "1")
    assert [c.seat for c in plan.by_id_last6(ID1[-6:])] == ["1", "2"]


def test_every_problem_is_reported_at_once_without_full_ids(tmp_path):
    text = (HEADER
            + f"1,T1,A,{ID1},04A1B2C3,,\n"
            + f"1,T2,B,{ID2},,,\n"              # duplicate seat
            + f"3,T1,C,{ID3},,,\n"              # duplicate ticket
            + f"4,T4,D,{ID1},,,\n"              # duplicate id
            + f"5,T5,E,{BAD},,,\n"              # bad check digit
            + f"6,T6,,{make_id('11010120000101111')},04a1b2c3,,\n"  # empty name, duplicate uid
            + f"7,T7,G,{make_id('11010120000101222')},XYZ,,maybe\n")  # bad uid, bad flag
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, text), "1")
    got = problems(e)
    keys = [k for k, _, _ in got]
    assert "row 3.seat" in keys and "row 4.ticket" in keys and "row 5.id_number" in keys
    assert "row 6.id_number" in keys and "row 7.name" in keys and "row 8.card_uids" in keys
    assert "row 8.medical_metal" in keys
    dup_uid = [g for g in got if "duplicate card_uids" in g[1]]
    assert dup_uid and dup_uid[0][2] == "04A1B2C3"
    assert all(str(p.file).endswith("plan.csv") for p in e.value.problems)
    text_all = str(e.value)
    assert not re.search(r"\d{17}[\dX]", text_all), text_all
    assert mask_id(BAD) in text_all and "check digit" in text_all


def test_missing_columns_and_header(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "seat,name\n1,A\n"), "1")
    assert problems(e)[0][0] == "header" and "ticket, id_number" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, ""), "1")
    assert problems(e)[0][0] == "header"


def test_another_room_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "room," + HEADER + f"13,1,T1,A,{ID1},,,\n"), "12")
    assert problems(e)[0][0] == "row 2.room" and problems(e)[0][2] == "13"
    doc = {"room": "13", "candidates": [{"seat": 1, "ticket": "T1", "name": "A", "id_number": ID1}]}
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps(doc), "p.json"), "12")
    assert problems(e)[0][0] == "room"


def test_json_shape_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "{not json", "a.json"), "1")
    assert "not valid JSON" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps({"candidates": 3}), "b.json"), "1")
    assert problems(e)[0][0] == "candidates"
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps([1, {"seat": 1, "ticket": "T", "name": "A",
                                                       "id_number": ID1, "card_uids": 5}]), "c.json"), "1")
    assert [k for k, _, _ in problems(e)] == ["[0]", "[1].card_uids"]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "[]", "d.json"), "1")
    assert "at least one" in problems(e)[0][1]


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(tmp_path / "missing.csv", "1")
    assert "cannot read" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "x", "plan.xlsx"), "1")
    assert problems(e)[0][2] == ".xlsx"
    p = tmp_path / "gbk.csv"
    p.write_bytes(HEADER.encode() + f"1,T1,张三,{ID1},,,\n".encode("gbk"))
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "1")
    assert "UTF-8" in problems(e)[0][1]


def test_extra_fields_in_a_csv_row(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, HEADER + f"1,T1,A,{ID1},,,,surplus\n"), "1")
    assert problems(e)[0][0] == "row 2"
