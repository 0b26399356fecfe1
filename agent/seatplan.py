"""The room's seat plan (座次表): who may sit in this room, and how to find them at the door.

The plan is distributed to the site before the exam and must match the physical
room, so loading is strict: every mistake is reported at once (a technician fixes
the file in one go), an ID number whose check digit is wrong is refused (it could
never match a card read at the door), and a plan for another room is refused.
ID numbers are personal data: no error message or ``repr`` shows one whole.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agent.errors import ConfigError, Problem
from drivers.gb11643 import is_valid, mask_id

REQUIRED = ("seat", "ticket", "name", "id_number")
_FLAGS = ("medical_metal",)
_UID = re.compile(r"^(?:[0-9A-F]{2}){4,10}$")
_TRUE = {"true", "1", "yes", "y", "是"}
_FALSE = {"false", "0", "no", "n", "否", ""}


def norm_seat(seat: Any) -> str:
    """Seat "07", 7 and " 7 " are the same seat: a proctor types what the desk label says."""
    s = str(seat).strip()
    return str(int(s)) if s.isdigit() else s


def norm_uid(uid: str) -> str:
    return re.sub(r"[\s:-]", "", uid).upper()


@dataclass(frozen=True)
class Candidate:
    seat: str
    ticket: str
    name: str = field(repr=False)
    id_number: str = field(repr=False)
    card_uids: tuple[str, ...] = ()
    photo: str = ""
    medical_metal: bool = False

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
    _by_ticket: dict[str, Candidate] = field(init=False, repr=False, compare=False)
    _by_uid: dict[str, Candidate] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {c.id_number: c for c in self.candidates})
        object.__setattr__(self, "_by_seat", {c.seat: c for c in self.candidates})
        object.__setattr__(self, "_by_ticket", {c.ticket: c for c in self.candidates})
        object.__setattr__(self, "_by_uid", {u: c for c in self.candidates for u in c.card_uids})

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

    def by_ticket(self, ticket: str) -> Candidate | None:
        return self._by_ticket.get(str(ticket).strip())

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


def _rows_from_csv(text: str, file: str, problems: list[Problem]) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        problems.append(Problem(file, "header", "expected a header row naming the columns "
                                + ", ".join(REQUIRED)))
        return []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        problems.append(Problem(file, "header", f"missing column(s) {', '.join(missing)}",
                                ",".join(header)))
        return []
    rows = []
    for raw in reader:
        row = {(k or "").strip(): v for k, v in raw.items()}
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a trailing blank line is not a candidate
        if None in raw:
            problems.append(Problem(file, f"row {reader.line_num}",
                                    f"more fields than the {len(header)} columns of the header"))
        rows.append((f"row {reader.line_num}", row))
    return rows


def _rows_from_json(text: str, file: str, problems: list[Problem]) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(Problem(file, f"line {e.lineno}", f"not valid JSON: {e.msg}"))
        return [], None
    room: Any = None
    prefix = ""
    if isinstance(doc, dict):
        room, items, prefix = doc.get("room"), doc.get("candidates"), "candidates"
    else:
        items = doc
    if not isinstance(items, list):
        problems.append(Problem(file, prefix or "(top level)",
                                'expected a list of candidates or {"room": ..., "candidates": [...]}'))
        return [], room
    rows = []
    for i, item in enumerate(items):
        where = f"{prefix}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(file, where, "expected an object", type(item).__name__))
            continue
        rows.append((where, item))
    return rows, room


def _uids(v: Any) -> list[str] | None:
    if v is None:
        return []
    if isinstance(v, str):
        return [norm_uid(u) for u in v.split(";") if u.strip()]
    if isinstance(v, list) and all(isinstance(u, str) for u in v):
        return [norm_uid(u) for u in v if u.strip()]
    return None


def _candidate(where: str, row: dict[str, Any], file: str, room_id: str,
               problems: list[Problem]) -> Candidate | None:
    before = len(problems)
    vals: dict[str, str] = {}
    for col in REQUIRED:
        v = row.get(col)
        if col == "seat" and isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            problems.append(Problem(file, f"{where}.{col}", "expected a non-empty value",
                                    None if v in (None, "") else v))
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
                                row.get("card_uids")))
    else:
        for u in uids:
            if not _UID.match(u):
                problems.append(Problem(file, f"{where}.card_uids",
                                        "expected 4-10 bytes of upper-case hex", u))
    flags: dict[str, bool] = {}
    for flag in _FLAGS:
        b = _bool(row.get(flag))
        if b is None:
            problems.append(Problem(file, f"{where}.{flag}", "expected true/false (or 1/0, yes/no)",
                                    row.get(flag)))
        flags[flag] = bool(b)
    row_room = row.get("room")
    if row_room not in (None, "") and norm_seat(row_room) != norm_seat(room_id):
        problems.append(Problem(file, f"{where}.room",
                                f"this candidate belongs to another room; this box is room {room_id}",
                                row_room))
    photo = row.get("photo") or ""
    if not isinstance(photo, str):
        problems.append(Problem(file, f"{where}.photo", "expected a file name", photo))
    if len(problems) > before:
        return None
    return Candidate(seat=norm_seat(vals["seat"]), ticket=vals["ticket"], name=vals["name"],
                     id_number=vals["id_number"], card_uids=tuple(uids or ()),
                     photo=str(photo).strip(), **flags)


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
                shown = mask_id(value) if col == "id_number" else value
                problems.append(Problem(file, f"{where}.{col}",
                                        f"duplicate {col}, already given in {first}; "
                                        "expected each to be unique in the room", shown))


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
        raise ConfigError([Problem(file, f"byte {e.start}", "expected UTF-8 text (save the file "
                                   "as CSV UTF-8, not GBK)")]) from e
    problems: list[Problem] = []
    file_room: Any = None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows = _rows_from_csv(text, file, problems)
    elif suffix == ".json":
        rows, file_room = _rows_from_json(text, file, problems)
    else:
        raise ConfigError([Problem(file, "(file)", "expected a .csv or .json seat plan", p.suffix)])
    if file_room is not None and norm_seat(file_room) != norm_seat(room_id):
        problems.append(Problem(file, "room", f"this plan is for another room; this box is room {room_id}",
                                file_room))
    good = [(where, c) for where, row in rows
            if (c := _candidate(where, row, file, room_id, problems)) is not None]
    _duplicates(rows, file, problems)
    if not rows and not problems:
        problems.append(Problem(file, "(file)", "expected at least one candidate"))
    if problems:
        raise ConfigError(problems)
    return SeatPlan(room=room_id, file=file, sha256=hashlib.sha256(blob).hexdigest(),
                    candidates=tuple(c for _, c in good))
