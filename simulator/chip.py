"""A behavioural model of the NXP NTAG213/215/216 (NFC Forum Type 2 tag IC).

Follows the NXP datasheet "NTAG213/215/216 — NFC Forum Type 2 Tag compliant IC
with 144/504/888 bytes user memory", Rev. 3.2 (2015), and where that text is
silent the NTAG213F/216F datasheet Rev. 3.1 (same command set and memory map).
Section numbers below refer to the NTAG213/215/216 datasheet.

What is modelled
----------------
* Memory map (§8.5): UID/BCC pages 0–2 (BCC0 = 0x88 ⊕ UID0 ⊕ UID1 ⊕ UID2,
  BCC1 = UID3 ⊕ UID4 ⊕ UID5 ⊕ UID6, §8.5.1), static lock bytes (page 2 bytes
  2–3, §8.5.2), CC (page 3, OTP, §8.5.6), user memory, dynamic lock bytes
  (§8.5.3), CFG0/CFG1 (MIRROR, AUTH0, ACCESS = PROT|CFGLCK|NFC_CNT_EN|
  NFC_CNT_PWD_PROT|AUTHLIM, §8.5.7), PWD, PACK.
* Commands (§10): GET_VERSION 60, READ 30 (16 B, rolls over to page 0 past the
  last page, or at AUTH0 when read-protected and not authenticated), FAST_READ
  3A, WRITE A2, COMPATIBILITY_WRITE A0 (two frames), READ_CNT 39 02,
  PWD_AUTH 1B, READ_SIG 3C 00.
* NFC counter (§8.7): 24 bit, +1 on the first valid READ/FAST_READ of each RF
  session when NFC_CNT_EN is set, saturating at 0xFFFFFF; READ_CNT returns it
  LSB first; NFC_CNT_PWD_PROT makes READ_CNT require authentication.
* Password protection (§8.8): pages ≥ AUTH0 are write-protected (PROT = 0) or
  read- and write-protected (PROT = 1) until PWD_AUTH succeeds. AUTHLIM ≠ 0
  counts failures persistently; once the count reaches AUTHLIM every later
  PWD_AUTH fails with NAK 0x4, even with the right password (NTAG213F/216F
  §8.9.2: the limit is the AUTHLIM value itself).  PWD and PACK read as 00.
* Lock bits: static L-x / BL-x bits (page 2) and dynamic lock/block-lock bits
  (§8.5.3); all lock, CC and dynamic-lock writes are bitwise OR (one-time
  programmable).  CFGLCK freezes CFG0/CFG1 (not PWD/PACK).
* States (§9.1, simplified): after a NAK or an unknown command the tag drops to
  IDLE and stays mute until re-activated (:meth:`Ntag21x.activate`, i.e. WUPA +
  anticollision + SELECT done by the reader); authentication is lost then.

Older chips (variants ``ntag203`` and ``mf0icu1``, MIFARE Ultralight): same READ/WRITE/
COMPATIBILITY_WRITE and memory rules, no configuration pages, and none of the NTAG21x
commands: GET_VERSION, FAST_READ, READ_CNT, READ_SIG and PWD_AUTH get NAK 0x0 from an
NTAG203 (as nfcpy's ``tt2_nxp`` expects of it) and no answer from an Ultralight.

* ASCII mirror (§8.7, CFG0 byte 0 MIRROR_CONF bits 7-6 and MIRROR_BYTE bits 5-4,
  byte 2 MIRROR_PAGE ≥ 04h): READ/FAST_READ return the UID as 14 upper-case hex
  digits (01b), the NFC counter as 6, most significant first (10b, only with
  NFC_CNT_EN), or both joined by ``x`` (11b) from MIRROR_PAGE/MIRROR_BYTE instead of
  the EEPROM bytes, which stay unchanged. Modelling choices where the datasheet is
  read loosely: a mirror that would run past the last user page is not applied, and
  the READ/FAST_READ that increments the counter already shows the new value.

Not modelled: the anticollision frames themselves (the front ends do them from
:attr:`Ntag21x.uid`), timing.

Responses
---------
:meth:`Ntag21x.transceive` takes a raw command frame *without* CRC_A and returns
the chip's answer as bytes, exactly as a PN533 ``InCommunicateThru`` hands it
over: data responses as they are, and the 4-bit ACK/NAK frames as **one byte**
(``0x0A`` = ACK, ``0x00/0x01/0x04/0x05`` = NAK, see :class:`Nak`).  Use
:func:`nak_of` to recognise a NAK.  No answer at all raises :class:`ChipMute`;
a card that left the field raises :class:`ChipLeftField`.
:meth:`Ntag21x.transceive_rf` does the same with CRC_A appended/checked.

Fault injection
---------------
A :class:`FaultPlan` removes the card after N commands and/or after B bytes of
page writes.  The command during which the card leaves is never answered (it
raises :class:`ChipLeftField`).  If that command is a WRITE (or the data phase of
a COMPATIBILITY_WRITE) torn after ``k`` of its 4 bytes, the page keeps the new
bytes ``0..k-1``; bytes ``k..3`` keep their old value (:attr:`TornFill.OLD`,
EEPROM programming not reached) or become deterministic pseudo-random garbage
(:attr:`TornFill.GARBAGE`, programming interrupted mid-way).  Pages of earlier,
completed WRITEs are fully new.  Lock, CC and dynamic-lock pages are
anti-tearing protected on the real chip (§8.5.2) and are never torn here.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardlib.type2.image import (
    CARD_IMAGE_FORMAT,
    PAGE_SIZE,
    SIGNATURE_LEN,
    CardImage,
    CardImageError,
    load_card_image,
    save_card_image,
)
from simulator.errors import CardFileError, ChipLeftField, ChipMute, UnknownChipError

__all__ = [
    "ACK",
    "CARD_FILE_FORMAT",
    "ChipVariant",
    "Command",
    "FaultPlan",
    "Nak",
    "Ntag21x",
    "TornFill",
    "crc_a",
    "nak_of",
]

log = logging.getLogger(__name__)

#: 4-bit ACK answer (§9.3), delivered as one byte.
ACK = 0x0A
#: First user page; a MIRROR_PAGE below it disables the ASCII mirror (§8.7).
MIRROR_FIRST_PAGE = 0x04
#: Cascade tag prepended to UID0..2 for BCC0 (ISO/IEC 14443-3 §6.5.4).
CASCADE_TAG = 0x88
#: NXP's manufacturer code, UID0 of every genuine NTAG (§8.5.1).
NXP_MANUFACTURER = 0x04
#: Page 2 byte 1 ("internal") as NXP programs it.
INTERNAL_BYTE = 0x48
READ_PAGES = 4
COUNTER_MAX = 0xFFFFFF
#: READ_CNT / READ_SIG argument values the chip accepts (§10.6, §10.8).
NFC_COUNTER_ADDR = 0x02
SIG_ADDR = 0x00
#: Factory value of the RFUI byte 3 of the dynamic lock page (§8.5.3).
DYN_LOCK_RFUI = 0xBD
#: Version of the virtual-card JSON file format written by :meth:`Ntag21x.save`.
CARD_FILE_FORMAT = CARD_IMAGE_FORMAT


class Command(enum.IntEnum):
    """NTAG21x command codes (§10, Table 22)."""

    GET_VERSION = 0x60
    READ = 0x30
    FAST_READ = 0x3A
    WRITE = 0xA2
    COMPATIBILITY_WRITE = 0xA0
    READ_CNT = 0x39
    PWD_AUTH = 0x1B
    READ_SIG = 0x3C


class Nak(enum.IntEnum):
    """4-bit NAK codes (§9.3, Table 23)."""

    INVALID_ARGUMENT = 0x0  #: invalid page address, locked or protected page
    CRC_ERROR = 0x1  #: parity or CRC error
    AUTH_COUNTER_OVERFLOW = 0x4  #: AUTHLIM reached: PWD_AUTH permanently fails
    EEPROM_WRITE_ERROR = 0x5  #: EEPROM write error


def nak_of(response: bytes) -> Nak | None:
    """Return the :class:`Nak` a one-byte chip answer carries, or ``None`` for ACK/data.

    :param response: bytes returned by :meth:`Ntag21x.transceive`.
    """
    if len(response) == 1 and response[0] != ACK:
        return Nak(response[0] & 0x0F)
    return None


class TornFill(enum.Enum):
    """What the untransferred bytes of a torn page hold."""

    OLD = "old"  #: old content (programming never started for those bytes)
    GARBAGE = "garbage"  #: deterministic pseudo-random bytes (programming interrupted)


class _State(enum.Enum):
    OFF = "off"
    IDLE = "idle"  # also HALT: mute until activate()
    ACTIVE = "active"
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class _Layout:
    """Per-variant memory map (§8.5, Table 5–7)."""

    name: str
    storage_size: int  # GET_VERSION byte 6
    total_pages: int
    cc_size: int  # CC byte 2 as shipped (data area / 8)
    dyn_lock_page: int
    pages_per_lock_bit: int
    lock_bits: int
    lock_bits_per_block_bit: int
    #: Pre-NTAG21x chips: how NTAG21x-only commands are refused ("nak" or "mute"); None for NTAG21x.
    legacy: str | None = None

    @property
    def last_user_page(self) -> int:
        return self.dyn_lock_page - 1

    @property
    def cfg0_page(self) -> int:
        return self.dyn_lock_page + 1

    @property
    def cfg1_page(self) -> int:
        return self.dyn_lock_page + 2

    @property
    def pwd_page(self) -> int:
        return self.dyn_lock_page + 3

    @property
    def pack_page(self) -> int:
        return self.dyn_lock_page + 4

    @property
    def last_page(self) -> int:
        return self.total_pages - 1

    @property
    def user_bytes(self) -> int:
        return (self.last_user_page - 3) * PAGE_SIZE


class ChipVariant(enum.Enum):
    """The NTAG21x family members (value = lower-case name used in files and CLIs)."""

    NTAG213 = "ntag213"
    NTAG215 = "ntag215"
    NTAG216 = "ntag216"
    NTAG203 = "ntag203"
    MF0ICU1 = "mf0icu1"  #: MIFARE Ultralight

    @property
    def layout(self) -> _Layout:
        return _LAYOUTS[self]

    @property
    def total_pages(self) -> int:
        """Number of 4-byte pages, 0..last (45 / 135 / 231)."""
        return self.layout.total_pages

    @property
    def version(self) -> bytes:
        """GET_VERSION answer, 8 bytes (§10.1, Table 28)."""
        return bytes((0x00, NXP_MANUFACTURER, 0x04, 0x02, 0x01, 0x00, self.layout.storage_size, 0x03))

    @property
    def factory_cc(self) -> bytes:
        """Capability container page 3 as NXP ships it, 4 bytes (§8.5.6)."""
        return bytes((0xE1, 0x10, self.layout.cc_size, 0x00))

    @classmethod
    def parse(cls, name: str) -> ChipVariant:
        """Parse ``"ntag215"``, ``"NTAG215"`` or ``"NTAG 215"``.

        :raises UnknownChipError: for any other name.
        """
        key = name.strip().lower().replace(" ", "").replace("_", "")
        for v in cls:
            if v.value == key:
                return v
        raise UnknownChipError(
            f"unknown chip type {name!r}: expected one of {', '.join(v.value for v in cls)}"
        )

    @classmethod
    def from_version(cls, version: bytes) -> ChipVariant:
        """Identify the variant from a GET_VERSION answer.

        :raises UnknownChipError: if the 8 bytes are not an NTAG213/215/216 version.
        """
        for v in cls:
            if v.version == bytes(version):
                return v
        raise UnknownChipError(f"GET_VERSION {bytes(version).hex()} is not an NTAG213/215/216")


_LAYOUTS: dict[ChipVariant, _Layout] = {
    # NTAG213: 45 pages, user 04h–27h, dyn lock 28h, 2 pages per lock bit, 3 BL bits of 4
    ChipVariant.NTAG213: _Layout("NTAG213", 0x0F, 45, 0x12, 0x28, 2, 12, 4),
    # NTAG215: 135 pages, user 04h–81h, dyn lock 82h, 16 pages per lock bit, 4 BL bits of 2
    ChipVariant.NTAG215: _Layout("NTAG215", 0x11, 135, 0x3E, 0x82, 16, 8, 2),
    # NTAG216: 231 pages, user 04h–E1h, dyn lock E2h, 16 pages per lock bit, 7 BL bits of 2
    ChipVariant.NTAG216: _Layout("NTAG216", 0x13, 231, 0x6D, 0xE2, 16, 14, 2),
    # NTAG203: 42 pages, user 04h-27h, dyn lock 28h, page 29h counter; no GET_VERSION (NTAG203 datasheet §7.5)
    ChipVariant.NTAG203: _Layout("NTAG203", 0x00, 42, 0x12, 0x28, 4, 6, 2, legacy="nak"),
    # MIFARE Ultralight MF0ICU1: 16 pages, user 04h-0Fh, static lock bytes only (MF0ICU1 datasheet §7.5)
    ChipVariant.MF0ICU1: _Layout("MF0ICU1", 0x00, 16, 0x06, 0x10, 1, 0, 1, legacy="mute"),
}


class _Access(enum.IntFlag):
    """ACCESS byte (CFG1 byte 0) bits (§8.5.7, Table 12)."""

    PROT = 0x80
    CFGLCK = 0x40
    NFC_CNT_EN = 0x10
    NFC_CNT_PWD_PROT = 0x08


_AUTHLIM_MASK = 0x07

# Static lock byte 0 (page 2 byte 2) bits (§8.5.2, Figure 7).
_BL_CC = 0x01
_BL_9_4 = 0x02
_BL_15_10 = 0x04
_L_CC = 0x08


def crc_a(data: bytes) -> bytes:
    """CRC_A of ISO/IEC 14443-3 Annex B (init 0x6363, LSB first), 2 bytes, LSB first."""
    crc = 0x6363
    for byte in data:
        b = byte ^ (crc & 0xFF)
        b = (b ^ (b << 4)) & 0xFF
        crc = (crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)
    return bytes((crc & 0xFF, crc >> 8))


@dataclass
class FaultPlan:
    """When the virtual card leaves the field, counted from when the plan is armed.

    Only frames that reach the chip count (:meth:`Ntag21x.transceive`); reader-side
    answers such as ``FF CA`` (UID from anticollision) do not.

    :ivar remove_after_commands: commands 1..N are answered; command N+1 is the
        one during which the card leaves (it is never answered).  ``None`` = no limit.
    :ivar remove_after_write_bytes: the card leaves once this many page bytes
        have been programmed by WRITE / COMPATIBILITY_WRITE commands in total; the
        write during which the limit is reached is torn after the remaining bytes
        (0–3 bytes of that page are new).  ``0`` tears the very first write before
        any byte.  ``None`` = no limit.
    :ivar torn_fill: what the untransferred bytes of a torn page hold.
    :ivar seed: seed for :attr:`TornFill.GARBAGE` bytes (deterministic per seed/page).
    :ivar eeprom_fail_pages: pages whose WRITE answers NAK 0x5 (worn EEPROM).
    :ivar tear_during_remove: when the N+1-th command after ``remove_after_commands``
        is a WRITE, tear it after this many bytes (``None`` = the write is not applied).
    """

    remove_after_commands: int | None = None
    remove_after_write_bytes: int | None = None
    torn_fill: TornFill = TornFill.OLD
    seed: int = 0
    eeprom_fail_pages: frozenset[int] = frozenset()
    tear_during_remove: int | None = None

    def __post_init__(self) -> None:
        for name in ("remove_after_commands", "remove_after_write_bytes", "tear_during_remove"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.tear_during_remove is not None and self.tear_during_remove > PAGE_SIZE:
            raise ValueError("tear_during_remove must be 0..4 bytes")


@dataclass
class _FaultState:
    plan: FaultPlan
    commands: int = 0
    bytes_written: int = 0


class Ntag21x:
    """One NTAG213/215/216 chip: memory, counter, password state and command set.

    Not thread-safe: a front end (reader emulator, vpcd client, UDP peer) owns it.

    :param variant: which family member.
    :param uid: the 7-byte UID (UID0 is the manufacturer code, 0x04 for NXP).
    :param pages: full memory image, ``variant.total_pages * 4`` bytes (PWD and PACK
        with their real values).  ``None`` = factory state for that UID.
    :param signature: 32-byte originality signature READ_SIG returns (default zeros;
        only NXP can make a real one).
    :param nfc_counter: the 24-bit NFC counter.
    :param auth_failures: persistent negative PWD_AUTH counter (AUTHLIM, §8.8.2).
    :param path: file the card is backed by (used by :meth:`save` without argument).
    :param meta: JSON-able metadata stored with the card (see :attr:`meta`).
    :raises ValueError: on a UID that is not 7 bytes or an image of the wrong size.
    """

    def __init__(
        self,
        variant: ChipVariant,
        uid: bytes,
        *,
        pages: bytes | None = None,
        signature: bytes = bytes(SIGNATURE_LEN),
        nfc_counter: int = 0,
        auth_failures: int = 0,
        path: Path | str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        uid = bytes(uid)
        if len(uid) != 7:
            raise ValueError(f"NTAG21x UID is 7 bytes, got {len(uid)}")
        self.variant = variant
        self._layout = variant.layout
        if pages is None:
            pages = _factory_image(variant, uid)
        if len(pages) != self._layout.total_pages * PAGE_SIZE:
            raise ValueError(
                f"{variant.value} image is {self._layout.total_pages * PAGE_SIZE} bytes, got {len(pages)}"
            )
        self._mem = bytearray(pages)
        self.signature = signature
        if not 0 <= nfc_counter <= COUNTER_MAX:
            raise ValueError("nfc_counter is 24 bit")
        self.nfc_counter = nfc_counter
        self.auth_failures = auth_failures
        self.path: Path | None = Path(path) if path is not None else None
        #: Free-form JSON-able metadata kept in the card file (e.g. the layout of the
        #: dump it was imported from, so an export reproduces that file byte for byte).
        self.meta: dict[str, Any] = dict(meta or {})
        self._state = _State.OFF
        self._counted_this_session = False
        self._compat_write_page: int | None = None
        self._faults: _FaultState | None = None
        self._removed = False
        #: True when memory, counter or failure count changed since the last :meth:`save`
        #: (front ends persist the card file when set).
        self.dirty = False

    # ------------------------------------------------------------------ factory / files

    @classmethod
    def blank(cls, variant: ChipVariant, uid: bytes | None = None) -> Ntag21x:
        """A factory-fresh NXP-like chip.

        :param uid: 7 bytes; ``None`` draws a random UID with UID0 = 0x04 (NXP).
        """
        if uid is None:
            uid = bytes((NXP_MANUFACTURER,)) + secrets.token_bytes(6)
        return cls(variant, uid)

    def save(self, path: Path | str | None = None, *, durable: bool = True) -> Path:
        """Write the card to a card image file (:mod:`cardlib.type2.image`) atomically.

        ``pages`` holds the real PWD and PACK (not the 00s READ returns).

        :param path: target file; defaults to the path the card was loaded from.
        :param durable: fsync before the rename (survives an OS crash, costs ms).
        :returns: the path written.
        :raises CardFileError: if no path is known or the file cannot be written.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise CardFileError("<memory>", "no file to save the card to")
        image = CardImage(chip=self.variant.value, pages=bytes(self._mem), signature=self.signature,
                          nfc_counter=self.nfc_counter, auth_failures=self.auth_failures, meta=self.meta)
        try:
            save_card_image(image, target, durable=durable)
        except CardImageError as exc:
            raise CardFileError(target, exc.reason) from exc
        if self.path is None:
            self.path = target
        self.dirty = False
        return target

    @classmethod
    def load(cls, path: Path | str) -> Ntag21x:
        """Read a card image written by :meth:`save` or ``huma card dump``.

        :raises CardFileError: missing file, bad JSON, wrong format marker, bad hex,
            wrong page count or a UID that disagrees with pages 0–1.
        :raises UnknownChipError: for an unknown ``chip`` value.
        """
        p = Path(path)
        try:
            image = load_card_image(p)
        except CardImageError as exc:
            raise CardFileError(p, exc.reason) from exc
        variant = ChipVariant.parse(image.chip)
        if len(image.pages) != variant.total_pages * PAGE_SIZE:
            raise CardFileError(
                p, f"{variant.value} needs {variant.total_pages} pages of 4 bytes, file has {len(image.pages)} bytes"
            )
        try:
            return cls(variant, image.uid, pages=image.pages, signature=image.signature,
                       nfc_counter=image.nfc_counter, auth_failures=image.auth_failures, path=p, meta=image.meta)
        except ValueError as exc:
            raise CardFileError(p, str(exc)) from exc

    # ------------------------------------------------------------------ properties

    @property
    def uid(self) -> bytes:
        """The 7-byte UID as stored in pages 0–1 (BCC bytes skipped)."""
        return bytes(self._mem[0:3] + self._mem[4:8])

    @property
    def signature(self) -> bytes:
        """The 32-byte originality signature READ_SIG answers."""
        return self._signature

    @signature.setter
    def signature(self, value: bytes) -> None:
        value = bytes(value)
        if len(value) != SIGNATURE_LEN:
            raise ValueError(f"originality signature is {SIGNATURE_LEN} bytes, got {len(value)}")
        self._signature = value

    @property
    def memory(self) -> bytes:
        """A copy of the full memory image (``total_pages * 4`` bytes, real PWD/PACK)."""
        return bytes(self._mem)

    def page(self, number: int) -> bytes:
        """Raw content of one page (4 bytes), bypassing access rules (for tests/tools)."""
        if not 0 <= number < self._layout.total_pages:
            raise IndexError(f"page {number} outside 0..{self._layout.last_page}")
        return bytes(self._mem[number * PAGE_SIZE : (number + 1) * PAGE_SIZE])

    def poke(self, number: int, data: bytes) -> None:
        """Set one page's raw content, bypassing every rule (personalisation tools, tests)."""
        if len(data) != PAGE_SIZE:
            raise ValueError("a page is 4 bytes")
        self.page(number)  # bounds check
        self._mem[number * PAGE_SIZE : (number + 1) * PAGE_SIZE] = data
        self.dirty = True

    @property
    def layout(self) -> _Layout:
        """The variant's memory map (page numbers of dyn lock, CFG0, CFG1, PWD, PACK)."""
        return self._layout

    @property
    def removed(self) -> bool:
        """True once the card has left the field (fault plan fired or :meth:`remove`)."""
        return self._removed

    @property
    def authenticated(self) -> bool:
        """True after a successful PWD_AUTH in the current activation."""
        return self._state is _State.AUTHENTICATED

    @property
    def field(self) -> bool:
        """True while the chip is powered by a reader field."""
        return self._state is not _State.OFF

    # ------------------------------------------------------------------ RF session

    def field_on(self) -> None:
        """Power up in a reader field: new RF session, already selected (ACTIVE).

        Clears authentication and the "counter already incremented" flag (§8.7).
        Front ends that emulate anticollision themselves may call :meth:`activate`
        again after their own SELECT.

        :raises ChipLeftField: if the card has left the field.
        """
        self._check_present()
        self._state = _State.ACTIVE
        self._counted_this_session = False
        self._compat_write_page = None

    def field_off(self) -> None:
        """Power down: ends the RF session; authentication is lost."""
        self._state = _State.OFF
        self._counted_this_session = False
        self._compat_write_page = None

    def activate(self) -> None:
        """WUPA + anticollision + SELECT: from IDLE/HALT back to ACTIVE (auth cleared).

        The NFC counter flag is kept: it is the same RF session.

        :raises ChipMute: if the field is off.
        :raises ChipLeftField: if the card has left the field.
        """
        self._check_present()
        if self._state is _State.OFF:
            raise ChipMute("field is off")
        self._state = _State.ACTIVE
        self._compat_write_page = None

    def halt(self) -> None:
        """HLTA (50 00): the chip goes mute until :meth:`activate`."""
        if self._state is not _State.OFF:
            self._state = _State.IDLE

    @property
    def halted(self) -> bool:
        """True in IDLE/HALT: powered but needs :meth:`activate` before commands."""
        return self._state is _State.IDLE

    def remove(self) -> None:
        """Take the card out of the field: every later command raises :class:`ChipLeftField`."""
        self._removed = True
        self.field_off()

    def reinsert(self, faults: FaultPlan | None = None) -> None:
        """Bring a removed card back (field still off) with a new or no fault plan."""
        self._removed = False
        self.arm(faults)

    def arm(self, faults: FaultPlan | None) -> None:
        """Arm a :class:`FaultPlan` (counting starts now) or disarm with ``None``."""
        self._faults = _FaultState(faults) if faults is not None else None

    # ------------------------------------------------------------------ commands

    def transceive_rf(self, frame: bytes) -> bytes:
        """Like :meth:`transceive` with CRC_A: checks the frame's CRC, appends one to data.

        A bad CRC answers NAK 0x1 (§9.3).  ACK/NAK answers carry no CRC.
        """
        if len(frame) < 3 or crc_a(frame[:-2]) != frame[-2:]:
            self._check_present()
            if self._state is _State.OFF:
                raise ChipMute("field is off")
            return self._nak(Nak.CRC_ERROR, "bad CRC_A")
        resp = self.transceive(frame[:-2])
        return resp if len(resp) == 1 else resp + crc_a(resp)

    def transceive(self, frame: bytes) -> bytes:
        """Execute one raw chip command (no CRC) and return the chip's answer.

        :param frame: command byte + arguments, e.g. ``30 04`` (READ page 4).
        :returns: data bytes, or one byte ``0x0A`` (ACK) / a :class:`Nak` code.
        :raises ChipLeftField: the card is not in the field (now or from now on).
        :raises ChipMute: no answer: field off, chip IDLE/HALT, unknown command or
            malformed frame (the chip then drops to IDLE, §9.1).
        """
        frame = bytes(frame)
        self._check_present()
        if self._state is _State.OFF:
            raise ChipMute("field is off")
        tear_bytes = self._fault_step(frame)
        if self._state is _State.IDLE:
            raise ChipMute("chip is in IDLE/HALT state; re-activate it")
        if self._compat_write_page is not None:
            return self._compat_write_data(frame, tear_bytes)
        if not frame:
            return self._mute("empty frame")
        try:
            cmd = Command(frame[0])
        except ValueError:
            return self._mute(f"unknown command {frame[0]:02X}")
        legacy = self._layout.legacy
        if legacy is not None and cmd not in (Command.READ, Command.WRITE, Command.COMPATIBILITY_WRITE):
            why = f"{self._layout.name} has no command {cmd.name}"
            return self._nak(Nak.INVALID_ARGUMENT, why) if legacy == "nak" else self._mute(why)
        if cmd is Command.WRITE:
            return self._write(frame, tear_bytes)
        handlers = {
            Command.GET_VERSION: self._get_version,
            Command.READ: self._read,
            Command.FAST_READ: self._fast_read,
            Command.COMPATIBILITY_WRITE: self._compat_write,
            Command.READ_CNT: self._read_cnt,
            Command.PWD_AUTH: self._pwd_auth,
            Command.READ_SIG: self._read_sig,
        }
        return handlers[cmd](frame)

    # ------------------------------------------------------------------ internals

    def _check_present(self) -> None:
        if self._removed:
            raise ChipLeftField("the card has left the field")

    def _leave_field(self) -> None:
        log.debug("fault plan: card leaves the field")
        self.remove()
        raise ChipLeftField("the card left the field (fault plan)")

    def _fault_step(self, frame: bytes) -> int | None:
        """Count one command against the fault plan.

        :returns: ``None`` to run the command normally, or the number of bytes (0–4)
            of a page write to program before the card leaves (non-writes then leave
            at once).
        """
        fs = self._faults
        if fs is None:
            return None
        fs.commands += 1
        plan = fs.plan
        is_page_write = bool(frame) and (
            self._compat_write_page is not None or frame[0] == Command.WRITE
        )
        if plan.remove_after_commands is not None and fs.commands > plan.remove_after_commands:
            if is_page_write and plan.tear_during_remove is not None:
                return plan.tear_during_remove
            if is_page_write:
                return 0
            self._leave_field()
        if plan.remove_after_write_bytes is not None and is_page_write:
            left = plan.remove_after_write_bytes - fs.bytes_written
            if left < PAGE_SIZE:
                return max(left, 0)
            fs.bytes_written += PAGE_SIZE
        return None

    def _nak(self, code: Nak, why: str) -> bytes:
        log.debug("NAK %X: %s", code, why)
        self._state = _State.IDLE
        self._compat_write_page = None
        return bytes((code,))

    def _mute(self, why: str) -> bytes:
        log.debug("no answer: %s", why)
        self._state = _State.IDLE
        self._compat_write_page = None
        raise ChipMute(why)

    def _cfg(self) -> tuple[int, int]:
        """(AUTH0, ACCESS) from CFG0 byte 3 and CFG1 byte 0; older chips have no protection (FFh, 00h)."""
        lay = self._layout
        if lay.legacy is not None:
            return 0xFF, 0x00
        return self._mem[lay.cfg0_page * PAGE_SIZE + 3], self._mem[lay.cfg1_page * PAGE_SIZE]

    def _read_protected(self, page: int) -> bool:
        auth0, access = self._cfg()
        return bool(access & _Access.PROT) and page >= auth0 and not self.authenticated

    def _write_protected(self, page: int) -> bool:
        auth0, _ = self._cfg()
        return page >= auth0 and not self.authenticated

    def _page_out(self, page: int) -> bytes:
        lay = self._layout
        if page in (lay.pwd_page, lay.pack_page):
            return bytes(PAGE_SIZE)  # PWD and PACK always read as 00h (§8.8.1)
        data = bytes(self._mem[page * PAGE_SIZE : (page + 1) * PAGE_SIZE])
        mirror = self._mirror()
        if mirror is None:
            return data
        start, text = mirror
        first, last = max(start, page * PAGE_SIZE), min(start + len(text), (page + 1) * PAGE_SIZE)
        if first >= last:
            return data
        out = bytearray(data)
        out[first - page * PAGE_SIZE : last - page * PAGE_SIZE] = text[first - start : last - start]
        return bytes(out)

    def _mirror(self) -> tuple[int, bytes] | None:
        """(byte address, ASCII text) of the active UID/NFC counter mirror, or None (§8.7)."""
        lay = self._layout
        if lay.legacy is not None:
            return None
        cfg0 = self._mem[lay.cfg0_page * PAGE_SIZE : lay.cfg0_page * PAGE_SIZE + 4]
        conf, byte, page = cfg0[0] >> 6, cfg0[0] >> 4 & 0x03, cfg0[2]
        _, access = self._cfg()
        counter = f"{self.nfc_counter:06X}".encode() if access & _Access.NFC_CNT_EN else None
        uid = self.uid.hex().upper().encode()
        text = {1: uid, 2: counter, 3: uid + b"x" + counter if counter is not None else None}.get(conf)
        start = page * PAGE_SIZE + byte
        if text is None or page < MIRROR_FIRST_PAGE or start + len(text) > (lay.last_user_page + 1) * PAGE_SIZE:
            return None
        return start, text

    def _count_read(self) -> None:
        _, access = self._cfg()
        if access & _Access.NFC_CNT_EN and not self._counted_this_session:
            self.nfc_counter = min(self.nfc_counter + 1, COUNTER_MAX)
            self.dirty = True
        self._counted_this_session = True

    def _get_version(self, frame: bytes) -> bytes:
        if len(frame) != 1:
            return self._mute("GET_VERSION takes no argument")
        return self.variant.version

    def _read(self, frame: bytes) -> bytes:
        if len(frame) != 2:
            return self._mute("READ takes one address byte")
        start = frame[1]
        lay = self._layout
        if start > lay.last_page or self._read_protected(start):
            return self._nak(Nak.INVALID_ARGUMENT, f"READ {start:02X} not readable")
        # Roll-over: past the last page to 00h; when read-protected and not
        # authenticated, at AUTH0 (§10.2).
        auth0, access = self._cfg()
        end = lay.total_pages
        if access & _Access.PROT and not self.authenticated and auth0 < end:
            end = auth0
        self._count_read()
        return b"".join(self._page_out((start + i) % end) for i in range(READ_PAGES))

    def _fast_read(self, frame: bytes) -> bytes:
        if len(frame) != 3:
            return self._mute("FAST_READ takes start and end addresses")
        start, end = frame[1], frame[2]
        lay = self._layout
        if start > end or end > lay.last_page:
            return self._nak(Nak.INVALID_ARGUMENT, f"FAST_READ {start:02X}..{end:02X} out of range")
        if any(self._read_protected(p) for p in range(start, end + 1)):
            return self._nak(Nak.INVALID_ARGUMENT, "FAST_READ range is read-protected")
        self._count_read()
        return b"".join(self._page_out(p) for p in range(start, end + 1))

    def _read_cnt(self, frame: bytes) -> bytes:
        if len(frame) != 2:
            return self._mute("READ_CNT takes one address byte")
        if frame[1] != NFC_COUNTER_ADDR:
            return self._nak(Nak.INVALID_ARGUMENT, "READ_CNT address must be 02h")
        _, access = self._cfg()
        if access & _Access.NFC_CNT_PWD_PROT and not self.authenticated:
            return self._nak(Nak.INVALID_ARGUMENT, "READ_CNT needs PWD_AUTH (NFC_CNT_PWD_PROT)")
        return self.nfc_counter.to_bytes(3, "little")

    def _read_sig(self, frame: bytes) -> bytes:
        if len(frame) != 2:
            return self._mute("READ_SIG takes one address byte")
        if frame[1] != SIG_ADDR:
            return self._nak(Nak.INVALID_ARGUMENT, "READ_SIG address must be 00h")
        return self.signature

    def _pwd_auth(self, frame: bytes) -> bytes:
        if len(frame) != 5:
            return self._mute("PWD_AUTH takes 4 password bytes")
        lay = self._layout
        _, access = self._cfg()
        authlim = access & _AUTHLIM_MASK
        if authlim and self.auth_failures >= authlim:
            return self._nak(Nak.AUTH_COUNTER_OVERFLOW, "AUTHLIM reached: protected area locked for good")
        pwd = bytes(self._mem[lay.pwd_page * PAGE_SIZE : (lay.pwd_page + 1) * PAGE_SIZE])
        if not secrets.compare_digest(frame[1:5], pwd):
            if authlim:
                self.auth_failures += 1
                self.dirty = True
            return self._nak(Nak.INVALID_ARGUMENT, "wrong password")
        if self.auth_failures:
            self.auth_failures = 0
            self.dirty = True
        self._state = _State.AUTHENTICATED
        return bytes(self._mem[lay.pack_page * PAGE_SIZE : lay.pack_page * PAGE_SIZE + 2])

    def _compat_write(self, frame: bytes) -> bytes:
        if len(frame) != 2:
            return self._mute("COMPATIBILITY_WRITE takes one address byte")
        why = self._write_refusal(frame[1])
        if why is not None:
            return self._nak(Nak.INVALID_ARGUMENT, why)
        self._compat_write_page = frame[1]
        return bytes((ACK,))

    def _compat_write_data(self, frame: bytes, tear_bytes: int | None) -> bytes:
        page = self._compat_write_page
        assert page is not None
        self._compat_write_page = None
        if len(frame) != 16:
            return self._nak(Nak.INVALID_ARGUMENT, "COMPATIBILITY_WRITE data phase is 16 bytes")
        return self._program(page, frame[:PAGE_SIZE], tear_bytes)

    def _write(self, frame: bytes, tear_bytes: int | None = None) -> bytes:
        if len(frame) != 2 + PAGE_SIZE:
            if tear_bytes is not None:
                self._leave_field()
            return self._mute("WRITE takes an address and 4 data bytes")
        page = frame[1]
        why = self._write_refusal(page)
        if why is not None:
            if tear_bytes is not None:
                self._leave_field()
            return self._nak(Nak.INVALID_ARGUMENT, why)
        return self._program(page, frame[2:], tear_bytes)

    def _write_refusal(self, page: int) -> str | None:
        """Why a WRITE to ``page`` is refused (NAK 0x0), or ``None`` if allowed."""
        lay = self._layout
        if page < 2 or page > lay.last_page:
            return f"page {page:02X} is not writable"
        if self._write_protected(page):
            return f"page {page:02X} is password protected (AUTH0)"
        _, access = self._cfg()
        if page in (lay.cfg0_page, lay.cfg1_page) and access & _Access.CFGLCK:
            return "configuration is locked (CFGLCK)"
        if self._page_locked(page):
            return f"page {page:02X} is locked"
        return None

    def _page_locked(self, page: int) -> bool:
        lay = self._layout
        lock0, lock1 = self._mem[10], self._mem[11]
        if page == 3:
            return bool(lock0 & _L_CC)
        if 4 <= page <= 7:
            return bool(lock0 & (1 << page))
        if 8 <= page <= 15:
            return bool(lock1 & (1 << (page - 8)))
        if 16 <= page <= lay.last_user_page:
            bit = (page - 16) // lay.pages_per_lock_bit
            dyn = int.from_bytes(self._mem[lay.dyn_lock_page * PAGE_SIZE : lay.dyn_lock_page * PAGE_SIZE + 2], "little")
            return bool(dyn >> bit & 1)
        return False

    def _program(self, page: int, data: bytes, tear_bytes: int | None) -> bytes:
        """Program one page after the access checks; OR semantics for OTP pages."""
        lay = self._layout
        off = page * PAGE_SIZE
        old = bytes(self._mem[off : off + PAGE_SIZE])
        if self._faults is not None and page in self._faults.plan.eeprom_fail_pages:
            if tear_bytes is not None:
                self._leave_field()
            return self._nak(Nak.EEPROM_WRITE_ERROR, f"EEPROM write error on page {page:02X}")
        if page == 2:
            new = old[0:2] + self._merge_static_lock(old[2:4], data[2:4])
        elif page == 3:
            new = bytes(o | d for o, d in zip(old, data, strict=False))
        elif page == lay.dyn_lock_page:
            new = self._merge_dynamic_lock(old, data)
        else:
            new = bytes(data)
        if tear_bytes is not None:
            if page in (2, 3, lay.dyn_lock_page):
                # Anti-tearing protected pages (§8.5.2): all old or all new; here: old.
                self._leave_field()
            if self._faults is not None and self._faults.plan.torn_fill is TornFill.GARBAGE:
                rest = hashlib.sha256(
                    b"torn" + self._faults.plan.seed.to_bytes(8, "little") + bytes((page,))
                ).digest()[tear_bytes:PAGE_SIZE]
            else:
                rest = old[tear_bytes:]
            self._mem[off : off + PAGE_SIZE] = new[:tear_bytes] + rest
            self.dirty = True
            log.debug("fault plan: WRITE %02X torn after %d bytes", page, tear_bytes)
            self._leave_field()
        self._mem[off : off + PAGE_SIZE] = new
        self.dirty = True
        return bytes((ACK,))

    def _merge_static_lock(self, old: bytes, new: bytes) -> bytes:
        """OR the static lock bytes, honouring the block-locking bits (§8.5.2)."""
        o0, o1 = old
        n0, n1 = new
        if o0 & _BL_CC:
            n0 &= ~_L_CC
        if o0 & _BL_9_4:
            n0 &= ~0xF0  # L4..L7
            n1 &= ~0x03  # L8, L9
        if o0 & _BL_15_10:
            n1 &= ~0xFC  # L10..L15
        return bytes((o0 | n0, o1 | n1))

    def _merge_dynamic_lock(self, old: bytes, new: bytes) -> bytes:
        """OR the dynamic lock bytes, honouring the block-locking bits (§8.5.3)."""
        lay = self._layout
        old_bits = int.from_bytes(old[0:2], "little")
        new_bits = int.from_bytes(new[0:2], "little") & ((1 << lay.lock_bits) - 1)
        old_bl = old[2]
        n_bl = -(-lay.lock_bits // lay.lock_bits_per_block_bit)
        for b in range(n_bl):
            if old_bl >> b & 1:
                group = ((1 << lay.lock_bits_per_block_bit) - 1) << (b * lay.lock_bits_per_block_bit)
                new_bits &= ~group
        bits = old_bits | new_bits
        bl = old_bl | (new[2] & ((1 << n_bl) - 1))
        return bits.to_bytes(2, "little") + bytes((bl, old[3]))

    def __repr__(self) -> str:
        return f"<Ntag21x {self.variant.value} uid={self.uid.hex().upper()} state={self._state.value}>"


def _factory_image(variant: ChipVariant, uid: bytes) -> bytes:
    """Memory as NXP ships it (§8.5): UID/BCC, CC, zeroed user memory, default config."""
    lay = variant.layout
    mem = bytearray(lay.total_pages * PAGE_SIZE)
    bcc0 = CASCADE_TAG ^ uid[0] ^ uid[1] ^ uid[2]
    bcc1 = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    mem[0:4] = uid[0:3] + bytes((bcc0,))
    mem[4:8] = uid[3:7]
    mem[8:12] = bytes((bcc1, INTERNAL_BYTE, 0x00, 0x00))
    mem[12:16] = variant.factory_cc
    # NTAG21x ship with an empty NDEF TLV (03 00 FE) at page 4.
    mem[16:20] = bytes((0x03, 0x00, 0xFE, 0x00))
    if lay.legacy is not None:
        return bytes(mem)  # no dynamic lock page or configuration pages to set (or zero dyn lock bytes)
    mem[lay.dyn_lock_page * PAGE_SIZE : lay.dyn_lock_page * PAGE_SIZE + 4] = bytes((0, 0, 0, DYN_LOCK_RFUI))
    # CFG0: MIRROR 04h (STRG_MOD_EN), RFUI, MIRROR_PAGE 00h, AUTH0 FFh (protection off).
    mem[lay.cfg0_page * PAGE_SIZE : lay.cfg0_page * PAGE_SIZE + 4] = bytes((0x04, 0x00, 0x00, 0xFF))
    # CFG1: ACCESS 00h, RFUI 05h 00h 00h.
    mem[lay.cfg1_page * PAGE_SIZE : lay.cfg1_page * PAGE_SIZE + 4] = bytes((0x00, 0x05, 0x00, 0x00))
    mem[lay.pwd_page * PAGE_SIZE : lay.pwd_page * PAGE_SIZE + 4] = b"\xff\xff\xff\xff"
    mem[lay.pack_page * PAGE_SIZE : lay.pack_page * PAGE_SIZE + 4] = bytes(4)
    return bytes(mem)
