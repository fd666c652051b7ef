"""The journal upload fast path decides exactly like the slow, reference path.

The fast path (``_claims_valid`` → ``JournalEntry._from_valid_claims``, and in
``verify_entry`` "ascending keys and a byte-identical plain re-encode") skips
``_check`` and ``_is_deterministic``. The reference is the slow path:
``JournalEntry.from_claims`` with the fast branch switched off (so it runs
``__post_init__`` → ``_check``), then ``_is_deterministic``; and, as ground truth
for determinism, ``encode_payload(entry) == payload`` (RFC 8949 §4.2.1).

Properties (hypothesis, over valid entries of every kind and optional claim, then
mutated: dropped/unknown/look-alike keys, wrong types and edge values):

- ``_claims_valid(c)`` ⇒ the reference accepts ``c`` and builds an equal entry
  (same field values and types, ``kind`` an :class:`EntryKind`);
- the reference refuses ``c`` ⇒ ``_claims_valid(c)`` is false;
- ``verify_entry`` accepts/refuses a signed payload exactly when the reference does,
  for maps encoded in any key order and for hand-built non-deterministic encodings
  (long integer heads, indefinite lengths, bignum tags, repeated keys) of a valid map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from unittest import mock

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from cardlib.records import journal
from cardlib.records.cose import Algorithm, CoseKey, sign1
from cardlib.records.journal import (
    ENTRY_ID_LEN,
    GENESIS_HASH,
    HASH_LEN,
    JOURNAL_AAD,
    MAX_ID_CHARS,
    MAX_PROGRAMME_CHARS,
    NTAG_COUNTER_MAX,
    Claim,
    EntryKind,
    JournalEntry,
    MalformedEntry,
    encode_payload,
    sign_entry,
    verify_entry,
)

KID = b"\x0a\x0b\x0c\x0d"
# Module-level (not a fixture) so @given tests need no function-scoped fixture.
_KEY = ed25519.Ed25519PrivateKey.generate()
_KEYS = {KID: CoseKey(KID, Algorithm.EDDSA, _KEY.public_key())}

_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------- reference


def _slow_from_claims(claims: object) -> JournalEntry:
    """``JournalEntry.from_claims`` with the fast branch off: the constructor + ``_check``."""
    with mock.patch.object(journal, "_claims_valid", lambda _claims: False):
        return JournalEntry.from_claims(claims)


def _outcome(fn: Callable[[], JournalEntry]) -> JournalEntry | type[MalformedEntry]:
    """The entry, or ``MalformedEntry`` (any other exception fails the test)."""
    try:
        return fn()
    except MalformedEntry:
        return MalformedEntry


def _reference_verify(payload: bytes) -> JournalEntry:
    """The pre-fast-path decision on a signed payload: slow decode + ``_is_deterministic``."""
    claims = journal._decode_payload(payload)
    entry = _slow_from_claims(claims)
    assert isinstance(claims, dict)
    if not journal._is_deterministic(claims, payload):
        raise MalformedEntry("not deterministic")
    return entry


def _ground_truth_accepts(payload: bytes) -> bool:
    """RFC 8949 §4.2.1 by definition: the payload is the canonical encoding of the entry it decodes to."""
    try:
        return encode_payload(_slow_from_claims(journal._decode_payload(payload))) == payload
    except MalformedEntry:
        return False


def _same_entry(a: JournalEntry, b: JournalEntry) -> None:
    assert a == b
    assert type(a.kind) is EntryKind and type(b.kind) is EntryKind
    for f in dataclasses.fields(JournalEntry):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert type(x) is type(y), (f.name, x, y)


def _event(text: str) -> None:
    """Count outcomes in ``--hypothesis-show-statistics`` (a no-op in the plain parametrized test)."""
    if currently_in_test_context():
        event(text)


# ----------------------------------------------------------------------------- strategies

_uint = st.one_of(st.integers(0, 30), st.integers(0, 2**64 - 1), st.sampled_from([23, 24, 255, 256, 2**32, 2**64]))
_pos = st.one_of(st.integers(1, 30), st.integers(1, 2**64 - 1), st.sampled_from([2**64, 2**70]))
_hash = st.one_of(st.binary(min_size=HASH_LEN, max_size=HASH_LEN), st.just(GENESIS_HASH))


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def entries(draw: st.DrawFn) -> JournalEntry:
    """Any valid entry: every kind, every optional claim present or absent, edge values."""
    kind = draw(st.sampled_from(list(EntryKind)))
    seq = draw(_pos)
    prev = GENESIS_HASH if seq == 1 else draw(_hash)
    return JournalEntry(
        entry_id=draw(st.binary(min_size=ENTRY_ID_LEN, max_size=ENTRY_ID_LEN)),
        terminal_id=draw(st.text(min_size=1, max_size=MAX_ID_CHARS)),
        boot_id=draw(_pos),
        seq=seq,
        kind=kind,
        wall_ms=draw(_uint),
        mono_ns=draw(_uint),
        clock_synced=draw(st.booleans()),
        prev_entry_hash=prev,
        card_id=draw(_opt(st.text(min_size=1, max_size=MAX_ID_CHARS))),
        tag_uid=draw(_opt(st.sampled_from([4, 7, 10]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))),
        programme=draw(_opt(st.text(min_size=1, max_size=MAX_PROGRAMME_CHARS))),
        amount=draw(_opt(_uint)),
        slot_seq_before=draw(_opt(_uint)),
        slot_seq_after=draw(_opt(_uint)),
        state_hash_prev=draw(_opt(_hash)),
        state_hash_new=draw(_opt(_hash)),
        ntag_counter=draw(_opt(st.one_of(st.integers(0, NTAG_COUNTER_MAX), st.sampled_from([0, NTAG_COUNTER_MAX])))),
        decline_reason=(
            draw(_opt(st.text(min_size=1, max_size=MAX_PROGRAMME_CHARS))) if kind is EntryKind.DECLINED else None
        ),
    )


#: Values that are wrong or on an edge for some claim (each claim gets all of them).
_EDGE_VALUES: list[Any] = [
    None, True, False, 1.0, 0.0, 5.0, -1, 0, 1, 2, 6, 11, 2**24 - 1, 2**24, 2**64, 2**70,
    b"", b"\x01" * 3, b"\x01" * 4, b"\x01" * 5, b"\x01" * 7, b"\x01" * 10, b"\x01" * 11,
    b"\x01" * 15, b"\x01" * 16, b"\x01" * 17, b"\x01" * 31, b"\x01" * 32, b"\x01" * 33, GENESIS_HASH,
    "", "a", "nothing_left", "a" * 32, "a" * 33, "a" * 64, "a" * 65, "x" * 16, "x" * 32,
    bytearray(16), [1], {1: 1},
]
#: Keys that are not claims (or only look like one: False == 0, 2**64, bytes).
_UNKNOWN_KEYS: list[Any] = ["x", "1", -1, 0, 24, 25, 2**64, False, b"\x01", 1.5]
_CLAIMS = [int(c) for c in Claim]
_UINT_EDGES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 2**24 - 1, 2**24, 2**64, "1", b"\x01"]
_POS_EDGES: list[Any] = [0, 1, 2, True, -1, 1.0, None, 2**64]


def _bytes_edges(*lengths: int) -> list[Any]:
    return [bytes(n) for n in lengths] + [b"\x01" * n for n in lengths] + ["x" * lengths[0], None, 0, bytearray(lengths[0])]


def _text_edges(high: int) -> list[Any]:
    return ["", "a", "a" * high, "a" * (high + 1), "\u00e9" * high, b"a", None, 1]


#: Per claim, the values on and just past its rules (from the format's stated limits,
#: not from ``_CLAIM_SPEC``, so a wrong spec entry is caught).
_TARGETED: dict[int, list[Any]] = {
    Claim.VERSION: [0, 1, 2, True, 1.0, None, "1"],
    Claim.ENTRY_ID: _bytes_edges(16, 15, 17, 0),
    Claim.TERMINAL_ID: _text_edges(MAX_ID_CHARS),
    Claim.BOOT_ID: _POS_EDGES,
    Claim.SEQ: _POS_EDGES,
    Claim.KIND: [0, *range(1, 12), 12, -1, True, 6.0, None, 2**64],
    Claim.WALL_MS: _UINT_EDGES,
    Claim.MONO_NS: _UINT_EDGES,
    Claim.CLOCK_SYNCED: [True, False, 0, 1, None, "true"],
    Claim.CARD_ID: _text_edges(MAX_ID_CHARS),
    Claim.TAG_UID: _bytes_edges(7, 3, 4, 5, 6, 8, 9, 10, 11, 0),
    Claim.PROGRAMME: _text_edges(MAX_PROGRAMME_CHARS),
    Claim.AMOUNT: _UINT_EDGES,
    Claim.SLOT_SEQ_BEFORE: _UINT_EDGES,
    Claim.SLOT_SEQ_AFTER: _UINT_EDGES,
    Claim.STATE_HASH_PREV: _bytes_edges(32, 31, 33, 0, 16),
    Claim.STATE_HASH_NEW: _bytes_edges(32, 31, 33, 0, 16),
    Claim.NTAG_COUNTER: _UINT_EDGES,
    Claim.PREV_ENTRY_HASH: _bytes_edges(32, 31, 33, 0, 16),
    Claim.DECLINE_REASON: _text_edges(MAX_PROGRAMME_CHARS),
    Claim.FALLBACK: _text_edges(MAX_PROGRAMME_CHARS),
    Claim.APPROVED_BY: _text_edges(MAX_ID_CHARS),
    Claim.CARD_MIGRATED: [True, False, 0, 1, None, "true"],
}


@st.composite
def _mutation(draw: st.DrawFn, claims: dict[Any, Any]) -> None:
    """Apply one mutation to ``claims`` in place."""
    what = draw(st.sampled_from(
        ["drop", "unknown", "alias", "seq1", "genesis", "decline", "kind", "reorder", *["value"] * 8]))
    if what == "drop" and claims:
        del claims[draw(st.sampled_from(sorted(claims, key=repr)))]
    elif what == "unknown":
        claims[draw(st.sampled_from(_UNKNOWN_KEYS))] = draw(st.sampled_from(_EDGE_VALUES))
    elif what == "alias":
        # A claim key replaced by a look-alike: True/1.0 for 1, k.0 for k (equal and same hash in Python).
        present = [k for k in claims if type(k) is int]
        if present:
            k = draw(st.sampled_from(present))
            alias = draw(st.sampled_from([True, float(k)] if k == 1 else [float(k)]))
            value = claims.pop(k)
            claims[alias] = value
    elif what == "value":
        key = draw(st.sampled_from(_CLAIMS))
        claims[key] = draw(st.sampled_from(_TARGETED[key] if draw(st.integers(0, 4)) else _EDGE_VALUES))
    elif what == "seq1":
        claims[int(Claim.SEQ)] = 1
    elif what == "genesis":
        claims[int(Claim.PREV_ENTRY_HASH)] = draw(st.sampled_from([GENESIS_HASH, b"\x00" * 31 + b"\x01"]))
    elif what == "decline":
        claims[int(Claim.DECLINE_REASON)] = draw(st.sampled_from(["nothing_left", "", "a" * 33]))
    elif what == "kind":
        claims[int(Claim.KIND)] = draw(st.sampled_from([0, 12, -1, 2**64, True, 6.0, *range(1, 12)]))
    elif what == "reorder":
        items = draw(st.permutations(list(claims.items())))
        claims.clear()
        claims.update(items)


@st.composite
def claim_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid entry's claim map with 0–3 mutations (0 a fifth of the time; half the mutations replace a value)."""
    claims: dict[Any, Any] = draw(entries()).to_claims()
    for _ in range(draw(st.sampled_from([0, 1, 2, 2, 3]))):
        draw(_mutation(claims))
    return claims


# ----------------------------------------------------------------------------- claim maps


def _assert_claims_agree(claims: dict[Any, Any]) -> None:
    snapshot = list(claims.items())
    fast = journal._claims_valid(claims)
    assert list(claims.items()) == snapshot  # a check, not a transformation
    slow = _outcome(lambda: _slow_from_claims(claims))
    _event(f"fast {'accepts' if fast else 'refuses'}, slow {'refuses' if slow is MalformedEntry else 'accepts'}")
    if fast:
        assert slow is not MalformedEntry, f"fast path accepts what _check refuses: {claims!r}"
        built = JournalEntry._from_valid_claims(claims)
        journal._check(built)  # the unchecked instance satisfies every invariant
        _same_entry(built, slow)
    if slow is MalformedEntry:
        assert not fast
    else:
        # Fast refuses only what the determinism check refuses anyway (None for an
        # optional claim, True/1.0 as version or kind), so verify_entry's answer is unchanged.
        assert fast or None in claims.values() or any(
            type(claims[c]) is not int for c in (int(Claim.VERSION), int(Claim.KIND)))
    # The public entry point (which now tries the fast path first) decides like the slow path.
    public = _outcome(lambda: JournalEntry.from_claims(claims))
    if slow is MalformedEntry:
        assert public is MalformedEntry
    else:
        assert public is not MalformedEntry
        _same_entry(public, slow)


def _assert_verify_agrees(claims: dict[Any, Any]) -> None:
    payload = cbor2.dumps(claims)  # plain: keys in the dict's order, whatever their types
    message = sign1(payload, _KEY, KID, external_aad=JOURNAL_AAD)
    got = _outcome(lambda: verify_entry(message, _KEYS).entry)
    want = _outcome(lambda: _reference_verify(payload))
    _event(f"reference {'refuses' if want is MalformedEntry else 'accepts'}")
    if want is MalformedEntry:
        assert got is MalformedEntry, f"fast path accepts {claims!r}"
    else:
        assert got is not MalformedEntry, f"fast path refuses {claims!r}"
        _same_entry(got, want)
    assert (got is not MalformedEntry) == _ground_truth_accepts(payload)


@_SETTINGS
@given(claim_maps())
def test_claims_valid_agrees_with_the_constructor_check(claims: dict[Any, Any]) -> None:
    _assert_claims_agree(claims)


@_SETTINGS
@given(entries(), st.data())
def test_every_claim_alone_at_its_edges(entry: JournalEntry, data: st.DataObject) -> None:
    """Each claim in turn replaced by a value on or just past its rule, the others valid.

    Unlike the random mutations above, every claim is hit in every example, so a
    missing rule (a length set, an upper bound, seq 1's genesis link) is found on
    every run, not only on lucky ones.
    """
    base = entry.to_claims()
    for key in _CLAIMS:
        value = data.draw(st.sampled_from(_TARGETED[key]), label=Claim(key).name)
        _assert_claims_agree({**base, key: value})


@_SETTINGS
@given(claim_maps())
def test_verify_entry_agrees_with_the_reference_on_any_map_in_any_order(claims: dict[Any, Any]) -> None:
    _assert_verify_agrees(claims)


_BASE = JournalEntry(
    entry_id=bytes(range(16)), terminal_id="T-1", boot_id=2, seq=7, kind=EntryKind.COMMIT, wall_ms=1_740_816_000_000,
    mono_ns=10**9, clock_synced=True, prev_entry_hash=b"\x11" * 32, card_id="C-1", tag_uid=bytes(7),
    programme="pangan", amount=250_000, slot_seq_before=3, slot_seq_after=4, state_hash_prev=b"\x22" * 32,
    state_hash_new=b"\x33" * 32, ntag_counter=NTAG_COUNTER_MAX,
).to_claims()
_C = {c.name.lower(): int(c) for c in Claim}


def _with(**changes: Any) -> dict[Any, Any]:
    out = dict(_BASE)
    for name, value in changes.items():
        if value is _DROP:
            out.pop(_C[name], None)
        else:
            out[_C[name]] = value
    return out


_DROP = object()
#: Fixed edge cases, so each rule of _claims_valid is exercised on every run (the
#: properties above explore further, but at random).
_FIXED: dict[str, dict[Any, Any]] = {
    "valid": dict(_BASE),
    "seq 1, non-genesis prev": _with(seq=1),
    "seq 1, genesis prev": _with(seq=1, prev_entry_hash=GENESIS_HASH),
    "decline_reason on COMMIT": _with(decline_reason="nothing_left"),
    "decline_reason on DECLINED": _with(kind=int(EntryKind.DECLINED), decline_reason="nothing_left"),
    "kind 0": _with(kind=0),
    "kind 11": _with(kind=11),
    "kind True": _with(kind=True),
    "version True": _with(version=True),
    "version 1.0": _with(version=1.0),
    "version 2": _with(version=2),
    "tag_uid 5 bytes": _with(tag_uid=bytes(5)),
    "tag_uid 8 bytes": _with(tag_uid=bytes(8)),
    "tag_uid 11 bytes": _with(tag_uid=bytes(11)),
    "entry_id 15 bytes": _with(entry_id=bytes(15)),
    "entry_id 17 bytes": _with(entry_id=bytes(17)),
    "prev hash 31 bytes": _with(prev_entry_hash=bytes(31)),
    "state_hash_new 33 bytes": _with(state_hash_new=bytes(33)),
    "entry_id as str": _with(entry_id="x" * 16),
    "terminal_id as bytes": _with(terminal_id=b"T-1"),
    "terminal_id empty": _with(terminal_id=""),
    "terminal_id 65 chars": _with(terminal_id="a" * 65),
    "programme 33 chars": _with(programme="a" * 33),
    "boot_id 0": _with(boot_id=0),
    "seq 0": _with(seq=0),
    "seq True": _with(seq=True),
    "amount -1": _with(amount=-1),
    "amount 1.0": _with(amount=1.0),
    "amount False": _with(amount=False),
    "ntag_counter 2**24": _with(ntag_counter=2**24),
    "clock_synced 1": _with(clock_synced=1),
    "clock_synced None": _with(clock_synced=None),
    "card_id None": _with(card_id=None),
    "missing mono_ns": _with(mono_ns=_DROP),
    "unknown key 21": {**_BASE, 21: 0},
    "unknown key x": {**_BASE, "x": 0},
    "unknown key -1": {**_BASE, -1: 0},
    "key True for version": {True: 1, **{k: v for k, v in _BASE.items() if k != 1}},
    "key 5.0 for seq": {5.0 if k == 5 else k: v for k, v in _BASE.items()},
}


@pytest.mark.parametrize("claims", list(_FIXED.values()), ids=list(_FIXED))
def test_fixed_edge_cases(claims: dict[Any, Any]) -> None:
    _assert_claims_agree(claims)
    _assert_verify_agrees(claims)


# ----------------------------------------------------------------------------- encodings


def _uint_head(major: int, value: int, size: int) -> bytes:
    """A CBOR head with ``value`` in ``size`` argument bytes (0: in the initial byte), no minimality."""
    if size == 0:
        assert value < 24
        return bytes([major << 5 | value])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major << 5 | ai]) + value.to_bytes(size, "big")


def _shortest_size(value: int) -> int:
    return 0 if value < 24 else 1 if value < 2**8 else 2 if value < 2**16 else 4 if value < 2**32 else 8


def _longer_head(major: int, value: int, draw: st.DrawFn) -> bytes | None:
    """A non-shortest head for ``value``, or None when none exists (value needs 8 bytes)."""
    sizes = [s for s in (1, 2, 4, 8) if s > _shortest_size(value)]
    return _uint_head(major, value, draw(st.sampled_from(sizes))) if sizes else None


@st.composite
def non_deterministic(draw: st.DrawFn, claims: dict[int, Any]) -> tuple[str, bytes]:
    """An encoding of ``claims`` (or of a map that decodes equal) that is not the deterministic one."""
    items = [(cbor2.dumps(k), cbor2.dumps(v)) for k, v in claims.items()]
    keys = list(claims)
    how = draw(st.sampled_from(
        ["reorder", "long key", "long value", "long map head", "indefinite map", "indefinite string",
         "long string head", "bignum", "repeat"]))
    applies = {
        "long value": lambda x: type(x) is int and _shortest_size(x) < 8,
        "bignum": lambda x: type(x) is int and x < 2**64,
        "indefinite string": lambda x: type(x) in (bytes, str),
        "long string head": lambda x: type(x) in (bytes, str) and _shortest_size(len(x.encode() if type(x) is str else x)) < 8,
    }.get(how, lambda x: True)
    # Every entry has some int, bytes and str claims (version, entry_id, terminal_id).
    i = draw(st.sampled_from([j for j, key in enumerate(keys) if applies(claims[key])]))
    k, v = keys[i], claims[keys[i]]

    def raw_map(its: list[tuple[bytes, bytes]]) -> bytes:
        return _uint_head(5, len(its), 0 if len(its) < 24 else 1) + b"".join(a + b for a, b in its)

    if how == "reorder":
        order = list(draw(st.permutations(range(len(items)))))
        if order == sorted(order):
            order[i - 1], order[i] = order[i], order[i - 1]  # i == 0 swaps the first and last
        # Also via cbor2 itself (a dict in another order, canonical=False), as an uploader would.
        if draw(st.booleans()):
            return how, cbor2.dumps({keys[j]: claims[keys[j]] for j in order})
        return how, raw_map([items[j] for j in order])
    if how == "long key":
        items[i] = (_longer_head(0, k, draw), items[i][1])  # keys are < 24: always has a longer form
        return how, raw_map(items)
    if how == "long value":
        items[i] = (items[i][0], _longer_head(0, v, draw))
        return how, raw_map(items)
    if how == "long map head":
        return how, _longer_head(5, len(items), draw) + b"".join(a + b for a, b in items)
    if how == "indefinite map":
        return how, b"\xbf" + b"".join(a + b for a, b in items) + b"\xff"
    if how in ("indefinite string", "long string head"):
        raw = v if type(v) is bytes else v.encode()
        major = 2 if type(v) is bytes else 3
        if how == "indefinite string":
            # Split into 1–3 definite chunks (text chunks on character boundaries).
            if type(v) is bytes:
                cut = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=2)))
                parts = [raw[a:b] for a, b in zip([0, *cut], [*cut, len(raw)])]
            else:
                cut = sorted(draw(st.lists(st.integers(0, len(v)), max_size=2)))
                parts = [v[a:b].encode() for a, b in zip([0, *cut], [*cut, len(v)])]
            body = b"".join(_uint_head(major, len(p), _shortest_size(len(p))) + p for p in parts)
            items[i] = (items[i][0], bytes([major << 5 | 31]) + body + b"\xff")
        else:
            items[i] = (items[i][0], _longer_head(major, len(raw), draw) + raw)
        return how, raw_map(items)
    if how == "bignum":
        # Tag 2 (unsigned bignum, RFC 8949 §3.4.3) for a value that fits a plain integer
        # (from 2**64 on, tag 2 is the deterministic form).
        magnitude = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
        items[i] = (items[i][0], b"\xc2" + _uint_head(2, len(magnitude), _shortest_size(len(magnitude))) + magnitude)
        return how, raw_map(items)
    assert how == "repeat"  # a key twice (same value): decodes to the same dict, encodes longer
    return how, raw_map(items[: i + 1] + [items[i]] + items[i + 1 :])


@_SETTINGS
@given(entries(), st.data())
def test_verify_entry_accepts_only_the_deterministic_encoding(entry: JournalEntry, data: st.DataObject) -> None:
    signed = sign_entry(entry, _KEY, KID)
    got = verify_entry(signed.message, _KEYS)
    _same_entry(got.entry, entry)
    assert got.message == signed.message and got.kid == KID
    _same_entry(_reference_verify(encode_payload(entry)), entry)

    claims = entry.to_claims()
    how, payload = data.draw(non_deterministic(claims), label="encoding")
    event(how)
    assert payload != encode_payload(entry)
    assert cbor2.loads(payload) == claims, how  # the same map, only encoded otherwise
    message = sign1(payload, _KEY, KID, external_aad=JOURNAL_AAD)
    with pytest.raises(MalformedEntry):
        verify_entry(message, _KEYS)
    with pytest.raises(MalformedEntry):
        _reference_verify(payload)
    assert not _ground_truth_accepts(payload)


# ----------------------------------------------------------------------------- batch verification

_OTHER_KEY = ed25519.Ed25519PrivateKey.generate()
_P256_KID = b"\x01\x02\x03\x04"


def _p256_keys() -> tuple[dict[bytes, CoseKey], Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1())
    return {**_KEYS, _P256_KID: CoseKey(_P256_KID, Algorithm.ES256, p256.public_key())}, p256


_BATCH_KEYS, _P256 = _p256_keys()


@st.composite
def batch_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """One uploaded message: valid, or broken at one layer (envelope, key, signature, claims)."""
    entry = draw(entries())
    message = sign_entry(entry, _KEY, KID).message
    how = draw(st.sampled_from(
        ["valid", "claims", "non-deterministic", "bad signature", "other key", "unknown kid", "ES256 kid",
         "ES256 signed", "untagged", "truncated", "trailing byte", "junk"]))
    if how == "claims":
        message = sign1(cbor2.dumps(draw(claim_maps())), _KEY, KID, external_aad=JOURNAL_AAD)
    elif how == "non-deterministic":
        message = sign1(draw(non_deterministic(entry.to_claims()))[1], _KEY, KID, external_aad=JOURNAL_AAD)
    elif how == "bad signature":
        at = draw(st.integers(len(message) - 64, len(message) - 1))
        message = message[:at] + bytes([message[at] ^ 0x01]) + message[at + 1:]
    elif how == "other key":
        message = sign_entry(entry, _OTHER_KEY, KID).message
    elif how == "unknown kid":
        message = sign_entry(entry, _KEY, b"\xee\xee\xee\xee").message
    elif how == "ES256 kid":  # an EdDSA-signed message naming a P-256 key: algorithm not allowed
        message = sign_entry(entry, _KEY, _P256_KID).message
    elif how == "ES256 signed":  # a genuine ES256 entry: valid, through the general path
        message = sign_entry(entry, _P256, _P256_KID, alg=Algorithm.ES256).message
    elif how == "untagged":
        message = sign1(encode_payload(entry), _KEY, KID, external_aad=JOURNAL_AAD, tagged=False)
    elif how == "truncated":
        message = message[: draw(st.integers(0, len(message) - 1))]
    elif how == "trailing byte":
        message = message + b"\x00"
    elif how == "junk":
        message = draw(st.binary(max_size=64))
    return how, message


def _single(message: bytes) -> Any:
    try:
        got = verify_entry(message, _BATCH_KEYS)
    except journal.RecordError as exc:
        return type(exc), str(exc)
    return got.entry, got.message, got.kid


@_SETTINGS
@given(st.lists(batch_messages(), min_size=1, max_size=12))
def test_batch_verification_gives_each_entry_what_verify_entry_gives(batch: list[tuple[str, bytes]]) -> None:
    """``verify_entries`` (staged: envelopes, then signatures, then claims) matches
    ``verify_entry`` message by message, in order, on batches mixing good entries with
    every kind of bad one — the same entry or the same exception type and message."""
    messages = [m for _, m in batch]
    for how, message, got in zip((h for h, _ in batch), messages, journal.verify_entries(messages, _BATCH_KEYS)):
        event(how)
        want = _single(message)
        if isinstance(got, journal.RecordError):
            assert (type(got), str(got)) == want, how
        else:
            assert isinstance(want[0], JournalEntry), (how, want)
            _same_entry(got.entry, want[0])
            assert (got.message, got.kid) == want[1:], how
            assert type(got.message) is bytes
