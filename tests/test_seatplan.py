import hashlib
import json
import re

import pytest

from examroom.agent.errors import ConfigError
from examroom.agent.seatplan import load_seatplan
from examroom.drivers.gb11643 import check_digit, mask_id


def make_id(first17: str) -> str:
    return first17 + check_digit(first17)


ID1 = make_id("41010520080101123")
ID2 = make_id("41010520080202234")
ID3 = make_id("41010520080303345")
BAD = ID1[:17] + ("0" if ID1[17] != "0" else "1")

HEADER = "room,seat,ticket,name,id_number,card_uids,photo,medical_metal\n"


def write(tmp_path, text, name="plan.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(exc):
    return [(p.key, p.message, p.value) for p in exc.value.problems]


def test_csv_loads_with_lookups_and_hash(tmp_path):
    p = write(tmp_path, HEADER
              + f"12,01,T001,张三,{ID1},04a1b2c3;04D5E6F7,z.jpg,否\n"
              + f"012,2,T002,李四,{ID2.lower()},,,true\n\n")
    plan = load_seatplan(p, "12")
    assert plan.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert plan.seats() == ["1", "2"]
    c1 = plan.by_seat(1)
    assert c1 is plan.by_seat("01") and c1 is plan.by_id(ID1)
    assert plan.by_uid("04:a1:b2:c3") is c1 and plan.by_uid("04D5E6F7") is c1
    assert c1.card_uids == ("04A1B2C3", "04D5E6F7") and c1.photo == "z.jpg" and not c1.medical_metal
    assert plan.by_seat(2).medical_metal
    assert plan.by_id_last6(ID2[-6:]) == [plan.by_seat(2)]
    assert plan.by_ticket_tail("002") == [plan.by_seat(2)] and plan.by_ticket_tail("T001") == [c1]
    assert plan.by_uid("FFFFFFFF") is None and plan.by_id_last6("123") == []
    assert ID1 not in repr(c1) and "张三" not in repr(c1) and mask_id(ID1) in repr(c1)


def test_json_room_object(tmp_path):
    rows = [{"seat": 1, "ticket": "T1", "name": "A", "id_number": ID1, "card_uids": ["A1B2C3D4"],
             "medical_metal": True},
            {"seat": "2", "ticket": "T2", "name": "B", "id_number": ID2}]
    plan = load_seatplan(write(tmp_path, json.dumps({"room": "07", "candidates": rows}), "q.json"), "7")
    assert len(plan) == 2 and plan.room == "7"
    assert plan.by_uid("a1b2c3d4").seat == "1" and plan.by_seat(1).medical_metal
    plan = load_seatplan(write(tmp_path, json.dumps({"room": 7, "candidates": rows}), "r.json"), "7")
    assert len(plan) == 2


def test_ambiguous_last6_returns_all(tmp_path):
    tail = ID1[12:17]
    twin = next(make_id(f"{r}20080101{tail[2:]}") for r in range(110000, 999999)
                if make_id(f"{r}20080101{tail[2:]}")[-6:] == ID1[-6:] and str(r) != ID1[:6])
    plan = load_seatplan(write(tmp_path, HEADER + f"1,1,T1,A,{ID1},,,\n1,2,T2,B,{twin},,,\n"), "1")
    assert [c.seat for c in plan.by_id_last6(ID1[-6:])] == ["1", "2"]


def test_every_problem_is_reported_at_once_without_full_ids(tmp_path):
    text = (HEADER
            + f"1,1,T1,A,{ID1},04A1B2C3,,\n"
            + f"1,1,T2,B,{ID2},,,\n"              # duplicate seat
            + f"1,3,T1,C,{ID3},,,\n"              # duplicate ticket
            + f"1,4,T4,D,{ID1},,,\n"              # duplicate id
            + f"1,5,T5,E,{BAD},,,\n"              # bad check digit
            + f"1,6,T6,,{make_id('11010120000101111')},04a1b2c3,,\n"  # empty name, duplicate uid
            + f"1,7,T7,G,{make_id('11010120000101222')},XYZ,,maybe\n")  # bad uid, bad flag
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
        load_seatplan(write(tmp_path, "room,seat,name\n1,1,A\n"), "1")
    assert problems(e)[0][0] == "header" and "ticket, id_number" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, ""), "1")
    assert problems(e)[0][0] == "header"


def test_a_headerless_csv_is_refused_without_echoing_the_first_row(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, f"12,1,T1,张三,{ID1},,,\n"), "12")
    assert problems(e) == [("header", "the first line names none of the columns; expected the header row "
                            "room,seat,ticket,name,id_number,card_uids,photo,medical_metal,special_items "
                            "(card_uids, photo, medical_metal, special_items optional)", None)]
    assert ID1[6:14] not in str(e.value) and "张三" not in str(e.value)


@pytest.mark.parametrize("room", ["12", "room101"])  # "room101" is a near-miss of "room"
def test_a_headerless_csv_never_echoes_a_name_whatever_the_room_id(tmp_path, room):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, f"{room},1,T1,王伟,{ID1},,,\n"), room)
    assert [k for k, _, _ in problems(e)] == ["header"]
    assert "王伟" not in str(e.value) and ID1[6:14] not in str(e.value)


def test_rows_shorter_or_longer_than_the_header_are_refused_by_shape_only(tmp_path):
    """An old plan upgraded by adding `room` to the header only: every value moves one column
    left, a name lands under `ticket`; two 王伟 must not come back as 'duplicate ticket 王伟'."""
    old_rows = f"1,T1,王伟,{ID1},,,\n2,T2,王伟,{ID2},,,\n3,T3,李芳,{ID2[:-4]}0000,,,,,\n"
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, HEADER + old_rows), "12")
    assert [(k, v) for k, v, _ in problems(e)] == [
        ("row 2", "7 fields where the header has 8 columns"),
        ("row 3", "7 fields where the header has 8 columns"),
        ("row 4", "9 fields where the header has 8 columns")]
    assert "王伟" not in str(e.value) and "李芳" not in str(e.value)


def test_a_csv_without_a_room_column_is_refused(tmp_path):
    p = write(tmp_path, "seat,ticket,name,id_number\n" + f"1,T1,A,{ID1}\n")
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "room101")
    assert [(x.file, x.key) for x in e.value.problems] == [(str(p), "header")]
    msg = str(e.value)
    assert "missing column(s) room" in msg and "'room101' (this box's room) on every row" in msg


def test_a_csv_row_without_its_room_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, HEADER + f"12,1,T1,A,{ID1},,,\n,2,T2,B,{ID2},,,\n"), "12")
    assert [(k, v) for k, _, v in problems(e)] == [("row 3.room", None)]
    assert "'12', this box's room) on every row" in problems(e)[0][1]


def test_another_room_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, HEADER + f"13,1,T1,A,{ID1},,,\n13,2,T2,B,{ID2},,,\n"), "12")
    assert problems(e) == [("row 2.room", "this plan is for another room; this box is room '12'", "13")]
    doc = {"room": "13", "candidates": [{"seat": 1, "ticket": "T1", "name": "A", "id_number": ID1}]}
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps(doc), "p.json"), "12")
    assert problems(e) == [("room", "this plan is for another room; this box is room '12'", "13")]


def test_a_csv_mixing_rooms_is_refused_row_by_row(tmp_path):
    text = HEADER + f"12,1,T1,A,{ID1},,,\n13,2,T2,B,{ID2},,,\n12,3,T3,C,{ID3},,,\n"
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, text), "12")
    assert [(k, v) for k, _, v in problems(e)] == [("row 3.room", "13")]
    assert "mixes rooms" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:  # neither room is this box's: every row is named
        load_seatplan(write(tmp_path, text), "14")
    assert [(k, v) for k, _, v in problems(e)] == [("row 2.room", "12"), ("row 3.room", "13"), ("row 4.room", "12")]


def test_a_json_plan_must_name_its_room(tmp_path):
    cands = [{"seat": 1, "ticket": "T1", "name": "A", "id_number": ID1}]
    p = write(tmp_path, json.dumps({"candidates": cands}), "p.json")
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "room101")
    assert [(x.file, x.key) for x in e.value.problems] == [(str(p), "room")]
    assert '"room": "room101"' in problems(e)[0][1] and "top level" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:  # a bare list cannot say its room
        load_seatplan(write(tmp_path, json.dumps(cands), "q.json"), "room101")
    assert problems(e)[0][0] == "(top level)" and "which room" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps({"room": ["room101"], "candidates": cands}), "r.json"), "room101")
    assert problems(e) == [("room", "expected the room id as text", "list")]


def test_unknown_csv_column_is_refused_with_a_suggestion(tmp_path):
    p = write(tmp_path, HEADER.replace("medical_metal", "medical_metl") + f"1,1,T1,A,{ID1},,,true\n")
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "1")
    assert [(x.file, x.key, x.message) for x in e.value.problems] == [
        (str(p), "header", "unknown column 'medical_metl' (did you mean 'medical_metal'?); accepted columns: "
         "room, seat, ticket, name, id_number, card_uids, photo, medical_metal, special_items")]
    with pytest.raises(ConfigError) as e:  # no near match: no guess, still the accepted list
        load_seatplan(write(tmp_path, "room,seat,ticket,name,id_number,remarks,,seat\n"), "1")
    got = [m for _, m, _ in problems(e)]
    assert got[0].startswith("unknown column 'remarks'; accepted columns: room, seat,")
    assert got[1].startswith("column 7 has no name") and got[2] == "column 'seat' appears twice; expected each once"


def test_unknown_json_keys_are_refused(tmp_path):
    cands = [{"seat": i, "ticket": f"T{i}", "name": "A", "id_number": idn, "medical_metl": True}
             for i, idn in enumerate((ID1, ID2, ID3), 1)]
    cands[0]["room"] = "1"
    doc = {"room": "1", "candidates": cands, "rooom": "1"}
    p = write(tmp_path, json.dumps(doc), "p.json")
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "1")
    assert all(x.file == str(p) for x in e.value.problems)
    assert [(k, m) for k, m, _ in problems(e)] == [
        ("(top level)", "unknown key 'rooom' (did you mean 'room'?); accepted keys: room, candidates"),
        ("candidates[0].medical_metl", "unknown key (also in 2 more) (did you mean 'medical_metal'?); accepted "
         "keys: seat, ticket, name, id_number, card_uids, photo, medical_metal, special_items"),
        ("candidates[0].room", "unknown key; the room is given once, at the top level")]


def test_values_in_errors_never_show_an_id_number_or_a_name(tmp_path):
    cands = [{"seat": 1, "ticket": "T1", "name": ["张三"], "id_number": int(ID2[:17] + "0"),
              "photo": {"name": "张三"}, "card_uids": [ID3, 5]}]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps({"room": "1", "candidates": cands}), "p.json"), "1")
    text_all = str(e.value)
    assert {k for k, _, _ in problems(e)} == {"candidates[0].name", "candidates[0].id_number",
                                              "candidates[0].card_uids", "candidates[0].photo"}
    assert "张三" not in text_all and not re.search(r"\d{17}[\dX]", text_all), text_all
    assert mask_id(ID3) in text_all
    with pytest.raises(ConfigError) as e:  # an ID number typed into the room or a flag column
        load_seatplan(write(tmp_path, HEADER + f"{ID1},1,T1,A,{ID2},,,{ID3}\n"), "1")
    text_all = str(e.value)
    assert not re.search(r"\d{17}[\dX]", text_all) and mask_id(ID1) in text_all, text_all


def test_json_shape_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "{not json", "a.json"), "1")
    assert "not valid JSON" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps({"room": "1", "candidates": 3}), "b.json"), "1")
    assert problems(e)[0][0] == "candidates"
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, json.dumps({"room": "1", "candidates": [1, {
            "seat": 1, "ticket": "T", "name": "A", "id_number": ID1, "card_uids": 5}]}), "c.json"), "1")
    assert [k for k, _, _ in problems(e)] == ["candidates[0]", "candidates[1].card_uids"]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, '{"room": "1", "candidates": []}', "d.json"), "1")
    assert "at least one" in problems(e)[0][1]


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(tmp_path / "missing.csv", "1")
    assert "cannot read" in problems(e)[0][1]
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, "x", "plan.xlsx"), "1")
    assert problems(e)[0][2] == ".xlsx"
    p = tmp_path / "gbk.csv"
    p.write_bytes(HEADER.encode() + f"1,1,T1,张三,{ID1},,,\n".encode("gbk"))
    with pytest.raises(ConfigError) as e:
        load_seatplan(p, "1")
    assert "UTF-8" in problems(e)[0][1]


def test_extra_fields_in_a_csv_row(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_seatplan(write(tmp_path, HEADER + f"1,1,T1,A,{ID1},,,,surplus\n"), "1")
    assert problems(e)[0][0] == "row 2"
