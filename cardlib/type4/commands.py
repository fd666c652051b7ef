"""ISO/IEC 7816-4 commands of the Type 4 tag procedures (T4T 2.0 §4.2, §5.4) and extended-length APDUs.

The NDEF procedures use four commands: SELECT (``A4``), READ BINARY (``B0``),
UPDATE BINARY (``D6``) and, from the reader's side, GET RESPONSE (``C0``, done
by :class:`cardlib.apdu.ApduChannel`). :class:`ExtendedCommandApdu` is the
extended-length form of :class:`cardlib.apdu.CommandApdu` (ISO/IEC 7816-4 §5.1:
``Lc`` as ``00 Lc1 Lc2``, ``Le`` as ``[00] Le1 Le2``), used only when a chunk
exceeds the short limits and the tag's CC allows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cardlib.apdu import CommandApdu

#: Largest extended-length Lc (ISO/IEC 7816-4 §5.1).
MAX_EXTENDED_LC = 0xFFFF
#: Largest extended-length Le; encoded ``00 00``.
MAX_EXTENDED_LE = 0x10000
#: Largest offset P1-P2 can carry in READ/UPDATE BINARY (bit 8 of P1 clear: no short EF id).
MAX_P1P2_OFFSET = 0x7FFF
#: CLA of every T4T command (ISO/IEC 7816-4 interindustry, no secure messaging, basic channel).
CLA = 0x00


class Ins(enum.IntEnum):
    """Instruction bytes of the T4T command set (T4T 2.0 §4.2; ISO/IEC 7816-4 §11)."""

    SELECT = 0xA4
    READ_BINARY = 0xB0
    UPDATE_BINARY = 0xD6


class SelectP1(enum.IntEnum):
    """SELECT P1 (ISO/IEC 7816-4 §11.2.2, Table 39)."""

    BY_FILE_ID = 0x00
    BY_NAME = 0x04


class SelectP2(enum.IntEnum):
    """SELECT P2: first occurrence, with FCI returned (00h) or no response data (0Ch)."""

    RETURN_FCI = 0x00
    NO_RESPONSE_DATA = 0x0C


class NdefAid(bytes, enum.Enum):
    """NDEF Tag Application names (T4T 2.0 §5.4.2; §5.5 for the mapping 1.0 AID)."""

    V2 = bytes.fromhex("D2760000850101")
    V1 = bytes.fromhex("D2760000850100")


@dataclass(frozen=True)
class ExtendedCommandApdu(CommandApdu):
    """An extended-length command APDU (ISO/IEC 7816-4 §5.1, cases 2E/3E/4E).

    :ivar data: command data field, 0..65535 bytes.
    :ivar le: expected response length 1..65536 (65536 is encoded ``00 00``), or None.
    """

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise ValueError(f"{name} must be one byte, got {value}")
        if len(self.data) > MAX_EXTENDED_LC:
            raise ValueError(f"extended APDU data is at most {MAX_EXTENDED_LC} bytes, got {len(self.data)}")
        if self.le is not None and not 0 < self.le <= MAX_EXTENDED_LE:
            raise ValueError(f"Le must be 1..{MAX_EXTENDED_LE} or None, got {self.le}")

    def encode(self) -> bytes:
        """``CLA INS P1 P2 [00 Lc1 Lc2 data] [Le1 Le2]``; ``00 Le1 Le2`` when there is no data."""
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out += b"\x00" + len(self.data).to_bytes(2, "big") + self.data
        if self.le is not None:
            if not self.data:
                out.append(0x00)
            out += (self.le % MAX_EXTENDED_LE).to_bytes(2, "big")
        return bytes(out)

    def with_le(self, le: int) -> ExtendedCommandApdu:
        """The same command with another Le (for the ``6Cxx`` resend)."""
        return ExtendedCommandApdu(self.cla, self.ins, self.p1, self.p2, self.data, le)


def select(p1: SelectP1, p2: SelectP2, name: bytes) -> CommandApdu:
    """SELECT by name (AID) or by file identifier (T4T 2.0 §5.4.2, §5.4.3, §5.4.5).

    With P2=00h a SELECT by name carries ``Le=00`` (FCI may come back); P2=0Ch has no Le.
    A SELECT by file id never carries Le (T4T 2.0 §5.4.3; mapping 1.0 uses P2=00h that way).
    """
    le = 256 if p1 is SelectP1.BY_NAME and p2 is SelectP2.RETURN_FCI else None
    return CommandApdu(CLA, Ins.SELECT, p1, p2, bytes(name), le)


def read_binary(offset: int, length: int, extended: bool = False) -> CommandApdu:
    """READ BINARY *length* bytes at *offset* of the selected file (T4T 2.0 §5.4.4, §5.4.6).

    :param offset: 0..7FFFh, bytes.
    :param length: Le in bytes: 1..256 short, 1..65536 extended.
    :raises ValueError: offset above 7FFFh or a length the form cannot carry.
    """
    if not 0 <= offset <= MAX_P1P2_OFFSET:
        raise ValueError(f"READ BINARY offset {offset} outside 0..{MAX_P1P2_OFFSET}")
    cls = ExtendedCommandApdu if extended else CommandApdu
    return cls(CLA, Ins.READ_BINARY, offset >> 8, offset & 0xFF, le=length)


def update_binary(offset: int, data: bytes, extended: bool = False) -> CommandApdu:
    """UPDATE BINARY *data* at *offset* of the selected file (T4T 2.0 §5.4.7).

    :param offset: 0..7FFFh, bytes.
    :param data: 1..255 bytes short, 1..65535 extended.
    :raises ValueError: offset above 7FFFh or data the form cannot carry.
    """
    if not 0 <= offset <= MAX_P1P2_OFFSET:
        raise ValueError(f"UPDATE BINARY offset {offset} outside 0..{MAX_P1P2_OFFSET}")
    cls = ExtendedCommandApdu if extended else CommandApdu
    return cls(CLA, Ins.UPDATE_BINARY, offset >> 8, offset & 0xFF, bytes(data))
