"""The room's seat plan (座次表): who may sit in this room, and how to find them at the door.

The plan is distributed to the site before the exam and must match the physical
room, so loading is strict: every mistake is reported at once (a technician fixes
the file in one go), an ID number whose check digit is wrong is refused (it could
never match a card read at the door), the file must say which room it is for (a
plan copied to the wrong box is refused, not believed), and an unknown column is
refused (a misspelt ``medical_metal`` would otherwise silently drop an implant's
exemption). ID numbers and names are personal data: no error message or ``repr``
shows an ID number whole or a name at all.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from examroom.agent.errors import ConfigError, Problem
from examroom.agent.privacy import Scrubber
from examroom.drivers.gb11643 import is_valid, mask_id, mask_ids_in_text

REQUIRED = ("seat", "ticket", "name", "id_number")
_FLAGS = ("medical_metal",)
FIELDS = REQUIRED + ("card_uids", "photo") + _FLAGS + ("special_items",)  # the keys of one candidate
CSV_COLUMNS = ("room",) + FIELDS                      # a CSV repeats its room on every row
JSON_KEYS = ("room", "candidates")                    # a JSON plan gives its room once
_UID = re.compile(r"^(?:[0-9A-F]{2}){4,10}$")
_ITEM_SEP = re.compile(r"[;；、]")  # a list in one CSV cell: "助听器;胰岛素笔" or "助听器、胰岛素笔"
MAX_ITEM = 40
_TRUE = {"true", "1", "yes", "y", "是"}
_FALSE = {"false", "0", "no", "n", "否", ""}


def norm_seat(seat: Any) -> str:
    """Seat "07", 7 and " 7 " are the same seat: a proctor types what the desk label says."""
    s = str(seat).strip()
    return str(int(s)) if s.isdigit() else s


def norm_uid(uid: str) -> str:
    return re.sub(r"[\s:-]", "", uid).upper()


def _same_room(a: Any, b: str) -> bool:
    """Room "07" in the file is room "7" of the config, as for seats."""
    return norm_seat(a) == norm_seat(b)


@dataclass(frozen=True)
class Candidate:
    seat: str
    ticket: str
    name: str = field(repr=False)
    id_number: str = field(repr=False)
    card_uids: tuple[str, ...] = ()
    photo: str = ""
    medical_metal: bool = False
    # approved special items (考生因身体原因需要带入考场的特殊物品): may tell a health condition,
    # so only their number leaves the box; the names stay on the room's own record
    special_items: tuple[str, ...] = field(default=(), repr=False)

    @property
    def id_masked(self) -> str:
        return mask_id(self.id_number)

    def __repr__(self) -> str:  # keeps the name and the full number out of logs and tracebacks
        return f"Candidate(seat={self.seat!r}, ticket={self.ticket!r}, id={self.id_masked})"

    __str__ = __repr__


def _seat_order(seat: str) -> tuple[int, int, str]:
    return (0, int(seat), "") if seat.isdigit() else (1, 0, seat)


@dataclass(frozen=True)
class SeatPlan:
    room: str
    file: str
    sha256: str
    candidates: tuple[Candidate, ...]
    _by_id: dict[str, Candidate] = field(init=False, repr=False, compare=False)
    _by_seat: dict[str, Candidate] = field(init=False, repr=False, compare=False)
    _by_uid: dict[str, Candidate] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {c.id_number: c for c in self.candidates})
        object.__setattr__(self, "_by_seat", {c.seat: c for c in self.candidates})
        object.__setattr__(self, "_by_uid", {u: c for c in self.candidates for u in c.card_uids})

    @classmethod
    def empty(cls, room: str) -> "SeatPlan":
        """The plan of a room that checks nobody in: its session records still keep incidents."""
        return cls(room=room, file="", sha256="", candidates=())

    def __len__(self) -> int:
        return len(self.candidates)

    def seats(self) -> list[str]:
        return sorted((c.seat for c in self.candidates), key=_seat_order)

    def by_id(self, id_number: str) -> Candidate | None:
        return self._by_id.get(id_number.strip().upper())

    def by_uid(self, uid: str) -> Candidate | None:
        return self._by_uid.get(norm_uid(uid))

    def by_seat(self, seat: Any) -> Candidate | None:
        return self._by_seat.get(norm_seat(seat))

    def by_id_last6(self, last6: str) -> list[Candidate]:
        """All matches, in seat order: six digits may belong to two candidates in one room."""
        tail = str(last6).strip().upper()
        if len(tail) != 6:
            return []
        found = [c for c in self.candidates if c.id_number.endswith(tail)]
        return sorted(found, key=lambda c: _seat_order(c.seat))

    def by_ticket_tail(self, tail: str) -> list[Candidate]:
        """Proctors read the last digits of the admission ticket when nothing else works."""
        t = str(tail).strip()
        if not t:
            return []
        found = [c for c in self.candidates if c.ticket.endswith(t)]
        return sorted(found, key=lambda c: _seat_order(c.seat))


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    s = str(v).strip().lower()
    return True if s in _TRUE else False if s in _FALSE else None


def _echo(v: Any) -> Any:
    """A value as an error may show it: an ID number typed into any field is masked."""
    if isinstance(v, str):
        return mask_ids_in_text(v)
    if isinstance(v, list):
        return [_echo(x) for x in v]
    if isinstance(v, dict):
        return type(v).__name__  # an object may hold anything, a name included
    if isinstance(v, int) and not isinstance(v, bool):  # an ID number given as a JSON number
        masked = mask_ids_in_text(str(v))
        return v if masked == str(v) else masked
    return v


def _hint(name: str, accepted: tuple[str, ...]) -> str:
    """The accepted name a typo most likely meant: ``medical_metl`` is ``medical_metal``."""
    close = difflib.get_close_matches(name.strip().lower(), accepted, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(name: str, accepted: tuple[str, ...], kind: str) -> str:
    """Name the stray column/key, the likely intended one, and every accepted one."""
    return f"unknown {kind} {_echo(name)!r}{_hint(name, accepted)}; accepted {kind}s: {', '.join(accepted)}"


def _csv_header(header: list[str], file: str, room_id: str, problems: list[Problem]) -> bool:
    """Check the header row; False when rows cannot be read against it at all."""
    expected = "expected the header row " + ",".join(CSV_COLUMNS) + " (card_uids, photo, medical_metal, special_items optional)"
    if not header:
        problems.append(Problem(file, "header", expected))
        return False
    if not any(h in CSV_COLUMNS for h in header):
        # the first line is a candidate, not a header: never echo it (a name, an ID number).
        # Exact names only: a candidate's room id "room101" is close enough to "room" for a hint.
        problems.append(Problem(file, "header", "the first line names none of the columns; " + expected))
        return False
    for i, h in enumerate(header, 1):
        if not h:
            problems.append(Problem(file, "header", f"column {i} has no name; " + expected))
        elif h not in CSV_COLUMNS:
            problems.append(Problem(file, "header", _unknown(h, CSV_COLUMNS, "column")))
        elif header.index(h) != i - 1:
            problems.append(Problem(file, "header", f"column {h!r} appears twice; expected each once"))
    missing = [c for c in ("room",) + REQUIRED if c not in header]
    if missing:
        why = (f"; the room column says which room the plan is for and must read {room_id!r} "
               "(this box's room) on every row") if "room" in missing else ""
        problems.append(Problem(file, "header", f"missing column(s) {', '.join(missing)}{why}"))
        return False
    return True


def _rows_from_csv(text: str, file: str, room_id: str,
                   problems: list[Problem]) -> tuple[list[tuple[str, dict[str, Any]]], tuple[str, str] | None]:
    """The rows, and where and which room the file names (None when it names none)."""
    # universal newlines: Excel's "CSV (Macintosh)" ends lines with CR alone
    reader = csv.DictReader(io.StringIO(text, newline=None))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not _csv_header(header, file, room_id, problems):
            return [], None
        rows = _csv_rows(reader, header, file, problems)
    except csv.Error as e:  # a field over csv's 131,072-character limit, a stray NUL
        problems.append(Problem(file, f"after line {reader.line_num}", f"not readable as CSV: {e}"))
        return [], None
    return rows, _csv_room(rows, file, room_id, problems)


def _csv_rows(reader: csv.DictReader, header: list[str], file: str,
              problems: list[Problem]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for raw in reader:
        row = {(k or "").strip(): v for k, v in raw.items()}
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a trailing blank line is not a candidate
        if None in raw or None in raw.values():
            # its values sit under the wrong columns (a name read as a ticket): checking them
            # would echo them in errors, so the row is refused whole, by its shape only
            n = len(raw.get(None) or []) + sum(1 for v in raw.values() if isinstance(v, str))
            problems.append(Problem(file, f"row {reader.line_num}",
                                    f"{n} fields where the header has {len(header)} columns"))
            continue
        rows.append((f"row {reader.line_num}", row))
    return rows


def _csv_room(rows: list[tuple[str, dict[str, Any]]], file: str, room_id: str,
              problems: list[Problem]) -> tuple[str, str] | None:
    """One room for the whole file; a file mixing rooms is reported row by row."""
    rooms: list[tuple[str, str]] = []
    for where, row in rows:
        r = (row.get("room") or "").strip()
        if r:
            rooms.append((where, r))
        else:
            problems.append(Problem(file, f"{where}.room", f"expected the room this plan is for "
                                    f"({room_id!r}, this box's room) on every row"))
    if not rooms:
        return None
    if len({norm_seat(r) for _, r in rooms}) == 1:
        return f"{rooms[0][0]}.room", rooms[0][1]
    for where, r in rooms:
        if not _same_room(r, room_id):
            problems.append(Problem(file, f"{where}.room", "the file mixes rooms; expected every row to "
                                    f"be for this box's room {room_id!r}", _echo(r)))
    return None


def _rows_from_json(text: str, file: str, room_id: str,
                    problems: list[Problem]) -> tuple[list[tuple[str, dict[str, Any]]], tuple[str, str] | None]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(Problem(file, f"line {e.lineno}", f"not valid JSON: {e.msg}"))
        return [], None
    except RecursionError:
        problems.append(Problem(file, "(file)", "not usable JSON: arrays or objects nested too deeply"))
        return [], None
    except ValueError:  # an integer of thousands of digits
        problems.append(Problem(file, "(file)", "not usable JSON: a number of more than 4,300 digits"))
        return [], None
    shape = f'expected {{"room": "{room_id}", "candidates": [...]}}'
    room: tuple[str, str] | None = None
    prefix = ""
    if isinstance(doc, dict):
        for k in doc:
            if k not in JSON_KEYS:
                problems.append(Problem(file, "(top level)", _unknown(k, JSON_KEYS, "key")))
        room, items, prefix = _json_room(doc, file, room_id, problems), doc.get("candidates"), "candidates"
    elif isinstance(doc, list):  # still checked, so one run shows every mistake
        problems.append(Problem(file, "(top level)", f"{shape}: a bare list cannot say which room it is for"))
        items = doc
    else:
        items = None
    if not isinstance(items, list):
        problems.append(Problem(file, prefix or "(top level)", shape))
        return [], room
    rows: list[tuple[str, dict[str, Any]]] = []
    strays: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        where = f"{prefix}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(file, where, "expected an object", type(item).__name__))
            continue
        for k in item:
            if k not in FIELDS:
                strays.setdefault(k, []).append(where)
        rows.append((where, item))
    for k, places in strays.items():  # one error per stray key, not one per candidate
        more = f" (also in {len(places) - 1} more)" if len(places) > 1 else ""
        why = ("; the room is given once, at the top level" if k == "room"
               else f"{_hint(k, FIELDS)}; accepted keys: {', '.join(FIELDS)}")
        problems.append(Problem(file, f"{places[0]}.{_echo(k)}", f"unknown key{more}{why}"))
    return rows, room


def _json_room(doc: dict[str, Any], file: str, room_id: str, problems: list[Problem]) -> tuple[str, str] | None:
    room = doc.get("room")
    if room is None or room == "":
        problems.append(Problem(file, "room", f'missing: expected "room": "{room_id}" (this box\'s room) at '
                                "the top level, naming the room this plan is for"))
        return None
    if isinstance(room, bool) or not isinstance(room, (str, int)):
        problems.append(Problem(file, "room", "expected the room id as text", type(room).__name__))
        return None
    return "room", str(room).strip()


def _uids(v: Any) -> list[str] | None:
    if v is None:
        return []
    if isinstance(v, str):
        return [norm_uid(u) for u in v.split(";") if u.strip()]
    if isinstance(v, list) and all(isinstance(u, str) for u in v):
        return [norm_uid(u) for u in v if u.strip()]
    return None


def _items(v: Any) -> list[str] | None:
    if v is None:
        return []
    if isinstance(v, str):
        v = _ITEM_SEP.split(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return [x.strip() for x in v if x.strip()]
    return None


def _candidate(where: str, row: dict[str, Any], file: str, problems: list[Problem]) -> Candidate | None:
    before = len(problems)
    vals: dict[str, str] = {}
    for col in REQUIRED:
        v = row.get(col)
        if col == "seat" and isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            shown = (None if v is None or v == "" or col == "name"  # a name is never shown
                     else mask_id(str(v)) if col == "id_number" else _echo(v))
            problems.append(Problem(file, f"{where}.{col}", "expected a non-empty value", shown))
            continue
        vals[col] = v.strip()
    if "id_number" in vals:
        idn = vals["id_number"].upper()
        if not is_valid(idn):
            problems.append(Problem(file, f"{where}.id_number",
                                    "expected an 18-character GB 11643 ID number with a correct "
                                    "check digit (a wrong number can never match the card)",
                                    mask_id(idn)))
        vals["id_number"] = idn
    uids = _uids(row.get("card_uids"))
    if uids is None:
        problems.append(Problem(file, f"{where}.card_uids",
                                'expected a list of hex strings or "A1B2C3D4;0411223344556677"',
                                _echo(row.get("card_uids"))))
    else:
        for u in uids:
            if not _UID.match(u):
                problems.append(Problem(file, f"{where}.card_uids",
                                        "expected 4-10 bytes of upper-case hex", _echo(u)))
    flags: dict[str, bool] = {}
    for flag in _FLAGS:
        b = _bool(row.get(flag))
        if b is None:
            problems.append(Problem(file, f"{where}.{flag}", "expected true/false (or 1/0, yes/no)",
                                    _echo(row.get(flag))))
        flags[flag] = bool(b)
    photo = row.get("photo") or ""
    if not isinstance(photo, str):
        problems.append(Problem(file, f"{where}.photo", "expected a file name", _echo(photo)))
    items = _items(row.get("special_items"))
    if items is None or any(len(x) > MAX_ITEM for x in items):
        problems.append(Problem(file, f"{where}.special_items",
                                f'expected approved items of at most {MAX_ITEM} characters, "助听器;胰岛素笔" '
                                'or a list', _echo(row.get("special_items"))))
    if len(problems) > before:
        return None
    return Candidate(seat=norm_seat(vals["seat"]), ticket=vals["ticket"], name=vals["name"],
                     id_number=vals["id_number"], card_uids=tuple(uids or ()),
                     photo=str(photo).strip(), special_items=tuple(items or ()), **flags)


def _dup_keys(row: dict[str, Any]) -> list[tuple[str, str]]:
    """Uniqueness is checked on every row, even one with other mistakes, so one run shows all."""
    keys = []
    for col in ("seat", "ticket", "id_number"):
        v = row.get(col)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
            v = str(v).strip()
            keys.append((col, norm_seat(v) if col == "seat" else v.upper() if col == "id_number" else v))
    keys += [("card_uids", u) for u in (_uids(row.get("card_uids")) or [])]
    return keys


def _duplicates(rows: Iterable[tuple[str, dict[str, Any]]], file: str, problems: list[Problem]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for where, row in rows:
        for col, value in _dup_keys(row):
            first = seen.setdefault((col, value), where)
            if first != where:
                shown = mask_id(value) if col == "id_number" else _echo(value)
                problems.append(Problem(file, f"{where}.{col}",
                                        f"duplicate {col}, already given in {first}; "
                                        "expected each to be unique in the room", shown))


def _not_utf8(blob: bytes, p: Path) -> str:
    """What to do about a plan that is not UTF-8: provincial systems export GBK (GB 18030)."""
    try:
        blob.decode("gb18030")
    except UnicodeDecodeError:
        return "expected UTF-8 text; this file is neither UTF-8 nor GBK"
    return (f"expected UTF-8 text; this looks like GBK (what provincial systems export). Convert it "
            f"and check the names read right: iconv -f GB18030 -t UTF-8 {p.name} > {p.stem}-utf8{p.suffix}")


_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]+")


def _unnamed(problems: list[Problem], rows: list[tuple[str, dict[str, Any]]]) -> list[Problem]:
    """A seat-plan error never echoes a candidate's name, whatever column it was typed in:
    every name in the file is blanked from the values shown, and so is any run of Chinese
    characters (no column but the name holds them)."""
    # a name has two characters at least; a one-letter test name would blank letters everywhere
    scrub = Scrubber(n for _, row in rows if isinstance(n := row.get("name"), str) and len(n.strip()) >= 2)

    def shown(v: Any) -> Any:
        if isinstance(v, str):
            return _CJK.sub("***", scrub(v))
        if isinstance(v, list):
            return [shown(x) for x in v]
        return v
    return [Problem(p.file, p.key, p.message, shown(p.value)) for p in problems]


def load_seatplan(path: str | Path, room_id: str) -> SeatPlan:
    """Load and check the whole plan; raise ConfigError with every problem found."""
    p = Path(path)
    file = str(p)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise ConfigError([Problem(file, "(file)", f"cannot read the seat plan: {e.strerror}")]) from e
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(file, f"byte {e.start}", _not_utf8(blob, p))]) from None
    problems: list[Problem] = []
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows, file_room = _rows_from_csv(text, file, room_id, problems)
    elif suffix == ".json":
        rows, file_room = _rows_from_json(text, file, room_id, problems)
    else:
        raise ConfigError([Problem(file, "(file)", "expected a .csv or .json seat plan", p.suffix)])
    if file_room is not None and not _same_room(file_room[1], room_id):
        problems.append(Problem(file, file_room[0], f"this plan is for another room; this box is room "
                                f"{room_id!r}", _echo(file_room[1])))
    good = [(where, c) for where, row in rows if (c := _candidate(where, row, file, problems)) is not None]
    _duplicates(rows, file, problems)
    if not rows and not problems:
        problems.append(Problem(file, "(file)", "expected at least one candidate"))
    if problems:
        raise ConfigError(_unnamed(problems, rows))
    return SeatPlan(room=room_id, file=file, sha256=hashlib.sha256(blob).hexdigest(),
                    candidates=tuple(c for _, c in good))
