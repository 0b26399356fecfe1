"""What free text may carry when it leaves the box.

A proctor types what is in front of them, often a candidate's card: a note,
a suspect's reason or an incident's text can hold a full ID number or a name.
Every such text goes through one ``Scrubber`` before it is published.
"""
from __future__ import annotations

from typing import Iterable

from examroom.drivers.gb11643 import mask_ids_in_text


class Scrubber:
    """Masks full ID numbers and blanks every name of the room's seat plan (not only the
    candidate's a text is about: the neighbour's card is on the same desk)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        # longest first, so a name that contains another is blanked whole
        self._names = sorted({n for n in names if n}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        out = mask_ids_in_text(str(text or ""))
        for name in self._names:
            out = out.replace(name, "***")
        return out
