"""GB 11643 citizen identity numbers: check digit (ISO 7064 MOD 11-2) and masking.

Masking lives here, beside the validation, because drivers must never log a
full number either: first 6 and last 4 characters kept, the rest starred.
"""
from __future__ import annotations

import re

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_SHAPE = re.compile(r"^\d{17}[\dX]$")


def check_digit(first17: str) -> str:
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need the first 17 digits of an ID number")
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def is_valid(id_number: str) -> bool:
    n = id_number.strip().upper()
    return bool(_SHAPE.match(n)) and check_digit(n[:17]) == n[17]


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
