"""The one scrub of free text (notes, suspect reasons, incident text) and the refusal of what is
published as typed (signatures, snapshot tags): every form a person can write an ID number or a
candidate's name in is caught; ordinary text (digests, card UIDs, seats, tickets, phones) is not.

The rules are in examroom/agent/privacy.py and examroom/drivers/gb11643.py."""
from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examroom.agent.privacy import Scrubber, has_id_like_digits
from examroom.drivers.gb11643 import check_digit, fold, mask_id, mask_ids_in_text

ID = "410105200806060353"  # valid check digit
IDX = "41010520080707006X"  # valid, X check character
assert check_digit(ID[:17]) == ID[17] and check_digit(IDX[:17]) == "X"
NAMES = ["张三", "李四", "王五", "吕芳", "单雄信", "欧阳娜娜"]
scrub = Scrubber(NAMES)


def fw(s: str) -> str:
    """Full-width digits and letters."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def leaks_id(text: str, id_number: str) -> bool:
    """The number can be read back: its characters in order, once everything else is dropped."""
    return id_number in re.sub(r"[^0-9X]", "", fold(text)[0].upper())


# -- ID numbers ---------------------------------------------------------------------------------

SPLIT = [
    ("4101 0520 0806 0603 53", ID),                   # read out in fours
    ("410105-20080606-0353", ID),                    # region, birth date, sequence
    ("410105.20080606.0353", ID),
    ("410105 - 2008 0606 - 0353", ID),               # separators of up to three characters
    ("4 1 0 1 0 5 2 0 0 8 0 6 0 6 0 3 5 3", ID),     # digit by digit
    ("410105\u300020080606\u30000353", ID),          # ideographic (full-width) spaces
    ("410105\u00a020080606\u00a00353", ID),          # no-break spaces
    ("410105–20080606—0353", ID),                    # en and em dashes
    ("410105·20080606·0353", ID),                    # middle dots
    ("410105_20080606_0353", ID),
    ("4101\u200b05200806060353", ID),                # a zero-width space hides nothing
    ("410105\n20080606\n0353", ID),                  # across lines
    (fw(ID), ID),                                    # full-width digits
    (fw("4101 0520 0806 0603 53"), ID),
    ("４１０１０５－２００８０６０６－０３５３", ID),   # full-width hyphens
    ("٤١٠١٠٥٢٠٠٨٠٦٠٦٠٣٥٣", ID),                       # Arabic-Indic digits
    (IDX, IDX),
    (IDX.lower(), IDX),                              # lower-case check character
    (IDX[:17] + "Ｘ", IDX),                           # full-width X
    ("41010520080707006 x", IDX),                    # the check character split off
    ("4101 0520 0807 0700 6X", IDX),
]


@pytest.mark.parametrize("text,number", SPLIT)
def test_a_split_or_disguised_number_is_masked_as_mask_id_has_it(text, number):
    assert scrub(text) == mask_ids_in_text(text) == mask_id(number)
    assert has_id_like_digits(text)


@pytest.mark.parametrize("text,expected", [
    (f"{ID}abc", f"{mask_id(ID)}abc"),                      # letters after
    (f"ID{ID}", f"ID{mask_id(ID)}"),                        # letters before (D is a hex digit)
    (f"abc{ID}def", f"abc{mask_id(ID)}def"),                # hex letters both sides: not a digest
    (f"{ID}xiaoming", f"{mask_id(ID)}xiaoming"),            # an x after 18 digits is a word's
    (f"{IDX[:17]}Xabc", f"{mask_id(IDX)}abc"),              # the X after 17 is the check character
    (f"身份证号{ID}请核对", f"身份证号{mask_id(ID)}请核对"),
    (f"({ID})", f"({mask_id(ID)})"),
    ("P2 4101-0520-0806-0603-53", f"P2 {mask_id(ID)}"),    # the number beside it keeps its place
    ("4101 0520 0806 0603 53 seat 5", f"{mask_id(ID)} seat 5"),
    ("4101 0520 0806 0603 53 5", f"{mask_id(ID)} 5"),
    (f"202641010101 {ID}", f"202641010101 {mask_id(ID)}"),  # a ticket number beside it
    (f"{ID} {IDX.lower()}", f"{mask_id(ID)} {mask_id(IDX)}"),
    (ID[:17], mask_id(ID[:17])),                            # 17 digits determine the 18th
    (ID[:16] + " x", mask_id(ID[:16] + "X")),               # 16 and a check character: a typo
    (ID + "1", mask_id(ID + "1")),                          # a stray digit glued on: masked whole
])
def test_an_id_among_letters_and_numbers(text, expected):
    assert scrub(text) == expected
    assert not leaks_id(scrub(text), ID) and not leaks_id(scrub(text), IDX)


SHA = hashlib.sha256(b"snapshot").hexdigest()
DIGEST_WITH_DIGITS = "ab" + "12345678901234567890" + "cd" * 21  # 64 hex characters, a 20-digit run


@pytest.mark.parametrize("text", [
    SHA, f"sha256={SHA}", SHA.upper(), hashlib.sha1(b"x").hexdigest(), hashlib.md5(b"x").hexdigest(),
    DIGEST_WITH_DIGITS,                 # a digest is never looked into (it is not typed by a person)
    "04A1B2C3", "04A1B2C3D404", "04A1B2C3D4E5F60718", "04A1B2C3D4E5F6071829",  # card UIDs, 8-20 hex
    "0412345678901234",                 # an 8-byte UID of decimal digits only: 16 < 17
    "seat 12", "座位12", "ticket 202641010101", "13800138000", "138 0013 8000", "+86 138-0013-8000",
    "0371-6388 1234", "1780000000000",  # a landline; milliseconds since 1970
    "202641010101 202641010102",        # two ticket numbers: a list, not a split number
    "13800138000 13900139000 13700137000",
    "2026-06-07 09:00:00.123", "2026-06-07T09:00:00+08:00", "10.0.0.12",
    mask_id(ID), mask_id(IDX), f"id {mask_id(ID)} seat 3",  # masked already
    "P1", "proctor-A", "Ｐ１", "监考员甲", "x 1 2 3", "",
])
def test_what_is_not_an_id_number_is_left_exactly_as_typed(text):
    assert mask_ids_in_text(text) == text
    assert scrub(text) == text  # character for character: a signature like this one is accepted


@pytest.mark.parametrize("text,expected", [
    ("P1", False), ("proctor-A", False), ("staff 20231187", False), ("seat-12", False),
    ("checkin-eng-e2e-10", False), ("13800138000", False), ("138-0013-8000", False),
    ("04A1B2C3D404", False), ("202641010101", False), ("20260607-0930", False), (SHA, False),
    ("410105080606035", True),          # a first-generation, 15-digit number
    (ID[:16], True),                    # a truncated number
    ("4101-0520-0806-0603", True),
    ("202641010101 202641010102", True),  # not masked in a note, but no tag or signature needs it
    (DIGEST_WITH_DIGITS, True),         # the scrub leaves a digest alone; a signature may not be one
    (f"P2 {fw('4101 0520 0806 0603 53')}", True),
])
def test_has_id_like_digits(text, expected):
    assert has_id_like_digits(text) is expected


def test_a_hyphenated_id_as_a_signature_is_refused():
    """checkin.py refuses a signature when scrubbing changes it."""
    for sig in ("P2 4101-0520-0806-0603-53", "4101-0520-0806-0603-53", fw(ID), f"P2/{ID}x"):
        assert scrub(sig) != sig and has_id_like_digits(sig), sig
    for sig in ("P1", "P2", "proctor-B", "王老师", "Teacher Zhang", "staff 20231187"):
        assert scrub(sig) == sig and not has_id_like_digits(sig), sig


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "张三", "张 三", "张\u3000三", "张  三", "张·三", "张-三", "张\u200b三",
    "zhangsan", "zhang san", "Zhang San", "ZHANG SAN", "ZhangSan", "zhang-san", "Zhang, San", "Zhang_San",
    "San Zhang", "san zhang", "SAN ZHANG", "Sanzhang",  # given name first
    "Zhāng Sān", "ｚｈａｎｇ ｓａｎ", "Ｚｈａｎｇ\u3000Ｓａｎ",  # tones; full-width letters and space
    "Lv Fang", "lü fang", "Lu Fang", "Lyu Fang", "Fang Lyu",  # 吕: ü written four ways
    "Shan Xiongxin", "Xiongxin Shan", "Shan Xiong-Xin",    # 单 read as the surname it is
    "欧阳娜娜", "欧阳 娜娜", "Ouyang Nana", "Nana Ouyang", "Ou-Yang Na-Na",  # a two-character surname
])
def test_a_name_in_any_written_form_is_blanked(text):
    assert scrub(text) == "***"
    assert scrub(f"seen: {text}, seat 3") == "seen: ***, seat 3"


@pytest.mark.parametrize("text,expected", [
    ("考生zhangsan迟到", "考生***迟到"),        # pinyin touching Chinese characters
    ("zhangsan01 logged in", "***01 logged in"),  # digits are not letters
    ("王五王五", "******"),                    # each occurrence
    ("Li Si and Wang Wu swapped", "*** and *** swapped"),
    ("李四 Si Li 李 四 lisi", "*** *** *** ***"),
])
def test_names_in_a_sentence(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize("text", [
    "zhangsanfeng", "Zhang", "San", "the quick brown fox", "Shanghai", "sandwich", "wangwuzhang",
    "Lisi" + "ng", "Mr Zhang said three", "xiongxin", "ouyang", "nana", "Fang", "three seats",
    "张", "三", "张先生", "李老师",
])
def test_a_surname_a_given_name_or_a_longer_word_alone_is_not_a_name(text):
    assert scrub(text) == text


def test_one_character_names_are_blanked_only_as_written():
    s = Scrubber(["王"])
    assert s("王来了") == "***来了" and s("wang lai le") == "wang lai le"


def test_no_names_no_pinyin():
    assert Scrubber()("Zhang San 张三") == "Zhang San 张三"
    assert Scrubber(["", "  ", "张三 "])("张 三") == "***"


# -- properties ---------------------------------------------------------------------------------

SEPARATORS = ["", "", "", " ", "-", ".", "\u3000", " - ", "\u200b", "·", "_", "\u00a0", "－", "\n"]
digits17 = st.text(alphabet="0123456789", min_size=17, max_size=17)
# prefix and suffix of at most 6 characters: with 18 more they stay shorter than a digest (32)
around = st.text(alphabet="abcdefxXIDPz 张三考生:(),0123456789", max_size=6)


@st.composite
def written_ids(draw):
    first17 = draw(digits17)
    number = first17 + check_digit(first17)
    out = []
    for i, c in enumerate(number):
        if i:
            out.append(draw(st.sampled_from(SEPARATORS)))
        if c == "X":
            c = draw(st.sampled_from(["X", "x", "Ｘ"]))
        out.append(fw(c) if draw(st.booleans()) else c)
    return number, draw(around) + "".join(out) + draw(around)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written_ids())
def test_any_valid_number_with_any_separators_is_masked(case):
    number, text = case
    out = scrub(text)
    assert not leaks_id(out, number), (text, out)
    assert has_id_like_digits(text)
    assert scrub(out) == out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list("0123456789 -.\u3000xX张三李四王五吕芳abcdefhgnsiwuyZS*#,\n\u200b")
                                + ["zhang", "san", "li", "si", "wang", "wu", "Lv", "fang", "410105", "20080606",
                                   "0353", ID, IDX.lower(), "4101 0520", "\uff14"]), max_size=30).map("".join))
def test_scrub_is_idempotent(text):
    once = scrub(text)
    assert scrub(once) == once, (text, once)
    assert mask_ids_in_text(mask_ids_in_text(text)) == mask_ids_in_text(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_text_with_no_long_digit_run_and_no_name_comes_back_unchanged(text):
    folded = fold(text)[0]
    digits = len(re.sub(r"[^0-9]", "", folded))
    names = re.search("[张三李四王五吕芳单雄信欧阳娜]", folded) or \
        re.search(r"(?i)(zhang|san|li|si|wang|wu|fang|shan|xiong|xin|ou|yang|na)", folded)
    if digits < 15 and not names:
        assert scrub(text) == text
