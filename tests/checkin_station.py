"""The check-in station under test, shared by test_checkin.py and test_session_record.py: a
five-seat plan, two sessions, a movable clock, and an ``emitted`` list whose every payload is
checked against the docs' schema and scanned for names and full ID numbers."""
import json
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import jsonschema  # a dev dependency: a schema check silently skipped is no check
import pytest

from examroom.agent.checkin import CheckinStation
from examroom.agent.privacy import Scrubber
from examroom.agent.schedule import parse_sessions
from examroom.agent.seatplan import load_seatplan
from examroom.agent.session_book import SessionBook
from examroom.drivers.events import CardPresented, Identity
from examroom.drivers.gb11643 import check_digit
from tests.schemas import doc_blocks

def make_id(first17: str) -> str:
    return first17 + check_digit(first17)


ID = {1: make_id("41010520080101123"), 2: make_id("41010520080202234"), 3: make_id("41010520080303345"),
      4: make_id("41010520080404456")}
# seat 5 shares the last six characters of seat 4's number
ID[5] = next(i for r in range(110000, 999999) if str(r) != ID[4][:6]
             and (i := make_id(f"{r}20080404456"))[-6:] == ID[4][-6:])
OUTSIDER = make_id("11010120070707777")
NAMES = {1: "张三", 2: "李四", 3: "王五", 4: "赵六", 5: "钱七"}
UID1 = "04A1B2C3"
FULL_ID = re.compile(r"(?<![0-9A-Fa-f])\d{17}[\dX](?![0-9A-Fa-f])")  # not inside a hex digest

TZ = "+08:00"


def ts(s: str) -> float:
    return datetime.fromisoformat(s + TZ).timestamp()


def iso(t: float) -> str:
    """A time as the room publishes it (contract version 2): ISO 8601 in the default exam
    zone, Asia/Shanghai, to the millisecond. Written here, not borrowed from the code under test."""
    return datetime.fromtimestamp(t, ZoneInfo("Asia/Shanghai")).isoformat(timespec="milliseconds")


MATH_START, MATH_CUTOFF, MATH_END = ts("2026-06-07T09:00:00"), ts("2026-06-07T09:15:00"), ts("2026-06-07T11:00:00")
ENG_START = ts("2026-06-08T15:00:00")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def plan(tmp_path):
    p = tmp_path / "seats.csv"
    rows = ["room,seat,ticket,name,id_number,card_uids,photo,medical_metal"]
    for seat in range(1, 6):
        rows.append(f"12,{seat},2026{seat:04d},{NAMES[seat]},{ID[seat]},{UID1 if seat == 1 else ''},"
                    f"{seat}.jpg,{'true' if seat == 2 else 'false'}")
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return load_seatplan(p, "12")


@pytest.fixture
def schedule():
    return parse_sessions([
        {"id": "math-am", "subject": "Maths", "start": "2026-06-07T09:00:00+08:00",
         "end": "2026-06-07T11:00:00+08:00"},
        {"id": "eng-pm", "subject": "English", "start": "2026-06-08T15:00:00+08:00",
         "end": "2026-06-08T17:00:00+08:00", "late_cutoff_min": -15,
         "listening": [{"start": "2026-06-08T15:00:00+08:00", "end": "2026-06-08T15:20:00+08:00"}]},
    ], "agent.toml")


def doc_schemas() -> dict[str, dict]:
    """The JSON Schemas published in docs/events-checkin.md (```json schema:data/<kind>), by event kind."""
    return {name.removeprefix("data/"): json.loads(body) for _, name, body in doc_blocks(("events-checkin.md",))}


@pytest.fixture
def emitted():
    """Every payload of every test is scanned: no full ID number, no candidate name, ever;
    and each must match the schema of its kind in the docs, date-time formats checked."""
    schemas = doc_schemas()
    out: list[tuple[str, dict]] = []
    yield out
    for kind, data in out:
        jsonschema.validate(data, schemas[kind], cls=jsonschema.Draft202012Validator,
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        text = json.dumps(data, ensure_ascii=False)
        assert not FULL_ID.search(text), (kind, text)
        for name in NAMES.values():
            assert name not in text, (kind, text)


@pytest.fixture
def clock():
    return Clock(ts("2026-06-07T08:40:00"))


@pytest.fixture
def make(plan, schedule, emitted, clock, tmp_path):
    """``build.snaps``: the photo requests the station handed to the camera, as (tag, about)."""
    snaps = []

    def snapshot(tag, about):
        snaps.append((tag, about))

    def build(journal=True, with_snapshot=True, emit=None):
        st = station(plan, schedule, emit or (lambda k, d: emitted.append((k, d))), clock, tmp_path / "records",
                     snapshot=snapshot if with_snapshot else None,
                     journal=tmp_path / "checkin.journal" if journal else None)
        st.book.start()
        return st

    build.snaps = snaps
    return build


def station(plan, schedule, emit, clock, record_dir, snapshot=None, journal=None, roster=()) -> CheckinStation:
    """A station on its own session book, as the room wires them (the book is not started)."""
    scrub = Scrubber(c.name for c in plan.candidates)
    return CheckinStation(SessionBook(schedule, plan, emit, clock, record_dir, scrub, journal), clock, scrub,
                          snapshot=snapshot, roster=roster)


def card(seat=None, id_number=None, valid_to="20300101"):
    """A card as a reader decodes it; an invalid one is made by an ID number with a wrong check digit."""
    n = id_number or ID[seat]
    ident = Identity(name=NAMES.get(seat, "某人"), sex="男", nation="汉", birth=n[6:14], address="某地",
                     id_number=n, issuer="某公安局", valid_from="20200101", valid_to=valid_to)
    return CardPresented("idreader", identity=ident)


def kinds(emitted, kind):
    return [d for k, d in emitted if k == kind]
