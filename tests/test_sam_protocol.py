"""SAM frame codec: published check vectors, resync, refusals, status codes, card text."""
from __future__ import annotations

from dataclasses import replace

import pytest

from examroom.drivers.base import DeviceError, ProtocolError
from examroom.drivers.events import Identity
from examroom.drivers.gb11643 import check_digit
from examroom.drivers.idcard.sam_protocol import (
    BAD_CHECKSUM, BAD_LENGTH, FIND_CARD, GARBAGE, KNOWN_COMMANDS, PHOTO_LEN, READ_TEXT_PHOTO,
    NATION_NAMES, SAM_ID, SAM_STATUS, SELECT_CARD, SEX_NAMES, SHORT_FRAME, TEXT_LEN, CardError, Command,
    CommandRejected, Refusal, Reply, SamFault, UnexpectedStatus, answers, check_status, command_decoder,
    decode_identity,
    decode_text, encode_command, encode_identity, encode_reply, encode_text, format_sam_id,
    reply_decoder,
)

NO_CARD = bytes.fromhex("AAAAAA9669000400008084")
FIND_OK = encode_reply(Reply(0x9F, bytes(4)))


def _id(first17: str) -> str:
    return first17 + check_digit(first17)


ZHANG = Identity(name="张三丰", sex="男", sex_code="1", nation="汉", nation_code="01", birth="19491231",
                 address="北京市东城区考试路1号院2号楼", id_number="11010519491231002X",
                 issuer="北京市公安局东城分局", valid_from="20150101", valid_to="长期",
                 photo_wlt=bytes(range(256)) * 4)


class Collect:
    def __init__(self) -> None:
        self.refusals: list[Refusal] = []

    def __call__(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)

    @property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.refusals]


# -- encoding ---------------------------------------------------------------------------------

def test_find_card_vector() -> None:
    assert encode_command(FIND_CARD) == bytes.fromhex("AAAAAA96690003200122")


@pytest.mark.parametrize("code,hexframe", [
    (SELECT_CARD, "AAAAAA96690003200221"),
    (READ_TEXT_PHOTO, "AAAAAA96690003300132"),
    (SAM_STATUS, "AAAAAA9669000311FFED"),
    (SAM_ID, "AAAAAA9669000312FFEE"),
])
def test_every_command_frames_with_len_3_and_xor_checksum(code: tuple[int, int], hexframe: str) -> None:
    assert encode_command(code) == bytes.fromhex(hexframe)


def test_no_card_vector_decodes_and_means_card_error() -> None:
    [reply] = reply_decoder().feed(NO_CARD)
    assert reply == Reply(0x80)
    assert encode_reply(reply) == NO_CARD
    with pytest.raises(CardError, match="no card"):
        check_status(reply, FIND_CARD)


def test_read_reply_len_matches_published_header() -> None:
    frame = encode_reply(Reply(0x90, encode_identity(ZHANG)))
    # Public captures start a text+photo reply with: AA AA AA 96 69 05 08 00 00 90 01 00 04 00
    assert frame[:14] == bytes.fromhex("AAAAAA9669050800009001000400")
    assert len(frame) == 7 + 0x0508


def test_command_and_reply_round_trip() -> None:
    cmd = Command(0x20, 0x01, b"\x01\x02")
    assert command_decoder().feed(encode_command(cmd)) == [cmd]
    reply = Reply(0x90, bytes(range(200)), sw1=0x01, sw2=0x02)
    assert reply_decoder().feed(encode_reply(reply)) == [reply]
    assert reply.size == len(encode_reply(reply))


# -- status codes -----------------------------------------------------------------------------

@pytest.mark.parametrize("sw3,code,error,words", [
    (0x90, SELECT_CARD, None, ""),
    (0x9F, FIND_CARD, None, ""),
    (0x80, FIND_CARD, CardError, "no card"),
    (0x81, SELECT_CARD, CardError, "could not be selected"),
    (0x41, READ_TEXT_PHOTO, CardError, "could not be read"),
    (0x10, SAM_STATUS, CommandRejected, "bad checksum"),
    (0x11, SAM_STATUS, CommandRejected, "bad length"),
    (0x21, SAM_ID, CommandRejected, "does not know our command"),
    (0x60, SAM_STATUS, SamFault, "self-test failed"),
    (0x33, SAM_STATUS, UnexpectedStatus, "unexpected status"),
    (0x90, FIND_CARD, UnexpectedStatus, "unexpected status"),  # success code of another command
])
def test_every_sw3_code(sw3: int, code: tuple[int, int], error: type[Exception] | None, words: str) -> None:
    reply = Reply(sw3)
    if error is None:
        assert check_status(reply, code) is reply
        return
    with pytest.raises(error, match=words) as info:
        check_status(reply, code)
    assert isinstance(info.value, DeviceError)
    assert info.value.sw3 == sw3
    assert f"{sw3:02X}" in str(info.value) and KNOWN_COMMANDS[code] in str(info.value)


@pytest.mark.parametrize("sw3,code,expected", [
    (0x9F, FIND_CARD, True), (0x80, FIND_CARD, True), (0x90, FIND_CARD, False),  # a late select/read reply
    (0x90, SELECT_CARD, True), (0x9F, SELECT_CARD, False), (0x81, SELECT_CARD, True),
    (0x90, READ_TEXT_PHOTO, True), (0x9F, READ_TEXT_PHOTO, False), (0x60, READ_TEXT_PHOTO, True),
    (0x33, SAM_STATUS, False),
])
def test_answers_tells_a_reply_to_this_command_from_another(sw3: int, code: tuple[int, int],
                                                           expected: bool) -> None:
    assert answers(Reply(sw3), code) is expected


def test_rejections_are_protocol_errors_and_card_errors_are_not() -> None:
    assert issubclass(CommandRejected, ProtocolError) and issubclass(CommandRejected, ValueError)
    assert not issubclass(CardError, ProtocolError)


# -- decoder: resync and refusals ------------------------------------------------------------

def test_resync_after_garbage_reports_each_run_once() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    frames = dec.feed(b"\x01\x02\x03" + NO_CARD + b"junk\xAA\xAA" + FIND_OK)
    assert frames == [Reply(0x80), Reply(0x9F, bytes(4))]
    assert seen.refusals == [Refusal(GARBAGE, 3), Refusal(GARBAGE, 6)]
    assert dec.refused == {GARBAGE: 2} and dec.refused_bytes == 9


def test_byte_at_a_time_gives_the_same_frames_and_holds_back_a_partial_preamble() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    stream = b"zz" + NO_CARD + FIND_OK
    frames = []
    for i in range(len(stream)):
        frames += dec.feed(stream[i:i + 1])
    assert frames == [Reply(0x80), Reply(0x9F, bytes(4))]
    assert seen.refusals == [Refusal(GARBAGE, 2)]
    assert dec.feed(b"\xAA\xAA\xAA\x96") == [] and seen.refusals == [Refusal(GARBAGE, 2)]


def test_bad_checksum_is_refused_not_believed_and_next_frame_decodes() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    corrupt = FIND_OK[:-1] + bytes([FIND_OK[-1] ^ 0x01])
    assert dec.feed(corrupt + NO_CARD) == [Reply(0x80)]
    assert seen.refusals == [Refusal(BAD_CHECKSUM, len(FIND_OK))]


def test_flipped_data_bit_is_caught_by_checksum() -> None:
    frame = bytearray(encode_reply(Reply(0x90, encode_identity(ZHANG))))
    frame[500] ^= 0x40
    seen = Collect()
    assert reply_decoder(seen).feed(bytes(frame)) == []
    assert seen.reasons == [BAD_CHECKSUM]


def test_short_frame_cut_by_next_preamble_is_counted_and_next_frame_kept() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    truncated = FIND_OK[:10]
    assert dec.feed(truncated + NO_CARD) == [Reply(0x80)]
    assert seen.refusals == [Refusal(SHORT_FRAME, 10)]


def test_flush_refuses_a_frame_that_never_completed_and_keeps_one_behind_it() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    big = encode_reply(Reply(0x90, encode_identity(ZHANG)))
    assert dec.feed(big[:300] + NO_CARD) == []  # still waiting for the 1288 announced bytes
    assert dec.flush() == [Reply(0x80)]
    assert seen.refusals == [Refusal(SHORT_FRAME, 300)]
    assert dec.flush() == []


def test_absurd_length_is_refused_without_waiting_for_it() -> None:
    seen = Collect()
    dec = reply_decoder(seen)
    assert dec.feed(bytes.fromhex("AAAAAA9669FFFF0000") + NO_CARD) == [Reply(0x80)]
    assert seen.refusals == [Refusal(BAD_LENGTH, 9)]
    seen.refusals.clear()
    assert dec.feed(bytes.fromhex("AAAAAA96690002") + NO_CARD) == [Reply(0x80)]  # too short for SW1-3 + CHK
    assert seen.refusals == [Refusal(BAD_LENGTH, 7)]


def test_command_decoder_limits_are_its_own() -> None:
    seen = Collect()
    dec = command_decoder(seen)
    assert dec.feed(encode_reply(Reply(0x90, bytes(100)))) == []  # LEN 104: no command is that long
    assert seen.reasons[0] == BAD_LENGTH


# -- card text -------------------------------------------------------------------------------

def _field(text: str, size: int) -> bytes:
    raw = text.encode("utf-16-le")
    return raw + " ".encode("utf-16-le") * ((size - len(raw)) // 2)


def test_text_fields_at_their_byte_offsets() -> None:
    block = bytearray(" ".encode("utf-16-le") * 128)
    id_number = _id("41010519900101123")
    block[0:30] = _field("欧阳娜娜", 30)
    block[30:32] = _field("2", 2)
    block[32:36] = _field("01", 4)
    block[36:52] = _field("19900101", 16)
    block[52:122] = _field("河南省郑州市金水区", 70)
    block[122:158] = _field(id_number, 36)
    block[158:188] = _field("郑州市公安局金水分局", 30)
    block[188:204] = _field("20200101", 16)
    block[204:220] = _field("20400101", 16)
    fields = decode_text(bytes(block))
    assert fields == {"name": "欧阳娜娜", "sex_code": "2", "sex": "女", "nation_code": "01", "nation": "汉",
                      "birth": "19900101",
                      "address": "河南省郑州市金水区", "id_number": id_number,
                      "issuer": "郑州市公安局金水分局", "valid_from": "20200101", "valid_to": "20400101"}
    assert encode_text(fields) == bytes(block)


def _text_with(sex_code: str, nation_code: str) -> bytes:
    return encode_text({"name": "某人", "sex_code": sex_code, "nation_code": nation_code, "birth": "20000101",
                        "address": "", "id_number": "", "issuer": "", "valid_from": "", "valid_to": ""})


@pytest.mark.parametrize("code,word", [("0", "未知"), ("1", "男"), ("2", "女"), ("9", "未说明"), ("5", ""), ("", "")])
def test_sex_code_is_decoded_per_gb_t_2261_1_and_kept(code: str, word: str) -> None:
    fields = decode_text(_text_with(code, "01"))
    assert (fields["sex_code"], fields["sex"]) == (code, word)


@pytest.mark.parametrize("code,word", [
    ("01", "汉"), ("02", "蒙古"), ("03", "回"), ("05", "维吾尔"), ("08", "壮"), ("10", "朝鲜"), ("11", "满"),
    ("15", "土家"), ("22", "畲"), ("29", "柯尔克孜"), ("30", "土"), ("37", "仡佬"), ("43", "乌孜别克"),
    ("46", "德昂"), ("52", "鄂伦春"), ("55", "珞巴"), ("56", "基诺"), ("97", "其他"), ("98", "外国血统中国籍人士"),
    ("00", ""), ("57", ""), ("99", ""), ("1", ""),  # not GB 3304 codes: the code stays, no word is guessed
])
def test_nation_code_is_decoded_per_gb_3304_and_kept(code: str, word: str) -> None:
    fields = decode_text(_text_with("1", code))
    assert (fields["nation_code"], fields["nation"]) == (code, word)


def test_code_tables_are_complete() -> None:
    assert sorted(SEX_NAMES) == ["0", "1", "2", "9"]
    assert sorted(NATION_NAMES) == [f"{i:02d}" for i in range(1, 57)] + ["97", "98"]
    assert len(set(NATION_NAMES.values())) == 58


def test_encoder_refuses_words_that_contradict_codes() -> None:
    with pytest.raises(ValueError, match="sex '女'"):
        encode_identity(replace(ZHANG, sex="女"))
    with pytest.raises(ValueError, match="nation '汉'"):
        encode_identity(replace(ZHANG, nation_code="03"))
    with pytest.raises(ValueError, match="sex"):
        encode_identity(replace(ZHANG, sex_code=""))  # a word without its code


def test_text_that_is_not_utf16_is_refused() -> None:
    block = bytearray(encode_text({n: "" for n in ("name", "sex_code", "nation_code", "birth", "address",
                                                   "id_number", "issuer", "valid_from", "valid_to")}))
    block[0:2] = b"\x00\xD8"  # a lone high surrogate
    with pytest.raises(ProtocolError, match="name"):
        decode_text(bytes(block))
    with pytest.raises(ProtocolError, match="256"):
        decode_text(bytes(block[:200]))


def test_identity_round_trip_with_photo_and_check_digit() -> None:
    data = encode_identity(ZHANG)
    assert len(data) == 4 + TEXT_LEN + PHOTO_LEN
    assert decode_identity(data) == ZHANG
    bad = replace(ZHANG, id_number="110105194912310021", photo_wlt=b"")
    decoded = decode_identity(encode_identity(bad))
    assert decoded.id_valid is False
    assert decoded.photo_wlt == bytes(PHOTO_LEN)


def test_identity_lengths_are_checked_not_trusted() -> None:
    data = encode_identity(ZHANG)
    with pytest.raises(ProtocolError, match="lengths announce"):
        decode_identity(data[:-1])
    with pytest.raises(ProtocolError, match="announces text"):
        decode_identity(b"\x01\x01" + data[2:])
    with pytest.raises(ProtocolError, match="too short"):
        decode_identity(b"\x01")


def test_encoder_refuses_what_a_card_cannot_hold() -> None:
    with pytest.raises(ValueError, match="name"):
        encode_identity(replace(ZHANG, name="名" * 16))
    with pytest.raises(ValueError, match="photo"):
        encode_identity(replace(ZHANG, photo_wlt=bytes(PHOTO_LEN + 1)))


def test_identity_repr_masks_the_number() -> None:
    assert "11010519491231002X" not in repr(decode_identity(encode_identity(ZHANG)))


def test_sam_id_format() -> None:
    assert format_sam_id(bytes(range(16))) == "000102030405060708090A0B0C0D0E0F"
    with pytest.raises(ProtocolError):
        format_sam_id(bytes(3))
