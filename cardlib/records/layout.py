"""Fixed NDEF layout of a Huma Betang card on an NFC Forum Type 2 tag (docs/card-format.md §2).

One NDEF message in the first NDEF TLV of the data area (NFC Forum T2T 1.0
§2.3, TLV at page 4 byte 0), three NFC Forum external-type records
(NDEF 1.0 §3.2.6, RTD 1.0 §3.2; TNF 0x04, short records)::

    page 4   03 FF hh ll                  NDEF TLV, 3-byte length form
    page 5   94 09 LI 'huma.id:i'         identity record header (12 B, pages 5-7)
    page 8   identity payload  (LI bytes, LI % 4 == 0)   COSE_Sign1 + 00 padding
    ...      14 09 LS 'huma.id:a'         slot A header (12 B, 3 pages)
    ...      slot A payload  (LS bytes, LS % 4 == 0)     COSE_Sign1 + 00 padding
    ...      54 09 LS 'huma.id:b'         slot B header (12 B, 3 pages)
    ...      slot B payload  (LS bytes)
    ...      FE                           terminator TLV

Because the TLV header (4 B) and every record header (12 B) are multiples of
the 4-byte page, every payload starts on a page boundary and owns whole pages:
a redemption rewrites only the pages of one slot payload, never a header or a
byte of the other slot, so a tear can damage only that slot.

A slot payload is a COSE_Sign1 followed by zero bytes up to the fixed length
LS; an all-zero payload is an *empty* slot (never written).
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass

import cbor2

from cardlib.records.errors import LayoutError

__all__ = [
    "FIRST_DATA_PAGE",
    "HEADER_PAGES",
    "PAGE_SIZE",
    "CardLayout",
    "RecordImage",
    "RecordType",
    "SlotName",
    "SlotRegion",
    "build_image",
    "pad_payload",
    "parse_image",
    "split_payload",
]

PAGE_SIZE = 4
#: First page of the Type 2 data area (T2T 1.0 §2.1: CC at page 3, data from page 4).
FIRST_DATA_PAGE = 4
NDEF_TLV_TYPE = 0x03
TERMINATOR_TLV = 0xFE
#: 3-byte TLV length form marker (T2T 1.0 §2.3.2).
TLV_LONG_LENGTH = 0xFF
TLV_HEADER_BYTES = 4

# NDEF record header flags (NDEF 1.0 §3.2).
_MB = 0x80
_ME = 0x40
_SR = 0x10
_TNF_EXTERNAL = 0x04
RECORD_HEADER_BYTES = 12
#: Bytes the 4-byte TLV header and the identity record header take before the identity payload.
HEADER_PAGES = RECORD_HEADER_BYTES // PAGE_SIZE
#: Largest short-record payload (SR: 1-byte payload length).
MAX_SHORT_PAYLOAD = 255


class RecordType(bytes, enum.Enum):
    """External record types (NFC Forum RTD 1.0 §3.2: ``<domain>:<type>``)."""

    IDENTITY = b"huma.id:i"
    SLOT_A = b"huma.id:a"
    SLOT_B = b"huma.id:b"


class SlotName(str, enum.Enum):
    """The two state slots."""

    A = "A"
    B = "B"

    @property
    def other(self) -> SlotName:
        return SlotName.B if self is SlotName.A else SlotName.A


_SLOT_TYPES = {SlotName.A: RecordType.SLOT_A, SlotName.B: RecordType.SLOT_B}
_FLAGS = (_MB | _SR | _TNF_EXTERNAL, _SR | _TNF_EXTERNAL, _ME | _SR | _TNF_EXTERNAL)

assert all(3 + len(t.value) == RECORD_HEADER_BYTES for t in RecordType)


def _round_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


@dataclass(frozen=True)
class CardLayout:
    """Byte and page positions of one card's records.

    :ivar identity_len: identity payload length in bytes (multiple of 4, ≤ 252).
    :ivar slot_len: each slot payload's length in bytes (multiple of 4, ≤ 252).
    :raises LayoutError: lengths not page multiples or too long for a short record.
    """

    identity_len: int
    slot_len: int

    def __post_init__(self) -> None:
        for name in ("identity_len", "slot_len"):
            value = getattr(self, name)
            if value <= 0 or value % PAGE_SIZE or value > MAX_SHORT_PAYLOAD:
                raise LayoutError(f"{name} {value} must be a positive multiple of 4 up to 252")

    @classmethod
    def for_sizes(cls, identity_cose_len: int, max_slot_cose_len: int) -> CardLayout:
        """The layout for an identity COSE of this size and slots holding up to ``max_slot_cose_len``."""
        return cls(_round_up(identity_cose_len), _round_up(max_slot_cose_len))

    @property
    def message_len(self) -> int:
        """NDEF message length (3 records), bytes."""
        return 3 * RECORD_HEADER_BYTES + self.identity_len + 2 * self.slot_len

    @property
    def image_len(self) -> int:
        """Bytes from page 4: TLV header + message + terminator TLV."""
        return TLV_HEADER_BYTES + self.message_len + 1

    @property
    def pages(self) -> int:
        """Pages from page 4 that hold the image."""
        return -(-self.image_len // PAGE_SIZE)

    @property
    def identity_offset(self) -> int:
        """Byte offset of the identity payload from page 4."""
        return TLV_HEADER_BYTES + RECORD_HEADER_BYTES

    def slot_offset(self, slot: SlotName) -> int:
        """Byte offset of a slot payload from page 4."""
        a = self.identity_offset + self.identity_len + RECORD_HEADER_BYTES
        return a if slot is SlotName.A else a + self.slot_len + RECORD_HEADER_BYTES

    def slot_first_page(self, slot: SlotName) -> int:
        """Absolute tag page number where a slot payload starts."""
        return FIRST_DATA_PAGE + self.slot_offset(slot) // PAGE_SIZE

    def slot_pages(self, slot: SlotName) -> range:
        """Absolute tag pages of a slot payload."""
        first = self.slot_first_page(slot)
        return range(first, first + self.slot_len // PAGE_SIZE)

    @property
    def identity_pages(self) -> range:
        """Absolute tag pages of the identity payload (locked after issuance)."""
        first = FIRST_DATA_PAGE + self.identity_offset // PAGE_SIZE
        return range(first, first + self.identity_len // PAGE_SIZE)

    def check_fits(self, data_area_bytes: int) -> None:
        """:raises LayoutError: when the image does not fit a data area of this many bytes."""
        if self.image_len > data_area_bytes:
            raise LayoutError(
                f"card image needs {self.image_len} B, data area has {data_area_bytes} B"
            )


def pad_payload(cose: bytes, length: int) -> bytes:
    """A record payload: the COSE bytes then zero padding up to ``length``.

    :raises LayoutError: when the COSE message is longer than the payload.
    """
    if len(cose) > length:
        raise LayoutError(f"COSE message of {len(cose)} B does not fit a {length}-B payload")
    return bytes(cose) + bytes(length - len(cose))


def split_payload(payload: bytes) -> bytes | None:
    """Cut the COSE message off a padded payload.

    :returns: the COSE bytes exactly as stored, or None for an all-zero (empty) payload.
    :raises LayoutError: the payload does not start with one complete CBOR item,
        or a padding byte after it is not zero.
    """
    if not any(payload):
        return None
    stream = io.BytesIO(payload)
    try:
        cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise LayoutError(f"payload does not start with a complete CBOR item ({exc})") from exc
    end = stream.tell()
    if any(payload[end:]):
        raise LayoutError(f"non-zero padding after the {end}-byte COSE message")
    return bytes(payload[:end])


@dataclass(frozen=True)
class SlotRegion:
    """The raw bytes of one slot payload as read.

    :ivar name: A or B.
    :ivar raw: the whole fixed-length payload, bytes.
    :ivar first_page: absolute page where it starts.
    """

    name: SlotName
    raw: bytes
    first_page: int


@dataclass(frozen=True)
class RecordImage:
    """The data area parsed (from page 4): exact identity COSE bytes and both raw slot payloads.

    Not the whole-chip dump of :class:`cardlib.type2.image.CardImage`: this is only the
    NDEF message of docs/card-format.md, as :func:`parse_image` reads it.

    :ivar layout: positions.
    :ivar identity: the identity COSE_Sign1 message, exactly as read (no padding).
    :ivar slots: slot name -> :class:`SlotRegion`.
    """

    layout: CardLayout
    identity: bytes
    slots: dict[SlotName, SlotRegion]


def build_image(
    layout: CardLayout,
    identity_cose: bytes,
    slot_a: bytes | None = None,
    slot_b: bytes | None = None,
) -> bytes:
    """Encode the data-area image (from page 4) for issuance.

    :param identity_cose: the issuer-signed identity COSE_Sign1.
    :param slot_a: slot A COSE_Sign1, or None for an empty slot.
    :param slot_b: slot B COSE_Sign1, or None for an empty slot.
    :returns: ``layout.image_len`` bytes (TLV + message + terminator), not page padded.
    :raises LayoutError: a message does not fit its payload.
    """
    payloads = (
        pad_payload(identity_cose, layout.identity_len),
        pad_payload(slot_a or b"", layout.slot_len),
        pad_payload(slot_b or b"", layout.slot_len),
    )
    types = (RecordType.IDENTITY, RecordType.SLOT_A, RecordType.SLOT_B)
    message = b"".join(
        bytes((flags, len(rtype.value), len(payload))) + rtype.value + payload
        for flags, rtype, payload in zip(_FLAGS, types, payloads, strict=False)
    )
    tlv = bytes((NDEF_TLV_TYPE, TLV_LONG_LENGTH)) + len(message).to_bytes(2, "big")
    return tlv + message + bytes((TERMINATOR_TLV,))


def header_layout(head: bytes) -> CardLayout:
    """Read the layout from the first 16 bytes of the data area (pages 4-7).

    Only the identity length is there; the slot length is in the slot A header
    that follows the identity payload, so this returns a layout with the slot
    length derived from the NDEF TLV length (both slots are equal by spec).

    :param head: at least 16 bytes from page 4.
    :raises LayoutError: not the fixed layout.
    """
    if len(head) < TLV_HEADER_BYTES + RECORD_HEADER_BYTES:
        raise LayoutError("need 16 bytes from page 4")
    if head[0] != NDEF_TLV_TYPE or head[1] != TLV_LONG_LENGTH:
        raise LayoutError(
            f"page 4 does not start with a 3-byte-length NDEF TLV (got {head[:2].hex()})"
        )
    message_len = int.from_bytes(head[2:4], "big")
    _check_record_header(head[4:16], 0, RecordType.IDENTITY)
    identity_len = head[6]
    rest = message_len - 3 * RECORD_HEADER_BYTES - identity_len
    if rest <= 0 or rest % 2:
        raise LayoutError(f"NDEF TLV length {message_len} does not fit two equal slots")
    return CardLayout(identity_len, rest // 2)


def parse_image(data: bytes) -> RecordImage:
    """Parse the data-area bytes (from page 4) into the identity message and slot regions.

    Strict: the TLV, every record header and the terminator must be exactly as
    :func:`build_image` writes them.

    :param data: at least ``layout.image_len`` bytes read from page 4.
    :raises LayoutError: anything else, incl. a damaged identity record.
    """
    layout = header_layout(data)
    if len(data) < layout.image_len:
        raise LayoutError(f"image needs {layout.image_len} B, got {len(data)}")
    for index, (slot, rtype) in enumerate(_SLOT_TYPES.items(), start=1):
        start = layout.slot_offset(slot) - RECORD_HEADER_BYTES
        header = data[start : start + RECORD_HEADER_BYTES]
        _check_record_header(header, index, rtype)
        if header[2] != layout.slot_len:
            raise LayoutError(f"slot {slot.value} payload length {header[2]} != {layout.slot_len}")
    if data[layout.image_len - 1] != TERMINATOR_TLV:
        raise LayoutError("no terminator TLV after the NDEF message")
    ident_payload = data[layout.identity_offset : layout.identity_offset + layout.identity_len]
    try:
        identity = split_payload(ident_payload)
    except LayoutError as exc:
        raise LayoutError(f"identity record: {exc}") from exc
    if identity is None:
        raise LayoutError("identity record is empty")
    slots = {
        slot: SlotRegion(
            slot,
            bytes(data[layout.slot_offset(slot) : layout.slot_offset(slot) + layout.slot_len]),
            layout.slot_first_page(slot),
        )
        for slot in SlotName
    }
    return RecordImage(layout, identity, slots)


def _check_record_header(header: bytes, index: int, rtype: RecordType) -> None:
    expected_flags = _FLAGS[index]
    if header[0] != expected_flags:
        raise LayoutError(
            f"record {index}: header byte {header[0]:02X}, expected {expected_flags:02X}"
        )
    if header[1] != len(rtype.value) or bytes(header[3:12]) != rtype.value:
        raise LayoutError(f"record {index}: type is not {rtype.value.decode()}")
