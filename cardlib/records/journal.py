"""Terminal journal entries: signed, hash-chained, one per event (docs/design.md §Journal).

Shared by the terminal (writes them) and the server (verifies and stores them).
Pure: no I/O, no Flask, no SQL.

Wire format of one entry::

    entry   = COSE_Sign1 (RFC 9052 §4.2), tagged 18, EdDSA (or ES256), kid = terminal key id,
              external_aad = b"huma-betang/journal/v1"
    payload = deterministic CBOR (RFC 8949 §4.2.1) map with small integer keys (:class:`Claim`);
              optional claims are omitted, never encoded as null
    entry_hash(n) = SHA-256(exact COSE_Sign1 bytes of entry n)
    entry n.prev_entry_hash = entry_hash(n - 1);  entry 1.prev_entry_hash = 32 zero bytes

Identifiers: ``entry_id`` is a 16-byte UUIDv7 (:func:`new_entry_id`) drawn once
(a ``COMPLAINT`` entry's is a UUIDv8 sealing the complaint, :mod:`cardlib.records.complaint`),
when the terminal first writes the entry, and stored with it; a retry re-sends
the stored bytes, never a new id. ``seq`` counts entries per terminal from 1
without gaps across reboots; ``boot_id`` counts daemon starts from 1 (it
tells auditors which entries share one monotonic clock).

All payload claims are at most small unsigned integers, so RFC 8949 §4.2.1's
bytewise key order equals numeric order, and cbor2's ``canonical=True``
(shortest integer forms, sorted keys, definite lengths) produces it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, cast

import cbor2
from cryptography.exceptions import InvalidSignature

from cardlib.records.cose import (
    Algorithm,
    CoseKey,
    KeyResolver,
    PrivateKey,
    parse_sign1_layout,
    sig_structure,
    sign1,
    verify1,
)
from cardlib.records.errors import BadSignature, RecordError

__all__ = [
    "GENESIS_HASH",
    "JOURNAL_AAD",
    "JOURNAL_VERSION",
    "BadSignature",
    "CardClaims",
    "ChainBroken",
    "Claim",
    "EntryKind",
    "Gap",
    "JournalEntry",
    "JournalError",
    "MalformedEntry",
    "SignedEntry",
    "encode_payload",
    "entry_hash",
    "new_entry_id",
    "sign_entry",
    "verify_chain",
    "verify_entries",
    "verify_entry",
]

#: Format version carried in every entry (claim 1).
JOURNAL_VERSION = 1
#: COSE external_aad of journal entries: separates them from card records and
#: upload envelopes signed by the same terminal key (RFC 9052 §4.3).
JOURNAL_AAD = b"huma-betang/journal/v1"
#: SHA-256 output length, bytes.
HASH_LEN = 32
#: prev_entry_hash of seq 1.
GENESIS_HASH = bytes(HASH_LEN)
#: entry_id length, bytes.
ENTRY_ID_LEN = 16
#: NTAG21x UIDs are 7 bytes; ISO 14443-3 allows 4, 7 or 10.
UID_LENGTHS = frozenset({4, 7, 10})
#: NTAG21x NFC counter is 24 bits (NTAG213/215/216 datasheet §8.7).
NTAG_COUNTER_MAX = 0xFF_FFFF
#: 1970-01-01T00:00Z, the origin of ``wall_ms``.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Longest terminal id / card id / programme name, characters.
MAX_ID_CHARS = 64
MAX_PROGRAMME_CHARS = 32


class EntryKind(IntEnum):
    """What happened (docs/design.md §Tap sequence): the redemption protocol plus read-only and housekeeping events."""

    PENDING = 1  #: about to write a slot (fsynced before the card write)
    COMMIT = 2  #: slot written and read back identical
    UNCERTAIN = 3  #: write torn or unverifiable; resolve on next presentation
    FINISHED = 4  #: an UNCERTAIN write found complete on re-presentation
    VOIDED = 5  #: an UNCERTAIN write found not applied; nothing was charged
    DECLINED = 6  #: tap refused by policy (no card write)
    BALANCE = 7  #: read-only balance check
    ISSUANCE = 8  #: card provisioned at this terminal
    BOOT = 9  #: daemon started (new boot_id)
    CLOCK_SET = 10  #: wall clock stepped (NTP sync or manual)
    #: a redemption served without a card write (QR or supervisor manual entry, docs/fallback.md);
    #: the counter sets ``fallback`` (the step) and ``approved_by`` (who let it through)
    FALLBACK = 11
    #: a complaint taken at the counter (docs/grievances.md): the entry's ``entry_id`` is the complaint's
    #: ``client_ref``, so the signed head covers it; no other claim (the text stays out of the journal)
    COMPLAINT = 12


class Claim(IntEnum):
    """CBOR map keys of the entry payload."""

    VERSION = 1
    ENTRY_ID = 2
    TERMINAL_ID = 3
    BOOT_ID = 4
    SEQ = 5
    KIND = 6
    WALL_MS = 7  #: wall time, integer milliseconds since 1970-01-01T00:00Z
    MONO_NS = 8  #: CLOCK_MONOTONIC, integer nanoseconds (same boot_id only)
    CLOCK_SYNCED = 9
    CARD_ID = 10
    TAG_UID = 11
    PROGRAMME = 12
    AMOUNT = 13  #: in the programme's unit: rupiah, units, visits
    SLOT_SEQ_BEFORE = 14
    SLOT_SEQ_AFTER = 15
    STATE_HASH_PREV = 16
    STATE_HASH_NEW = 17
    NTAG_COUNTER = 18
    PREV_ENTRY_HASH = 19
    DECLINE_REASON = 20  #: DECLINED only: stable reason code, e.g. "nothing_left" (signed, text <= 32)
    FALLBACK = 21  #: FALLBACK or DECLINED: the fallback step, "qr" or "manual" (docs/fallback.md)
    APPROVED_BY = 22  #: with FALLBACK: the clerk (qr) or supervisor (manual) who approved it (text <= 64)
    #: true when this tap put a format-1 card's slots behind its password (docs/card-format.md §2.3)
    CARD_MIGRATED = 23


_REQUIRED = frozenset(
    {
        Claim.VERSION,
        Claim.ENTRY_ID,
        Claim.TERMINAL_ID,
        Claim.BOOT_ID,
        Claim.SEQ,
        Claim.KIND,
        Claim.WALL_MS,
        Claim.MONO_NS,
        Claim.CLOCK_SYNCED,
        Claim.PREV_ENTRY_HASH,
    }
)

#: Every claim key as a plain int (membership tests without building enum members).
_CLAIM_KEYS = frozenset(int(c) for c in Claim)


class JournalError(RecordError):
    """Root of journal-format and chain errors (signature errors stay :class:`BadSignature`)."""


class MalformedEntry(JournalError):
    """The payload is not a valid entry: bad CBOR, not deterministic, missing/extra/ill-typed claim."""


class ChainBroken(JournalError):
    """Entry ``seq``'s prev_entry_hash is not the hash of entry ``seq - 1``, or the
    terminal id changes inside one chain.

    :ivar seq: the entry whose link is wrong.
    """

    def __init__(self, seq: int, message: str | None = None) -> None:
        super().__init__(message or f"chain broken at seq {seq}")
        self.seq = seq


class Gap(JournalError):
    """Sequence numbers ``first..last`` (inclusive) are missing, or out of order.

    :ivar first: first missing seq.
    :ivar last: last missing seq.
    """

    def __init__(self, first: int, last: int, message: str | None = None) -> None:
        super().__init__(message or f"entries {first}..{last} missing")
        self.first = first
        self.last = last


def new_entry_id() -> bytes:
    """A fresh 16-byte entry id: a UUIDv7 (RFC 9562 §5.7), big-endian bytes.

    48-bit Unix time in ms, version 7, 74 random bits, variant 0b10: unique without
    coordination (also after a journal restore or with a wrong clock: the random bits
    decide), and time-ordered, so ids from all terminals land at the growing end of
    the server's unique entry_id index instead of on a random leaf per entry (the
    index's pages stay cached and each batch dirties a few of them, not ~300).
    The time part is not trusted for anything; ``wall_ms`` is the signed time.
    """
    ms = time.time_ns() // 1_000_000
    raw = bytearray((ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + os.urandom(ENTRY_ID_LEN - 6))
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7 (RFC 9562 §4.2)
    raw[8] = 0x80 | (raw[8] & 0x3F)  # variant 10xx (RFC 9562 §4.1)
    return bytes(raw)


def entry_hash(message: bytes) -> bytes:
    """SHA-256 of the exact signed entry bytes (32 bytes): the chain link and dedup key."""
    return hashlib.sha256(message).digest()


@dataclass(frozen=True, kw_only=True)
class CardClaims:
    """The card claims of a journal entry (all optional: a BOOT entry carries none).

    Keyword-only, so :class:`JournalEntry` and a terminal's pending card write
    (``terminal.journal_store.CardWrite``) share the one list of names and types.

    :ivar card_id: issuer card id (text form, ≤ 64 chars).
    :ivar tag_uid: chip UID, 4/7/10 bytes.
    :ivar programme: programme code, e.g. ``"pangan"``.
    :ivar amount: in the programme's unit (rupiah, units, visits); non-negative.
    :ivar slot_seq_before, slot_seq_after: card slot sequence numbers read / written.
    :ivar state_hash_prev: hash of the slot state read (32 bytes).
    :ivar state_hash_new: hash of the slot state written (32 bytes).
    :ivar ntag_counter: the NTAG 24-bit NFC counter read in this RF session.
    :ivar decline_reason: for DECLINED entries, the stable reason code
        (:class:`cardlib.records.declines.DeclineReason` value, ≤ 32 chars); signed like every claim.
    :ivar fallback: the fallback step of a FALLBACK (or refused fallback DECLINED) entry,
        ``"qr"`` or ``"manual"`` (docs/fallback.md).
    :ivar approved_by: who approved the fallback step (clerk or supervisor id, ≤ 64 chars).
    :ivar card_migrated: ``True`` when this tap wrote a format-1 card's configuration pages to
        protect its slots (:mod:`cardlib.records.migration`, docs/card-format.md §2.3); absent
        otherwise, also when the card was already migrated.
    """

    card_id: str | None = None
    tag_uid: bytes | None = None
    programme: str | None = None
    amount: int | None = None
    slot_seq_before: int | None = None
    slot_seq_after: int | None = None
    state_hash_prev: bytes | None = None
    state_hash_new: bytes | None = None
    ntag_counter: int | None = None
    decline_reason: str | None = None
    fallback: str | None = None
    approved_by: str | None = None
    card_migrated: bool | None = None

    def card_claims(self) -> dict[str, Any]:
        """These claims by name (for ``JournalEntry(**...)`` or ``CardWrite(**...)``)."""
        return {f.name: getattr(self, f.name) for f in fields(CardClaims)}


@dataclass(frozen=True)
class JournalEntry(CardClaims):
    """The claims of one journal entry (the card claims: :class:`CardClaims`).

    :ivar entry_id: 16 bytes, see :func:`new_entry_id`.
    :ivar terminal_id: the terminal's registered id (≤ 64 chars), e.g. ``"T-017"``.
    :ivar boot_id: daemon start counter, ≥ 1.
    :ivar seq: per-terminal sequence, contiguous from 1.
    :ivar wall_ms: wall clock, integer ms since the Unix epoch (UTC).
    :ivar mono_ns: monotonic clock, ns (comparable within one boot only).
    :ivar clock_synced: whether the wall clock was synchronised when written.
    :ivar prev_entry_hash: :func:`entry_hash` of seq - 1 (32 bytes), :data:`GENESIS_HASH` for seq 1.

    State hashes: ``state_hash_prev``/``state_hash_new`` are SHA-256 over the exact
    COSE_Sign1 bytes of the slot record (not the padded slot pages); the card's own
    8-byte ``prev_hash`` (:func:`cardlib.records.claims.state_hash`) is the first
    8 bytes of the same digest.
    """

    entry_id: bytes
    terminal_id: str
    boot_id: int
    seq: int
    kind: EntryKind
    wall_ms: int
    mono_ns: int
    clock_synced: bool
    prev_entry_hash: bytes
    version: int = JOURNAL_VERSION

    def __post_init__(self) -> None:
        _check(self)

    @property
    def wall_time(self) -> dt.datetime:
        """Wall time as an aware UTC datetime (millisecond resolution)."""
        return _EPOCH + dt.timedelta(milliseconds=self.wall_ms)

    @staticmethod
    def wall_ms_of(when: dt.datetime) -> int:
        """Integer ms since the epoch for an aware datetime.

        :raises ValueError: for a naive datetime.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("wall time must be timezone-aware")
        delta = when - _EPOCH
        return delta // dt.timedelta(milliseconds=1)

    def to_claims(self) -> dict[int, Any]:
        """The CBOR claim map (optional claims omitted when ``None``)."""
        values: dict[Claim, Any] = {
            Claim.VERSION: self.version,
            Claim.ENTRY_ID: self.entry_id,
            Claim.TERMINAL_ID: self.terminal_id,
            Claim.BOOT_ID: self.boot_id,
            Claim.SEQ: self.seq,
            Claim.KIND: int(self.kind),
            Claim.WALL_MS: self.wall_ms,
            Claim.MONO_NS: self.mono_ns,
            Claim.CLOCK_SYNCED: self.clock_synced,
            Claim.CARD_ID: self.card_id,
            Claim.TAG_UID: self.tag_uid,
            Claim.PROGRAMME: self.programme,
            Claim.AMOUNT: self.amount,
            Claim.SLOT_SEQ_BEFORE: self.slot_seq_before,
            Claim.SLOT_SEQ_AFTER: self.slot_seq_after,
            Claim.STATE_HASH_PREV: self.state_hash_prev,
            Claim.STATE_HASH_NEW: self.state_hash_new,
            Claim.NTAG_COUNTER: self.ntag_counter,
            Claim.PREV_ENTRY_HASH: self.prev_entry_hash,
            Claim.DECLINE_REASON: self.decline_reason,
            Claim.FALLBACK: self.fallback,
            Claim.APPROVED_BY: self.approved_by,
            Claim.CARD_MIGRATED: self.card_migrated,
        }
        return {int(k): v for k, v in values.items() if v is not None}

    @classmethod
    def _from_valid_claims(cls, claims: dict[int, Any]) -> JournalEntry:
        """Build an entry from a map :func:`_claims_valid` accepted (no second check).

        Fills the frozen instance's fields directly: every field already passed the
        same rules as :func:`_check`, which ``__post_init__`` would run again.
        """
        entry = cls.__new__(cls)
        entry.__dict__.update(_DEFAULT_FIELDS)
        entry.__dict__.update({_CLAIM_FIELD[k]: v for k, v in claims.items()})
        entry.__dict__["kind"] = _KINDS[claims[_KIND]]
        return entry

    @classmethod
    def from_claims(cls, claims: object) -> JournalEntry:
        """Build an entry from a decoded claim map.

        :raises MalformedEntry: missing, unknown or ill-typed claims, or wrong version.
        """
        if not isinstance(claims, dict):
            raise MalformedEntry("payload must be a CBOR map")
        if _claims_valid(claims):
            return cls._from_valid_claims(claims)
        # Slow path: name the first problem exactly. Exact ints only: 1.0 and True hash and
        # compare equal to 1 but are other CBOR items.
        unknown = [k for k in claims if type(k) is not int or k not in _CLAIM_KEYS]
        if unknown:
            raise MalformedEntry(f"unknown claim key: {unknown[0]!r}")
        missing = _REQUIRED - claims.keys()
        if missing:
            raise MalformedEntry("missing claims: " + ", ".join(sorted(Claim(c).name for c in missing)))
        if claims[Claim.VERSION] != JOURNAL_VERSION:
            raise MalformedEntry(f"unsupported journal version {claims[Claim.VERSION]!r}")
        try:
            kind = EntryKind(claims[Claim.KIND])
        except ValueError as exc:
            raise MalformedEntry(f"unknown entry kind {claims[Claim.KIND]!r}") from exc
        try:
            return cls(
                entry_id=claims[Claim.ENTRY_ID],
                terminal_id=claims[Claim.TERMINAL_ID],
                boot_id=claims[Claim.BOOT_ID],
                seq=claims[Claim.SEQ],
                kind=kind,
                wall_ms=claims[Claim.WALL_MS],
                mono_ns=claims[Claim.MONO_NS],
                clock_synced=claims[Claim.CLOCK_SYNCED],
                prev_entry_hash=claims[Claim.PREV_ENTRY_HASH],
                card_id=claims.get(Claim.CARD_ID),
                tag_uid=claims.get(Claim.TAG_UID),
                programme=claims.get(Claim.PROGRAMME),
                amount=claims.get(Claim.AMOUNT),
                slot_seq_before=claims.get(Claim.SLOT_SEQ_BEFORE),
                slot_seq_after=claims.get(Claim.SLOT_SEQ_AFTER),
                state_hash_prev=claims.get(Claim.STATE_HASH_PREV),
                state_hash_new=claims.get(Claim.STATE_HASH_NEW),
                ntag_counter=claims.get(Claim.NTAG_COUNTER),
                decline_reason=claims.get(Claim.DECLINE_REASON),
                fallback=claims.get(Claim.FALLBACK),
                approved_by=claims.get(Claim.APPROVED_BY),
                card_migrated=claims.get(Claim.CARD_MIGRATED),
            )
        except TypeError as exc:  # a claim of the wrong CBOR type reaching __post_init__
            raise MalformedEntry(str(exc)) from exc


#: Claim key → JournalEntry field name.
_CLAIM_FIELD = {int(c): c.name.lower() for c in Claim}
#: Field values of an entry whose optional claims are all absent.
_DEFAULT_FIELDS = {name: None for name in _CLAIM_FIELD.values()} | {"version": JOURNAL_VERSION}
_KIND, _SEQ, _PREV_ENTRY_HASH, _TAG_UID, _DECLINE_REASON = (
    int(Claim.KIND), int(Claim.SEQ), int(Claim.PREV_ENTRY_HASH), int(Claim.TAG_UID), int(Claim.DECLINE_REASON))
_DECLINED = int(EntryKind.DECLINED)
#: EntryKind by its exact int value.
_KINDS = {int(k): k for k in EntryKind}


_UNBOUNDED = float("inf")
#: Per claim: (exact CBOR type, low, high) where the bounds apply to an int's value and
#: to the length of a bstr/tstr — :func:`_check`'s rules, plus exact types (``type(v)
#: is int`` also refuses ``True``/``1.0``) and no ``None``. TAG_UID's length set and
#: KIND's member set are checked after the loop.
_CLAIM_SPEC: dict[int, tuple[Any, float, float]] = {
    Claim.VERSION: (int, JOURNAL_VERSION, JOURNAL_VERSION),
    Claim.ENTRY_ID: (bytes, ENTRY_ID_LEN, ENTRY_ID_LEN),
    Claim.TERMINAL_ID: (str, 1, MAX_ID_CHARS),
    Claim.BOOT_ID: (int, 1, _UNBOUNDED),
    Claim.SEQ: (int, 1, _UNBOUNDED),
    Claim.KIND: (int, min(_KINDS), max(_KINDS)),
    Claim.WALL_MS: (int, 0, _UNBOUNDED),
    Claim.MONO_NS: (int, 0, _UNBOUNDED),
    Claim.CLOCK_SYNCED: (bool, 0, 1),
    Claim.CARD_ID: (str, 1, MAX_ID_CHARS),
    Claim.TAG_UID: (bytes, min(UID_LENGTHS), max(UID_LENGTHS)),
    Claim.PROGRAMME: (str, 1, MAX_PROGRAMME_CHARS),
    Claim.AMOUNT: (int, 0, _UNBOUNDED),
    Claim.SLOT_SEQ_BEFORE: (int, 0, _UNBOUNDED),
    Claim.SLOT_SEQ_AFTER: (int, 0, _UNBOUNDED),
    Claim.STATE_HASH_PREV: (bytes, HASH_LEN, HASH_LEN),
    Claim.STATE_HASH_NEW: (bytes, HASH_LEN, HASH_LEN),
    Claim.NTAG_COUNTER: (int, 0, NTAG_COUNTER_MAX),
    Claim.PREV_ENTRY_HASH: (bytes, HASH_LEN, HASH_LEN),
    Claim.DECLINE_REASON: (str, 1, MAX_PROGRAMME_CHARS),
    Claim.FALLBACK: (str, 1, MAX_PROGRAMME_CHARS),
    Claim.APPROVED_BY: (str, 1, MAX_ID_CHARS),
    Claim.CARD_MIGRATED: (bool, 0, 1),
}
_CLAIM_SPEC_BY_INT = {int(k): v for k, v in _CLAIM_SPEC.items()}


def _claims_valid(claims: dict[Any, Any]) -> bool:
    """Whether ``claims`` is a well-formed entry with exact CBOR types (the upload fast path).

    ``True`` means :meth:`JournalEntry.from_claims` would succeed and
    :func:`_check` would pass; ``False`` only sends the map to the slow path, which
    names the problem (or, for ``True``/``1.0`` where an int belongs, accepts it and
    leaves the refusal to the determinism check, as before). One loop, no calls per
    claim: this runs once per uploaded entry.
    """
    spec_of = _CLAIM_SPEC_BY_INT.get
    for key, value in claims.items():
        spec = spec_of(key) if type(key) is int else None
        if spec is None:
            return False
        kind, low, high = spec
        if type(value) is not kind:
            return False
        if kind is int:
            if not low <= value <= high:
                return False
        elif kind is not bool and not low <= len(value) <= high:
            return False
    if not claims.keys() >= _REQUIRED:
        return False
    if claims[_SEQ] == 1 and claims[_PREV_ENTRY_HASH] != GENESIS_HASH:
        return False
    if claims[_KIND] not in _KINDS:
        return False
    uid = claims.get(_TAG_UID)
    if uid is not None and len(uid) not in UID_LENGTHS:
        return False
    return _DECLINE_REASON not in claims or claims[_KIND] == _DECLINED


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check(e: JournalEntry) -> None:
    """Field checks shared by construction and decoding.

    :raises MalformedEntry: with the first problem found.
    """

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise MalformedEntry(what)

    need(e.version == JOURNAL_VERSION, f"version must be {JOURNAL_VERSION}")
    need(isinstance(e.entry_id, bytes) and len(e.entry_id) == ENTRY_ID_LEN, "entry_id: 16 bytes")
    need(
        isinstance(e.terminal_id, str) and 0 < len(e.terminal_id) <= MAX_ID_CHARS,
        "terminal_id: 1..64 characters",
    )
    need(_is_uint(e.boot_id) and e.boot_id >= 1, "boot_id: integer ≥ 1")
    need(_is_uint(e.seq) and e.seq >= 1, "seq: integer ≥ 1")
    need(isinstance(e.kind, EntryKind), "kind: EntryKind")
    need(_is_uint(e.wall_ms), "wall_ms: integer ≥ 0")
    need(_is_uint(e.mono_ns), "mono_ns: integer ≥ 0")
    need(isinstance(e.clock_synced, bool), "clock_synced: bool")
    need(
        isinstance(e.prev_entry_hash, bytes) and len(e.prev_entry_hash) == HASH_LEN,
        "prev_entry_hash: 32 bytes",
    )
    need(e.seq != 1 or e.prev_entry_hash == GENESIS_HASH, "seq 1 must link to the genesis hash")
    need(
        e.card_id is None or (isinstance(e.card_id, str) and 0 < len(e.card_id) <= MAX_ID_CHARS),
        "card_id: 1..64 characters",
    )
    need(
        e.tag_uid is None or (isinstance(e.tag_uid, bytes) and len(e.tag_uid) in UID_LENGTHS),
        "tag_uid: 4, 7 or 10 bytes",
    )
    need(
        e.programme is None
        or (isinstance(e.programme, str) and 0 < len(e.programme) <= MAX_PROGRAMME_CHARS),
        "programme: 1..32 characters",
    )
    need(
        e.decline_reason is None
        or (isinstance(e.decline_reason, str) and 0 < len(e.decline_reason) <= MAX_PROGRAMME_CHARS),
        "decline_reason: 1..32 characters",
    )
    need(e.decline_reason is None or e.kind is EntryKind.DECLINED, "decline_reason only on DECLINED entries")
    need(e.fallback is None or (isinstance(e.fallback, str) and 0 < len(e.fallback) <= MAX_PROGRAMME_CHARS),
         "fallback: 1..32 characters")
    need(e.approved_by is None or (isinstance(e.approved_by, str) and 0 < len(e.approved_by) <= MAX_ID_CHARS),
         "approved_by: 1..64 characters")
    need(e.card_migrated is None or isinstance(e.card_migrated, bool), "card_migrated: bool")
    for name in ("amount", "slot_seq_before", "slot_seq_after"):
        value = getattr(e, name)
        need(value is None or _is_uint(value), f"{name}: integer ≥ 0")
    for name in ("state_hash_prev", "state_hash_new"):
        value = getattr(e, name)
        need(value is None or (isinstance(value, bytes) and len(value) == HASH_LEN), f"{name}: 32 bytes")
    need(
        e.ntag_counter is None or (_is_uint(e.ntag_counter) and e.ntag_counter <= NTAG_COUNTER_MAX),
        "ntag_counter: 0..2^24-1",
    )


def encode_payload(entry: JournalEntry) -> bytes:
    """Deterministic CBOR of the claim map (RFC 8949 §4.2.1)."""
    return cbor2.dumps(entry.to_claims(), canonical=True)


@dataclass(frozen=True)
class SignedEntry:
    """A journal entry together with the exact bytes that were signed.

    :ivar entry: the decoded claims.
    :ivar message: the COSE_Sign1 bytes (what is stored, uploaded and hashed).
    :ivar kid: the 4-byte terminal key id from the COSE header.
    """

    entry: JournalEntry
    message: bytes = field(repr=False)
    kid: bytes

    @functools.cached_property
    def entry_hash(self) -> bytes:
        """SHA-256 of :attr:`message` (32 bytes), computed once (the server reads it ~5 times per entry)."""
        return entry_hash(self.message)


def sign_entry(
    entry: JournalEntry, private_key: PrivateKey, kid: bytes, alg: Algorithm = Algorithm.EDDSA
) -> SignedEntry:
    """Sign one entry with the terminal key (RFC 9052 §4.4).

    :param kid: the terminal key id (4 bytes, SHA-256(SPKI)[:4]).
    :returns: the entry with its signed bytes.
    """
    message = sign1(encode_payload(entry), private_key, kid, alg=alg, external_aad=JOURNAL_AAD)
    return SignedEntry(entry=entry, message=message, kid=kid)


def _decode_payload(payload: bytes) -> object:
    stream = io.BytesIO(payload)
    try:
        claims = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise MalformedEntry(f"payload is not CBOR: {exc}") from exc
    if stream.tell() != len(payload):
        raise MalformedEntry("trailing bytes after the payload map")
    return claims


def verify_entry(message: bytes, keys: KeyResolver) -> SignedEntry:
    """Verify one entry's signature and decode its claims.

    :param message: the COSE_Sign1 bytes as stored or received.
    :param keys: the terminal key(s) by kid (see :func:`cardlib.records.cose.verify1`).
    :raises cardlib.records.errors.CoseError: malformed COSE, unknown/revoked kid,
        algorithm not allowed, :class:`BadSignature`.
    :raises MalformedEntry: the payload is not a deterministic, valid claim map.
    """
    verified = verify1(message, keys, external_aad=JOURNAL_AAD)
    payload = verified.payload
    claims = _decode_payload(payload)
    entry = _fast_entry(claims, payload)
    if entry is None:
        entry = JournalEntry.from_claims(claims)
        # from_claims refused anything but a dict (MalformedEntry)
        if not _is_deterministic(cast("dict[Any, Any]", claims), payload):
            raise MalformedEntry("payload is not deterministic CBOR (RFC 8949 §4.2.1)")
    return SignedEntry(entry=entry, message=verified.message, kid=verified.kid)


def verify_entries(messages: Sequence[bytes], keys: Mapping[bytes, CoseKey]) -> list[SignedEntry | RecordError]:
    """Verify a batch of entries: for each message what :func:`verify_entry` gives.

    Entry by entry the outcome is exactly :func:`verify_entry`'s — the same checks in
    the same order (structure → kid → algorithm → signature → claims), the same
    :class:`SignedEntry` or the same exception — but the batch runs in stages:

    1. every envelope read by offsets (:func:`cardlib.records.cose.parse_sign1_layout`),
       its key looked up and its ToBeSigned built (RFC 9052 §4.4);
    2. every Ed25519 signature verified back to back (RFC 8032 §5.1.7);
    3. every claim map decoded and checked (the one-pass check and deterministic
       re-encoding, RFC 8949 §4.2.1).

    Keeping the verifications together keeps the Ed25519 code and tables hot in the
    core's caches instead of interleaving them with CBOR and claim code: measured ~5 %
    of an upload's verification time (bench/results/reconcile.md). Anything off the
    common path — another COSE layout, an unknown kid or a key for another kid, a
    non-EdDSA key, a signature that fails, a claim map the fast check does not accept
    — is handed to :func:`verify_entry` as a whole, which raises the precise error.

    :param messages: COSE_Sign1 bytes, one per entry (as uploaded, base64-decoded).
    :param keys: kid (bytes) → :class:`CoseKey`; a kid absent is unknown.
    :returns: one item per message, in order: the verified entry, or the
        :class:`RecordError` (a :class:`CoseError` or :class:`MalformedEntry`) that
        :func:`verify_entry` raised for it. Never raises for a bad message.
    """
    out: list[SignedEntry | RecordError | None] = [None] * len(messages)
    staged: list[tuple[int, bytes, bytes, bytes, Any, bytes]] = []
    eddsa = Algorithm.EDDSA
    for i, message in enumerate(messages):
        layout = parse_sign1_layout(message)
        if layout is not None:
            protected, alg_value, kid, payload, signature = layout
            key = keys.get(kid)
            if key is not None and key.kid == kid and key.alg is eddsa and alg_value == eddsa:
                tbs = sig_structure(protected, JOURNAL_AAD, payload)
                staged.append((i, kid, payload, signature, key.public_key.verify, tbs))
                continue
        out[i] = _verify_or_error(message, keys)
    good: list[tuple[int, bytes, bytes]] = []
    for i, kid, payload, signature, verify, tbs in staged:
        try:
            verify(signature, tbs)
        except InvalidSignature:
            out[i] = _verify_or_error(messages[i], keys)
        else:
            good.append((i, kid, payload))
    for i, kid, payload in good:
        message = messages[i]
        try:
            entry = _fast_entry(_decode_payload(payload), payload)
        except MalformedEntry:
            entry = None
        out[i] = (SignedEntry(entry=entry, message=bytes(message), kid=kid) if entry is not None
                  else _verify_or_error(message, keys))
    return cast("list[SignedEntry | RecordError]", out)  # every slot was filled above


def _verify_or_error(message: bytes, keys: KeyResolver) -> SignedEntry | RecordError:
    try:
        return verify_entry(message, keys)
    except RecordError as exc:
        return exc


def _fast_entry(claims: object, payload: bytes) -> JournalEntry | None:
    """The entry of a claim map on the upload fast path, or ``None`` for the slow path.

    The fast path: exact types, known keys, no null already established by
    :func:`_claims_valid`, so deterministic means ascending keys (a dict has no
    duplicates) and a byte-identical plain re-encoding (see :func:`_is_deterministic`).

    :raises MalformedEntry: a fast-path map whose payload is not deterministic CBOR.
    """
    if type(claims) is not dict or not _claims_valid(claims):
        return None
    keys_in_order = list(claims)
    if keys_in_order != sorted(keys_in_order) or _PLAIN_ENCODER.dumps(claims) != payload:
        raise MalformedEntry("payload is not deterministic CBOR (RFC 8949 §4.2.1)")
    return JournalEntry._from_valid_claims(claims)


def _is_deterministic(claims: dict[Any, Any], payload: bytes) -> bool:
    """Whether ``payload`` is exactly ``encode_payload(JournalEntry.from_claims(claims))``.

    The same decision as re-encoding the entry, without building its claim map and
    without cbor2's canonical key sort (the costly part, run once per uploaded entry):

    - ``claims`` was decoded from ``payload`` and keeps the wire order of its keys;
      :meth:`JournalEntry.from_claims` already admitted only exact-int claim keys,
      all below 24, whose RFC 8949 §4.2.1 order is numeric order, so the keys must
      be strictly ascending;
    - :meth:`JournalEntry.to_claims` omits ``None``, so a ``null`` claim is refused;
    - ``version`` and ``kind`` must be exact ints (``True``/``1.0`` equal 1 in Python
      but are other CBOR items; every other claim's type is fixed by ``_check``);
    - for the remaining value types (int, bool, bytes, str) cbor2's plain encoding
      is the deterministic one (shortest heads, definite lengths), so re-encoding
      the map in its wire order must give the payload byte for byte.

    :param claims: the map decoded from ``payload`` (already accepted by ``from_claims``).
    :param payload: the exact payload bytes that were signed.
    """
    keys = list(claims)
    if any(a >= b for a, b in itertools.pairwise(keys)):
        return False
    if None in claims.values():
        return False
    if type(claims[Claim.VERSION]) is not int or type(claims[Claim.KIND]) is not int:
        return False
    return _PLAIN_ENCODER.dumps(claims) == payload


class _ReusedEncoder(threading.local):
    """A cbor2 encoder and buffer kept per thread, for :func:`_is_deterministic`.

    ``cbor2.dumps`` builds a new encoder and buffer on every call, which is most of
    its cost for a 20-claim map (≈ 4.7 µs vs 1.9 µs reused); the output is the same.
    Per thread, so concurrent uploads never share the buffer.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.buffer = io.BytesIO()
        self.encoder = cbor2.CBOREncoder(self.buffer)

    def dumps(self, value: object) -> bytes:
        """``cbor2.dumps(value)`` (default options: no canonical sort, no value sharing)."""
        self.buffer.seek(0)
        self.buffer.truncate()
        try:
            self.encoder.encode(value)
        except BaseException:
            self._reset()  # the encoder may hold half-done state; never reuse it
            raise
        return self.buffer.getvalue()


_PLAIN_ENCODER = _ReusedEncoder()


def verify_chain(
    messages: Iterable[bytes],
    keys: KeyResolver,
    *,
    prev_hash: bytes | None = None,
    first_seq: int | None = None,
) -> list[SignedEntry]:
    """Verify a run of consecutive entries of one terminal: signatures, seq contiguity, links.

    :param messages: COSE_Sign1 entries in seq order.
    :param keys: the terminal's key(s) by kid.
    :param prev_hash: entry_hash of the entry before the first one; defaults to
        :data:`GENESIS_HASH` when the run starts at seq 1, otherwise the first
        link is not checked (a slice of a longer journal).
    :param first_seq: the seq the run must start at (``None``: any).
    :returns: the verified entries, in order.
    :raises BadSignature: (and the other :class:`~cardlib.records.errors.CoseError`) for the
        first entry that does not verify.
    :raises MalformedEntry: for an undecodable entry.
    :raises Gap: a seq is missing (``first..last``) or a seq repeats / goes backwards.
    :raises ChainBroken: a prev_entry_hash that is not the previous entry's hash, or
        a change of terminal id.
    """
    out: list[SignedEntry] = []
    expected_seq = first_seq
    link = prev_hash
    terminal: str | None = None
    for message in messages:
        signed = verify_entry(message, keys)
        entry = signed.entry
        if terminal is None:
            terminal = entry.terminal_id
        elif entry.terminal_id != terminal:
            raise ChainBroken(entry.seq, f"terminal id changes to {entry.terminal_id!r} at seq {entry.seq}")
        if expected_seq is not None and entry.seq != expected_seq:
            if entry.seq > expected_seq:
                raise Gap(expected_seq, entry.seq - 1)
            raise Gap(entry.seq, entry.seq, f"seq {entry.seq} repeats or goes backwards after {expected_seq - 1}")
        if link is None and entry.seq == 1:
            link = GENESIS_HASH
        if link is not None and entry.prev_entry_hash != link:
            raise ChainBroken(entry.seq)
        out.append(signed)
        link = signed.entry_hash
        expected_seq = entry.seq + 1
    return out


def check_links(entries: Sequence[SignedEntry]) -> None:
    """Check prev_entry_hash links between adjacent seqs in an already verified list.

    Non-adjacent seqs (gaps) are skipped: the caller decides whether gaps are errors.

    :raises ChainBroken: for the first entry whose link does not match its predecessor.
    """
    for before, after in itertools.pairwise(entries):
        if after.entry.seq == before.entry.seq + 1 and after.entry.prev_entry_hash != before.entry_hash:
            raise ChainBroken(after.entry.seq)
