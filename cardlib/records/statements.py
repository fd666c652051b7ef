"""Signed statements of the sync protocol: upload receipts, bundle freshness, journal heads (docs/api.md).

A counter believes a server answer only when the server signed it with its
*receipt key* (Ed25519), whose public key the counter pinned at enrolment
(docs/security.md "Server answers are signed"); the server believes a counter's
journal head only when the terminal key signed it. Shared by the terminal and the
server, so neither imports the other. Pure: no I/O, no HTTP.

Every statement is a COSE_Sign1 (RFC 9052 §4.2) over deterministic CBOR
(RFC 8949 §4.2.1) with a version under key 1 and its own external_aad, so one kind
can never be passed off as another:

- **upload receipt** (server → counter, AAD ``b"huma-betang/receipt/v1"``):
  ``{1: 1, 2: terminal_id, 3: SHA-256(exact request body), 4: time (POSIX s),
  5: [[entry_id (16 bytes), seq, result, reason or null], ...]}`` in upload order,
  and optionally ``6: [[entry_id (16 bytes), seq, outcome], ...]``: the server's
  settlements of torn card writes whose PENDING entry the request carried
  (outcome ``finished``: the write took effect; ``voided``: it did not;
  docs/reconciliation.md §Settling torn writes). Absent when there are none, so a
  receipt without settlements is the version-1 receipt it always was.
  The request body carries a fresh random ``batch_id``, so its hash is the
  counter's nonce: a receipt answers one request only.
- **bundle freshness** (server → counter, AAD ``b"huma-betang/freshness/v1"``):
  ``{1: 1, 2: nonce (the counter's, 16–32 bytes), 3: newest bundle version,
  4: its SHA-256, 5: time}``.
- **journal head** (counter → server, AAD ``b"huma-betang/head/v1"``):
  ``{1: 1, 2: terminal_id, 3: boot_id, 4: seq, 5: entry hash (32 bytes), 6: time}``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from cardlib.keys.signer import PublicKey, Signer, cose_key, sign1_with
from cardlib.records.cose import VerifiedSign1, verify1
from cardlib.records.errors import RecordError

__all__ = [
    "FRESHNESS_AAD",
    "FRESHNESS_HEADER",
    "HEAD_AAD",
    "NONCE_HEADER",
    "RECEIPT_AAD",
    "STATEMENT_VERSION",
    "Freshness",
    "JournalHead",
    "ReceiptLine",
    "Settlement",
    "SettlementOutcome",
    "StatementError",
    "UploadReceipt",
    "read_receipt_unverified",
    "sign_freshness",
    "sign_head",
    "sign_receipt",
    "verify_freshness",
    "verify_head",
    "verify_receipt",
]

RECEIPT_AAD = b"huma-betang/receipt/v1"
FRESHNESS_AAD = b"huma-betang/freshness/v1"
HEAD_AAD = b"huma-betang/head/v1"
STATEMENT_VERSION = 1
#: HTTP headers of the bundle freshness exchange: the counter's nonce (hex), the statement (base64url).
NONCE_HEADER = "Huma-Nonce"
FRESHNESS_HEADER = "Huma-Freshness"
#: Length bounds of a freshness nonce, bytes.
NONCE_BYTES = (16, 32)


class StatementError(RecordError):
    """A statement is not CBOR of the right shape or version (a bad signature raises :class:`CoseError`)."""


class _Receipt(enum.IntEnum):
    VERSION = 1
    TERMINAL_ID = 2
    REQUEST_SHA256 = 3
    TIME = 4
    RESULTS = 5
    SETTLEMENTS = 6


class _Freshness(enum.IntEnum):
    VERSION = 1
    NONCE = 2
    BUNDLE_VERSION = 3
    BUNDLE_SHA256 = 4
    TIME = 5


class _Head(enum.IntEnum):
    VERSION = 1
    TERMINAL_ID = 2
    BOOT_ID = 3
    SEQ = 4
    ENTRY_HASH = 5
    TIME = 6


@dataclass(frozen=True)
class ReceiptLine:
    """What the server did with one uploaded entry: ``result`` is accepted/duplicate/conflict/rejected."""

    entry_id: bytes
    seq: int | None
    result: str
    reason: str | None = None


class SettlementOutcome(str, enum.Enum):
    """What server reconciliation decided about a torn card write (the values of the journal's closing kinds)."""

    FINISHED = "finished"  #: the write took effect: a later state of the card chains to it
    VOIDED = "voided"  #: it did not: the card's state at its sequence number is another one


@dataclass(frozen=True)
class Settlement:
    """The server's decision on one torn write of the receiving terminal.

    :ivar entry_id: the write's PENDING entry id (16 bytes).
    :ivar seq: that entry's terminal seq.
    :ivar outcome: took effect (FINISHED) or not (VOIDED).
    """

    entry_id: bytes
    seq: int
    outcome: SettlementOutcome


@dataclass(frozen=True)
class UploadReceipt:
    """A verified upload receipt. ``message`` is the exact signed bytes (evidence).

    :ivar settlements: claim 6, empty when the receipt has none.
    """

    terminal_id: str
    request_sha256: bytes
    time: int
    lines: tuple[ReceiptLine, ...]
    message: bytes
    settlements: tuple[Settlement, ...] = ()


@dataclass(frozen=True)
class Freshness:
    """A verified bundle freshness statement."""

    nonce: bytes
    bundle_version: int
    bundle_sha256: bytes
    time: int
    message: bytes


@dataclass(frozen=True)
class JournalHead:
    """A verified journal head: the terminal's last entry when it reported (``message``: the signed bytes)."""

    terminal_id: str
    boot_id: int
    seq: int
    entry_hash: bytes
    time: int
    message: bytes
    kid: bytes


def _dump(claims: dict[int, Any]) -> bytes:
    return cbor2.dumps(claims, canonical=True)


def _claims(verified: VerifiedSign1, what: str) -> dict[Any, Any]:
    try:
        claims = cbor2.loads(verified.payload)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise StatementError(f"{what}: payload is not CBOR") from exc
    if not isinstance(claims, dict) or claims.get(1) != STATEMENT_VERSION:
        raise StatementError(f"{what}: wrong shape or version")
    return claims


def _typed(claims: dict[Any, Any], key: int, kind: type | tuple[type, ...], what: str) -> Any:
    value = claims.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StatementError(f"{what}: claim {key} missing or of the wrong type")
    return value


def _pinned(key: PublicKey) -> dict[bytes, Any]:
    k = cose_key(key)
    return {k.kid: k}


# ----------------------------------------------------------------------------- upload receipt


def sign_receipt(signer: Signer, terminal_id: str, request_body: bytes, lines: Sequence[ReceiptLine],
                 now: float, settlements: Sequence[Settlement] = ()) -> bytes:
    """An upload receipt for one request (see module docstring).

    :param signer: the server receipt key.
    :param request_body: the exact request body bytes received.
    :param lines: one per uploaded entry, in upload order.
    :param now: POSIX seconds.
    :param settlements: the server's settlements of torn writes this request named (claim 6,
        omitted when empty).
    :returns: the COSE_Sign1 bytes.
    """
    import hashlib

    claims: dict[int, Any] = {
        _Receipt.VERSION: STATEMENT_VERSION,
        _Receipt.TERMINAL_ID: terminal_id,
        _Receipt.REQUEST_SHA256: hashlib.sha256(request_body).digest(),
        _Receipt.TIME: int(now),
        _Receipt.RESULTS: [[ln.entry_id, ln.seq, ln.result, ln.reason] for ln in lines],
    }
    if settlements:
        claims[_Receipt.SETTLEMENTS] = [[s.entry_id, s.seq, s.outcome.value] for s in settlements]
    return sign1_with(signer, _dump(claims), RECEIPT_AAD)


def verify_receipt(message: bytes, key: PublicKey) -> UploadReceipt:
    """Verify an upload receipt under the pinned server receipt key.

    The caller checks that it names its terminal and its request hash, and that each
    settlement names one of its own PENDING entries.

    :raises cardlib.records.errors.CoseError: malformed, another key (unknown kid), bad signature.
    :raises StatementError: wrong shape or version; a settlement line that is not
        ``[16-byte entry id, seq >= 1, "finished" | "voided"]``.
    """
    return _receipt(_claims(verify1(message, _pinned(key), external_aad=RECEIPT_AAD), "upload receipt"), message)


def read_receipt_unverified(message: bytes) -> UploadReceipt:
    """An upload receipt's claims **without** checking its signature: for an auditor who does not
    have the pinned server receipt key at hand, a shape check only (anyone can write such bytes).

    :raises StatementError: not a COSE_Sign1 (RFC 9052 §4.2, tag 18) with a receipt payload of the right shape.
    """
    what = "upload receipt"
    try:
        envelope = cbor2.loads(message)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise StatementError(f"{what}: not CBOR") from exc
    if (not isinstance(envelope, cbor2.CBORTag) or envelope.tag != 18 or not isinstance(envelope.value, list)
            or len(envelope.value) != 4 or not isinstance(envelope.value[2], bytes)):
        raise StatementError(f"{what}: not a COSE_Sign1")
    try:
        claims = cbor2.loads(envelope.value[2])
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise StatementError(f"{what}: payload is not CBOR") from exc
    if not isinstance(claims, dict) or claims.get(1) != STATEMENT_VERSION:
        raise StatementError(f"{what}: wrong shape or version")
    return _receipt(claims, message)


def _receipt(claims: dict[Any, Any], message: bytes) -> UploadReceipt:
    what = "upload receipt"
    lines = []
    for item in _typed(claims, _Receipt.RESULTS, list, what):
        if (not isinstance(item, list) or len(item) != 4 or not isinstance(item[0], bytes)
                or not isinstance(item[1], int | None) or not isinstance(item[2], str)
                or not isinstance(item[3], str | None)):
            raise StatementError(f"{what}: a result line of the wrong shape")
        lines.append(ReceiptLine(item[0], item[1], item[2], item[3]))
    return UploadReceipt(
        terminal_id=_typed(claims, _Receipt.TERMINAL_ID, str, what),
        request_sha256=_typed(claims, _Receipt.REQUEST_SHA256, bytes, what),
        time=_typed(claims, _Receipt.TIME, int, what),
        lines=tuple(lines),
        message=message,
        settlements=_settlements(claims, what),
    )


def _settlements(claims: dict[Any, Any], what: str) -> tuple[Settlement, ...]:
    """Claim 6 of a receipt (absent: none). :raises StatementError: a line of the wrong shape."""
    if _Receipt.SETTLEMENTS not in claims:
        return ()
    out = []
    outcomes = {o.value: o for o in SettlementOutcome}
    for item in _typed(claims, _Receipt.SETTLEMENTS, list, what):
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], bytes) or len(item[0]) != 16
                or not isinstance(item[1], int) or isinstance(item[1], bool) or item[1] < 1
                or not isinstance(item[2], str) or item[2] not in outcomes):
            raise StatementError(f"{what}: a settlement line of the wrong shape")
        out.append(Settlement(item[0], item[1], outcomes[item[2]]))
    return tuple(out)


# ----------------------------------------------------------------------------- bundle freshness


def sign_freshness(signer: Signer, nonce: bytes, bundle_version: int, bundle_sha256: bytes, now: float) -> bytes:
    """A statement that ``bundle_version`` (with that SHA-256) is the newest, answering ``nonce``.

    :raises ValueError: a nonce outside 16–32 bytes.
    """
    if not NONCE_BYTES[0] <= len(nonce) <= NONCE_BYTES[1]:
        raise ValueError(f"nonce must be {NONCE_BYTES[0]}..{NONCE_BYTES[1]} bytes")
    return sign1_with(signer, _dump({
        _Freshness.VERSION: STATEMENT_VERSION,
        _Freshness.NONCE: nonce,
        _Freshness.BUNDLE_VERSION: bundle_version,
        _Freshness.BUNDLE_SHA256: bundle_sha256,
        _Freshness.TIME: int(now),
    }), FRESHNESS_AAD)


def verify_freshness(message: bytes, key: PublicKey) -> Freshness:
    """Verify a freshness statement under the pinned server receipt key (the caller checks the nonce).

    :raises cardlib.records.errors.CoseError: malformed, another key, bad signature.
    :raises StatementError: wrong shape or version.
    """
    what = "bundle freshness"
    claims = _claims(verify1(message, _pinned(key), external_aad=FRESHNESS_AAD), what)
    return Freshness(
        nonce=_typed(claims, _Freshness.NONCE, bytes, what),
        bundle_version=_typed(claims, _Freshness.BUNDLE_VERSION, int, what),
        bundle_sha256=_typed(claims, _Freshness.BUNDLE_SHA256, bytes, what),
        time=_typed(claims, _Freshness.TIME, int, what),
        message=message,
    )


# ----------------------------------------------------------------------------- journal head


def sign_head(signer: Signer, terminal_id: str, boot_id: int, seq: int, entry_hash: bytes, now: float) -> bytes:
    """The terminal's signed journal head: its last entry's seq and hash (SHA-256 of the entry's bytes)."""
    return sign1_with(signer, _dump({
        _Head.VERSION: STATEMENT_VERSION,
        _Head.TERMINAL_ID: terminal_id,
        _Head.BOOT_ID: boot_id,
        _Head.SEQ: seq,
        _Head.ENTRY_HASH: entry_hash,
        _Head.TIME: int(now),
    }), HEAD_AAD)


def verify_head(message: bytes, keys: Any) -> JournalHead:
    """Verify a journal head.

    :param keys: a :data:`cardlib.records.cose.KeyResolver` of terminal keys (the caller
        checks that the key's terminal is the one the head names).
    :raises cardlib.records.errors.CoseError: malformed, unknown kid, bad signature.
    :raises StatementError: wrong shape or version, a hash that is not 32 bytes, a negative seq.
    """
    what = "journal head"
    verified = verify1(message, keys, external_aad=HEAD_AAD)
    claims = _claims(verified, what)
    head = JournalHead(
        terminal_id=_typed(claims, _Head.TERMINAL_ID, str, what),
        boot_id=_typed(claims, _Head.BOOT_ID, int, what),
        seq=_typed(claims, _Head.SEQ, int, what),
        entry_hash=_typed(claims, _Head.ENTRY_HASH, bytes, what),
        time=_typed(claims, _Head.TIME, int, what),
        message=message,
        kid=verified.kid,
    )
    if len(head.entry_hash) != 32 or head.seq < 0 or not 0 <= head.boot_id < 2**63:
        raise StatementError(f"{what}: entry hash must be 32 bytes, seq and boot id non-negative")
    return head
