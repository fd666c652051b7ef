"""NTAG21x chip identification and memory maps (NTAG213/215/216 datasheet §8.5, §10.1)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cardlib.type2.errors import BadResponse

PAGE_SIZE = 4
#: READ returns 4 pages (NTAG21x datasheet §10.2).
READ_PAGES = 4
#: Static lock bytes: page 2, bytes 2-3 (datasheet §8.5.2).
STATIC_LOCK_PAGE = 2
FIRST_USER_PAGE = 4
GET_VERSION_LENGTH = 8
UID_LENGTH = 7


class ChipType(enum.Enum):
    """Chips cardlib knows."""

    NTAG213 = "NTAG213"
    NTAG215 = "NTAG215"
    NTAG216 = "NTAG216"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ChipInfo:
    """What the chip is and where its memory regions lie (pages are 4 bytes).

    :ivar chip: chip type.
    :ivar total_pages: number of addressable pages (0 .. total_pages-1).
    :ivar user_pages: ``range`` of user-memory pages (4 .. dynamic lock page - 1).
    :ivar dynamic_lock_page: page of the 3 dynamic lock bytes, or None.
    :ivar cfg_page: CFG0 page (MIRROR, RFUI, MIRROR_PAGE, AUTH0); CFG1, PWD, PACK follow. None if unknown.
    :ivar version: the 8 GET_VERSION bytes, or b"" when identified otherwise.
    :ivar source: ``"get_version"``, ``"atr"`` or ``"cc"``.
    """

    chip: ChipType
    total_pages: int
    user_pages: range
    dynamic_lock_page: int | None
    cfg_page: int | None
    version: bytes = b""
    source: str = "get_version"

    @property
    def user_size(self) -> int:
        """User memory in bytes (144 / 504 / 888)."""
        return len(self.user_pages) * PAGE_SIZE

    @property
    def pwd_page(self) -> int | None:
        return None if self.cfg_page is None else self.cfg_page + 2

    @property
    def pack_page(self) -> int | None:
        return None if self.cfg_page is None else self.cfg_page + 3


def _ntag(chip: ChipType, total_pages: int, version: bytes = b"", source: str = "get_version") -> ChipInfo:
    lock_page = total_pages - 5
    return ChipInfo(chip, total_pages, range(FIRST_USER_PAGE, lock_page), lock_page, lock_page + 1, version, source)


#: GET_VERSION storage-size byte (byte 6) -> (chip, total pages) for NXP NTAG21x (vendor 04, type 04, subtype 02).
_NTAG_STORAGE: dict[int, tuple[ChipType, int]] = {
    0x0F: (ChipType.NTAG213, 45),
    0x11: (ChipType.NTAG215, 135),
    0x13: (ChipType.NTAG216, 231),
}
_NXP_VENDOR = 0x04
_NTAG_PRODUCT_TYPE = 0x04


def chip_from_version(version: bytes) -> ChipInfo:
    """Identify the chip from the GET_VERSION response (datasheet §10.1, Table 28).

    ``00 04 04 02 01 00 0F 03`` NTAG213, ``…11 03`` NTAG215, ``…13 03`` NTAG216.
    Other NXP/vendor answers give :attr:`ChipType.UNKNOWN` with the size the
    storage byte implies (2^(n>>1) bytes, rounded down), user memory unknown.

    :raises BadResponse: the response is not 8 bytes.
    """
    if len(version) != GET_VERSION_LENGTH:
        raise BadResponse(f"GET_VERSION answered {len(version)} bytes, expected {GET_VERSION_LENGTH}")
    vendor, product_type, storage = version[1], version[2], version[6]
    if vendor == _NXP_VENDOR and product_type == _NTAG_PRODUCT_TYPE and storage in _NTAG_STORAGE:
        chip, pages = _NTAG_STORAGE[storage]
        return _ntag(chip, pages, bytes(version))
    return unknown_chip(version=bytes(version))


def chip_from_name(name: str, source: str) -> ChipInfo:
    """The memory map of a chip by its :class:`ChipType` value (``"NTAG215"``)."""
    for _storage, (chip, pages) in _NTAG_STORAGE.items():
        if chip.value == name:
            return _ntag(chip, pages, source=source)
    return unknown_chip(source=source)


def unknown_chip(version: bytes = b"", source: str = "get_version") -> ChipInfo:
    """A chip we cannot size: only the 16 header bytes are known; reads are bounded by the CC."""
    return ChipInfo(ChipType.UNKNOWN, 0, range(FIRST_USER_PAGE, FIRST_USER_PAGE), None, None, version, source)


#: CC2 NXP writes at the factory (NTAG213/215/216 datasheet §8.5.6): 144 / 496 / 872 bytes.
STANDARD_CC2: dict[ChipType, int] = {ChipType.NTAG213: 0x12, ChipType.NTAG215: 0x3E, ChipType.NTAG216: 0x6D}


def chip_from_cc2(cc2: int, source: str = "cc") -> ChipInfo:
    """Guess the chip from a factory CC2 value (only when GET_VERSION is unavailable)."""
    for chip, value in STANDARD_CC2.items():
        if value == cc2:
            return chip_from_name(chip.value, source)
    return unknown_chip(source=source)


#: PC/SC Part 3 ATR for ISO 14443A-3 storage cards: RID, standard byte, card name at bytes 13-14.
_PART3_ATR_PREFIX = bytes.fromhex("3B8F8001804F0CA000000306")
_ATR_NAME_OFFSET = 13
_ATR_ULTRALIGHT = 0x0003


def ultralight_family_atr(atr: bytes) -> bool:
    """True when a PC/SC Part 3 ATR names an Ultralight-family card (``00 03``).

    NTAG21x reports ``00 03`` (Ultralight) on ACR122U; the ATR never tells
    213/215/216 apart, so it is only a fallback when GET_VERSION is unavailable
    (PC/SC Part 3 §3.1.3.2.3; docs/chip-facts.md §PC/SC storage cards).
    """
    if not atr.startswith(_PART3_ATR_PREFIX) or len(atr) < _ATR_NAME_OFFSET + 2:
        return False
    return int.from_bytes(atr[_ATR_NAME_OFFSET : _ATR_NAME_OFFSET + 2], "big") == _ATR_ULTRALIGHT
