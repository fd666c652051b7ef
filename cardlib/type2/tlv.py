"""TLV blocks of the Type 2 data area, as pure functions over tag memory (NFC Forum T2T 1.0 §2.3).

Memory offsets are byte offsets in the tag image (page 0 byte 0 = 0); the data
area starts at byte 16 (page 4). Every read is bounded by the caller's data
area end: bytes past it are never parsed (field cases T2-1, T2-2, T2-6).

TLV blocks: NULL (0x00), Lock Control (0x01), Memory Control (0x02), NDEF
Message (0x03), Proprietary (0xFD), Terminator (0xFE). Length is one byte
(0..254) or ``FF hh ll`` (255..65534) (T2T 1.0 §2.3, field case T2-3). Lock
and Memory Control TLVs declare reserved bytes that the TLV stream flows around.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cardlib.type2.cc import DATA_AREA_OFFSET
from cardlib.type2.errors import CapacityExceeded, CorruptTlv, TagError

#: Lengths from this value up use the 3-byte form ``FF hh ll`` (T2T 1.0 §2.3.3).
LONG_LENGTH_MARK = 0xFF
#: Largest length the 3-byte form may carry (0xFFFF is RFU).
MAX_TLV_LENGTH = 0xFFFE
#: Value size of Lock and Memory Control TLVs (T2T 1.0 §2.3.1, §2.3.2).
CONTROL_TLV_LENGTH = 3


class TlvType(enum.IntEnum):
    """TLV block types (T2T 1.0 §2.3)."""

    NULL = 0x00
    LOCK_CONTROL = 0x01
    MEMORY_CONTROL = 0x02
    NDEF = 0x03
    PROPRIETARY = 0xFD
    TERMINATOR = 0xFE


class Truncated(TagError):
    """The memory image given ends before the TLV walk could finish.

    Not a tag fault: the caller read too little. :ivar needed: the image length
    (bytes from offset 0) that lets the walk proceed.
    """

    def __init__(self, needed: int) -> None:
        super().__init__(f"memory image too short: need bytes up to offset {needed}")
        self.needed = needed


@dataclass(frozen=True)
class ReservedArea:
    """Bytes a Lock or Memory Control TLV reserves: ``[start, start + size)`` memory offsets."""

    kind: TlvType
    start: int
    size: int

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.start + self.size


@dataclass(frozen=True)
class Tlv:
    """One TLV block found by the walk.

    :ivar type: TLV type byte (may be an unknown/RFU value).
    :ivar offset: memory offset of the T byte.
    :ivar length: value length in bytes (0 for NULL and Terminator).
    :ivar length_form: 1 or 3 (bytes of L), 0 for NULL/Terminator.
    :ivar value_offset: memory offset of the first value byte.
    """

    type: int
    offset: int
    length: int
    length_form: int
    value_offset: int


@dataclass(frozen=True)
class NdefTlv:
    """Where the NDEF Message TLV lies and what it holds.

    :ivar tlv: the NDEF TLV block (offset, length form, value offset).
    :ivar message: the NDEF message bytes (reserved bytes skipped).
    :ivar value_offsets_end: memory offset just past the last value byte.
    :ivar data_area_end: memory offset just past the data area used for the walk.
    :ivar reserved: reserved areas in force (from Lock/Memory Control TLVs).
    :ivar blocks: every TLV block before the NDEF TLV, in order.
    """

    tlv: Tlv
    message: bytes
    value_offsets_end: int
    data_area_end: int
    reserved: tuple[ReservedArea, ...]
    blocks: tuple[Tlv, ...]


def control_area(kind: TlvType, value: bytes) -> ReservedArea:
    """Decode a Lock or Memory Control TLV value (T2T 1.0 §2.3.1, §2.3.2).

    ``value[0]`` = PageAddr (upper nibble) | ByteOffset (lower nibble);
    ``value[1]`` = size (bits for Lock Control, bytes for Memory Control; 0 = 256);
    ``value[2]`` lower nibble = log2(bytes per page) (the NTAG213 ``A0 0C 34``
    names byte 10 × 16 = 160, page 40 - same reading as nfcpy ``tt2.py``).
    """
    page_addr, byte_offset = value[0] >> 4, value[0] & 0x0F
    page_size = 1 << (value[2] & 0x0F)
    amount = value[1] or 256
    size = (amount + 7) // 8 if kind == TlvType.LOCK_CONTROL else amount
    return ReservedArea(kind, page_addr * page_size + byte_offset, size)


class _Cursor:
    """Walks memory offsets forward, skipping reserved bytes, bounded by *end*."""

    def __init__(self, memory: bytes, end: int, reserved: list[ReservedArea]) -> None:
        self.memory = memory
        self.end = end
        self.reserved = reserved
        self.pos = DATA_AREA_OFFSET

    def skip_reserved(self) -> None:
        moved = True
        while moved:
            moved = False
            for area in self.reserved:
                if self.pos in area:
                    self.pos = area.start + area.size
                    moved = True

    def take(self, count: int, tlv_offset: int, what: str) -> tuple[bytes, int]:
        """Take *count* non-reserved bytes; return them and the offset just past the last one."""
        out = bytearray()
        for _ in range(count):
            self.skip_reserved()
            if self.pos >= self.end:
                raise CorruptTlv(tlv_offset, f"{what} runs past the end of the data area (byte {self.end})")
            if self.pos >= len(self.memory):
                raise Truncated(min(self.end, self.pos + count - len(out)))
            out.append(self.memory[self.pos])
            self.pos += 1
        return bytes(out), self.pos

    def room(self) -> int:
        """Non-reserved bytes left from the current position to the end."""
        return sum(1 for off in range(self.pos, self.end) if not any(off in a for a in self.reserved))


def walk(memory: bytes, data_area_end: int) -> NdefTlv | None:
    """Walk the TLV blocks of the data area and return the first NDEF TLV.

    Skips NULL TLVs, honours Lock/Memory Control reserved areas, skips
    Proprietary and unknown (RFU) TLVs by their length, and stops at the
    Terminator: bytes after it are ignored (field case T2-2).

    :param memory: tag memory image from offset 0 (may stop early; see :class:`Truncated`).
    :param data_area_end: memory offset just past the data area (16 + usable size).
    :returns: the NDEF TLV, or None when the area holds no NDEF TLV (Terminator or end reached).
    :raises CorruptTlv: a TLV length (or control value) runs past the data area, a
        control TLV has the wrong length.
    :raises Truncated: *memory* ends before the walk could finish.
    """
    reserved: list[ReservedArea] = []
    blocks: list[Tlv] = []
    cur = _Cursor(memory, data_area_end, reserved)
    while True:
        cur.skip_reserved()
        if cur.pos >= data_area_end:
            return None
        offset = cur.pos
        (t,), _ = cur.take(1, offset, "TLV type")
        if t == TlvType.NULL:
            blocks.append(Tlv(t, offset, 0, 0, cur.pos))
            continue
        if t == TlvType.TERMINATOR:
            return None
        (l0,), _ = cur.take(1, offset, f"length of TLV type 0x{t:02X}")
        form = 1
        length = l0
        if l0 == LONG_LENGTH_MARK:
            raw, _ = cur.take(2, offset, f"3-byte length of TLV type 0x{t:02X}")
            length, form = int.from_bytes(raw, "big"), 3
        cur.skip_reserved()
        value_offset = cur.pos
        room = cur.room()
        if length > room:
            raise CorruptTlv(
                offset,
                f"TLV type 0x{t:02X} length {length} (0x{length:X}) is larger than the "
                f"{data_area_end - DATA_AREA_OFFSET}-byte data area allows here ({room} bytes left)",
            )
        tlv = Tlv(t, offset, length, form, value_offset)
        if t in (TlvType.LOCK_CONTROL, TlvType.MEMORY_CONTROL):
            if length != CONTROL_TLV_LENGTH:
                raise CorruptTlv(offset, f"{TlvType(t).name} TLV length is {length}, must be 3")
            value, _ = cur.take(length, offset, "control TLV value")
            reserved.append(control_area(TlvType(t), value))
            blocks.append(tlv)
            continue
        value, end = cur.take(length, offset, f"value of TLV type 0x{t:02X}")
        if t == TlvType.NDEF:
            return NdefTlv(tlv, value, end, data_area_end, tuple(reserved), tuple(blocks))
        blocks.append(tlv)


def tlv_header(t: int, length: int) -> bytes:
    """Encode T and L; the 3-byte form is used from exactly 255 (T2T 1.0 §2.3.3, field case T2-3).

    :raises CapacityExceeded: *length* > 65534.
    """
    if length < 0:
        raise ValueError("negative TLV length")
    if length > MAX_TLV_LENGTH:
        raise CapacityExceeded(f"TLV value of {length} bytes exceeds {MAX_TLV_LENGTH}")
    if length < LONG_LENGTH_MARK:
        return bytes((t, length))
    return bytes((t, LONG_LENGTH_MARK)) + length.to_bytes(2, "big")


def ndef_tlv(message: bytes, terminator: bool = True) -> bytes:
    """``03 L message [FE]``: the NDEF Message TLV (and Terminator TLV) for *message*."""
    out = tlv_header(TlvType.NDEF, len(message)) + message
    return out + bytes((TlvType.TERMINATOR,)) if terminator else out


def place(image: bytearray, start: int, data: bytes, end: int, reserved: tuple[ReservedArea, ...]) -> int:
    """Write *data* into *image* from *start*, flowing around reserved bytes.

    :returns: the offset just past the last byte written.
    :raises CapacityExceeded: the bytes do not fit before *end*.
    """
    pos = start
    for byte in data:
        while any(pos in area for area in reserved):
            pos += 1
        if pos >= end:
            raise CapacityExceeded(f"{len(data)} bytes do not fit between byte {start} and byte {end}")
        image[pos] = byte
        pos += 1
    return pos


def capacity(start: int, end: int, reserved: tuple[ReservedArea, ...]) -> int:
    """Largest NDEF message for a TLV at *start*: header, Terminator and reserved bytes counted (T2-3).

    :param start: memory offset of the NDEF TLV's T byte.
    :param end: memory offset just past the data area.
    """
    room = sum(1 for off in range(start, end) if not any(off in a for a in reserved)) - 1  # Terminator
    short = min(room - 2, LONG_LENGTH_MARK - 1)
    long = min(room - 4, MAX_TLV_LENGTH)
    return max(0, long if long >= LONG_LENGTH_MARK else short)
