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

Format 2 (docs/card-format.md §2.2) keeps the same payloads behind the chip's password
(NTAG213/215/216 datasheet §8.8, AUTH0 = page 11, PROT = 1). What anyone may read is a
short public NDEF message and a header page; the private area has no NDEF framing::

    pages 4-9   03 12 D1 01 0E 55 04 'huma.id/saldo' FE 00 00   public NDEF: a URI record
    page 10     48 42 02 KV                  'HB', format 2, card-password key version
    page 11     LI LS 00 00                  private header (first protected page = AUTH0)
    page 12     identity payload (LI bytes)
    ...         slot A payload (LS bytes), then slot B payload (LS bytes)
    ...         n ~n n ~n                     failed-PIN count (cardlib.records.pin), no signed record
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
    "PRIVATE_FIRST_PAGE",
    "PUBLIC_HEADER_PAGE",
    "CardLayout",
    "PublicHeader",
    "RecordImage",
    "RecordType",
    "SlotName",
    "SlotRegion",
    "build_image",
    "build_private_image",
    "build_public_area",
    "pad_payload",
    "parse_image",
    "parse_private_image",
    "parse_public_header",
    "private_layout",
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
    :ivar version: card format 1 (NDEF records from page 4) or 2 (private area from page 11, §2.2).
    :raises LayoutError: lengths not page multiples or too long for a short record.
    """

    identity_len: int
    slot_len: int
    version: int = 1

    @property
    def base_page(self) -> int:
        """Page where the image starts: 4 (format 1) or the first private page (format 2)."""
        return FIRST_DATA_PAGE if self.version == 1 else PRIVATE_FIRST_PAGE

    @property
    def _header_bytes(self) -> int:
        return RECORD_HEADER_BYTES if self.version == 1 else 0

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise LayoutError(f"unknown card format {self.version}")
        for name in ("identity_len", "slot_len"):
            value = getattr(self, name)
            if value <= 0 or value % PAGE_SIZE or value > MAX_SHORT_PAYLOAD:
                raise LayoutError(f"{name} {value} must be a positive multiple of 4 up to 252")

    @classmethod
    def for_sizes(cls, identity_cose_len: int, max_slot_cose_len: int, version: int = 1) -> CardLayout:
        """The layout for an identity COSE of this size and slots holding up to ``max_slot_cose_len``."""
        return cls(_round_up(identity_cose_len), _round_up(max_slot_cose_len), version)

    @property
    def message_len(self) -> int:
        """NDEF message length (3 records), bytes."""
        return 3 * RECORD_HEADER_BYTES + self.identity_len + 2 * self.slot_len

    @property
    def image_len(self) -> int:
        """Bytes from :attr:`base_page`: TLV header + message + terminator TLV (format 1), or
        private header + identity + two slots (format 2)."""
        if self.version == 1:
            return TLV_HEADER_BYTES + self.message_len + 1
        return PRIVATE_HEADER_BYTES + self.identity_len + 2 * self.slot_len

    @property
    def pages(self) -> int:
        """Pages from :attr:`base_page` that hold the image."""
        return -(-self.image_len // PAGE_SIZE)

    @property
    def identity_offset(self) -> int:
        """Byte offset of the identity payload from :attr:`base_page`."""
        return TLV_HEADER_BYTES + RECORD_HEADER_BYTES if self.version == 1 else PRIVATE_HEADER_BYTES

    def slot_offset(self, slot: SlotName) -> int:
        """Byte offset of a slot payload from :attr:`base_page`."""
        a = self.identity_offset + self.identity_len + self._header_bytes
        return a if slot is SlotName.A else a + self.slot_len + self._header_bytes

    def slot_first_page(self, slot: SlotName) -> int:
        """Absolute tag page number where a slot payload starts."""
        return self.base_page + self.slot_offset(slot) // PAGE_SIZE

    def slot_pages(self, slot: SlotName) -> range:
        """Absolute tag pages of a slot payload."""
        first = self.slot_first_page(slot)
        return range(first, first + self.slot_len // PAGE_SIZE)

    @property
    def identity_pages(self) -> range:
        """Absolute tag pages of the identity payload (locked after issuance)."""
        first = self.base_page + self.identity_offset // PAGE_SIZE
        return range(first, first + self.identity_len // PAGE_SIZE)

    @property
    def end_page(self) -> int:
        """First page after the image."""
        return self.base_page + self.pages

    @property
    def pin_failures_page(self) -> int:
        """Format 2: the private page after the image that counts wrong PINs (cardlib.records.pin).

        :raises LayoutError: format 1 has no private page for it.
        """
        if self.version != FORMAT_PROTECTED:
            raise LayoutError("a format-1 card has no private page for a PIN count")
        return self.end_page

    def check_fits(self, data_area_bytes: int) -> None:
        """:raises LayoutError: when the image (and a format-2 PIN page) does not fit a data area from page 4."""
        needed = (self.base_page - FIRST_DATA_PAGE) * PAGE_SIZE + self.image_len
        needed += PAGE_SIZE if self.version == FORMAT_PROTECTED else 0
        if needed > data_area_bytes:
            raise LayoutError(
                f"card image needs {needed} B, data area has {data_area_bytes} B"
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
    return _record_image(layout, data)


def _check_record_header(header: bytes, index: int, rtype: RecordType) -> None:
    expected_flags = _FLAGS[index]
    if header[0] != expected_flags:
        raise LayoutError(
            f"record {index}: header byte {header[0]:02X}, expected {expected_flags:02X}"
        )
    if header[1] != len(rtype.value) or bytes(header[3:12]) != rtype.value:
        raise LayoutError(f"record {index}: type is not {rtype.value.decode()}")


# ----------------------------------------------------------------------------- format 2

#: Format 2: pages 4-9 public NDEF, page 10 public header, private area from page 11 (= AUTH0).
PUBLIC_HEADER_PAGE = 10
PRIVATE_FIRST_PAGE = 11
PUBLIC_MAGIC = b"HB"
FORMAT_PROTECTED = 2
PRIVATE_HEADER_BYTES = 4
#: Where a phone is sent to check a balance (URI record, NFC Forum URI RTD 1.0 §3.2.2, prefix 04 = "https://").
PUBLIC_URI = b"huma.id/saldo"
_URI_PREFIX_HTTPS = 0x04
_WELL_KNOWN_SHORT_ONLY = 0xD1  # MB | ME | SR | TNF 1 (NFC Forum well-known)


@dataclass(frozen=True)
class PublicHeader:
    """What the public pages tell a terminal: card format and card-password key version.

    :ivar version: card format (2).
    :ivar key_version: provincial card-password key version (1..255).
    """

    version: int
    key_version: int


def build_public_area(key_version: int) -> bytes:
    """Pages 4-10 of a format-2 card (28 bytes): the public NDEF message and the header page.

    The NDEF message is one URI record (``https://huma.id/saldo``): what a phone shows;
    no card id, household, programmes or balances (docs/card-format.md §2.2).

    :param key_version: 1..255.
    :raises LayoutError: a key version out of range.
    """
    if not 1 <= key_version <= 0xFF:
        raise LayoutError(f"key version {key_version} outside 1..255")
    payload = bytes((_URI_PREFIX_HTTPS,)) + PUBLIC_URI
    record = bytes((_WELL_KNOWN_SHORT_ONLY, 1, len(payload))) + b"U" + payload
    ndef = bytes((NDEF_TLV_TYPE, len(record))) + record + bytes((TERMINATOR_TLV,))
    area = (PUBLIC_HEADER_PAGE - FIRST_DATA_PAGE) * PAGE_SIZE
    assert len(ndef) <= area
    return ndef + bytes(area - len(ndef)) + PUBLIC_MAGIC + bytes((FORMAT_PROTECTED, key_version))


def parse_public_header(page: bytes) -> PublicHeader | None:
    """Read the header page (page 10) of a format-2 card.

    :param page: the 4 bytes of page 10.
    :returns: the header, or None when the page is not a format-2 header (e.g. a format-1 card).
    :raises LayoutError: our magic with an unknown format or key version 0.
    """
    if bytes(page[:2]) != PUBLIC_MAGIC:
        return None
    if page[2] != FORMAT_PROTECTED or page[3] == 0:
        raise LayoutError(f"public header {bytes(page).hex()}: unknown format or key version")
    return PublicHeader(page[2], page[3])


def private_layout(head: bytes) -> CardLayout:
    """The format-2 layout from the private header page (page 11: ``LI LS 00 00``).

    :raises LayoutError: lengths that are not a valid layout, or non-zero reserved bytes.
    """
    if len(head) < PRIVATE_HEADER_BYTES or any(head[2:4]):
        raise LayoutError(f"private header {bytes(head[:4]).hex()} is not LI LS 00 00")
    return CardLayout(head[0], head[1], FORMAT_PROTECTED)


def build_private_image(layout: CardLayout, identity_cose: bytes, slot_a: bytes | None,
                        slot_b: bytes | None) -> bytes:
    """The format-2 private area from page 11: header page, identity, slot A, slot B.

    :returns: ``layout.image_len`` bytes (a multiple of 4).
    :raises LayoutError: a message does not fit, or ``layout`` is not format 2.
    """
    if layout.version != FORMAT_PROTECTED:
        raise LayoutError("build_private_image needs a format-2 layout")
    return (bytes((layout.identity_len, layout.slot_len, 0, 0))
            + pad_payload(identity_cose, layout.identity_len)
            + pad_payload(slot_a or b"", layout.slot_len)
            + pad_payload(slot_b or b"", layout.slot_len))


def parse_private_image(data: bytes) -> RecordImage:
    """Parse the format-2 private area (bytes from page 11).

    :raises LayoutError: a bad header, short data or a damaged identity payload.
    """
    layout = private_layout(data)
    if len(data) < layout.image_len:
        raise LayoutError(f"private image needs {layout.image_len} B, got {len(data)}")
    return _record_image(layout, data)


def _record_image(layout: CardLayout, data: bytes) -> RecordImage:
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
