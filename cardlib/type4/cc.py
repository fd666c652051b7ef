"""Capability container file E103h of an NFC Forum Type 4 tag (T4T 2.0 §5.1, §5.1.2; T4T 3.0).

Layout (big-endian)::

    CCLEN(2) | mapping version(1) | MLe(2) | MLc(2) | NDEF File Control TLV | [other TLVs]

NDEF File Control TLV ``04 06``: file id(2), max NDEF file size(2), read access(1),
write access(1). Mapping version 3.0 adds the ENDEF File Control TLV ``06 08`` whose
size field is 4 bytes and whose file starts with a 4-byte ENLEN instead of the 2-byte NLEN.
Proprietary File Control TLVs (05h, 07h) that may follow are ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cardlib.type4.errors import CorruptCc, UnsupportedVersion

#: File identifier of the CC file (T4T 2.0 §5.1).
CC_FILE_ID = 0xE103
#: Bytes of the CC a reader reads first: CCLEN up to the end of an NDEF File Control TLV 04h.
CC_MIN_LEN = 0x0F
#: Bytes up to the end of an ENDEF File Control TLV 06h (mapping 3.0).
CC_EXTENDED_LEN = 0x11
#: Smallest MLe the spec allows (T4T 2.0 §5.1: 000Fh).
MIN_MLE = 0x0F
#: Smallest NDEF file (T4T 2.0 §5.1.2: 0005h).
MIN_FILE_SIZE = 0x0005
#: Largest NDEF file with TLV 04h (FFFFh is RFU).
MAX_FILE_SIZE = 0xFFFE
#: Mapping major versions cardlib reads (1.0, 2.0, 3.0; T4T 2.0 §5.1.1, §5.5).
SUPPORTED_MAJORS = (1, 2, 3)
#: File identifiers the NDEF file may not use (T4T 2.0 §5.1.2): reserved by ISO/IEC 7816-4 or the CC.
RESERVED_FILE_IDS = frozenset({0x0000, 0xE102, CC_FILE_ID, 0x3F00, 0x3FFF, 0xFFFF})


class FileControlTag(enum.IntEnum):
    """T of the File Control TLVs in the CC (T4T 2.0 §5.1.2; T4T 3.0 adds 06h)."""

    NDEF = 0x04
    PROPRIETARY = 0x05
    ENDEF = 0x06


#: L of each NDEF File Control TLV.
_TLV_LENGTH = {FileControlTag.NDEF: 6, FileControlTag.ENDEF: 8}


class Access(enum.IntEnum):
    """Read/write access byte values (T4T 2.0 §5.1.2); 80h-FEh are proprietary, 01h-7Fh RFU."""

    GRANTED = 0x00
    NONE = 0xFF


@dataclass(frozen=True)
class CapabilityContainer:
    """A parsed CC file (T4T 2.0 §5.1). Keeps the bytes read in :attr:`raw`.

    :ivar raw: the CC bytes as read (at least 15).
    :ivar cclen: CCLEN, the CC file's declared length in bytes.
    :ivar version: mapping version byte (major in the upper nibble).
    :ivar mle: MLe, largest R-APDU data field the tag sends, bytes.
    :ivar mlc: MLc, largest C-APDU data field the tag accepts, bytes.
    :ivar tlv_tag: 04h (NDEF) or 06h (ENDEF, mapping 3.0).
    :ivar file_id: the NDEF file's 2-byte identifier.
    :ivar max_size: maximum NDEF file size in bytes, length field included.
    :ivar read_access: read access byte (00h = granted).
    :ivar write_access: write access byte (00h = granted, FFh = none).
    :ivar issues: departures from the spec a tolerant parse accepted (empty when strict).
    """

    raw: bytes
    cclen: int
    version: int
    mle: int
    mlc: int
    tlv_tag: FileControlTag
    file_id: int
    max_size: int
    read_access: int
    write_access: int
    issues: tuple[str, ...] = ()

    @property
    def major(self) -> int:
        """Mapping major version (1, 2 or 3)."""
        return self.version >> 4

    @property
    def nlen_size(self) -> int:
        """Bytes of the length field at the start of the NDEF file: 2 (NLEN) or 4 (ENLEN)."""
        return 4 if self.tlv_tag is FileControlTag.ENDEF else 2

    @property
    def max_nlen(self) -> int:
        """Largest message the file can hold, bytes (max file size minus the length field)."""
        return max(0, self.max_size - self.nlen_size)

    @property
    def readable(self) -> bool:
        """True when the read access byte grants reading (00h)."""
        return self.read_access == Access.GRANTED

    @property
    def writable(self) -> bool:
        """True when the write access byte grants writing (00h)."""
        return self.write_access == Access.GRANTED

    @staticmethod
    def needed_length(head: bytes) -> int:
        """How many CC bytes to read, given the first 15: 15, or 17 for an ENDEF TLV (06h).

        :param head: the first bytes of the CC file (at least 8).
        """
        if len(head) > 7 and head[7] == FileControlTag.ENDEF:
            return CC_EXTENDED_LEN
        return CC_MIN_LEN

    @classmethod
    def parse(cls, raw: bytes, *, strict: bool = True) -> CapabilityContainer:
        """Parse the CC file (T4T 2.0 §5.1, §5.1.2; T4T 3.0 for TLV 06h).

        :param raw: the CC bytes from offset 0 (15 bytes, 17 with an ENDEF TLV).
        :param strict: refuse every value the spec does not allow; when False, accept
            an MLe below 15, an NDEF file size below 5 or above FFFEh, a reserved file id
            and a 06h TLV under mapping 1.x/2.x, recording each in :attr:`issues`.
        :raises UnsupportedVersion: the major version is not 1, 2 or 3 (never tolerated:
            T4T 2.0 §5.1.1 tells a reader not to access a higher major version).
        :raises CorruptCc: CCLEN below 15, MLc of 0, a first TLV that is not a File Control
            TLV 04h/06h of the right length, or (strict) any value named above.
        """
        raw = bytes(raw)
        if len(raw) < CC_MIN_LEN:
            raise CorruptCc(f"CC file answered {len(raw)} bytes, at least {CC_MIN_LEN} are needed")
        cclen = int.from_bytes(raw[0:2], "big")
        version = raw[2]
        mle = int.from_bytes(raw[3:5], "big")
        mlc = int.from_bytes(raw[5:7], "big")
        tag, length = raw[7], raw[8]
        if cclen < CC_MIN_LEN:
            raise CorruptCc(f"CCLEN {cclen} is below the minimum {CC_MIN_LEN}")
        if version >> 4 not in SUPPORTED_MAJORS:
            raise UnsupportedVersion(version)
        if tag not in _TLV_LENGTH:
            raise CorruptCc(f"first CC TLV is {tag:02X}h, not an NDEF File Control TLV (04h/06h)")
        tlv_tag = FileControlTag(tag)
        if length != _TLV_LENGTH[tlv_tag]:
            raise CorruptCc(f"File Control TLV {tag:02X}h has length {length}, expected {_TLV_LENGTH.get(tlv_tag)}")
        end = 9 + length
        if len(raw) < end or cclen < end:
            raise CorruptCc(f"CC ends at byte {min(len(raw), cclen)}, the {tag:02X}h TLV needs {end}")
        value = raw[9:end]
        size_len = length - 4
        file_id = int.from_bytes(value[0:2], "big")
        max_size = int.from_bytes(value[2 : 2 + size_len], "big")
        read_access, write_access = value[2 + size_len], value[3 + size_len]
        issues: list[str] = []
        if mlc == 0:
            raise CorruptCc("MLc is 0: the tag accepts no command data")
        if mle == 0:
            raise CorruptCc("MLe is 0: the tag sends no response data")
        if mle < MIN_MLE:
            issues.append(f"MLe {mle} is below the minimum {MIN_MLE}")
        if file_id in RESERVED_FILE_IDS:
            issues.append(f"NDEF file id {file_id:04X}h is reserved")
        if max_size < MIN_FILE_SIZE:
            issues.append(f"NDEF file size {max_size} is below the minimum {MIN_FILE_SIZE}")
        if tlv_tag is FileControlTag.NDEF and max_size > MAX_FILE_SIZE:
            issues.append(f"NDEF file size {max_size:04X}h is RFU")
        if tlv_tag is FileControlTag.ENDEF and version >> 4 < 3:
            issues.append(f"ENDEF File Control TLV under mapping {version >> 4}.{version & 0xF}")
        if issues and strict:
            raise CorruptCc("; ".join(issues))
        return cls(bytes(raw[:end]), cclen, version, mle, mlc, tlv_tag, file_id, max_size,
                   read_access, write_access, tuple(issues))

    @classmethod
    def build(cls, *, file_id: int = 0xE104, max_size: int = 0x0800, mle: int = 0x00FF, mlc: int = 0x00FF,
              version: int = 0x20, writable: bool = True) -> CapabilityContainer:
        """A CC for tests and personalisation: TLV 04h, or 06h when *version* is 3.x and *max_size* > FFFEh.

        :param file_id: NDEF file identifier.
        :param max_size: NDEF file size in bytes, length field included.
        :param mle: MLe in bytes. :param mlc: MLc in bytes.
        :param version: mapping version byte (0x10, 0x20, 0x30).
        :param writable: write access 00h, else FFh.
        """
        endef = version >> 4 >= 3 and max_size > MAX_FILE_SIZE
        tag = FileControlTag.ENDEF if endef else FileControlTag.NDEF
        size = max_size.to_bytes(4 if endef else 2, "big")
        tlv = bytes((tag, _TLV_LENGTH[tag])) + file_id.to_bytes(2, "big") + size + bytes(
            (Access.GRANTED, Access.GRANTED if writable else Access.NONE))
        body = bytes((version,)) + mle.to_bytes(2, "big") + mlc.to_bytes(2, "big") + tlv
        raw = (2 + len(body)).to_bytes(2, "big") + body
        return cls.parse(raw)
