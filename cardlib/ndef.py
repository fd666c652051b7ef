"""NDEF messages via ndeflib, with every record bound-checked before decoding (NFC Forum NDEF 1.0 §3.2).

ndeflib decodes from a stream and already refuses short reads, but a record
header can still make it fail in ways that are not its ``DecodeError`` (a
non-ASCII TYPE, a known record type's own payload parser). :func:`decode_message`
therefore walks the record headers first (:func:`scan_records`): a TYPE, ID or
PAYLOAD length that runs past the buffer raises :class:`NdefError` before any
allocation of that size (field case T2-4); only then does ndeflib build the
records, and any ndeflib failure is re-raised as :class:`NdefError`.

ndeflib's error vocabulary is its own ``DecodeError``/``EncodeError`` plus
plain ``ValueError`` (incl. ``UnicodeError``) and ``TypeError`` raised by its
record constructors -- e.g. when a decoded TNF 2/3 TYPE is not a media type or
absolute URI that ndeflib can represent. Every call into ndeflib here (decode,
encode, record construction) translates exactly that vocabulary to
:class:`NdefError`, so callers see one typed error.

External type names (TNF 4) are checked against NFC Forum RTD 1.0 §3.2 both
when we build a record and when we read one: ``<domain>:<type>`` where
``<domain>`` is a DNS name (RFC 1035 §2.3.1 labels: letters, digits, inner
hyphens, dot-separated) and ``<type>`` is one or more URN NSS characters
(RFC 2141 §2.2 minus ``%``-escapes and the reserved ``/?#``). Names compare
case-insensitively (RTD 1.0 §3.2); we keep the bytes as read.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

import ndef

from cardlib.errors import CardlibError

__all__ = ["NdefError", "RecordHeader", "Tnf", "decode_message", "encode_message", "external_record",
           "is_external_type", "scan_records"]

_SHORT_RECORD_LENGTH_BYTES = 1
_LONG_RECORD_LENGTH_BYTES = 4


class NdefError(CardlibError):
    """An NDEF message or record is malformed.

    :ivar offset: byte offset in the message where the faulty record starts.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"bad NDEF record at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class Tnf(enum.IntEnum):
    """Type Name Format (NDEF 1.0 §3.2.6)."""

    EMPTY = 0
    WELL_KNOWN = 1
    MEDIA = 2
    ABSOLUTE_URI = 3
    EXTERNAL = 4
    UNKNOWN = 5
    UNCHANGED = 6
    RESERVED = 7


class _Flag(enum.IntFlag):
    MB = 0x80
    ME = 0x40
    CF = 0x20
    SR = 0x10
    IL = 0x08


_TNF_MASK = 0x07
_MAX_TYPE_LENGTH = 255  # TYPE LENGTH is one byte (NDEF 1.0 §3.2.10)
_EXTERNAL_PREFIX = "urn:nfc:ext:"  # RTD 1.0 §3.2: the URN form of a TNF 4 type

# RTD 1.0 §3.2 external type: DNS domain (RFC 1035 §2.3.1 labels) ":" URN NSS chars (RFC 2141 §2.2).
_EXTERNAL_TYPE = re.compile(
    rb"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    rb":[A-Za-z0-9()+,\-.:=@;$_!*']+"
)

# Everything ndeflib raises on bad input (its DecodeError/EncodeError and the
# TypeError/ValueError of its record constructors; UnicodeError is a ValueError).
_NDEFLIB_ERRORS = (ndef.DecodeError, ndef.EncodeError, TypeError, ValueError)


def is_external_type(domain_type: bytes) -> bool:
    """Whether ``domain_type`` is a well-formed NFC Forum external type name (RTD 1.0 §3.2).

    :param domain_type: the record TYPE field of a TNF 4 record, e.g. ``b"humabetang.id:i"``
        (without the ``urn:nfc:ext:`` prefix), at most 255 bytes.
    """
    return len(domain_type) <= _MAX_TYPE_LENGTH and _EXTERNAL_TYPE.fullmatch(domain_type) is not None


@dataclass(frozen=True)
class RecordHeader:
    """Where one record's fields lie in the message (offsets into the message bytes)."""

    offset: int
    tnf: Tnf
    mb: bool
    me: bool
    type: bytes
    id: bytes
    payload_offset: int
    payload_length: int


def scan_records(message: bytes) -> list[RecordHeader]:
    """Walk record headers, bounds-checking every length against the buffer (NDEF 1.0 §3.2).

    :param message: the NDEF message bytes (e.g. the NDEF TLV value).
    :returns: one header per record, in order.
    :raises NdefError: empty message, reserved TNF, missing MB/ME, chunked record,
        TNF-inconsistent lengths, or a TYPE/ID/PAYLOAD length past the buffer.
    """
    if not message:
        raise NdefError(0, "empty message")
    out: list[RecordHeader] = []
    pos = 0
    end = len(message)
    while True:
        start = pos
        flags = message[pos]
        tnf = flags & _TNF_MASK
        if tnf == Tnf.RESERVED:
            raise NdefError(start, "TNF 7 is reserved")
        if flags & _Flag.CF:
            raise NdefError(start, "chunked records are not supported")
        if bool(flags & _Flag.MB) != (start == 0):
            raise NdefError(start, "MB flag must be set on the first record only")
        len_bytes = _SHORT_RECORD_LENGTH_BYTES if flags & _Flag.SR else _LONG_RECORD_LENGTH_BYTES
        header_len = 1 + 1 + len_bytes + (1 if flags & _Flag.IL else 0)
        if pos + header_len > end:
            raise NdefError(start, f"record header needs {header_len} bytes, {end - pos} left")
        type_len = message[pos + 1]
        payload_len = int.from_bytes(message[pos + 2 : pos + 2 + len_bytes], "big")
        id_len = message[pos + 2 + len_bytes] if flags & _Flag.IL else 0
        pos += header_len
        if tnf == Tnf.EMPTY and (type_len or id_len or payload_len):
            raise NdefError(start, "an empty record (TNF 0) must have no type, id or payload")
        if tnf in (Tnf.UNKNOWN, Tnf.UNCHANGED) and type_len:
            raise NdefError(start, f"TNF {tnf} must have no type")
        if tnf in (Tnf.WELL_KNOWN, Tnf.MEDIA, Tnf.ABSOLUTE_URI, Tnf.EXTERNAL) and not type_len:
            raise NdefError(start, f"TNF {tnf} needs a type")
        if tnf == Tnf.UNCHANGED:
            raise NdefError(start, "TNF 6 (unchanged) only appears in chunked records")
        need = type_len + id_len + payload_len
        if need > end - pos:
            raise NdefError(
                start,
                f"type {type_len} + id {id_len} + payload {payload_len} bytes run past the message "
                f"({end - pos} bytes left)",
            )
        rtype = bytes(message[pos : pos + type_len])
        if any(b < 0x20 or b > 0x7E for b in rtype):
            raise NdefError(start, "record type is not printable US-ASCII")
        if tnf == Tnf.EXTERNAL and not is_external_type(rtype):
            raise NdefError(start, f"external type {rtype!r} is not <domain>:<type> (NFC RTD 1.0 §3.2)")
        rid = bytes(message[pos + type_len : pos + type_len + id_len])
        payload_offset = pos + type_len + id_len
        out.append(RecordHeader(start, Tnf(tnf), start == 0, bool(flags & _Flag.ME), rtype, rid,
                                payload_offset, payload_len))
        pos = payload_offset + payload_len
        if flags & _Flag.ME:
            if pos != end:
                raise NdefError(pos, f"{end - pos} bytes after the record with ME set")
            return out
        if pos >= end:
            raise NdefError(start, "last record has no ME flag")


def decode_message(message: bytes) -> list[ndef.Record]:
    """Decode an NDEF message into ndeflib records (external types stay plain ``ndef.Record``).

    :raises NdefError: any malformation (see :func:`scan_records`), a record ndeflib
        cannot represent (e.g. a TNF 3 TYPE that is no absolute URI) or a known record
        type whose payload ndeflib cannot parse (e.g. a Text record that is not UTF-8).
    """
    scan_records(message)
    try:
        return list(ndef.message_decoder(message))
    except _NDEFLIB_ERRORS as exc:
        raise NdefError(0, f"ndeflib: {exc}") from exc


def encode_message(records: Iterable[ndef.Record]) -> bytes:
    """Encode records into one NDEF message (MB on the first, ME on the last).

    :raises NdefError: when ndeflib cannot encode a record (e.g. a payload over its
        limit, or something that is not an ``ndef.Record``).
    """
    try:
        return b"".join(ndef.message_encoder(list(records)))
    except _NDEFLIB_ERRORS as exc:
        raise NdefError(0, f"cannot encode: {exc}") from exc


def external_record(domain_type: str, payload: bytes, name: str = "") -> ndef.Record:
    """An NFC Forum external-type record ``urn:nfc:ext:<domain>:<type>`` (NFC RTD 1.0 §3.2).

    :param domain_type: ``"<domain>:<type>"``, e.g. ``"humabetang.id:c"`` (RTD 1.0 §3.2,
        see :func:`is_external_type`).
    :param payload: record payload bytes.
    :param name: record ID (Latin-1, ≤ 255 bytes), e.g. ``"a"`` for slot A.
    :raises NdefError: a malformed external type name or a name ndeflib refuses.
    """
    try:
        encoded = domain_type.encode("ascii")
    except UnicodeEncodeError as exc:
        raise NdefError(0, f"external type {domain_type!r} is not ASCII") from exc
    if not is_external_type(encoded):
        raise NdefError(0, f"external type {domain_type!r} is not <domain>:<type> (NFC RTD 1.0 §3.2)")
    try:
        return ndef.Record(_EXTERNAL_PREFIX + domain_type, name, payload)
    except _NDEFLIB_ERRORS as exc:
        raise NdefError(0, f"cannot build record: {exc}") from exc
