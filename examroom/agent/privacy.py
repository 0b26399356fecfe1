"""What free text may carry when it leaves the box.

A proctor types what is in front of them, often a candidate's card: a note,
a suspect's reason or an incident's text can hold a full ID number or a name.
Every such text goes through one ``Scrubber`` before it is published, and a
text that is published as typed (a proctor's signature, a snapshot's tag that
becomes a file name) is refused when the scrubber would change it or when
``has_id_like_digits`` finds a long run of digits in it.

The rules, all matched on the text's folded form (``gb11643.fold``: NFKC, so
full-width digits, letters and spaces are plain ones; accents, zero-width and
soft-hyphen characters dropped), and rewriting only what matched, so a text
with nothing personal comes back unchanged, character for character:

ID numbers: see ``gb11643.mask_ids_in_text``. A run of 17 digits or more (a
check X included), split or not by spaces, hyphens, dots, middle dots or
underscores, with letters around it or not, becomes ``410105********0353``;
a hex digest (SHA-256 and the like) and a list of 10-16-digit numbers (tickets,
phones) are left alone.

Names, every one of the room's seat plan (not only the candidate's a text is
about: the neighbour's card is on the same desk), each occurrence -> ``***``:

* as written, anywhere (Chinese has no word boundaries): ``张三``;
* names of 2 characters or more also with up to 3 separators between any two
  characters (spaces of any width, hyphens, dots, middle dots, underscores):
  ``张 三``, ``张　三``, ``张·三``;
* names of 2 Chinese characters or more also in pinyin without tones, every
  reading of every character (a surname's reading is often not the common one:
  单 shan, 曾 zeng), ü as v, u or yu, case-insensitive, syllables joined by up
  to 3 separators (those above, commas and apostrophes) or none, surname first
  (``zhangsan``, ``Zhang San``, ``ZHANG-SAN``, ``Zhang, San``) or given name
  first (``San Zhang``, ``Xiaoming Wang``; a name of 3 characters or more also
  as if its surname had 2: ``Nana Ouyang``), and as whole words only: no Latin
  letter may touch it on either side (``zhangsanfeng`` is not 张三's,
  ``考生zhangsan迟到`` and ``zhangsan01`` are). A surname or a given name alone
  is not a name. A name whose pinyin spells ordinary words blanks those words
  too: privacy first. One-character names (blanked only as written), initials
  (``Z.S.``) and Wade-Giles or other romanisations are not matched.
"""
from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from examroom.drivers.gb11643 import (SEPARATOR, fold, longest_digit_run, mask_ids_in_text,
                                      replace_folded)

BLANK = "***"
ID_LIKE_DIGITS = 15  # a first-generation ID number has 15 digits; no staff number or tag needs as many
_NAME_SEP = f"{SEPARATOR}{{0,3}}"
_PINYIN_SEP = r"[\s\-\u2010-\u2015\u2212\u2027.\u00b7\u2022\u30fb_,'\u2019]{0,3}"
_SEP_CHAR = re.compile(SEPARATOR)
_SYLLABLE = re.compile(r"[a-z]+")


def has_id_like_digits(text: str) -> bool:
    """A run of 15 digits or more, separators allowed (``4101-0520-0806-0603``), or anything
    the ID scrub would mask: what a signature or a snapshot tag may not hold, since either is
    published as typed. Stricter than the scrub: a truncated number, two ticket numbers and
    the digits inside a hex digest all count."""
    text = str(text or "")
    return longest_digit_run(text) >= ID_LIKE_DIGITS or mask_ids_in_text(text) != text


def _is_han(c: str) -> bool:
    return unicodedata.name(c, "").startswith("CJK ") and c.isalpha()


def _latin(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _written(units: list[str]) -> str:
    """The name as characters, with up to 3 separators between any two."""
    body = _NAME_SEP.join(re.escape(u) for u in units)
    return (r"(?<![A-Za-z])" if _latin(units[0]) else "") + body + (r"(?![A-Za-z])" if _latin(units[-1]) else "")


def _reading_table() -> dict[int, str]:
    """pypinyin's table of every character's readings, loaded on its own: ``import pypinyin``
    also loads its phrase dictionary, 55 MB of a room box's memory for good (the sim room's
    idle RSS went from 83 to 175 MB), where this table is 12 MB and only while a seat plan's
    names are turned into patterns."""
    spec = importlib.util.find_spec("pypinyin")  # a dependency: its table, not its package
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pypinyin is not installed", name="pypinyin")
    table = importlib.util.spec_from_file_location("_examroom_pinyin_table",
                                                   Path(spec.origin).with_name("pinyin_dict.py"))
    assert table is not None and table.loader is not None
    module = importlib.util.module_from_spec(table)
    table.loader.exec_module(module)
    return module.pinyin_dict


def _toneless(reading: str) -> str:
    """``lǘ`` -> ``lv`` (pypinyin's own toneless spelling of ü), ``zhōng`` -> ``zhong``."""
    decomposed = unicodedata.normalize("NFD", reading.lower()).replace("u\u0308", "v")
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _readings(units: list[str], table: dict[int, str]) -> list[list[str]] | None:
    """Every toneless pinyin reading of each character, or None when one has none."""
    out = []
    for ch in units:
        found = [_toneless(r) for r in table.get(ord(ch), "").split(",") if r]
        found = list(dict.fromkeys(r for r in found if _SYLLABLE.fullmatch(r)))
        if not found:
            return None
        out.append(found)
    return out


def _syllable(readings: list[str]) -> str:
    return "(?:" + "|".join(re.escape(r).replace("v", "(?:v|u|yu)") for r in readings) + ")"


def _pinyin(units: list[str], table: dict[int, str]) -> str | None:
    """The name in pinyin, surname first or last, as whole words; None if it has no pinyin."""
    readings = _readings(units, table)
    if readings is None:
        return None
    syl = [_syllable(r) for r in readings]
    orders = [syl] + [syl[k:] + syl[:k] for k in range(1, min(len(syl), 3))]
    return r"(?<![A-Za-z])(?:" + "|".join(_PINYIN_SEP.join(o) for o in orders) + r")(?![A-Za-z])"


class Scrubber:
    """Masks full ID numbers and blanks every name of the room's seat plan, in the forms the
    module's rules list; ``scrub(text) != text`` tells that a text holds one."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        alternatives: list[tuple[int, int, str]] = []  # (characters, written (1) or pinyin (0), pattern)
        table: dict[int, str] | None = None  # loaded for the first Chinese name, dropped after
        for name in sorted({n.strip() for n in names if isinstance(n, str) and n.strip()}):
            units = [c for c in fold(name)[0] if not _SEP_CHAR.match(c)]
            if not units:
                continue
            alternatives.append((len(units), 1, _written(units) if len(units) >= 2 else re.escape(units[0])))
            if len(units) >= 2 and all(_is_han(u) for u in units):
                table = table if table is not None else _reading_table()
                p = _pinyin(units, table)
                if p is not None:
                    alternatives.append((len(units), 0, p))
        # longest first, so a name that contains another is blanked whole (a stable sort: the
        # same names make the same pattern, whatever order they came in)
        alternatives.sort(key=lambda a: (-a[0], -a[1]))
        self._names = re.compile("|".join(p for _, _, p in alternatives), re.IGNORECASE) if alternatives else None

    def blank_names(self, text: str) -> str:
        """Blank the names only (``__call__`` masks ID numbers first)."""
        if self._names is None:
            return text
        folded, origin = fold(text)
        spans = [(m.start(), m.end(), BLANK) for m in self._names.finditer(folded) if m.end() > m.start()]
        return replace_folded(text, origin, spans) if spans else text

    def __call__(self, text: str) -> str:
        return self.blank_names(mask_ids_in_text(str(text or "")))

