"""Slot claims version 2 (docs/card-format.md §4.1): fixed widths, a page-aligned signature, few pages per tap.

Version 3 (§4.2, every new state) has its own tests in tests/test_slot_encoding_v3.py; version 2 is still read.
"""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.records.claims import SlotClaims
from cardlib.records.cose import sign1, verify1
from cardlib.records.errors import ClaimsError
from cardlib.records.slot_encoding import SLOT_FIXED_VERSION, decode_fixed, encode_fixed

KID = bytes.fromhex("0a0b0c0d")


def _claims(**kw: object) -> SlotClaims:
    base: dict[str, object] = {"seq": 7, "cycle": 20261, "remaining": {1: 1, 2: 250_000, 3: 4},
                               "terminal_id": 0x8CEF065B, "terminal_seq": 12, "time": 1_772_352_000,
                               "nfc_counter": 41, "prev_hash": bytes(range(8)), "version": SLOT_FIXED_VERSION}
    base.update(kw)
    return SlotClaims(**base)  # type: ignore[arg-type]


def test_version_2_states_decode_with_a_plain_cbor_decoder() -> None:
    claims = _claims()
    payload = claims.to_cbor()
    assert claims.version == SLOT_FIXED_VERSION
    decoded = cbor2.loads(payload)
    assert decoded[0] == 2 and decoded[1] == 7 and decoded[3] == {1: 1, 2: 250_000, 3: 4} and decoded[9] == b""
    # seq, cycle, terminal id, journal seq, time and counter always in 4 bytes (head 1a)
    assert payload[3:9] == bytes.fromhex("011a00000007")
    assert SlotClaims.from_cbor(payload) == claims


@pytest.mark.parametrize("remaining", [{}, {1: 0}, {1: 1, 2: 3}, {1: 1, 2: 250_000, 3: 4},
                                       {pid: 65_536 for pid in range(1, 8)}, {2: 255}, {2: 24}])
@pytest.mark.parametrize("seq", [0, 23, 24, 65_536])
def test_the_signature_starts_on_a_page(remaining: dict[int, int], seq: int) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    message = sign1(_claims(seq=seq, remaining=remaining).to_cbor(), private, KID)
    assert message[-66:-64] == bytes.fromhex("5840")
    assert (len(message) - 64) % 4 == 0  # the slot payload starts on a page, so the signature does


def test_claims_keep_their_bytes_when_small_values_grow() -> None:
    a = _claims(seq=1, terminal_id=0, terminal_seq=0, nfc_counter=0).to_cbor()
    b = _claims(seq=300, terminal_id=0x8CEF065B, terminal_seq=70_000, nfc_counter=0xFFFFFF).to_cbor()
    assert len(a) == len(b)
    assert sum(x != y for x, y in zip(a, b, strict=True)) <= 12


def test_an_amount_that_narrows_is_taken_up_by_the_pad() -> None:
    wide = _claims(remaining={1: 1, 2: 65_536, 3: 4}).to_cbor()
    narrow = _claims(remaining={1: 1, 2: 65_535, 3: 4}).to_cbor()
    assert (len(wide) - len(narrow)) % 4 == 0 and len(narrow) <= len(wide)
    assert decode_fixed(narrow)[3] == {1: 1, 2: 65_535, 3: 4}


def test_worst_case_still_sizes_the_slot() -> None:
    per_cycle = {1: 1, 2: 250_000, 3: 4}
    bound = SlotClaims.max_encoded_size((1, 2, 3), per_cycle)
    for amounts in ({1: 0, 2: 0, 3: 0}, {1: 1, 2: 255, 3: 4}, {1: 1, 2: 65_535, 3: 4}, per_cycle):
        assert len(_claims(remaining=amounts).to_cbor()) <= bound


def _reencoded(payload: bytes, **changes: object) -> bytes:
    body = cbor2.loads(payload)
    body.update(changes)
    return cbor2.dumps(body)


@pytest.mark.parametrize("tamper", [
    lambda p: _reencoded(p),  # preferred widths: not version 2's encoding
    lambda p: p + b"\x00",  # trailing byte
    lambda p: p[:-1] + b"\x01" if p[-2] != 0x40 else p[:-2] + b"\x41\x01",  # non-zero pad
    lambda p: p.replace(bytes.fromhex("011a00000007"), bytes.fromhex("011b000000000000")[:6]),  # another width
    lambda p: _reencoded(p, **{"10": 1}),  # unknown key
])
def test_anything_but_the_fixed_encoding_is_refused(tamper: Callable[[bytes], bytes]) -> None:
    payload = _claims().to_cbor()
    with pytest.raises(ClaimsError):
        SlotClaims.from_cbor(tamper(payload))


def test_version_1_slots_still_read() -> None:
    old = _claims(version=1)
    payload = old.to_cbor()
    assert payload == cbor2.dumps(cbor2.loads(payload))  # preferred serialization, as before
    assert SlotClaims.from_cbor(payload) == old and SlotClaims.from_cbor(payload).version == 1


def test_encode_refuses_what_it_cannot_write() -> None:
    with pytest.raises(OverflowError):
        encode_fixed(seq=1 << 32, cycle=0, remaining={}, terminal_id=0, terminal_seq=0, time=0, nfc_counter=0,
                     prev_hash=bytes(8))
    with pytest.raises(ValueError):
        encode_fixed(seq=0, cycle=0, remaining={}, terminal_id=0, terminal_seq=0, time=0, nfc_counter=0,
                     prev_hash=bytes(7))


def test_a_verified_slot_keeps_its_bytes() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    from cardlib.records.cose import Algorithm, CoseKey

    message = sign1(_claims().to_cbor(), private, KID, external_aad=b"aad")
    verified = verify1(message, {KID: CoseKey(KID, Algorithm.EDDSA, private.public_key())}, b"aad")
    assert verified.message == message and SlotClaims.from_cbor(verified.payload) == _claims()


def test_version_2_is_still_the_size_that_sizes_the_slot() -> None:
    """Cards are issued with room for a version-2 state, so a counter that still writes version 2 redeems them."""
    per_cycle = {1: 1, 2: 250_000, 3: 4}
    assert SlotClaims.max_encoded_size((1, 2, 3), per_cycle) == len(_claims(
        seq=2**32 - 1, cycle=2**32 - 1, remaining=per_cycle, terminal_id=2**32 - 1, terminal_seq=2**32 - 1,
        time=2**32 - 1, nfc_counter=2**24 - 1).to_cbor())
