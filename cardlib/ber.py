"""Simple BER-TLV data objects as PC/SC Part 3 and ISO/IEC 7816-4 use them.

ISO/IEC 7816-4:2020 §6.3 (BER-TLV data objects) with the length forms of
ISO/IEC 8825-1 §8.1.3: 0-127 in one byte, ``81 xx`` for 128-255 and
``82 xx xx`` for 256-65,535. Tags are one byte, or two when the low five bits
of the first are all set (``5F 46``). Values are opaque bytes; constructed
objects are not descended into.

Used by both sides of the PC/SC Part 3 transparent session (v2.02
§3.2.2.1.8): the host channel (:mod:`cardlib.type2.channel`) and the
reader emulator (:mod:`simulator.reader`).
"""

from __future__ import annotations

from typing import Final

from cardlib.errors import CardlibError

__all__ = ["BerError", "encode_object", "parse_objects"]

_TAG_NUMBER_MASK: Final = 0x1F  # all five set: a subsequent tag byte follows (7816-4 §6.3)
_LONG_FORM: Final = 0x80
_LONG_1: Final = 0x81
_LONG_2: Final = 0x82
_MAX_SHORT: Final = 0x7F
_MAX_LONG_1: Final = 0xFF
_MAX_LONG_2: Final = 0xFFFF


class BerError(CardlibError):
    """A BER-TLV tag or length is truncated, unsupported or runs past the buffer."""


def encode_object(tag: int, value: bytes) -> bytes:
    """One data object: tag (1 or 2 bytes) + shortest length form + value.

    :param tag: ``0x00``-``0xFF``, or a two-byte tag such as ``0x5F46``.
    :param value: at most 65,535 bytes.
    :raises BerError: value longer than 65,535 bytes.
    """
    head = tag.to_bytes(2, "big") if tag > 0xFF else bytes((tag,))
    n = len(value)
    if n <= _MAX_SHORT:
        length = bytes((n,))
    elif n <= _MAX_LONG_1:
        length = bytes((_LONG_1, n))
    elif n <= _MAX_LONG_2:
        length = bytes((_LONG_2,)) + n.to_bytes(2, "big")
    else:
        raise BerError(f"value of {n} bytes is too long for a two-byte BER length")
    return head + length + bytes(value)


def parse_objects(data: bytes) -> list[tuple[int, bytes]]:
    """Split a concatenation of data objects into ``(tag, value)`` pairs, in order.

    :param data: the bytes of zero or more data objects.
    :raises BerError: a tag or length runs past the buffer, or a length uses
        more than two subsequent bytes (or the indefinite form ``80``).
    """
    out: list[tuple[int, bytes]] = []
    i = 0
    end = len(data)
    while i < end:
        tag = data[i]
        i += 1
        if tag & _TAG_NUMBER_MASK == _TAG_NUMBER_MASK:
            if i >= end:
                raise BerError("truncated two-byte tag")
            tag = (tag << 8) | data[i]
            i += 1
        if i >= end:
            raise BerError(f"tag {tag:02X} has no length")
        length = data[i]
        i += 1
        if length & _LONG_FORM:
            n = length & ~_LONG_FORM & 0xFF
            if n not in (1, 2) or i + n > end:
                raise BerError(f"unsupported or truncated BER length {length:02X}")
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        if i + length > end:
            raise BerError(f"tag {tag:02X}: {length} value bytes run past the buffer ({end - i} left)")
        out.append((tag, bytes(data[i : i + length])))
        i += length
    return out
