"""Errors of the Type 2 tag layer (NFC Forum T2T 1.0, NTAG213/215/216 datasheet)."""

from __future__ import annotations

from cardlib.errors import CardlibError


class TagError(CardlibError):
    """Root of errors about the tag's memory, format or answers."""


class Nak(TagError):
    """The tag answered a command with a 4-bit NAK (NTAG21x datasheet §9.3).

    :ivar code: the NAK nibble: 0x0 invalid argument (e.g. page out of range),
        0x1 parity/CRC error, 0x4 authentication counter overflow, 0x5 EEPROM write error.
    """

    def __init__(self, code: int, command: str = "") -> None:
        super().__init__(f"tag NAK 0x{code:X}" + (f" on {command}" if command else ""))
        self.code = code


class UnsupportedCommand(TagError):
    """The reader's channel cannot carry this raw tag command (no pass-through)."""


class BadResponse(TagError):
    """The tag (or reader wrapper) answered with a frame of the wrong shape or length."""


class AddressOutOfRange(TagError):
    """A page address lies outside the chip's memory; refused before sending (field case T2-6)."""


class CorruptTlv(TagError):
    """The TLV area of the data area cannot be parsed (NFC Forum T2T 1.0 §2.3, field case T2-1).

    :ivar offset: byte offset in tag memory (page 0 byte 0 = offset 0) of the faulty TLV.
    :ivar reason: what is wrong, e.g. ``"length 65535 runs past the 144-byte data area"``.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"corrupt TLV at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class CorruptCc(TagError):
    """The capability container (page 3) is not an NDEF CC (magic 0xE1, version 1.x)."""


class NotFormatted(TagError):
    """The tag carries no NDEF capability container (a blank tag)."""


class NoNdef(TagError):
    """The TLV area is well formed but has no NDEF Message TLV."""


class CapacityExceeded(TagError):
    """A message does not fit the data area (TLV header, terminator and reserved bytes counted)."""


class ReadOnly(TagError):
    """The tag (CC3 or lock bits) forbids writing."""


class PwdAuthFailed(TagError):
    """PWD_AUTH was refused, or the returned PACK differs from the expected one."""


class MisIssued(TagError):
    """The capability container disagrees with the chip (field case T2-5): replace the card."""


class UnsupportedChip(TagError):
    """GET_VERSION (and the ATR) name a chip cardlib does not support."""


class OriginalityError(TagError):
    """NXP's originality signature (READ_SIG) does not verify for this UID."""


class WriteVerifyFailed(TagError):
    """Read-back after a write differs from what was written (torn or refused write)."""


class NotBlank(TagError):
    """``format`` refused: the tag already carries a different capability container (CC is OTP)."""


class IssuedCard(NotBlank):
    """``format`` refused: the tag is locked or password-protected (an issued card, NTAG21x datasheet §8.5, §8.8)."""
