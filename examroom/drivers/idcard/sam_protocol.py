"""Frame codec of second-generation ID card readers (the SAM serial protocol).

Pure bytes in, bytes out, no I/O: the driver and the reader simulator share it,
so the simulator cannot drift from what the driver believes. The decoder never
trusts the line: anything that is not a whole, well-checksummed frame of a
plausible length is refused, counted and reported, and decoding resumes at the
next preamble.

Host to reader: ``AA AA AA 96 69 | LEN(2, BE) | CMD | PARA | DATA | CHK``.
Reader to host: ``AA AA AA 96 69 | LEN(2, BE) | SW1 SW2 SW3 | DATA | CHK``.
LEN counts every byte after itself, CHK included; CHK is the XOR of every byte
from LEN through the last data byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Callable, Generic, Mapping, TypeVar

from examroom.drivers.base import DeviceError, ProtocolError
from examroom.drivers.events import Identity

PREAMBLE = bytes.fromhex("AAAAAA9669")
_HEADER = len(PREAMBLE) + 2  # preamble + LEN

# Commands (CMD, PARA).
FIND_CARD = (0x20, 0x01)
SELECT_CARD = (0x20, 0x02)
READ_TEXT_PHOTO = (0x30, 0x01)
SAM_STATUS = (0x11, 0xFF)
SAM_ID = (0x12, 0xFF)
KNOWN_COMMANDS = {FIND_CARD: "find card", SELECT_CARD: "select card",
                  READ_TEXT_PHOTO: "read text and photo", SAM_STATUS: "SAM status",
                  SAM_ID: "SAM id"}

# SW3 status codes (SW1 and SW2 are 00 in every documented reply).
SW_OK = 0x90
SW_CARD_FOUND = 0x9F
SW_FIND_FAILED = 0x80
SW_SELECT_FAILED = 0x81
SW_READ_FAILED = 0x41
SW_BAD_CHECKSUM = 0x10
SW_BAD_LENGTH = 0x11
SW_BAD_COMMAND = 0x21
SW_SAM_FAULT = 0x60

# Lengths (LEN values). A command is CMD PARA [DATA] CHK; documented commands carry
# no data. The largest documented reply (text + photo + fingerprint) has LEN 2314:
# anything beyond 0x0A00 is noise, and waiting for it would stall the line.
MIN_COMMAND_LEN = 3
MAX_COMMAND_LEN = 64
MIN_REPLY_LEN = 4
MAX_REPLY_LEN = 0x0A00

TEXT_LEN = 256
PHOTO_LEN = 1024
SAM_ID_LEN = 16

# Text block: (field, byte offset, byte size), UTF-16LE padded with spaces.
TEXT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("name", 0, 30),
    ("sex_code", 30, 2),     # GB/T 2261.1 code, decoded into ``sex`` by SEX_NAMES
    ("nation_code", 32, 4),  # GB 3304 code, decoded into ``nation`` by NATION_NAMES
    ("birth", 36, 16),
    ("address", 52, 70),
    ("id_number", 122, 36),
    ("issuer", 158, 30),
    ("valid_from", 188, 16),
    ("valid_to", 204, 16),
)
_RESERVED = (220, 36)
_PAD = " ".encode("utf-16-le")

# The card holds codes; people (and the printed card) read words. GB/T 2261.1 sexes:
SEX_NAMES: Mapping[str, str] = {"0": "未知", "1": "男", "2": "女", "9": "未说明"}
# GB 3304 nationalities, 01-56 in the standard's order, as ID cards print them (without 族).
NATION_NAMES: Mapping[str, str] = {
    f"{i:02d}": n for i, n in enumerate((
        "汉 蒙古 回 藏 维吾尔 苗 彝 壮 布依 朝鲜 满 侗 瑶 白 土家 哈尼 哈萨克 傣 黎 傈僳 佤 畲 高山 拉祜 水 "
        "东乡 纳西 景颇 柯尔克孜 土 达斡尔 仫佬 羌 布朗 撒拉 毛南 仡佬 锡伯 阿昌 普米 塔吉克 怒 乌孜别克 "
        "俄罗斯 鄂温克 德昂 保安 裕固 京 塔塔尔 独龙 鄂伦春 赫哲 门巴 珞巴 基诺").split(), start=1)
} | {"97": "其他", "98": "外国血统中国籍人士"}


class ReaderStatusError(DeviceError):
    """The reader answered, with a status other than the one the command succeeds with."""

    def __init__(self, sw3: int, message: str) -> None:
        super().__init__(message)
        self.sw3 = sw3


class CardError(ReaderStatusError):
    """No card, or the card moved or could not be read: normal while people tap cards."""


class CommandRejected(ReaderStatusError, ProtocolError):
    """The reader refused our frame: line noise towards the reader, or a bug here."""


class SamFault(ReaderStatusError):
    """The SAM security module failed its self-test: the reader needs service."""


class UnexpectedStatus(ReaderStatusError, ProtocolError):
    """A status code this protocol does not define, or one that does not fit the command."""


_STATUS: dict[int, tuple[type[ReaderStatusError], str]] = {
    SW_FIND_FAILED: (CardError, "no card on the reader"),
    SW_SELECT_FAILED: (CardError, "card could not be selected (moved away?)"),
    SW_READ_FAILED: (CardError, "card could not be read (moved away?)"),
    SW_BAD_CHECKSUM: (CommandRejected, "reader saw a bad checksum in our command"),
    SW_BAD_LENGTH: (CommandRejected, "reader saw a bad length in our command"),
    SW_BAD_COMMAND: (CommandRejected, "reader does not know our command"),
    SW_SAM_FAULT: (SamFault, "SAM module self-test failed"),
}


@dataclass(frozen=True)
class Command:
    cmd: int
    para: int
    data: bytes = b""

    @property
    def code(self) -> tuple[int, int]:
        return (self.cmd, self.para)

    @property
    def size(self) -> int:
        return _HEADER + 2 + len(self.data) + 1


@dataclass(frozen=True)
class Reply:
    sw3: int
    data: bytes = b""
    sw1: int = 0
    sw2: int = 0

    @property
    def size(self) -> int:
        return _HEADER + 3 + len(self.data) + 1


def checksum(data: bytes) -> int:
    return reduce(xor, data, 0)


def _frame(payload: bytes) -> bytes:
    head = (len(payload) + 1).to_bytes(2, "big") + payload
    return PREAMBLE + head + bytes([checksum(head)])


def encode_command(command: Command | tuple[int, int]) -> bytes:
    if isinstance(command, tuple):
        command = Command(*command)
    return _frame(bytes([command.cmd, command.para]) + command.data)


def encode_reply(reply: Reply) -> bytes:
    return _frame(bytes([reply.sw1, reply.sw2, reply.sw3]) + reply.data)


def expected_status(code: tuple[int, int]) -> int:
    """Find card succeeds with 9F ("card found"); every other command with 90."""
    return SW_CARD_FOUND if code == FIND_CARD else SW_OK


def answers(reply: Reply, code: tuple[int, int]) -> bool:
    """Can ``reply`` be the answer to command ``code``? Its success status or a documented error
    can; another command's success cannot: that is a late answer to an earlier question."""
    return reply.sw3 == expected_status(code) or reply.sw3 in _STATUS


def check_status(reply: Reply, code: tuple[int, int]) -> Reply:
    """Return ``reply`` if it means success for command ``code``, else raise the matching error."""
    if reply.sw3 == expected_status(code):
        return reply
    what = KNOWN_COMMANDS.get(code, f"command {code[0]:02X} {code[1]:02X}")
    sw = f"SW {reply.sw1:02X} {reply.sw2:02X} {reply.sw3:02X}"
    if reply.sw3 in _STATUS:
        cls, meaning = _STATUS[reply.sw3]
        raise cls(reply.sw3, f"{what}: {meaning} ({sw})")
    raise UnexpectedStatus(reply.sw3, f"{what}: unexpected status ({sw})")


# Reasons a decoder refuses bytes.
GARBAGE = "garbage"            # bytes outside any frame
BAD_LENGTH = "bad_length"      # a preamble followed by an impossible LEN
BAD_CHECKSUM = "bad_checksum"  # a whole frame whose CHK does not match
SHORT_FRAME = "short_frame"    # a frame cut short (by the next preamble, or by a timeout)


@dataclass(frozen=True)
class Refusal:
    reason: str
    nbytes: int


F = TypeVar("F", Command, Reply)


class FrameDecoder(Generic[F]):
    """Incremental decoder: feed whatever the line gave, get the whole frames it completed."""

    def __init__(self, parse: Callable[[bytes], F], min_len: int, max_len: int,
                 on_refused: Callable[[Refusal], None] | None = None) -> None:
        self._parse = parse
        self._min_len = min_len
        self._max_len = max_len
        self._on_refused = on_refused
        self._buf = bytearray()
        self._junk = 0  # garbage dropped but not reported yet: one report per run of junk
        self.refused: dict[str, int] = {}    # reason -> times
        self.refused_bytes = 0

    def feed(self, data: bytes) -> list[F]:
        buf = self._buf
        buf += data
        frames: list[F] = []
        while buf:
            start = buf.find(PREAMBLE)
            if start < 0:
                # Keep a tail that may be the start of a preamble still arriving.
                self._drop(GARBAGE, len(buf) - _preamble_prefix_at_end(buf))
                break
            self._drop(GARBAGE, start)
            self._report_junk()
            if len(buf) < _HEADER:
                break
            length = int.from_bytes(buf[5:7], "big")
            if not self._min_len <= length <= self._max_len:
                nxt = buf.find(PREAMBLE, 1)
                self._drop(BAD_LENGTH, nxt if nxt > 0 else len(buf) - _preamble_prefix_at_end(buf))
                continue
            end = _HEADER + length
            if len(buf) < end:
                break
            if checksum(buf[5:end - 1]) != buf[end - 1]:
                # A preamble inside the claimed span means this frame was cut short by
                # the next one: resync there rather than swallow a good frame.
                nxt = buf.find(PREAMBLE, 1, end)
                if nxt > 0:
                    self._drop(SHORT_FRAME, nxt)
                else:
                    self._drop(BAD_CHECKSUM, end)
                continue
            frames.append(self._parse(bytes(buf[_HEADER:end - 1])))
            del buf[:end]
        return frames

    def flush(self) -> list[F]:
        """Give up on what is pending (the line went quiet): refuse it, keep any frame behind it."""
        frames: list[F] = []
        while self._buf:
            nxt = self._buf.find(PREAMBLE, 1)
            reason = SHORT_FRAME if self._buf.startswith(PREAMBLE) else GARBAGE
            self._drop(reason, nxt if nxt > 0 else len(self._buf))
            frames += self.feed(b"")
        self._report_junk()
        return frames

    def _drop(self, reason: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        del self._buf[:nbytes]
        if reason == GARBAGE:
            self._junk += nbytes
        else:
            self._report_junk()
            self._report(reason, nbytes)

    def _report_junk(self) -> None:
        if self._junk:
            junk, self._junk = self._junk, 0
            self._report(GARBAGE, junk)

    def _report(self, reason: str, nbytes: int) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.refused_bytes += nbytes
        if self._on_refused is not None:
            self._on_refused(Refusal(reason, nbytes))


def _parse_reply(payload: bytes) -> Reply:
    return Reply(payload[2], payload[3:], payload[0], payload[1])


def _parse_command(payload: bytes) -> Command:
    return Command(payload[0], payload[1], payload[2:])


def reply_decoder(on_refused: Callable[[Refusal], None] | None = None) -> FrameDecoder[Reply]:
    return FrameDecoder(_parse_reply, MIN_REPLY_LEN, MAX_REPLY_LEN, on_refused)


def command_decoder(on_refused: Callable[[Refusal], None] | None = None) -> FrameDecoder[Command]:
    return FrameDecoder(_parse_command, MIN_COMMAND_LEN, MAX_COMMAND_LEN, on_refused)


def _preamble_prefix_at_end(buf: bytes | bytearray) -> int:
    for k in range(min(len(PREAMBLE) - 1, len(buf)), 0, -1):
        if buf.endswith(PREAMBLE[:k]):
            return k
    return 0


def decode_text(block: bytes) -> dict[str, str]:
    """The text block's fields, plus ``sex`` and ``nation`` in words beside their codes.

    A code outside its table gives an empty word and keeps the code: the card is still the
    holder's card (the check-in does not rest on these fields), and guessing would be worse.
    """
    if len(block) != TEXT_LEN:
        raise ProtocolError(f"text block is {len(block)} bytes, expected {TEXT_LEN}")
    fields: dict[str, str] = {}
    for name, offset, size in TEXT_FIELDS:
        try:
            fields[name] = block[offset:offset + size].decode("utf-16-le").strip(" \x00")
        except UnicodeDecodeError:
            raise ProtocolError(f"text field {name!r} is not UTF-16LE") from None
    fields["sex"] = SEX_NAMES.get(fields["sex_code"], "")
    fields["nation"] = NATION_NAMES.get(fields["nation_code"], "")
    return fields


def encode_text(fields: Mapping[str, str]) -> bytes:
    """The reader's text block (codes, not words, for sex and nation); what the simulator sends."""
    out = bytearray()
    for name, offset, size in TEXT_FIELDS:
        raw = fields[name].encode("utf-16-le")
        if len(raw) > size:
            raise ValueError(f"ID card field {name!r} holds at most {size // 2} characters")
        out += raw + _PAD * ((size - len(raw)) // 2)
    out += _PAD * (_RESERVED[1] // 2)
    return bytes(out)


def decode_identity(data: bytes) -> Identity:
    """Data of a read-text-and-photo reply -> Identity; lengths are checked, not trusted."""
    if len(data) < 4:
        raise ProtocolError(f"read reply data is {len(data)} bytes, too short for its lengths")
    text_len = int.from_bytes(data[0:2], "big")
    photo_len = int.from_bytes(data[2:4], "big")
    if text_len != TEXT_LEN or photo_len > PHOTO_LEN:
        raise ProtocolError(f"read reply announces text {text_len} and photo {photo_len} bytes, "
                            f"expected {TEXT_LEN} and at most {PHOTO_LEN}")
    if len(data) != 4 + text_len + photo_len:
        raise ProtocolError(f"read reply data is {len(data)} bytes, lengths announce {4 + text_len + photo_len}")
    fields = decode_text(data[4:4 + text_len])
    return Identity(**fields, photo_wlt=bytes(data[4 + text_len:]))


def encode_identity(identity: Identity) -> bytes:
    """Data of the read-text-and-photo reply for ``identity`` (a blank photo when it has none).

    Its words must be those its codes decode to: a simulated card that says 女 over code 1
    would test nothing but the simulator's own mistake.
    """
    for word, code, names in (("sex", "sex_code", SEX_NAMES), ("nation", "nation_code", NATION_NAMES)):
        if names.get(getattr(identity, code), "") != getattr(identity, word):
            raise ValueError(f"ID card {word} {getattr(identity, word)!r} is not what "
                             f"{code} {getattr(identity, code)!r} decodes to")
    text = encode_text({name: getattr(identity, name) for name, _, _ in TEXT_FIELDS})
    photo = identity.photo_wlt or bytes(PHOTO_LEN)
    if len(photo) > PHOTO_LEN:
        raise ValueError(f"photo is {len(photo)} bytes, a card holds at most {PHOTO_LEN}")
    return TEXT_LEN.to_bytes(2, "big") + len(photo).to_bytes(2, "big") + text + photo


def format_sam_id(data: bytes) -> str:
    """SAM ids are shown as upper-case hex: vendors format the 16 bytes differently."""
    if len(data) != SAM_ID_LEN:
        raise ProtocolError(f"SAM id is {len(data)} bytes, expected {SAM_ID_LEN}")
    return data.hex().upper()
