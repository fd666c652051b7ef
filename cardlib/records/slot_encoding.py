"""Slot claims, version 2: a fixed-width CBOR map, so a redemption rewrites as few pages as it can.

Spec: docs/card-format.md §4.1. Version 1 slots are CBOR in preferred serialization
(RFC 8949 §4.2.1): a seq, journal seq or terminal id that crosses 24, 256 or 65,536
changes its head, every byte after it moves, and the chip gets the whole tail of the
slot again. Version 2 writes seq, cycle, terminal_id, terminal_seq, time and
nfc_counter with a 4-byte argument always (additional information 26, RFC 8949 §3.1:
``1a xx xx xx xx``), keeps the remaining amounts in preferred serialization (so the slot
is no longer than version 1's worst case, which sizes it) and ends with a zero-filled
pad claim (key 9) sized so that, in the COSE_Sign1 layout the card format signs
(docs/card-format.md §5: tag 18, protected ``{1: alg}``, unprotected ``{4: kid}`` with
a 4-byte kid), the 64-byte signature starts on a page boundary. A slot payload starts
on a page (docs/card-format.md §2), so a claim keeps its bytes and pages from state to
state, an amount whose width changes (rupiah below 65,536) moves only the claims after
it and the pad takes up the difference, and a redemption changes the pages of the
claims that changed and the 16 pages of the signature.

The encoding is still deterministic (one byte string per claim set: keys ascending,
each value in its one fixed width, the pad's length a function of the rest) and any
CBOR decoder reads it (``cbor2.loads``); :func:`decode_fixed` decodes it that way and
then refuses anything that is not byte for byte what :func:`encode_fixed` writes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import cbor2

from cardlib.records.errors import ClaimsError

__all__ = [
    "COSE_PREFIX_BYTES",
    "FIXED_VERSIONS",
    "PAD_KEY",
    "SLOT_FIXED_VERSION",
    "SLOT_PACKED_VERSION",
    "decode_fixed",
    "encode_fixed",
    "encode_packed",
    "is_fixed",
]

#: Slot claim-set version of this encoding (claim 0).
SLOT_FIXED_VERSION = 2
#: Version 3 (docs/card-format.md §4.2): the claims that change on every tap packed into one bstr.
SLOT_PACKED_VERSION = 3
#: The encodings :func:`encode_fixed` writes and :func:`decode_fixed` reads.
FIXED_VERSIONS = (SLOT_FIXED_VERSION, SLOT_PACKED_VERSION)
#: Claim key of the zero-filled byte string that aligns the signature.
PAD_KEY = 9
#: Bytes of a card COSE_Sign1 before the payload: ``d2 84``, ``43 a1 01 <alg>``,
#: ``a1 04 44 <kid 4 B>``, ``58 <len>`` (RFC 9052 §4.2; docs/card-format.md §5).
COSE_PREFIX_BYTES = 15
#: ``58 40``: the head of the 64-byte signature bstr that follows the payload.
SIGNATURE_HEAD_BYTES = 2
_PAGE = 4
_MAP_HEAD = 0xA0  # major type 5, count in the low 5 bits (≤ 23)
_BSTR_HEAD = 0x40  # major type 2, length in the low 5 bits (≤ 23)
_UINT32 = 0x1A  # major type 0, 4-byte argument follows
_KEYS = 10  # claims 0..8 of docs/card-format.md §4 and the pad (9)
_HEAD = bytes((_MAP_HEAD | _KEYS, 0x00, SLOT_FIXED_VERSION))
_HASH_BYTES = 8


def _u32(value: int) -> bytes:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an int")
    return bytes((_UINT32,)) + value.to_bytes(4, "big")


def _amount(value: int) -> bytes:
    if type(value) is not int or value < 0:
        raise TypeError(f"{value!r} is not an unsigned int")
    if value > 0xFFFF_FFFF:
        raise OverflowError(f"{value} is above uint32")
    return cbor2.dumps(value)


def encode_fixed(*, seq: int, cycle: int, remaining: Mapping[int, int], terminal_id: int, terminal_seq: int,
                 time: int, nfc_counter: int, prev_hash: bytes, version: int = SLOT_FIXED_VERSION) -> bytes:
    """Encode a version-2 slot claim set (docs/card-format.md §4.1), values already range-checked;
    ``version=3``: the packed encoding of §4.2 (:func:`encode_packed`).

    :param remaining: programme id (1..23) -> amount (uint32, preferred serialization), ascending ids.
    :param prev_hash: 8 bytes.
    :returns: ``{0: 2, 1: seq, 2: cycle, 3: {pid: amount}, 4: terminal_id, 5: terminal_seq,
        6: time, 7: nfc_counter, 8: prev_hash, 9: h'00…'}``, claims 1, 2 and 4-7 in 4 bytes;
        the pad (0..3 zero bytes) makes ``15 + len + 2`` a multiple of 4 (the COSE_Sign1's
        signature starts on a page). The length never decreases when a value grows, so the
        worst-case claims still size the slot.
    :raises TypeError: a value of the wrong type.
    :raises OverflowError: a value outside uint32.
    :raises ValueError: more than 23 programmes, a programme id above 23, a hash not 8 bytes.
    """
    if len(remaining) > 23 or any(type(pid) is not int or not 0 <= pid <= 23 for pid in remaining):
        raise ValueError("remaining: at most 23 programmes with ids 0..23")
    if type(prev_hash) is not bytes or len(prev_hash) != _HASH_BYTES:
        raise ValueError("prev_hash must be 8 bytes")
    if version == SLOT_PACKED_VERSION:
        return encode_packed(seq=seq, cycle=cycle, remaining=remaining, terminal_id=terminal_id,
                             terminal_seq=terminal_seq, time=time, nfc_counter=nfc_counter, prev_hash=prev_hash)
    if version != SLOT_FIXED_VERSION:
        raise ValueError(f"no fixed-width slot encoding version {version}")
    body = b"".join((
        _HEAD,
        b"\x01", _u32(seq),
        b"\x02", _u32(cycle),
        b"\x03", bytes((_MAP_HEAD | len(remaining),)),
        *(bytes((pid,)) + _amount(remaining[pid]) for pid in sorted(remaining)),
        b"\x04", _u32(terminal_id),
        b"\x05", _u32(terminal_seq),
        b"\x06", _u32(time),
        b"\x07", _u32(nfc_counter),
        b"\x08", bytes((_BSTR_HEAD | _HASH_BYTES,)), prev_hash,
    ))
    pad = -(COSE_PREFIX_BYTES + len(body) + 2 + SIGNATURE_HEAD_BYTES) % _PAGE
    return body + bytes((PAD_KEY, _BSTR_HEAD | pad)) + bytes(pad)


def is_fixed(payload: bytes) -> bool:
    """True when a slot payload starts like a version-2 (``aa 00 02``) or version-3 (``a5 00 03``) claim set."""
    return bytes(payload[: len(_HEAD)]) in (_HEAD, _PACKED_HEAD)


def decode_fixed(payload: bytes) -> dict[int, Any]:
    """Decode a version-2 slot claim set with a general CBOR decoder and check it is canonical.

    :param payload: the COSE payload bytes exactly as read.
    :returns: the claim map without the pad (keys 0..8), values as decoded.
    :raises ClaimsError: not one CBOR map, or not byte for byte what :func:`encode_fixed`
        writes for its values (another width, order, pad, repeated key, trailing bytes).
    """
    stream = io.BytesIO(payload)
    try:
        claims = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise ClaimsError(f"slot claims: not CBOR ({exc})") from exc
    if bytes(payload[: len(_PACKED_HEAD)]) == _PACKED_HEAD:
        return _decode_packed(claims, payload)
    if not isinstance(claims, dict) or set(claims) != set(range(_KEYS)):
        raise ClaimsError("slot claims v2: not a map of keys 0..9")
    remaining = claims[3]
    try:
        if not isinstance(remaining, dict):
            raise TypeError("remaining is not a map")
        again = encode_fixed(seq=claims[1], cycle=claims[2], remaining=remaining, terminal_id=claims[4],
                             terminal_seq=claims[5], time=claims[6], nfc_counter=claims[7], prev_hash=claims[8])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ClaimsError(f"slot claims v2: {exc}") from exc
    if again != bytes(payload):
        raise ClaimsError("slot claims v2: not the fixed-width encoding (width, order, pad or trailing bytes)")
    del claims[PAD_KEY]
    return claims


# ----------------------------------------------------------------------------- version 3

#: Claim 1 of a version-3 set: the packed bstr (seq, terminal_seq, time, nfc_counter, prev_hash, terminal_id).
_PACKED_KEY = 1
_PACKED_KEYS = frozenset((0, _PACKED_KEY, 2, 3, PAD_KEY))
_PACKED_HEAD = bytes((_MAP_HEAD | len(_PACKED_KEYS), 0x00, SLOT_PACKED_VERSION))
#: Counter bytes in the packed bstr, by (claim, byte of its big-endian uint32): rarely changing first,
#: then the page that changes on most taps days apart, then the page that changes on every tap.
_COUNTER_BYTES = (
    ("seq", 0), ("seq", 1), ("seq", 2), ("terminal_seq", 0), ("terminal_seq", 1), ("time", 0), ("nfc_counter", 1),
    ("time", 2), ("time", 1), ("terminal_seq", 2), ("nfc_counter", 2),
    ("seq", 3), ("terminal_seq", 3), ("time", 3), ("nfc_counter", 3),
)
_PACKED_LEN = len(_COUNTER_BYTES) + _HASH_BYTES + 4  # 27: its bstr head is 58 1b, so it starts at slot byte 21


def _uint32(name: str, value: int, limit: int = 0xFFFF_FFFF) -> bytes:
    if type(value) is not int:
        raise TypeError(f"{name} {value!r} is not an int")
    if not 0 <= value <= limit:
        raise OverflowError(f"{name} {value} outside 0..{limit}")
    return value.to_bytes(4, "big")


def encode_packed(*, seq: int, cycle: int, remaining: Mapping[int, int], terminal_id: int, terminal_seq: int,
                  time: int, nfc_counter: int, prev_hash: bytes) -> bytes:
    """Encode a version-3 slot claim set (docs/card-format.md §4.2).

    ``{0: 3, 1: h'<27 bytes>', 2: cycle, 3: {pid: amount}, 9: h'00…'}``: claim 1 packs seq,
    terminal_seq, time and nfc_counter byte by byte (:data:`_COUNTER_BYTES`: the four low bytes
    share one page, the bytes that change on most taps share the next), then prev_hash (8) and
    terminal_id (4, big-endian), each on its own page(s) of the slot; cycle as ``1a`` + 4 bytes;
    amounts in preferred serialization; the pad (0..3 zero bytes) puts the signature on a page.

    :raises TypeError: a value of the wrong type.
    :raises OverflowError: a value outside uint32 (nfc_counter: uint24).
    :raises ValueError: more than 23 programmes, a programme id above 23, a hash not 8 bytes.
    """
    if len(remaining) > 23 or any(type(pid) is not int or not 0 <= pid <= 23 for pid in remaining):
        raise ValueError("remaining: at most 23 programmes with ids 0..23")
    if type(prev_hash) is not bytes or len(prev_hash) != _HASH_BYTES:
        raise ValueError("prev_hash must be 8 bytes")
    values = {"seq": _uint32("seq", seq), "terminal_seq": _uint32("terminal_seq", terminal_seq),
              "time": _uint32("time", time), "nfc_counter": _uint32("nfc_counter", nfc_counter, 0xFF_FFFF)}
    packed = bytes(values[name][i] for name, i in _COUNTER_BYTES) + prev_hash + _uint32("terminal_id", terminal_id)
    body = b"".join((
        _PACKED_HEAD,
        bytes((_PACKED_KEY, 0x58, _PACKED_LEN)), packed,
        b"\x02", _u32(cycle),
        b"\x03", bytes((_MAP_HEAD | len(remaining),)),
        *(bytes((pid,)) + _amount(remaining[pid]) for pid in sorted(remaining)),
    ))
    pad = -(COSE_PREFIX_BYTES + len(body) + 2 + SIGNATURE_HEAD_BYTES) % _PAGE
    return body + bytes((PAD_KEY, _BSTR_HEAD | pad)) + bytes(pad)


def _decode_packed(claims: object, payload: bytes) -> dict[int, Any]:
    """The claim map (keys 0..8, as version 2 gives them) of a version-3 set, refused unless canonical."""
    if not isinstance(claims, dict) or set(claims) != _PACKED_KEYS:
        raise ClaimsError("slot claims v3: not a map of keys 0, 1, 2, 3, 9")
    packed = claims[_PACKED_KEY]
    if not isinstance(packed, bytes) or len(packed) != _PACKED_LEN:
        raise ClaimsError(f"slot claims v3: claim 1 is not a {_PACKED_LEN}-byte string")
    values = {name: bytearray(4) for name in ("seq", "terminal_seq", "time", "nfc_counter")}
    for (name, i), byte in zip(_COUNTER_BYTES, packed, strict=False):
        values[name][i] = byte
    n = len(_COUNTER_BYTES)
    out: dict[int, Any] = {
        0: claims[0], 1: int.from_bytes(values["seq"], "big"), 2: claims[2], 3: claims[3],
        4: int.from_bytes(packed[n + _HASH_BYTES :], "big"), 5: int.from_bytes(values["terminal_seq"], "big"),
        6: int.from_bytes(values["time"], "big"), 7: int.from_bytes(values["nfc_counter"], "big"),
        8: bytes(packed[n : n + _HASH_BYTES]),
    }
    try:
        if not isinstance(out[3], dict):
            raise TypeError("remaining is not a map")
        again = encode_packed(seq=out[1], cycle=out[2], remaining=out[3], terminal_id=out[4], terminal_seq=out[5],
                              time=out[6], nfc_counter=out[7], prev_hash=out[8])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ClaimsError(f"slot claims v3: {exc}") from exc
    if again != bytes(payload):
        raise ClaimsError("slot claims v3: not the packed encoding (width, order, pad or trailing bytes)")
    return out
