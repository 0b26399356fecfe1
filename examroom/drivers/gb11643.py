"""GB 11643 citizen identity numbers: check digit (ISO 7064 MOD 11-2) and masking.

Masking lives here, beside the validation, because drivers must never log a
full number either: first 6 and last 4 characters kept, the rest starred.
Only ASCII digits count: Python's ``\\d`` and ``str.isdigit`` also accept
full-width and other scripts' digits, which no card carries and which would
otherwise pass as a valid number.
"""
from __future__ import annotations

import re

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_SHAPE = re.compile(r"[0-9]{17}[0-9X]")


def has_id_shape(text: str) -> bool:
    """17 ASCII digits and a check character (digit or X, either case): what an ID number looks
    like, check digit not verified (a wrong one is a verdict of its own, not another kind of card)."""
    return bool(_SHAPE.fullmatch(text.strip().upper()))


def check_digit(first17: str) -> str:
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("need the first 17 digits of an ID number")
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def is_valid(id_number: str) -> bool:
    """Shape and check digit only: the birth date inside is not checked here."""
    n = id_number.strip().upper()
    return has_id_shape(n) and check_digit(n[:17]) == n[17]


def mask_id(id_number: str | None) -> str:
    """``410105199001011234`` -> ``410105********1234``; short strings are starred whole."""
    if not id_number:
        return ""
    n = id_number.strip()
    if len(n) <= 10:
        return "*" * len(n)
    return n[:6] + "*" * (len(n) - 10) + n[-4:]


_FULL_ID = re.compile(r"(?<![0-9])\d{17}[\dXx](?![0-9A-Za-z])")


def mask_ids_in_text(text: str) -> str:
    """Mask every full ID number inside free text (a note, a proctor's reason)."""
    return _FULL_ID.sub(lambda m: mask_id(m.group(0)), text)
