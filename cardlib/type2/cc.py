"""Capability container (page 3) of an NFC Forum Type 2 tag (NFC Forum T2T 1.0 §2.2, §6.1)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cardlib.type2.errors import CorruptCc, NotFormatted

CC_PAGE = 3
#: Byte offset of the data area (page 4) in tag memory (T2T 1.0 §2.1).
DATA_AREA_OFFSET = 16
#: CC2 counts the data area in units of 8 bytes (T2T 1.0 §2.2).
CC2_UNIT = 8


class CcMagic(enum.IntEnum):
    """CC0: NDEF magic number (T2T 1.0 §2.2)."""

    NDEF = 0xE1


class CcAccess(enum.IntEnum):
    """CC3 nibbles: read access (upper) and write access (lower) (T2T 1.0 §2.2)."""

    GRANTED = 0x0
    NONE = 0xF


#: Mapping version 1.0 (CC1 = 0x10); any 1.x is accepted.
CC_VERSION_1_0 = 0x10


@dataclass(frozen=True)
class CapabilityContainer:
    """The 4-byte CC ``E1 | version | size/8 | access`` (T2T 1.0 §2.2).

    :ivar raw: the 4 bytes read from page 3.
    """

    raw: bytes

    @property
    def magic(self) -> int:
        return self.raw[0]

    @property
    def version(self) -> int:
        """CC1: major version in the upper nibble, minor in the lower."""
        return self.raw[1]

    @property
    def size_byte(self) -> int:
        """CC2 as stored."""
        return self.raw[2]

    @property
    def data_area_size(self) -> int:
        """Declared data area size in bytes: 8 × CC2, for any CC2 value (field case T2-5)."""
        return CC2_UNIT * self.raw[2]

    @property
    def read_access(self) -> int:
        return self.raw[3] >> 4

    @property
    def write_access(self) -> int:
        return self.raw[3] & 0x0F

    @property
    def writable(self) -> bool:
        """True when CC3's write nibble grants write access (0x0)."""
        return self.write_access == CcAccess.GRANTED

    @classmethod
    def parse(cls, raw: bytes) -> CapabilityContainer:
        """Parse page 3.

        :param raw: at least 4 bytes, page 3 first.
        :raises NotFormatted: all four bytes are zero (a blank tag).
        :raises CorruptCc: magic is not 0xE1, the major version is not 1 or read access is denied.
        """
        if len(raw) < 4:
            raise CorruptCc(f"capability container needs 4 bytes, got {len(raw)}")
        cc = cls(bytes(raw[:4]))
        if cc.raw == bytes(4):
            raise NotFormatted("capability container is empty: the tag is not NDEF-formatted")
        if cc.magic != CcMagic.NDEF:
            raise CorruptCc(f"CC0 is 0x{cc.magic:02X}, not the NDEF magic 0xE1")
        if cc.version >> 4 != CC_VERSION_1_0 >> 4:
            raise CorruptCc(f"CC1 mapping version {cc.version >> 4}.{cc.version & 0xF} is not supported")
        if cc.read_access != CcAccess.GRANTED:
            raise CorruptCc(f"CC3 read access nibble 0x{cc.read_access:X} is not 0x0")
        return cc

    @classmethod
    def build(cls, data_area_size: int, writable: bool = True) -> CapabilityContainer:
        """A mapping-1.0 CC for a data area of *data_area_size* bytes (multiple of 8, ≤ 2040)."""
        if data_area_size % CC2_UNIT or not 0 < data_area_size <= CC2_UNIT * 0xFF:
            raise ValueError(f"data area size {data_area_size} is not a multiple of 8 in 8..2040")
        access = CcAccess.GRANTED if writable else CcAccess.NONE
        return cls(bytes((CcMagic.NDEF, CC_VERSION_1_0, data_area_size // CC2_UNIT, access)))


@dataclass(frozen=True)
class DataArea:
    """The data area cardlib will use, after cross-checking the CC with the chip (field cases T2-2, T2-5).

    :ivar cc: the capability container read.
    :ivar size: usable data area in bytes = min(CC size, chip user memory); never read or write past it.
    :ivar chip_size: the chip's user memory in bytes (None when the chip is unknown).
    :ivar mis_issued: the CC claims more than the chip has: the card must be replaced
        (CC bits are one-time programmable).
    :ivar read_only: writing is forbidden (CC3 write nibble or lock bits).
    :ivar issuance_errors: human-readable findings for the issuance desk.
    """

    cc: CapabilityContainer
    size: int
    chip_size: int | None
    mis_issued: bool
    read_only: bool
    issuance_errors: tuple[str, ...]

    @property
    def end(self) -> int:
        """Byte offset just past the usable data area."""
        return DATA_AREA_OFFSET + self.size


def check_data_area(cc: CapabilityContainer, chip_size: int | None, locked: bool = False) -> DataArea:
    """Cross-check the CC with the chip's user memory and lock state (T2T 1.0 §2.2; NTAG21x datasheet §8.5).

    :param cc: the parsed CC.
    :param chip_size: user memory in bytes from GET_VERSION (144/504/888), or None if unknown.
    :param locked: True when the static/dynamic lock bits lock the data area.
    """
    errors: list[str] = []
    size = cc.data_area_size
    mis_issued = False
    if chip_size is not None and size > chip_size:
        mis_issued = True
        errors.append(f"CC declares {size} bytes but the chip has {chip_size}: card mis-issued")
        size = chip_size
    read_only = not cc.writable or locked
    if not cc.writable and not locked:
        errors.append("CC3 marks the tag read-only but the lock bits are clear: issuance error")
    return DataArea(cc, size, chip_size, mis_issued, read_only, tuple(errors))
