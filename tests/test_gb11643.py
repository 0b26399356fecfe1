"""GB 11643 check digit against vectors that do not come from the code under test.

Every other test builds its ID numbers with ``check_digit`` itself, so a wrong
implementation would pass them all. Here the expected characters come from the
standard's own examples and from sums worked out by hand below.
"""
from __future__ import annotations

import pytest

from examroom.drivers.gb11643 import check_digit, has_id_shape, is_valid

# GB 11643-1999 as published: weights W_i = 2^(18-i) mod 11, check characters by sum mod 11.
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"  # index = sum mod 11

# (number, weighted sum of the first 17 digits, worked by hand)
VECTORS = [
    # The standard's example. 1*7+1*9+0*10+1*5+0*8+5*4+1*2+9*1+4*6+9*3+1*7+2*9+3*10+1*5+0*8+0*4+2*2
    # = 7+9+0+5+0+20+2+9+24+27+7+18+30+5+0+0+4 = 167; 167 mod 11 = 2 -> 'X'
    ("11010519491231002X", 167),
    # The standard's second example. 28+36+0+25+16+16+2+8+48+0+0+9+0+5+0+0+2 = 195; mod 11 = 8 -> '4'
    ("440524188001010014", 195),
    # 28+9+0+5+0+20+2+9+54+0+0+9+0+5+8+8+6 = 163; mod 11 = 9 -> '3'
    ("410105199001011233", 163),
    # Last digit 3 -> 4 adds 2: 165 = 15*11; mod 11 = 0 -> '1'
    ("410105199001011241", 165),
    # 21+45+0+10+0+12+4+0+0+0+0+9+0+5+72+36+18 = 232; mod 11 = 1 -> '0'
    ("350203200001019990", 232),
]


@pytest.mark.parametrize("number,weighted_sum", VECTORS)
def test_published_and_hand_computed_vectors(number: str, weighted_sum: int) -> None:
    first17, expected = number[:17], number[17]
    assert sum(int(d) * w for d, w in zip(first17, WEIGHTS)) == weighted_sum  # the hand sum holds
    assert CHECK_CHARS[weighted_sum % 11] == expected
    assert check_digit(first17) == expected
    assert is_valid(number)


@pytest.mark.parametrize("number,_sum", VECTORS)
def test_vectors_satisfy_iso_7064_mod_11_2(number: str, _sum: int) -> None:
    """The same rule stated as ISO 7064 does: all 18 characters (X = 10) weighted by 2^(17-i)
    sum to 1 mod 11. A second formulation, independent of the weight and character tables."""
    values = [10 if c == "X" else int(c) for c in number]
    assert sum(v * pow(2, 17 - i) for i, v in enumerate(values)) % 11 == 1


@pytest.mark.parametrize("number,_sum", VECTORS)
def test_every_other_check_character_is_refused(number: str, _sum: int) -> None:
    wrong = [c for c in "0123456789X" if c != number[17]]
    assert len(wrong) == 10
    for c in wrong:
        assert not is_valid(number[:17] + c), number[:17] + c


def test_lower_case_x_and_surrounding_spaces_are_accepted() -> None:
    assert is_valid("11010519491231002x")
    assert is_valid(" 11010519491231002X\n")


@pytest.mark.parametrize("bad", [
    "",
    "11010519491231002",      # 17 characters
    "11010519491231002XX",    # 19
    "110105194912310024X",    # 19, a valid-looking tail
    "1101051949123100X2",     # X not last
    "11010519491231002Y",     # not a check character
    "1101051949-231002X",     # punctuation
    "１１０１０５１９４９１２３１００２X",  # full-width digits: int() reads them, no card has them
    "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X",     # Arabic-Indic digits, same trap
])
def test_malformed_numbers_are_refused(bad: str) -> None:
    assert not is_valid(bad)
    assert not has_id_shape(bad)


@pytest.mark.parametrize("bad", ["", "1101051949123100", "110105194912310020", "1101051949123100A",
                                 "１１０１０５１９４９１２３１００２"])
def test_check_digit_needs_17_ascii_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="17 digits"):
        check_digit(bad)


def test_shape_is_not_validity() -> None:
    """A wrong check digit still looks like an ID number (it is an invalid_id verdict, not a UID)."""
    assert has_id_shape("110105194912310021") and not is_valid("110105194912310021")
    assert not has_id_shape("04A1B2C3D4E5F60718")  # a 9-byte card UID in hex
