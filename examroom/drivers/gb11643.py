"""GB 11643 citizen identity numbers: check digit (ISO 7064 MOD 11-2) and masking.

Masking lives here, beside the validation, because drivers must never log a
full number either: first 6 and last 4 characters kept, the rest starred.
Only ASCII digits count as a number's own (``has_id_shape``, ``is_valid``):
Python's ``\\d`` and ``str.isdigit`` also accept full-width and other scripts'
digits, which no card carries and which would otherwise pass as a valid
number. Free text is the other way round: what a person can read as an ID
number is one, so ``mask_ids_in_text`` folds such digits to ASCII first.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

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


# -- ID numbers inside free text ---------------------------------------------------------------
#
# Free text is matched on its *folded* form, and only the matched spans of the original text
# are rewritten (text with no ID number comes back unchanged, character for character: a
# proctor's signature is refused when scrubbing changes it). Folding, one character at a time:
# NFKC (full-width digits, spaces and hyphens become ASCII ones, circled digits plain), then
# marks and invisible format characters (zero-width space, soft hyphen) dropped, then any
# script's decimal digit read as its ASCII digit.
#
# A *digit chain* is groups of ASCII digits joined by 1 to 3 separators (whitespace of any
# kind, hyphens and dashes, dots, middle dots, underscores), with a check character X/x after
# the last group (attached, or after separators when no letter or digit follows it). Letters
# around a chain do not hide it (``ID410105...``, ``...0353abc``). A chain holding 17
# characters or more is, or holds, an ID number: 17 digits determine the 18th, and a number
# with a typo or a stray digit is still the person's. In a chain, groups that make exactly
# one number are masked (valid 18 first, then any 18, then 17), so a number beside it keeps
# its place (``P2 4101-0520-...``, ``... 53 seat 5``); any rest of 17 digits or more is masked
# whole. The masked form is ``mask_id`` of the characters, X upper case, separators gone:
# ``4101 0520 0806 0603 53`` -> ``410105********0353``, the form ``id_masked`` has everywhere.
# Left alone, so ordinary text survives:
#   * a hex digest (a word of exactly 32/40/56/64/96/128 hex characters with a letter a-f:
#     MD5, SHA-1, SHA-2); card UIDs (8-20 hex characters) never hold 17 digits;
#   * a chain whose every group has 10 to 16 digits: a list of numbers (tickets, phones), not
#     a number split for reading (no single group is an ID, and no ID splits that way);
#   * a number masked already (6 digits, 7 stars or more, 4 characters): scrubbing twice
#     changes nothing.

_SEP_CHARS = r"\s\-\u2010-\u2015\u2212\u2027.\u00b7\u2022\u30fb_"
SEPARATOR = f"[{_SEP_CHARS}]"  # a character an ID number (or a name) may be split by, in folded text
_CHAIN = re.compile(rf"(?P<digits>[0-9]+(?:{SEPARATOR}{{1,3}}[0-9]+)*)"
                    rf"(?P<x>[Xx]|{SEPARATOR}{{1,3}}[Xx](?![0-9A-Za-z]))?")
_OPAQUE = re.compile(r"(?P<masked>[0-9]{6}\*{7,}[0-9]{3}[0-9Xx])|(?<![0-9A-Za-z])[0-9A-Fa-f]{32,128}(?![0-9A-Za-z])")
_DIGEST_LENGTHS = {32, 40, 56, 64, 96, 128}
_GROUPS = re.compile(r"[0-9]+")
_DROP = {"Mn", "Me", "Cf"}
ID_MIN_CHARS = 17  # digits and check character, separators not counted


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    if c.isascii():
        return c
    out = []
    for ch in unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", c)):
        if unicodedata.category(ch) in _DROP:
            continue
        d = unicodedata.decimal(ch, None)
        out.append(str(d) if d is not None else ch)
    return "".join(out)


def fold(text: str) -> tuple[str, list[int]]:
    """The text as scanning sees it, and for each of its characters the index of the original
    character it came from (a character may fold to none, one or several)."""
    parts: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        f = _fold_char(c)
        parts.append(f)
        origin.extend([i] * len(f))
    return "".join(parts), origin


def replace_folded(text: str, origin: list[int], spans: list[tuple[int, int, str]]) -> str:
    """Rewrite ``text`` where folded spans ``(start, end, replacement)`` (sorted, disjoint) came from."""
    out, pos = [], 0
    for a, b, rep in spans:
        s, e = origin[a], origin[b - 1] + 1
        if s < pos:  # two spans from one original character: already replaced
            continue
        out += [text[pos:s], rep]
        pos = e
    out.append(text[pos:])
    return "".join(out)


def _opaque(folded: str) -> str:
    """``folded`` with every hex digest and every already masked number blanked (same length),
    so no chain starts or ends in one: scrubbing scrubbed text changes nothing."""
    def blank(m: re.Match[str]) -> str:
        w = m.group(0)
        if m.group("masked") or (len(w) in _DIGEST_LENGTHS and not w.isdigit()):
            return "#" * len(w)
        return w
    return _OPAQUE.sub(blank, folded)


def _is_list_of_numbers(groups: list[str]) -> bool:
    return len(groups) > 1 and all(10 <= len(g) <= 16 for g in groups)


Group = tuple[int, int, str]  # a chain's group: start, end (in folded text), digits


def _chains(folded: str) -> list[tuple[list[Group], int | None]]:
    """Every digit chain: its groups, and where its check X ends when one follows the last."""
    return [([(g.start(), g.end(), g.group(0)) for g in _GROUPS.finditer(folded, m.start(), m.end("digits"))],
             m.end() if m.group("x") is not None else None)
            for m in _CHAIN.finditer(folded)]


def _windows(groups: list[Group], x_end: int | None) -> list[tuple[int, int, str]]:
    """The ID numbers of one chain, as ``(first group, last group, characters)``. A chain is
    often an ID number beside another number (``P2 4101-0520-...``, ``... 53 seat 5``): groups
    that make exactly one are taken, valid numbers first, then any 18 characters, then 17 (the
    number without its check character); what is left of the chain is masked whole if it
    still holds 17 digits. An X after the last group counts only where it makes a number of
    18 (``...0353xiaoming`` is a number and a word)."""
    n = len(groups)
    taken = [False] * n
    found = []
    tests = (lambda c: len(c) == 18 and is_valid(c), lambda c: len(c) == 18, lambda c: len(c) == 17)
    for test in tests:
        for i in range(n):
            digits = ""
            for j in range(i, n):
                if taken[j] or len(digits) >= 18:
                    break
                digits += groups[j][2]
                forms = [digits + "X", digits] if j == n - 1 and x_end is not None else [digits]
                chars = next((c for c in forms if test(c)), None)
                if chars is not None:
                    found.append((i, j, chars))
                    taken[i:j + 1] = [True] * (j + 1 - i)
                    break
    i = 0
    while i < n:  # what is left: runs of groups not taken
        j = i
        while j < n and not taken[j]:
            j += 1
        digits = "".join(g[2] for g in groups[i:j])
        if len(digits) >= ID_MIN_CHARS:
            found.append((i, j - 1, digits))
        i = j + 1
    return sorted(found)


def id_chains(folded: str) -> list[tuple[int, int, str]]:
    """``(start, end, characters)`` of every ID number in ``folded``."""
    found = []
    for groups, x_end in _chains(_opaque(folded)):
        if sum(len(g[2]) for g in groups) + (x_end is not None) < ID_MIN_CHARS or \
                _is_list_of_numbers([g[2] for g in groups]):
            continue
        for i, j, chars in _windows(groups, x_end):
            end = x_end if chars.endswith("X") else groups[j][1]
            found.append((groups[i][0], end, chars))
    return found


def longest_digit_run(text: str) -> int:
    """Digits in the longest digit chain of ``text``: separators allowed, and hex digests are
    looked into (whatever gets refused for holding one is never a digest)."""
    return max((sum(len(g[2]) for g in groups) for groups, _ in _chains(fold(str(text))[0])), default=0)


def mask_ids_in_text(text: str) -> str:
    """Mask every ID number inside free text (a note, a proctor's reason), in any form the
    rule above finds; text without one is returned unchanged."""
    text = str(text)
    folded, origin = fold(text)
    spans = [(a, b, mask_id(chars)) for a, b, chars in id_chains(folded)]
    return replace_folded(text, origin, spans) if spans else text
