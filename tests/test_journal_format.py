"""The terminal journal entry format (cardlib.records.journal): signing, determinism, chains."""

from __future__ import annotations

import datetime as dt

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cardlib.records.cose import Algorithm, CoseKey, sign1
from cardlib.records.journal import (
    GENESIS_HASH,
    JOURNAL_AAD,
    BadSignature,
    ChainBroken,
    Claim,
    EntryKind,
    Gap,
    JournalEntry,
    MalformedEntry,
    SignedEntry,
    encode_payload,
    entry_hash,
    new_entry_id,
    sign_entry,
    verify_chain,
    verify_entry,
)

KID = b"\x01\x02\x03\x04"


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _keys(key) -> dict[bytes, CoseKey]:
    return {KID: CoseKey(KID, Algorithm.EDDSA, key.public_key())}


def _chain(key, n: int, overrides: dict[int, dict] | None = None) -> list[SignedEntry]:
    out: list[SignedEntry] = []
    for seq in range(1, n + 1):
        prev = out[-1].entry_hash if out else GENESIS_HASH
        claims = dict(entry_id=new_entry_id(), terminal_id="T-017", boot_id=1, seq=seq,
                      kind=EntryKind.COMMIT, wall_ms=1_740_816_000_000 + seq, mono_ns=seq,
                      clock_synced=True, prev_entry_hash=prev, card_id="C-1",
                      tag_uid=bytes(7), programme="cash", amount=250_000)
        claims.update((overrides or {}).get(seq, {}))
        out.append(sign_entry(JournalEntry(**claims), key, KID))
    return out


def test_round_trip_keeps_exact_bytes_and_claims(key):
    signed = _chain(key, 1)[0]
    got = verify_entry(signed.message, _keys(key))
    assert got.entry == signed.entry
    assert got.message == signed.message
    assert got.entry_hash == entry_hash(signed.message) and len(got.entry_hash) == 32
    assert got.kid == KID


def test_payload_is_deterministic_cbor_with_integer_keys(key):
    entry = _chain(key, 1)[0].entry
    payload = encode_payload(entry)
    decoded = cbor2.loads(payload)
    assert list(decoded) == sorted(decoded)  # RFC 8949 §4.2.1 order for small uints
    assert decoded[Claim.AMOUNT] == 250_000 and Claim.STATE_HASH_NEW not in decoded  # None omitted
    assert payload[0] == 0xA0 + len(decoded)  # definite-length map header
    assert encode_payload(entry) == payload


def test_non_deterministic_payload_is_rejected(key):
    entry = _chain(key, 1)[0].entry
    claims = entry.to_claims()
    reordered = dict(reversed(list(claims.items())))
    message = sign1(cbor2.dumps(reordered), key, KID, external_aad=JOURNAL_AAD)
    with pytest.raises(MalformedEntry, match="deterministic"):
        verify_entry(message, _keys(key))


def test_entry_signed_for_another_context_fails(key):
    payload = encode_payload(_chain(key, 1)[0].entry)
    message = sign1(payload, key, KID, external_aad=b"huma-betang/upload/v1")
    with pytest.raises(BadSignature):
        verify_entry(message, _keys(key))


def test_tampered_entry_fails(key):
    msg = bytearray(_chain(key, 1)[0].message)
    msg[-1] ^= 0x80
    with pytest.raises(BadSignature):
        verify_entry(bytes(msg), _keys(key))


def test_es256_terminal_key_works():
    key = ec.generate_private_key(ec.SECP256R1())
    entry = JournalEntry(entry_id=new_entry_id(), terminal_id="T-1", boot_id=1, seq=1,
                         kind=EntryKind.BOOT, wall_ms=0, mono_ns=0, clock_synced=False,
                         prev_entry_hash=GENESIS_HASH)
    signed = sign_entry(entry, key, KID, alg=Algorithm.ES256)
    assert verify_entry(signed.message, {KID: CoseKey(KID, Algorithm.ES256, key.public_key())}).entry == entry


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("entry_id", b"short", "entry_id"),
        ("seq", 0, "seq"),
        ("amount", -1, "amount"),
        ("tag_uid", bytes(5), "tag_uid"),
        ("ntag_counter", 1 << 24, "ntag_counter"),
        ("prev_entry_hash", b"\x01" * 32, "genesis"),
        ("clock_synced", 1, "clock_synced"),
    ],
)
def test_field_checks(field, value, match):
    base = dict(entry_id=new_entry_id(), terminal_id="T-1", boot_id=1, seq=1, kind=EntryKind.BOOT,
                wall_ms=0, mono_ns=0, clock_synced=False, prev_entry_hash=GENESIS_HASH)
    base[field] = value
    with pytest.raises(MalformedEntry, match=match):
        JournalEntry(**base)


def test_unknown_claim_and_wrong_version_are_malformed(key):
    claims = _chain(key, 1)[0].entry.to_claims()
    for bad in ({**claims, 99: 1}, {**claims, int(Claim.VERSION): 2}):
        message = sign1(cbor2.dumps(bad, canonical=True), key, KID, external_aad=JOURNAL_AAD)
        with pytest.raises(MalformedEntry):
            verify_entry(message, _keys(key))


def test_wall_time_is_aware_utc():
    when = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    ms = JournalEntry.wall_ms_of(when)
    entry = JournalEntry(entry_id=new_entry_id(), terminal_id="T-1", boot_id=1, seq=1, kind=EntryKind.BOOT,
                         wall_ms=ms, mono_ns=0, clock_synced=True, prev_entry_hash=GENESIS_HASH)
    assert entry.wall_time == when and entry.wall_time.utcoffset() == dt.timedelta(0)
    assert entry.wall_time.hour == 5
    with pytest.raises(ValueError):
        JournalEntry.wall_ms_of(dt.datetime(2025, 3, 1, 8, 0))


def test_verify_chain_accepts_a_good_chain(key):
    chain = _chain(key, 5)
    got = verify_chain([s.message for s in chain], _keys(key))
    assert [s.entry.seq for s in got] == [1, 2, 3, 4, 5]
    # A slice needs the previous hash to check its first link.
    verify_chain([s.message for s in chain[2:]], _keys(key), prev_hash=chain[1].entry_hash, first_seq=3)
    with pytest.raises(ChainBroken) as exc:
        verify_chain([s.message for s in chain[2:]], _keys(key), prev_hash=chain[0].entry_hash)
    assert exc.value.seq == 3


def test_verify_chain_reports_break_gap_and_bad_signature(key):
    chain = _chain(key, 4, {3: {"prev_entry_hash": b"\x07" * 32}})
    with pytest.raises(ChainBroken) as broken:
        verify_chain([s.message for s in chain], _keys(key))
    assert broken.value.seq == 3

    good = _chain(key, 6)
    with pytest.raises(Gap) as gap:
        verify_chain([good[0].message, good[1].message, good[4].message], _keys(key))
    assert (gap.value.first, gap.value.last) == (3, 4)
    with pytest.raises(Gap):
        verify_chain([good[0].message, good[1].message, good[1].message], _keys(key))

    other = ed25519.Ed25519PrivateKey.generate()
    forged = sign_entry(good[2].entry, other, KID)
    with pytest.raises(BadSignature):
        verify_chain([good[0].message, good[1].message, forged.message], _keys(key))
