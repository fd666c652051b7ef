"""Slot claims version 3 (docs/card-format.md §4.2): the claims that change on every tap packed into one bstr.

A redemption rewrites the signature (16 pages), prev_hash (2), the page of the counters' low bytes and the
page of the amount redeemed: 20 WRITEs, 21 when the taps are days apart (time bits 8-23 and the journal
seq's second byte share one more page). Every claim is still signed; only the bytes moved.
"""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.records.claims import SlotClaims
from cardlib.records.cose import sign1
from cardlib.records.errors import ClaimsError
from cardlib.records.slot_encoding import SLOT_PACKED_VERSION, decode_fixed, encode_fixed

KID = bytes.fromhex("0a0b0c0d")
PRIVATE = ed25519.Ed25519PrivateKey.generate()


def _claims(**kw: object) -> SlotClaims:
    base: dict[str, object] = {"seq": 7, "cycle": 20261, "remaining": {1: 1, 2: 250_000, 3: 4},
                               "terminal_id": 0x8CEF065B, "terminal_seq": 12, "time": 1_772_352_000,
                               "nfc_counter": 41, "prev_hash": bytes(range(8))}
    base.update(kw)
    return SlotClaims(**base)  # type: ignore[arg-type]


def _slot(claims: SlotClaims) -> bytes:
    return sign1(claims.to_cbor(), PRIVATE, KID)


def _pages_changed(a: bytes, b: bytes) -> set[int]:
    assert len(a) == len(b)
    return {i // 4 for i in range(len(a)) if a[i] != b[i]}


def test_new_states_are_version_3_and_decode_with_a_plain_cbor_decoder() -> None:
    claims = _claims()
    payload = claims.to_cbor()
    assert claims.version == SLOT_PACKED_VERSION
    decoded = cbor2.loads(payload)
    assert set(decoded) == {0, 1, 2, 3, 9} and decoded[0] == 3 and decoded[2] == 20261
    assert decoded[3] == {1: 1, 2: 250_000, 3: 4} and len(decoded[1]) == 27
    assert SlotClaims.from_cbor(payload) == claims
    assert len(payload) < len(_claims(version=2).to_cbor())  # fits every slot a version-2 state fits


def test_layout_on_the_page_grid() -> None:
    slot = _slot(_claims())
    packed = slot.index(bytes.fromhex("01581b")) + 3
    assert packed == 21  # rare bytes 21-23, then whole pages: 24-27, often 28-31, always 32-35
    assert slot[32:36] == bytes((7, 12, 1_772_352_000 & 0xFF, 41))
    assert slot[36:44] == bytes(range(8)) and slot[44:48] == bytes.fromhex("8cef065b")
    assert slot[-66:-64] == bytes.fromhex("5840") and (len(slot) - 64) % 4 == 0


@pytest.mark.parametrize("remaining", [{}, {1: 0}, {1: 1, 2: 3}, {1: 1, 2: 250_000, 3: 4},
                                       {pid: 65_536 for pid in range(1, 8)}, {2: 255}, {2: 24}])
@pytest.mark.parametrize("seq", [0, 23, 24, 65_536])
def test_the_signature_starts_on_a_page(remaining: dict[int, int], seq: int) -> None:
    message = _slot(_claims(seq=seq, remaining=remaining))
    assert message[-66:-64] == bytes.fromhex("5840") and (len(message) - 64) % 4 == 0
    assert SlotClaims.from_cbor(cbor2.loads(message).value[2]) == _claims(seq=seq, remaining=remaining)


def test_a_steady_redemption_changes_four_pages_besides_the_signature() -> None:
    before = _claims(seq=40, terminal_seq=40, time=1_772_352_040, nfc_counter=41, remaining={1: 1, 2: 200_000, 3: 4})
    after = _claims(seq=41, terminal_seq=41, time=1_772_352_041, nfc_counter=42, remaining={1: 1, 2: 198_959, 3: 4},
                    prev_hash=bytes(range(8, 16)))
    a, b = _slot(before), _slot(after)
    sig_pages = set(range((len(a) - 64) // 4, len(a) // 4))
    assert _pages_changed(a, b) - sig_pages == {8, 9, 10, 15}  # low bytes, prev_hash x2, the amount


def test_taps_days_apart_change_one_page_more() -> None:
    before = _claims(seq=40, terminal_seq=20_000, time=1_772_352_000, nfc_counter=41)
    after = _claims(seq=41, terminal_seq=20_500, time=1_772_352_000 + 3 * 86_400 + 1_234, nfc_counter=42,
                    remaining={1: 1, 2: 248_999, 3: 4}, prev_hash=bytes(range(8, 16)))
    a, b = _slot(before), _slot(after)
    sig_pages = set(range((len(a) - 64) // 4, len(a) // 4))
    assert _pages_changed(a, b) - sig_pages == {7, 8, 9, 10, 15}


def _reencoded(payload: bytes, **changes: object) -> bytes:
    body = cbor2.loads(payload)
    body.update({int(k): v for k, v in changes.items()})
    return cbor2.dumps(body)


@pytest.mark.parametrize("tamper", [
    lambda p: _reencoded(p),  # preferred widths for cycle: not version 3's encoding
    lambda p: p + b"\x00",  # trailing byte
    lambda p: p[:-1] + b"\x01" if p[-2] != 0x40 else p[:-2] + b"\x41\x01",  # non-zero pad
    lambda p: _reencoded(p, **{"1": cbor2.loads(p)[1][:-1]}),  # packed claim one byte short
    lambda p: _reencoded(p, **{"10": 1}),  # unknown key
    lambda p: _reencoded(p, **{"1": 7}),  # claim 1 not a byte string
])
def test_anything_but_the_packed_encoding_is_refused(tamper: Callable[[bytes], bytes]) -> None:
    payload = _claims().to_cbor()
    with pytest.raises(ClaimsError):
        SlotClaims.from_cbor(tamper(payload))


def test_every_value_round_trips_at_its_limits() -> None:
    for value in (0, 1, 255, 256, 65_535, 65_536, 2**24 - 1):
        claims = _claims(seq=value, terminal_seq=value, time=value, nfc_counter=value, terminal_id=value)
        assert decode_fixed(claims.to_cbor())[7] == value
        assert SlotClaims.from_cbor(claims.to_cbor()) == claims
    top = _claims(seq=2**32 - 1, terminal_seq=2**32 - 1, time=2**32 - 1, terminal_id=2**32 - 1)
    assert SlotClaims.from_cbor(top.to_cbor()) == top


def test_encode_refuses_what_it_cannot_write() -> None:
    with pytest.raises(OverflowError):
        encode_fixed(seq=0, cycle=0, remaining={}, terminal_id=0, terminal_seq=0, time=0, nfc_counter=1 << 24,
                     prev_hash=bytes(8), version=3)
    with pytest.raises(ValueError):
        encode_fixed(seq=0, cycle=0, remaining={}, terminal_id=0, terminal_seq=0, time=0, nfc_counter=0,
                     prev_hash=bytes(8), version=4)
