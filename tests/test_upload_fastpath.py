"""The upload hot path's shortcuts decide exactly like the slow, obvious code they replace.

- ``cose.sig_structure`` builds Sig_structure by concatenation (RFC 9052 §4.4); it must be
  byte-identical to cbor2's encoding of the 4-element array for every length class
  of head (RFC 8949 §3.1).
- ``journal.verify_entry`` checks determinism (RFC 8949 §4.2.1) without re-encoding the
  entry; on every hand-built non-deterministic payload it must reject exactly when
  ``encode_payload(JournalEntry.from_claims(...)) != payload`` would (or stricter).
- ``cose`` caches the protected-header check per exact bytes; a bad header must be
  refused every time, not only on first sight.
"""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.records.cose import Algorithm, CoseKey, sig_structure, sign1, verify1
from cardlib.records.errors import MalformedCose
from cardlib.records.journal import (
    GENESIS_HASH,
    JOURNAL_AAD,
    Claim,
    EntryKind,
    JournalEntry,
    MalformedEntry,
    encode_payload,
    new_entry_id,
    verify_entry,
)

KID = b"\x01\x02\x03\x04"


@pytest.fixture(scope="module")
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _keys(key: ed25519.Ed25519PrivateKey) -> dict[bytes, CoseKey]:
    return {KID: CoseKey(KID, Algorithm.EDDSA, key.public_key())}


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000])
def test_sig_structure_matches_cbor2_for_every_head_size(length: int) -> None:
    protected = b"\xa1\x01\x27"
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    for aad in (b"", JOURNAL_AAD, payload):
        assert sig_structure(protected, aad, payload) == cbor2.dumps(["Signature1", protected, aad, payload])
        assert sig_structure(b"", aad, payload) == cbor2.dumps(["Signature1", b"", aad, payload])


def _entry(**changes: object) -> JournalEntry:
    base: dict[str, object] = dict(
        entry_id=new_entry_id(), terminal_id="T-7", boot_id=1, seq=5, kind=EntryKind.COMMIT,
        wall_ms=1_740_816_000_000, mono_ns=10**9, clock_synced=True, prev_entry_hash=b"\x11" * 32,
        card_id="C-1", tag_uid=bytes(7), programme="pangan", amount=250_000,
    )
    base.update(changes)
    return JournalEntry(**base)  # type: ignore[arg-type]


def _raw_map(items: list[tuple[bytes, bytes]]) -> bytes:
    """A CBOR map from already-encoded (key, value) items, in the given order (definite length < 24)."""
    return bytes([0xA0 | len(items)]) + b"".join(k + v for k, v in items)


def _items(entry: JournalEntry) -> list[tuple[bytes, bytes]]:
    return [(cbor2.dumps(k), cbor2.dumps(v)) for k, v in entry.to_claims().items()]


def _replace(items: list[tuple[bytes, bytes]], claim: Claim, value: bytes) -> list[tuple[bytes, bytes]]:
    key = cbor2.dumps(int(claim))
    return [(k, value if k == key else v) for k, v in items]


def _mutants() -> list[tuple[str, bytes]]:
    good = _items(_entry())
    seq_key = cbor2.dumps(int(Claim.SEQ))
    return [
        ("keys out of order", _raw_map(list(reversed(good)))),
        ("null optional claim", _raw_map(good + [(cbor2.dumps(int(Claim.STATE_HASH_NEW)), b"\xf6")])),
        ("bool kind", _raw_map(_replace(good, Claim.KIND, b"\xf5"))),
        ("float version", _raw_map(_replace(good, Claim.VERSION, b"\xf9\x3c\x00"))),
        ("bool version", _raw_map(_replace(good, Claim.VERSION, b"\xf5"))),
        ("key true for version", _raw_map([(b"\xf5", good[0][1])] + good[1:])),
        ("long-form seq", _raw_map(_replace(good, Claim.SEQ, b"\x1a\x00\x00\x00\x05"))),
        ("long-form key", _raw_map([(b"\x18\x05" if k == seq_key else k, v) for k, v in good])),
        ("indefinite text", _raw_map(_replace(good, Claim.TERMINAL_ID, b"\x7f\x63T-7\xff"))),
        ("indefinite map", b"\xbf" + _raw_map(good)[1:] + b"\xff"),
        ("repeated key", _raw_map(good[:5] + [good[4]] + good[5:])),
    ]


@pytest.mark.parametrize(("name", "payload"), _mutants(), ids=[m[0] for m in _mutants()])
def test_non_deterministic_payloads_are_refused_like_a_re_encode_would(key, name: str, payload: bytes) -> None:
    message = sign1(payload, key, KID, external_aad=JOURNAL_AAD)
    try:
        slow_accepts = encode_payload(JournalEntry.from_claims(cbor2.loads(payload))) == payload
    except (MalformedEntry, TypeError, ValueError):
        slow_accepts = False
    # "float version" and "bool version" pass the old re-encode (1.0 == True == 1); the new
    # check is stricter there, never looser.
    assert not slow_accepts or name in {"float version", "bool version"}
    with pytest.raises(MalformedEntry):
        verify_entry(message, _keys(key))


def test_honest_payloads_still_verify(key) -> None:
    for entry in (_entry(), _entry(card_id=None, tag_uid=None, programme=None, amount=None, kind=EntryKind.BOOT),
                  _entry(seq=1, prev_entry_hash=GENESIS_HASH, ntag_counter=0xFFFFFF, amount=0,
                         wall_ms=2**40, mono_ns=2**63),
                  _entry(kind=EntryKind.DECLINED, decline_reason="nothing_left")):
        message = sign1(encode_payload(entry), key, KID, external_aad=JOURNAL_AAD)
        assert verify_entry(message, _keys(key)).entry == entry


def test_bad_protected_header_is_refused_every_time(key) -> None:
    # {1: -8} with the alg value in a long form (0x38 0x07): not preferred serialization.
    protected = b"\xa1\x01\x38\x07"
    tbs = sig_structure(protected, b"", b"payload")
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: KID}, b"payload", key.sign(tbs)]))
    for _ in range(3):
        with pytest.raises(MalformedCose, match="preferred serialization"):
            verify1(message, _keys(key))


def test_crit_in_a_cached_protected_header_is_refused(key) -> None:
    good = sign1(b"x", key, KID)
    verify1(good, _keys(key))  # the plain {1: -8} header is now cached
    protected = cbor2.dumps({1: -8, 2: [4]})
    tbs = sig_structure(protected, b"", b"x")
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: KID}, b"x", key.sign(tbs)]))
    for _ in range(2):
        with pytest.raises(MalformedCose, match="critical"):
            verify1(message, _keys(key))


def test_two_entries_for_one_seq_in_one_batch_store_the_first_and_flag_the_other(app, world) -> None:
    """A lost row inside one insert (same seq, other content) must not be reported accepted.

    On SQLite this takes the executemany fast path's fallback (row count short → savepoint
    rolled back → insert again with RETURNING); on PostgreSQL the ``unnest`` insert's RETURNING.
    """
    from sqlalchemy import func, select

    from cardlib.records.journal import JournalEntry, new_entry_id, sign_entry
    from server.extensions import db
    from server.models import JournalConflict, JournalEntryRow

    t = world.enrol("T-FAST")
    first = t.append()
    second = t.append()
    twin = sign_entry(JournalEntry(**{**second.entry.__dict__, "entry_id": new_entry_id(), "amount": 9}),
                      t.private_key, t.kid)
    third = t.append()
    r = world.upload(t, [first.message, second.message, twin.message, third.message])
    assert r.status_code == 409, r.get_json()
    assert [x["result"] for x in r.get_json()["results"]] == ["accepted", "accepted", "conflict", "accepted"]
    with app.app_context():
        rows = db.session.execute(select(JournalEntryRow.seq, JournalEntryRow.raw).order_by(JournalEntryRow.seq)).all()
        assert [(seq, bytes(raw)) for seq, raw in rows] == [
            (1, first.message), (2, second.message), (3, third.message)]
        assert db.session.scalar(select(func.count()).select_from(JournalConflict)) == 1
    again = world.upload(t, [first.message, second.message, third.message])
    assert [x["result"] for x in again.get_json()["results"]] == ["duplicate"] * 3


def _parse_or_error(message: bytes) -> object:
    from cardlib.records.cose import _parse
    from cardlib.records.errors import CoseError

    try:
        return _parse(message)
    except CoseError as exc:
        return type(exc)


@pytest.mark.parametrize("payload_len", [0, 5, 23, 24, 255, 256, 300, 70000])
@pytest.mark.parametrize("kid", [b"\x01", KID, bytes(range(16))])
def test_layout_parse_equals_the_cbor_parse_on_every_single_byte_change(key, payload_len, kid) -> None:
    """The offset reader accepts only what the general parse reads the same way.

    For the signed message and for every one-byte change (each position set to a few
    values that matter to CBOR heads), every truncation and a trailing byte: either the
    offset reader declines (``None``) or it returns exactly the general parse's tuple;
    where the general parse raises, the offset reader must have declined.
    """
    from cardlib.records.cose import parse_sign1_layout

    payload = bytes(i % 251 for i in range(payload_len))
    message = sign1(payload, key, kid)
    # payloads of 64 KiB and more have a 4-byte length head: left to the general parse
    assert parse_sign1_layout(message) == (_parse_or_error(message) if payload_len < 65536 else None)
    variants = [message[:cut] for cut in range(len(message))] + [message + b"\x00"]
    positions = range(len(message)) if len(message) < 400 else [*range(120), *range(len(message) - 80, len(message))]
    for at in positions:
        for value in {0x00, 0x01, 0x04, 0x17, 0x18, 0x19, 0x1A, 0x40, 0x43, 0x57, 0x58, 0x59, 0x5A, 0x5F,
                      0x80, 0x84, 0xA0, 0xA1, 0xA2, 0xC0, 0xD2, 0xF6, 0xFF, message[at] ^ 0x01}:
            variants.append(message[:at] + bytes([value]) + message[at + 1:])
    accepted = 0
    for variant in variants:
        fast = parse_sign1_layout(variant)
        if fast is not None:
            accepted += 1
            assert fast == _parse_or_error(variant), variant.hex()
    assert accepted > 1 or payload_len >= 65536  # changes inside the payload/signature keep the layout


def test_layout_parse_declines_what_it_does_not_know(key) -> None:
    from cardlib.records.cose import parse_sign1_layout

    assert parse_sign1_layout(sign1(b"x", key, KID, tagged=False)) is None  # untagged: general parse
    assert parse_sign1_layout(bytearray(sign1(b"x", key, KID))) is None  # not bytes: general parse
    both = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8, 4: KID}), {4: KID}, b"x", bytes(64)]))
    assert parse_sign1_layout(both) is None and _parse_or_error(both) is MalformedCose  # kid in both buckets
    no_alg = cbor2.dumps(cbor2.CBORTag(18, [b"", {4: KID}, b"x", bytes(64)]))
    assert parse_sign1_layout(no_alg) is None and _parse_or_error(no_alg) is MalformedCose


def test_protected_header_that_cannot_be_re_encoded_is_malformed_not_a_crash(key) -> None:
    """A lone CBOR "break" (0xff) in the protected bstr decodes to a marker cbor2 cannot
    encode again; that is a malformed message (422 at upload), never an encoder error."""
    message = cbor2.dumps(cbor2.CBORTag(18, [b"\xff", {4: KID}, b"x", bytes(64)]))
    with pytest.raises(MalformedCose):
        verify1(message, _keys(key))


def test_entry_ids_are_uuid7_unique_and_time_ordered() -> None:
    """RFC 9562 §5.7 layout (version 7, variant 10), distinct, and ordered by their ms prefix."""
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    ids = [new_entry_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    for raw in ids:
        u = uuid.UUID(bytes=raw)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert before <= int.from_bytes(raw[:6], "big") <= after
    prefixes = [i[:6] for i in ids]
    assert prefixes == sorted(prefixes)
