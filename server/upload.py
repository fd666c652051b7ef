"""Journal batch upload: authenticate the envelope, verify entries, store exactly once (no Flask).

Envelope (what a terminal POSTs to ``/api/v1/journal/batches``)::

    body (application/json) = {"terminal_id": str, "batch_id": str (informational),
                               "entries": [base64(COSE_Sign1 journal entry), ...]}
    header Huma-Signature   = base64url(COSE_Sign1) by the terminal key, external_aad
                              b"huma-betang/upload/v1", payload = deterministic CBOR
                              {1: 1 (version), 2: terminal_id, 3: SHA-256(exact body bytes)}

Every entry is verified on its own (signature with the terminal's enrolled key,
terminal id, chain links to its stored or uploaded neighbours) and gets its own
result. Storage is insert-or-ignore on ``entry_id`` and ``(terminal_id, seq)``
(``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL, with ``RETURNING``
or an exact row count naming the rows that were new), so retries, replays and
concurrent identical uploads store one row (SV-1, SV-2). The small batches of concurrent uploads are
stored in one transaction (:class:`GroupCommit`), each with its own results, none acknowledged before
that transaction commits.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import enum
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Insert, LargeBinary, Table, and_, any_, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cardlib.keys.signer import algorithm_of, public_key_from_spki
from cardlib.records.cose import CoseKey
from cardlib.records.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    CoseError,
    RecordError,
    RevokedKid,
    UnknownKid,
)
from cardlib.records.journal import SignedEntry
from cardlib.records.journal import verify_entries as verify_journal_entries
from cardlib.records.upload import (  # noqa: F401 - re-exported; the envelope format lives in cardlib
    SIGNATURE_HEADER,
    UPLOAD_AAD,
    UPLOAD_VERSION,
    EnvelopeClaim,
    EnvelopeError,
    sign_envelope,
    verify_envelope,
)
from server.db import is_unreachable
from server.errors import (
    BadBatchSignature,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    TerminalRevoked,
    UnknownTerminal,
)
from server.models import (
    JournalConflict,
    JournalEntryRow,
    RejectedEntry,
    Terminal,
    TerminalStatus,
)
from server.types import utcnow

log = logging.getLogger(__name__)

class Outcome(str, enum.Enum):
    """Per-entry upload result."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"


class RejectReason(str, enum.Enum):
    """Why an entry was rejected (machine-readable, stable)."""

    UNDECODABLE = "undecodable"  #: not base64
    MALFORMED = "malformed"  #: not a COSE_Sign1 / not a valid entry payload
    UNKNOWN_KID = "unknown_kid"  #: signed with a key that is not this terminal's
    ALGORITHM = "algorithm_not_allowed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TERMINAL = "wrong_terminal"  #: entry names another terminal than the envelope
    CHAIN_BROKEN = "chain_broken"  #: prev_entry_hash does not match a neighbour


#: HTTP-like status carried in each per-entry result.
OUTCOME_STATUS = {
    Outcome.ACCEPTED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.CONFLICT: 409,
    Outcome.REJECTED: 422,
}


@dataclass
class EntryResult:
    """The result of one uploaded entry, in upload order."""

    index: int
    outcome: Outcome
    entry_id: bytes | None = None
    seq: int | None = None
    reason: RejectReason | None = None
    detail: str | None = None
    #: the entry bytes of a rejection, kept as evidence in ``rejected_entries``
    raw: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``{"index", "result", "status", "entry_id" (hex), "seq", "reason", "detail"}``."""
        out: dict[str, Any] = {
            "index": self.index,
            "result": self.outcome.value,
            "status": OUTCOME_STATUS[self.outcome],
            "entry_id": self.entry_id.hex() if self.entry_id is not None else None,
            "seq": self.seq,
        }
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.detail is not None:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Batch:
    """A parsed upload body."""

    terminal_id: str
    batch_id: str | None
    entries: list[str]


# ----------------------------------------------------------------------------- envelope


def parse_body(body: object, max_entries: int) -> Batch:
    """Check the JSON shape of an upload body.

    :param body: the decoded JSON value.
    :param max_entries: the most entries one batch may carry.
    :raises BadRequest: wrong shape or types.
    :raises PayloadTooLarge: more than ``max_entries`` entries.
    """
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    terminal_id = body.get("terminal_id")
    batch_id = body.get("batch_id")
    entries = body.get("entries")
    if not isinstance(terminal_id, str) or not terminal_id:
        raise BadRequest("terminal_id must be a non-empty string", field="terminal_id")
    if batch_id is not None and (not isinstance(batch_id, str) or len(batch_id) > 64):
        raise BadRequest("batch_id must be a string of at most 64 characters", field="batch_id")
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise BadRequest("entries must be a list of base64 strings", field="entries")
    if len(entries) > max_entries:
        raise PayloadTooLarge(
            f"batch has {len(entries)} entries, limit {max_entries}", limit=max_entries, unit="entries"
        )
    return Batch(terminal_id=terminal_id, batch_id=batch_id, entries=entries)


@dataclass(frozen=True)
class UploadTerminal:
    """The terminal that signed an upload, as :func:`authenticate` read it (no ORM object).

    ``public_key`` is SubjectPublicKeyInfo DER; ``kid`` the key id (4 bytes).
    """

    terminal_id: str
    kid: bytes
    public_key: bytes
    status: TerminalStatus


#: What an upload needs of a terminal (``terminal_id``, ``kid``, ``public_key``): its row or what
#: :func:`authenticate` read.
TerminalKey = Terminal | UploadTerminal


def cose_key_of(terminal: TerminalKey) -> CoseKey:
    """The terminal's enrolled key as a :class:`CoseKey` (EdDSA for Ed25519, else ES256)."""
    return _cose_key(bytes(terminal.kid), bytes(terminal.public_key))


@functools.lru_cache(maxsize=4096)
def _cose_key(kid: bytes, spki: bytes) -> CoseKey:
    """:func:`cose_key_of` by value, cached: parsing the SPKI twice per upload was 2 % of a small one's time."""
    public_key = public_key_from_spki(spki)
    return CoseKey(kid=kid, alg=algorithm_of(public_key), public_key=public_key)


#: The envelope's terminal look-up as the driver takes it (qmark / PostgreSQL $n): the ORM load of the row
#: (identity map, instance state, a transaction on SQLite) was about a tenth of a small upload's CPU (issue 21).
_TERMINAL_SQL_SQLITE = "SELECT terminal_id, kid, public_key, status FROM terminals WHERE kid = ?"
_TERMINAL_SQL_PG = "SELECT terminal_id, kid, public_key, status FROM terminals WHERE kid = $1"


def _terminal_by_kid(session: Session, kid: bytes) -> UploadTerminal | None:
    """The terminal row whose key id is ``kid``, read now on the session's connection (never cached).

    Outside a transaction (the upload's first statement) it is read without starting one in
    SQLAlchemy: on SQLite (autocommit driver) it is a one-statement read, so the write
    transaction is the request's only one; on PostgreSQL the driver begins the transaction
    that the upload's write continues (:meth:`server.extensions.Database.write_session`).
    Inside one (grievances), on that transaction.
    """
    bind = session.bind
    if isinstance(bind, Connection) and not session.in_transaction():
        connection: Connection = bind
    else:
        connection = session.connection()
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out pooled connection always has its DB-API connection
    if connection.dialect.name == "postgresql":
        import psycopg  # the driver of every postgresql+psycopg URL (server/db.py)

        # Outside a transaction, the look-up is a statement of its own (autocommit): no BEGIN round trip
        # before it, and the upload's write is a transaction of its own (store_entries).
        with _autocommit(driver, not session.in_transaction()), psycopg.RawCursor(driver) as cur:
            row = cur.execute(_TERMINAL_SQL_PG, (kid,)).fetchone()
    else:
        cur = driver.cursor()
        try:
            row = cur.execute(_TERMINAL_SQL_SQLITE, (kid,)).fetchone()
        finally:
            cur.close()
    if row is None:
        return None
    return UploadTerminal(row[0], bytes(row[1]), bytes(row[2]), TerminalStatus(row[3]))


@contextlib.contextmanager
def _autocommit(driver: Any, wanted: bool) -> Iterator[None]:
    """Run the block's statements on the psycopg connection ``driver`` in autocommit when ``wanted`` and
    the connection is idle (no transaction open, not even one SQLAlchemy does not know of); each
    statement is then its own transaction. Autocommit is turned off again afterwards."""
    import psycopg

    if not wanted or driver.autocommit or driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        yield
        return
    driver.autocommit = True
    try:
        yield
    finally:
        if not driver.closed:
            driver.autocommit = False


def authenticate(session: Session, header: str | None, body: bytes) -> UploadTerminal:
    """Find the terminal that signed this upload and check the envelope signature.

    The terminal row is read on every call (a revoked terminal is refused at its next upload).

    :param header: the ``Huma-Signature`` header value (or ``None``).
    :param body: the exact body bytes received.
    :raises BadBatchSignature: missing/undecodable header, bad signature, or a digest
        that is not the body's.
    :raises UnknownTerminal: no enrolled key with that kid.
    :raises TerminalRevoked: the terminal's key was revoked.
    :raises Forbidden: the terminal is not (yet) approved.
    """
    if not header:
        raise BadBatchSignature(f"missing {SIGNATURE_HEADER} header")

    found: dict[str, UploadTerminal] = {}

    def resolve(kid: bytes) -> CoseKey:
        terminal = _terminal_by_kid(session, kid)
        if terminal is None:
            raise UnknownKid(kid)
        found["t"] = terminal
        return cose_key_of(terminal)

    try:
        envelope = verify_envelope(header, body, resolve)
    except UnknownKid as exc:
        raise UnknownTerminal(f"no enrolled terminal key with kid {exc.kid.hex()}") from exc
    except EnvelopeError as exc:
        raise BadBatchSignature(str(exc)) from exc
    except CoseError as exc:
        raise BadBatchSignature(f"envelope signature: {exc}") from exc
    terminal = found["t"]
    if envelope.terminal_id != terminal.terminal_id:
        raise BadBatchSignature("envelope names another terminal than its key")
    if terminal.status is TerminalStatus.REVOKED:
        raise TerminalRevoked(f"terminal {terminal.terminal_id} is revoked")
    if terminal.status is not TerminalStatus.APPROVED:
        raise Forbidden(f"terminal {terminal.terminal_id} is {terminal.status.value}, not approved",
                        reason="terminal_not_approved")
    return terminal


# ----------------------------------------------------------------------------- entries


def verify_batch(batch: Batch, terminal: TerminalKey) -> tuple[list[EntryResult], list[tuple[int, SignedEntry]]]:
    """Verify every entry's signature and claims (CPU only; runs outside any transaction).

    :returns: the rejections so far, and the verified entries with their upload index.
    """
    if batch.terminal_id != terminal.terminal_id:
        raise BadBatchSignature("body terminal_id differs from the signing terminal")
    keys: Mapping[bytes, CoseKey] = {terminal.kid: cose_key_of(terminal)}
    rejected: list[EntryResult] = []
    decoded: list[tuple[int, bytes]] = []
    for index, text in enumerate(batch.entries):
        try:
            decoded.append((index, base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            rejected.append(EntryResult(index, Outcome.REJECTED, reason=RejectReason.UNDECODABLE))
    verified: list[tuple[int, SignedEntry]] = []
    outcomes = verify_journal_entries([message for _, message in decoded], keys)
    for (index, message), outcome in zip(decoded, outcomes, strict=False):
        if isinstance(outcome, RecordError):
            rejected.append(EntryResult(index, Outcome.REJECTED, reason=_reject_reason(outcome),
                                        detail=str(outcome), raw=message))
        elif outcome.entry.terminal_id != terminal.terminal_id:
            rejected.append(
                EntryResult(index, Outcome.REJECTED, outcome.entry.entry_id, outcome.entry.seq,
                            RejectReason.WRONG_TERMINAL, raw=message)
            )
        else:
            verified.append((index, outcome))
    rejected.sort(key=lambda r: r.index)
    return rejected, verified


def _reject_reason(error: RecordError) -> RejectReason:
    """The upload's reason for an entry that failed :func:`cardlib.records.journal.verify_entry`."""
    if isinstance(error, (UnknownKid, RevokedKid)):
        return RejectReason.UNKNOWN_KID
    if isinstance(error, AlgorithmNotAllowed):
        return RejectReason.ALGORITHM
    if isinstance(error, BadSignature):
        return RejectReason.BAD_SIGNATURE
    return RejectReason.MALFORMED


def insert_or_ignore(session: Session, model: type[Any]) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``model`` on SQLite and PostgreSQL.

    Without a conflict target, so every unique constraint of the table is covered.

    :raises NotImplementedError: on another database.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    raise NotImplementedError(f"insert-or-ignore not implemented for {dialect}")


@dataclass(frozen=True)
class _Stored:
    entry_id: bytes
    terminal_id: str
    seq: int
    entry_hash: bytes
    prev_entry_hash: bytes


#: :func:`_stored` for a contiguous seq range of one terminal, as the driver takes it (qmark / PostgreSQL $n).
_NEAR_SQL_SQLITE = ("SELECT entry_id, terminal_id, seq, entry_hash, prev_entry_hash FROM journal_entries "
                    "WHERE terminal_id = ? AND seq >= ? AND seq <= ?")
_NEAR_SQL_PG = ("SELECT entry_id, terminal_id, seq, entry_hash, prev_entry_hash FROM journal_entries "
                "WHERE terminal_id = $1 AND seq >= $2 AND seq <= $3")


def _stored(session: Session, terminal_id: str, entries: Sequence[SignedEntry], *,
            by_entry_id: bool = True) -> list[_Stored]:
    """Stored rows of this terminal at/next to the entries' seqs, and (``by_entry_id``)
    stored rows of any terminal that share an entry id with them."""
    if not entries:
        return []
    seqs = sorted({s.entry.seq for s in entries})
    near = sorted({q for s in seqs for q in (s - 1, s, s + 1)})
    cols = (
        JournalEntryRow.entry_id,
        JournalEntryRow.terminal_id,
        JournalEntryRow.seq,
        JournalEntryRow.entry_hash,
        JournalEntryRow.prev_entry_hash,
    )
    contiguous = near[-1] - near[0] + 1 == len(near)
    if not by_entry_id and contiguous:
        # The common case (every upload's first read): one constant statement text, run as the
        # driver takes it; building and caching the expression cost more than the range scan.
        # On the DB-API connection: SQLAlchemy's execution context and result wrapping cost
        # more than this indexed range scan.
        connection = session.connection()
        driver = connection.connection.driver_connection
        assert driver is not None  # a checked-out pooled connection always has its DB-API connection
        params = (terminal_id, near[0], near[-1])
        if connection.dialect.name == "postgresql":
            import psycopg  # the driver of every postgresql+psycopg URL (server/db.py)

            with psycopg.RawCursor(driver) as cur:
                found = cur.execute(_NEAR_SQL_PG, params).fetchall()
        else:
            cur = driver.cursor()
            try:
                found = cur.execute(_NEAR_SQL_SQLITE, params).fetchall()
            finally:
                cur.close()
        return [_Stored(bytes(r[0]), r[1], r[2], bytes(r[3]), bytes(r[4])) for r in found]
    # A contiguous batch (the normal case) is one range scan on the unique index.
    if contiguous:
        seq_clause = and_(JournalEntryRow.seq >= near[0], JournalEntryRow.seq <= near[-1])
    else:
        seq_clause = JournalEntryRow.seq.in_(near)
    entry_ids = [s.entry.entry_id for s in entries]
    if not by_entry_id:
        id_clause = None
    elif session.get_bind().dialect.name == "postgresql":
        # One array parameter instead of one placeholder per entry id: a short, constant
        # statement text the driver does not re-parse per batch.
        id_clause = JournalEntryRow.entry_id == any_(
            bindparam("entry_ids", entry_ids, type_=postgresql.ARRAY(LargeBinary)))
    else:
        id_clause = JournalEntryRow.entry_id.in_(entry_ids)
    near_clause = and_(JournalEntryRow.terminal_id == terminal_id, seq_clause)
    stmt = select(*cols).where(near_clause if id_clause is None else or_(near_clause, id_clause))
    return [_Stored(*row) for row in session.execute(stmt)]


def store_entries(
    session: Session,
    terminal: TerminalKey,
    batch_id: str | None,
    verified: Sequence[tuple[int, SignedEntry]],
    rejected: list[EntryResult],
    *,
    at_once: bool = False,
    read: tuple[list[_Stored], set[bytes] | None] | None = None,
    stored_already: frozenset[bytes] = frozenset(),
) -> list[EntryResult]:
    """Classify and store verified entries in the session's (write) transaction.

    :param at_once: PostgreSQL, the session not yet in a transaction, no entry rejected, and the
        entries a plain extension of the chain (:func:`_extends_chain`): their read-and-insert
        statement (:func:`_read_and_insert_pg`) runs as a transaction of its own (autocommit),
        without the BEGIN and COMMIT round trips; a small upload is then two round trips, the
        terminal look-up and this one (issue 21). The caller must not need the insert to be
        atomic with anything else it writes. When that statement stores every entry, they are
        all accepted and nothing else runs; otherwise (nothing inserted: no plain extension; or
        some rows lost to a concurrent upload) the entries are classified in a transaction as
        below, those it stored counted accepted.
    :param read: what :func:`_read_and_insert_pg_many` already did for this batch in this transaction
        (the stored rows it read, the entry hashes it inserted or ``None``): used instead of a read
        (and insert) of its own.
    :param stored_already: entry hashes of this batch already stored and committed for this request (by
        :func:`store_extension_direct`, rows of which a concurrent upload took the others): counted accepted.
    :returns: one result per uploaded entry, in upload order (rejections included).
    """
    now = utcnow()
    results: dict[int, EntryResult] = {r.index: r for r in rejected}
    entries = [s for _, s in verified]
    stored_now: set[bytes] = set(stored_already)  # entry hashes already stored for this request
    if (at_once and not stored_now and not rejected and not session.in_transaction()
            and _extends_chain(session, verified)):
        driver = session.connection().connection.driver_connection
        assert driver is not None  # a checked-out pooled connection always has its DB-API connection
        with _autocommit(driver, True):
            if not driver.autocommit:
                raise RuntimeError("upload store: the at-once insert needs an idle connection")
            _stored_rows, inserted = _read_and_insert_pg(session, terminal.terminal_id, entries, batch_id, now)
        if inserted is not None and len(inserted) == len(entries):
            return [EntryResult(index, Outcome.ACCEPTED, signed.entry.entry_id, signed.entry.seq)
                    for index, signed in verified]
        stored_now = inserted or set()
    # This terminal's stored neighbours only: an entry id stored under another seq or
    # terminal is rare (a replay or a forged copy) and is found by the insert itself
    # (ignored, then re-read below) or, for a chain-broken entry, by one lookup. Probing
    # the entry-id index for every new entry cost ~10 % of an upload.
    # PostgreSQL, a small batch that extends the chain: the neighbour read and the insert are one
    # statement (one round trip); when the stored rows show it is no plain extension, nothing was
    # inserted and the rows it read are classified as below.
    pre_inserted: set[bytes] | None = None
    if read is not None:
        stored, pre_inserted = read
    elif not stored_now and _extends_chain(session, verified):
        stored, pre_inserted = _read_and_insert_pg(session, terminal.terminal_id, entries, batch_id, now)
    else:
        stored = _stored(session, terminal.terminal_id, entries, by_entry_id=False)
    by_id = {s.entry_id: s for s in stored}
    by_seq = {s.seq: s for s in stored}

    # The chain as known: stored rows win, batch entries fill the holes.
    link_hash: dict[int, bytes] = {s: r.entry_hash for s, r in by_seq.items()}
    link_prev: dict[int, bytes] = {s: r.prev_entry_hash for s, r in by_seq.items()}
    for signed in entries:
        link_hash.setdefault(signed.entry.seq, signed.entry_hash)
        link_prev.setdefault(signed.entry.seq, signed.entry.prev_entry_hash)

    conflicts: list[dict[str, Any]] = []
    candidates: dict[bytes, tuple[int, SignedEntry]] = {}  # entry_hash -> first upload index
    seen_hash: set[bytes] = set()
    broken: list[tuple[int, SignedEntry, str]] = []
    for index, signed in verified:
        e = signed.entry
        h = signed.entry_hash
        existing = by_id.get(e.entry_id) or by_seq.get(e.seq)
        if existing is not None or h in seen_hash:
            if existing is not None and existing.entry_hash == h and h in stored_now:
                results[index] = EntryResult(index, Outcome.ACCEPTED, e.entry_id, e.seq)
            elif existing is None or existing.entry_hash == h:
                results[index] = EntryResult(index, Outcome.DUPLICATE, e.entry_id, e.seq)
            else:
                results[index] = _conflict(index, signed, existing.entry_hash, conflicts, now)
            continue
        seen_hash.add(h)
        pred = link_hash.get(e.seq - 1)
        succ_prev = link_prev.get(e.seq + 1)
        if (pred is not None and e.prev_entry_hash != pred) or (succ_prev is not None and succ_prev != h
                                                               and e.seq + 1 in by_seq):
            where = "predecessor" if pred is not None and e.prev_entry_hash != pred else "stored successor"
            broken.append((index, signed, where))
            continue
        candidates[h] = (index, signed)

    if broken:
        # A reused entry id is a conflict (evidence kept) before it is a broken link.
        reused = {r.entry_id: r for r in _stored(session, terminal.terminal_id, [s for _, s, _ in broken])}
        for index, signed, where in broken:
            e = signed.entry
            if (existing := reused.get(e.entry_id)) is not None and existing.entry_hash != signed.entry_hash:
                results[index] = _conflict(index, signed, existing.entry_hash, conflicts, now)
            else:
                results[index] = EntryResult(
                    index, Outcome.REJECTED, e.entry_id, e.seq, RejectReason.CHAIN_BROKEN,
                    f"link to {where} of seq {e.seq} does not match", raw=signed.message,
                )

    if pre_inserted is not None and len(candidates) != len(entries):
        # _read_and_insert_pg inserted only when every entry is a candidate; the classification disagrees.
        raise RuntimeError("upload store: the one-statement insert and the classification disagree")
    if candidates:
        if pre_inserted is not None:
            inserted = pre_inserted
        else:
            ordered = [s for _, s in sorted(candidates.values(), key=lambda c: c[1].entry.seq)]
            inserted = _insert_entries(session, _entry_columns(ordered, batch_id, now))
        lost = [c for h, c in candidates.items() if h not in inserted]
        for index, signed in candidates.values():
            if signed.entry_hash in inserted:
                results[index] = EntryResult(index, Outcome.ACCEPTED, signed.entry.entry_id, signed.entry.seq)
        if lost:
            # A concurrent upload stored these between our read and our insert: re-read.
            again = _stored(session, terminal.terminal_id, [s for _, s in lost])
            again_id = {s.entry_id: s for s in again}
            again_seq = {s.seq: s for s in again if s.terminal_id == terminal.terminal_id}
            for index, signed in lost:
                e = signed.entry
                existing = again_id.get(e.entry_id) or again_seq.get(e.seq)
                if existing is None or existing.entry_hash == signed.entry_hash:
                    results[index] = EntryResult(index, Outcome.DUPLICATE, e.entry_id, e.seq)
                else:
                    results[index] = _conflict(index, signed, existing.entry_hash, conflicts, now)

    if conflicts:
        session.execute(insert_or_ignore(session, JournalConflict), conflicts)
        log.warning("terminal %s: %d conflicting entries kept and flagged", terminal.terminal_id, len(conflicts))
    evidence = [
        {
            "terminal_id": terminal.terminal_id,
            "raw_sha256": hashlib.sha256(raw).digest(),
            "raw": raw,
            "reason": r.reason.value if r.reason else "",
            "received_at": now,
        }
        for r in results.values()
        if r.outcome is Outcome.REJECTED and (raw := r.raw) is not None
    ]
    if evidence:
        session.execute(insert_or_ignore(session, RejectedEntry), evidence)
    return [results[i] for i in sorted(results)]


def store_extension_direct(connection: Connection, terminal_id: str, verified: Sequence[tuple[int, SignedEntry]],
                           batch_id: str | None) -> tuple[list[EntryResult] | None, frozenset[bytes]]:
    """Store a batch that plainly extends its terminal's stored chain on ``connection``'s DB-API
    connection, without an ORM session (issue 21: a session's begin/commit machinery cost a small batch
    more than its statements: bench/README.md "Small batches", the floor and raw-floor phases).

    A plain extension, as :func:`_read_and_insert_pg` checks it: 1..:data:`PG_COPY_MIN_ROWS` entries
    with consecutive seqs, each linked to the one before (:func:`_linked_run`); no stored row of the
    terminal at their seqs or the next one; a stored predecessor, if any, whose hash is the first
    entry's ``prev_entry_hash`` and whose entry id is none of theirs; no entry id stored under another
    terminal or seq (the insert skips it). Then :func:`store_entries` would accept every entry.

    - PostgreSQL: the read-and-insert statement (:func:`_pg_read_insert_sql`) in autocommit, a
      transaction of its own: one round trip;
    - SQLite: ``BEGIN IMMEDIATE``, the neighbour read, the multi-row insert (:func:`_sqlite_values_sql`),
      then ``COMMIT`` only when every row was inserted, else ``ROLLBACK``.

    For a caller that needs nothing else stored with the rows (no benefit cycle to insert, no rejected
    entry to keep as evidence). The receipt loses no settlement: a settlement names a PENDING entry that
    reconciliation read from the journal (:mod:`server.reconcile.settlements`), never one inserted now.

    :param connection: a checked-out connection with no transaction open (the upload's, after its
        terminal look-up: :func:`authenticate`).
    :param verified: (upload index, verified entry) pairs, in upload order.
    :returns: ``(results, inserted)``: ``results`` one ACCEPTED per entry in upload order when every
        entry was stored and committed, else ``None``: then the caller stores the batch as usual, with
        :func:`store_entries` (``stored_already=inserted``): the entry hashes this call stored and
        committed (PostgreSQL, when a concurrent upload stored some of the rows first; always empty on
        SQLite, which rolls back).
    :raises: the driver's own errors (sqlite3 / psycopg, not wrapped: server.db.is_busy and
        server.db.is_unreachable read them); a connection found unreachable is invalidated (the pool
        drops it).
    """
    entries = [s for _, s in verified]
    dialect = connection.dialect
    if not _linked_run(verified) or dialect.name not in ("sqlite", "postgresql") or connection.in_transaction():
        return None, frozenset()
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out pooled connection always has its DB-API connection
    now = utcnow()
    try:
        if dialect.name == "postgresql":
            with _autocommit(driver, True):
                if not driver.autocommit:  # the driver is inside a transaction: never insert in it
                    return None, frozenset()
                _read, inserted = _read_and_insert_pg_on(driver, dialect, terminal_id, entries, batch_id, now)
            if inserted is not None and len(inserted) == len(entries):
                return [EntryResult(i, Outcome.ACCEPTED, e.entry.entry_id, e.entry.seq) for i, e in verified], \
                    frozenset(inserted)
            return None, frozenset(inserted or ())
        return _store_extension_sqlite(driver, dialect, terminal_id, verified, batch_id, now), frozenset()
    except Exception as exc:
        if is_unreachable(exc):
            connection.invalidate()
        raise


def _store_extension_sqlite(driver: Any, dialect: Any, terminal_id: str, verified: Sequence[tuple[int, SignedEntry]],
                            batch_id: str | None, now: dt.datetime) -> list[EntryResult] | None:
    """SQLite side of :func:`store_extension_direct` on the sqlite3 connection ``driver`` (autocommit
    mode: the engine's connections leave transactions to explicit statements, server/db.py)."""
    entries = [s for _, s in verified]
    first, last = entries[0].entry, entries[-1].entry
    if driver.in_transaction:  # a transaction SQLAlchemy does not know of: never insert in it
        return None
    cur = driver.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            near = cur.execute(_NEAR_SQL_SQLITE, (terminal_id, first.seq - 1, last.seq + 1)).fetchall()
            if _plain_extension([_Stored(bytes(r[0]), r[1], r[2], bytes(r[3]), bytes(r[4])) for r in near], entries):
                columns = _entry_columns(entries, batch_id, now)
                params = [v for row in zip(*_driver_columns(columns, dialect), strict=False) for v in row]
                inserted = {bytes(h) for (h,) in cur.execute(_sqlite_values_sql(len(entries)), params).fetchall()}
                if len(inserted) == len(entries):
                    cur.execute("COMMIT")
                    committed = True
                    return [EntryResult(i, Outcome.ACCEPTED, e.entry.entry_id, e.entry.seq) for i, e in verified]
            return None
        finally:
            if not committed and driver.in_transaction:
                cur.execute("ROLLBACK")
    finally:
        cur.close()


#: Batches of at most this many new rows skip the ``COPY`` staging (see :func:`_insert_entries_pg_rows`).
PG_COPY_MIN_ROWS = 64
#: SQLite batches of at most this many new rows are inserted by one multi-row ``INSERT ... RETURNING``, no savepoint.
SMALL_BATCH_ROWS = 64


def _extends_chain(session: Session, verified: Sequence[tuple[int, SignedEntry]]) -> bool:
    """True for a PostgreSQL batch of 1..:data:`PG_COPY_MIN_ROWS` entries with consecutive seqs in
    upload order, each linked to the one before it (what a counter's incremental upload is)."""
    return session.get_bind().dialect.name == "postgresql" and _linked_run(verified)


def _linked_run(verified: Sequence[tuple[int, SignedEntry]]) -> bool:
    """True for 1..:data:`PG_COPY_MIN_ROWS` entries with consecutive seqs in upload order, each linked
    to the one before it (its ``prev_entry_hash`` the previous entry's hash)."""
    if not 0 < len(verified) <= PG_COPY_MIN_ROWS:
        return False
    prev: SignedEntry | None = None
    for _, signed in verified:
        if prev is not None and (signed.entry.seq != prev.entry.seq + 1
                                 or signed.entry.prev_entry_hash != prev.entry_hash):
            return False
        prev = signed
    return True


def _plain_extension(stored: Sequence[_Stored], entries: Sequence[SignedEntry]) -> bool:
    """True when ``stored`` (the terminal's rows at seqs ``lo - 1 .. hi + 1`` of ``entries``, a linked run)
    show a plain extension of the chain: no row at ``lo`` or later, and a predecessor, if any, whose hash
    is the first entry's ``prev_entry_hash`` and whose entry id is none of theirs (the guard of the
    one-statement stores, :func:`_pg_read_insert_sql`, and of :func:`store_extension_direct`)."""
    first = entries[0].entry
    ids = {s.entry.entry_id for s in entries}
    return all(r.seq < first.seq and r.entry_hash == first.prev_entry_hash and r.entry_id not in ids
               for r in stored)


def _read_and_insert_pg(session: Session, terminal_id: str, entries: Sequence[SignedEntry],
                        batch_id: str | None, now: dt.datetime) -> tuple[list[_Stored], set[bytes] | None]:
    """PostgreSQL: read this terminal's stored rows at seqs ``lo - 1 .. hi + 1`` and, in the same
    statement, insert the entries when those rows show a plain extension of the chain.

    A plain extension: no stored row at ``lo .. hi + 1``, and a stored predecessor (if any) whose
    hash is the first entry's ``prev_entry_hash`` and whose entry id is none of the batch's. Then
    :func:`store_entries` classifies every entry as new, so inserting them first gives the same
    result in one round trip instead of two (issue 21). The data-modifying CTE sees the same
    snapshot as the read (PostgreSQL docs, WITH Queries, "Data-Modifying Statements in WITH");
    rows lost to a concurrent writer or to an entry id stored elsewhere are not returned and are
    re-read by the caller, as after :func:`_insert_entries`.

    :param entries: consecutive seqs ``lo .. hi``, in seq order, each linked to the one before.
    :returns: the stored rows read (before the insert), and the entry hashes inserted now, or
        ``None`` when the rows show no plain extension (then nothing was inserted).
    """
    connection = session.connection()
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out pooled connection always has its DB-API connection
    return _read_and_insert_pg_on(driver, connection.dialect, terminal_id, entries, batch_id, now)


def _read_and_insert_pg_on(driver: Any, dialect: Any, terminal_id: str, entries: Sequence[SignedEntry],
                           batch_id: str | None, now: dt.datetime) -> tuple[list[_Stored], set[bytes] | None]:
    """:func:`_read_and_insert_pg` on the psycopg connection ``driver`` (``dialect``: the engine's)."""
    import psycopg  # the driver of every postgresql+psycopg URL (server/db.py)

    first, last = entries[0].entry, entries[-1].entry
    ids = [s.entry.entry_id for s in entries]
    rows = [v for row in zip(*_driver_columns(_entry_columns(entries, batch_id, now), dialect),
                             strict=False) for v in row]
    with psycopg.RawCursor(driver) as cur:
        cur.execute(_pg_read_insert_sql(len(entries)),
                    [terminal_id, first.seq - 1, last.seq + 1, first.seq, first.prev_entry_hash, ids, *rows])
        found = cur.fetchall()
    stored = [_Stored(bytes(r[1]), r[2], r[3], bytes(r[4]), bytes(r[5])) for r in found if r[0] == 0]
    extends = _plain_extension(stored, entries)
    inserted = {bytes(r[4]) for r in found if r[0] == 1}
    if not extends and inserted:  # the statement's guard is this test; they cannot disagree
        raise RuntimeError("upload store: rows inserted although the chain guard failed")
    return stored, (inserted if extends else None)


@functools.lru_cache(maxsize=PG_COPY_MIN_ROWS)
def _pg_read_insert_sql(count: int) -> str:
    """The statement of :func:`_read_and_insert_pg` for ``count`` rows ($1 terminal id, $2..$3 the
    seq range read, $4 the first seq, $5 its prev_entry_hash, $6 the entry ids, then the rows)."""
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    width = len(_ENTRY_COLUMNS)
    casts = _pg_copy_types()
    values = ", ".join("(" + ", ".join(f"${7 + r * width + c}::{casts[c]}" for c in range(width)) + ")"
                       for r in range(count))
    table = JournalEntryRow.__tablename__
    return (f"WITH near AS (SELECT entry_id, terminal_id, seq, entry_hash, prev_entry_hash FROM {table} "
            f"WHERE terminal_id = $1 AND seq >= $2 AND seq <= $3), "
            f"ins AS (INSERT INTO {table} ({names}) SELECT * FROM (VALUES {values}) AS v ({names}) "
            f"WHERE NOT EXISTS (SELECT 1 FROM near WHERE seq >= $4::bigint OR entry_hash <> $5::bytea "
            f"OR entry_id = ANY($6::bytea[])) ON CONFLICT DO NOTHING RETURNING entry_hash) "
            f"SELECT 0, entry_id, terminal_id, seq, entry_hash, prev_entry_hash FROM near "
            f"UNION ALL SELECT 1, NULL, NULL, NULL, entry_hash, NULL FROM ins")


#: Columns written for one journal entry (everything but the surrogate key), in table order.
_ENTRY_COLUMNS = [c for c in JournalEntryRow.__table__.columns if not c.primary_key]
#: Columns whose value is the same for every row of one batch.
_BATCH_COLUMNS = frozenset({"batch_id", "received_at"})


def _entry_columns(signed: Sequence[SignedEntry], batch_id: str | None,
                   now: dt.datetime) -> dict[str, list[Any]]:
    """The ``journal_entries`` values of ``signed``, column by column (Python values).

    :returns: column name → one value per entry, in the order of ``signed``.
    """
    entries = [s.entry for s in signed]
    n = len(entries)
    values: dict[str, list[Any]] = {
        "entry_hash": [s.entry_hash for s in signed],
        "raw": [s.message for s in signed],
        "kind": [int(e.kind) for e in entries],
        "wall_time": [e.wall_time for e in entries],
        "batch_id": [batch_id] * n,
        "received_at": [now] * n,
    }
    for column in _ENTRY_COLUMNS:
        if column.name not in values:
            values[column.name] = [getattr(e, column.name) for e in entries]
    return values


def _insert_entries(session: Session, columns: Mapping[str, list[Any]]) -> set[bytes]:
    """Insert-or-ignore journal rows; return the ``entry_hash`` of each row this call inserted.

    One statement per batch on each database, without the ORM bulk path and with the
    values handed to the driver as they are (column types' bind processors applied,
    see :func:`_driver_columns`):

    - PostgreSQL: up to :data:`PG_COPY_MIN_ROWS` rows, one multi-row
      ``INSERT ... VALUES ... ON CONFLICT DO NOTHING RETURNING entry_hash`` (see
      :func:`_insert_entries_pg_rows`); more, binary ``COPY`` into a session's staging
      table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING entry_hash``
      (see :func:`_insert_entries_pg_copy`);
    - SQLite, up to :data:`SMALL_BATCH_ROWS` rows: one multi-row ``INSERT ... VALUES ... ON CONFLICT
      DO NOTHING RETURNING entry_hash`` on the driver's cursor (:func:`_sqlite_values_sql`);
    - SQLite, more: a plain ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING`` inside a
      savepoint. When its row count equals the number of rows, every row was inserted
      (ignored rows count 0). Otherwise (a row lost to a uniqueness conflict inside the
      batch or to a concurrent writer) the savepoint is rolled back and the rows are
      inserted again with ``RETURNING``, which names exactly the inserted ones.

    :param columns: column name → values (see :func:`_entry_columns`), rows in seq order.
    :returns: entry hashes (32 bytes each) of the rows inserted now.
    :raises NotImplementedError: on a database other than SQLite or PostgreSQL.
    """
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name == "postgresql":
        if len(columns["entry_hash"]) <= PG_COPY_MIN_ROWS:
            return _insert_entries_pg_rows(connection, columns)
        return _insert_entries_pg_copy(connection, columns)
    table = cast(Table, JournalEntryRow.__table__)  # a declarative model's __table__ is typed FromClause
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    count_rows = len(columns["entry_hash"])
    if dialect.name == "sqlite" and count_rows <= SMALL_BATCH_ROWS:
        # Few rows: one multi-row INSERT ... RETURNING on the driver's cursor names the new ones
        # directly; the savepoint and its bookkeeping cost more than the rows, and one statement
        # per row cost a small batch a sqlite3 execute per entry (issue 21).
        driver = connection.connection.driver_connection
        assert driver is not None  # a checked-out pooled connection always has its DB-API connection
        cursor = driver.cursor()
        try:
            params = [v for row in zip(*_driver_columns(columns, dialect), strict=False) for v in row]
            return {h for (h,) in cursor.execute(_sqlite_values_sql(count_rows), params).fetchall()}
        finally:
            cursor.close()
    if dialect.name == "sqlite" and dialect.supports_sane_multi_rowcount:
        sql = (f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' for _ in _ENTRY_COLUMNS)}) "
               "ON CONFLICT DO NOTHING")
        savepoint = connection.begin_nested()
        count = connection.exec_driver_sql(sql, list(zip(*_driver_columns(columns, dialect), strict=False))).rowcount
        if count == count_rows:
            savepoint.commit()
            return set(columns["entry_hash"])
        savepoint.rollback()
        log.debug("%d of %d journal rows were new; inserting again with RETURNING", count, count_rows)
    stmt = insert_or_ignore(session, JournalEntryRow).returning(table.c.entry_hash)
    rows = [dict(zip(columns, row, strict=False)) for row in zip(*columns.values(), strict=False)]
    return set(connection.execute(stmt, rows).scalars().all())


@functools.lru_cache(maxsize=SMALL_BATCH_ROWS)
def _sqlite_values_sql(count: int) -> str:
    """``INSERT INTO journal_entries (...) VALUES (?, ...), ... (count rows) ON CONFLICT DO NOTHING RETURNING
    entry_hash`` (SQLite: a row conflicting with a stored row or an earlier row of the statement is skipped
    and returns nothing; at most :data:`SMALL_BATCH_ROWS` × 22 parameters, below SQLite's limit of 32,766)."""
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    row = "(" + ", ".join("?" for _ in _ENTRY_COLUMNS) + ")"
    return (f"INSERT INTO {JournalEntryRow.__tablename__} ({names}) VALUES {', '.join([row] * count)} "
            "ON CONFLICT DO NOTHING RETURNING entry_hash")


def _insert_entries_pg_rows(connection: Any, columns: Mapping[str, list[Any]]) -> set[bytes]:
    """PostgreSQL, few rows: one multi-row ``INSERT ... VALUES ... ON CONFLICT DO NOTHING RETURNING``.

    A terminal's incremental upload carries a few entries. For those, the ``COPY`` path's
    fixed work (``CREATE TEMP TABLE IF NOT EXISTS``, the ``COPY`` exchange, an
    ``INSERT ... SELECT``: three round trips and a catalog lookup) outweighed the rows.
    One statement with a row of parameters per entry is one round trip; its text depends
    only on the row count, so psycopg prepares it server-side after a few uses
    (``prepare_threshold``). A row that conflicts (with a stored row or an earlier row of
    the same statement) is skipped and returns nothing, so the result names exactly the
    rows inserted now.

    :returns: entry hashes (32 bytes each) of the rows inserted now.
    """
    import psycopg  # the driver of every postgresql+psycopg URL (server/db.py)

    rows = list(zip(*_driver_columns(columns, connection.dialect), strict=False))
    # A raw cursor takes PostgreSQL's own $n placeholders: psycopg does not re-scan the text for
    # %s (it caches that scan only for statements of at most 50 parameters; 3 rows have 66).
    with psycopg.RawCursor(connection.connection.driver_connection) as cur:
        cur.execute(_pg_values_sql(len(rows)), [v for row in rows for v in row])
        return {bytes(h) for (h,) in cur.fetchall()}


@functools.lru_cache(maxsize=PG_COPY_MIN_ROWS)
def _pg_values_sql(count: int) -> str:
    """``INSERT INTO journal_entries (...) VALUES ($1, ...), ... (count rows) ON CONFLICT DO NOTHING RETURNING ...``."""
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    width = len(_ENTRY_COLUMNS)
    rows = ", ".join("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(count))
    return (f"INSERT INTO {JournalEntryRow.__tablename__} ({names}) VALUES {rows} "
            "ON CONFLICT DO NOTHING RETURNING entry_hash")


#: Per-session staging table of the PostgreSQL insert path (see :func:`_insert_entries_pg_copy`).
_STAGE = "journal_stage"


def _insert_entries_pg_copy(connection: Any, columns: Mapping[str, list[Any]]) -> set[bytes]:
    """PostgreSQL: binary ``COPY`` into a temporary staging table, then one insert-or-ignore from it.

    ``COPY ... FROM STDIN (FORMAT BINARY)`` (PostgreSQL docs, COPY, "Binary Format")
    encodes the rows in psycopg's C code, where binding 22 arrays of ~300 elements each
    went through psycopg's Python array dumper (~0.1 of an Ed25519 verification per
    entry; measured 28.7 → 21.5 µs of client CPU per entry). ``COPY`` cannot skip
    conflicting rows, so the rows land in a session-local ``TEMP`` table and
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` moves them, in seq order,
    into ``journal_entries``. The staging table is ``ON COMMIT DELETE ROWS`` (emptied in
    place at commit, no dead rows: autovacuum never visits temporary tables) and its
    rows vanish with a rolled-back transaction. A second call in the same transaction
    sees the first call's rows again; they conflict with themselves in
    ``journal_entries``, so ``RETURNING`` still names only rows inserted by this call.
    Needs session state: behind a pooler, use session pooling (docs/operations.md).

    :returns: entry hashes (32 bytes each) of the rows inserted now.
    """
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    raw = connection.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
                    f"SELECT {names} FROM {JournalEntryRow.__tablename__} WITH NO DATA")
        with cur.copy(f"COPY {_STAGE} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_pg_copy_types())
            write = copy.write_row
            for row in zip(*_driver_columns(columns, connection.dialect), strict=False):
                write(row)
        cur.execute(f"INSERT INTO {JournalEntryRow.__tablename__} ({names}) SELECT {names} FROM {_STAGE} "
                    "ORDER BY terminal_id, seq ON CONFLICT DO NOTHING RETURNING entry_hash")
        return {bytes(h) for (h,) in cur.fetchall()}


@functools.cache
def _pg_copy_types() -> list[str]:
    """PostgreSQL type names of :data:`_ENTRY_COLUMNS` for a binary ``COPY`` (computed once)."""
    dialect = postgresql.dialect()
    aliases = {"timestamp with time zone": "timestamptz", "bigint": "int8", "integer": "int4", "boolean": "bool"}
    names = (c.type.compile(dialect=dialect).lower() for c in _ENTRY_COLUMNS)
    return [aliases.get(name, name.split("(")[0]) for name in names]


def _driver_columns(columns: Mapping[str, list[Any]], dialect: Any) -> list[list[Any]]:
    """``columns`` in :data:`_ENTRY_COLUMNS` order, as the DB driver takes them.

    Each column type's bind processor for the dialect is applied (UTCDateTime's UTC
    check and, on SQLite, the text form with microseconds that every other write uses;
    Boolean) — once for a batch-wide column — except for binary columns: bytes go to
    sqlite3 and psycopg as bytes (the processor only wraps them in the DB-API
    ``Binary``). The generic type's processor is not enough on SQLite: it hands
    sqlite3 a datetime, whose default adapter drops ``.000000`` at whole seconds, and
    ``'… 17:00:00' < '… 17:00:00.000000'`` as text, so such an entry fell outside a
    benefit cycle starting at that instant.
    """
    out: list[list[Any]] = []
    for column, process in zip(_ENTRY_COLUMNS, _bind_processors(dialect), strict=True):
        values = columns[column.name]
        if process is None:
            out.append(values)
        elif column.name in _BATCH_COLUMNS:
            out.append([process(values[0])] * len(values) if values else [])
        else:
            out.append([process(v) for v in values])
    return out


@functools.lru_cache(maxsize=16)
def _bind_processors(dialect: Any) -> list[Any]:
    """Each of :data:`_ENTRY_COLUMNS`' bind processor for ``dialect`` (None: none or binary), found once
    per dialect object (looking them up was a tenth of a small batch's store CPU, issue 21).

    ``dialect_impl``: the type as the dialect binds it (on SQLite, DateTime's text form
    "YYYY-MM-DD HH:MM:SS.ffffff", as the ORM writes it everywhere else).
    """
    return [None if isinstance(column.type, LargeBinary) else column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in _ENTRY_COLUMNS]


def _conflict(index: int, signed: SignedEntry, existing_hash: bytes,
              conflicts: list[dict[str, Any]], now: dt.datetime) -> EntryResult:
    e = signed.entry
    conflicts.append(
        {
            "terminal_id": e.terminal_id,
            "entry_id": e.entry_id,
            "seq": e.seq,
            "existing_entry_hash": existing_hash,
            "entry_hash": signed.entry_hash,
            "raw": signed.message,
            "flagged": True,
            "received_at": now,
        }
    )
    return EntryResult(index, Outcome.CONFLICT, e.entry_id, e.seq,
                       detail="same entry id or (terminal, seq) with different content; original kept")


# ----------------------------------------------------------------------------- group commit (issue 21)


#: Batches of at most this many verified entries join a group commit (:class:`GroupCommit`); a larger
#: batch already spreads its transaction over many entries and is stored in a transaction of its own.
GROUP_MAX_ENTRIES = 64
#: The most batches one group transaction stores (the rest wait for the next group).
GROUP_MAX_BATCHES = 64

_T = TypeVar("_T")


@dataclass(eq=False)
class _Pending:
    """One request's verified batch waiting for a group transaction, and what became of it."""

    terminal: TerminalKey
    batch_id: str | None
    verified: Sequence[tuple[int, SignedEntry]]
    rejected: list[EntryResult]
    after: Callable[[Session], Any]
    at_once: bool
    results: list[EntryResult] | None = None
    value: Any = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Stores the small batches of concurrent uploads in one transaction (group commit, issue 21).

    Each request verifies its batch on its own thread, then calls :meth:`store`. The first caller
    while no group is being stored becomes the *leader*: it takes every batch waiting at that moment
    (up to :data:`GROUP_MAX_BATCHES`, in terminal order), opens its own write transaction
    (``begin``), classifies and stores each batch with :func:`store_entries` and runs each batch's
    ``after`` (its receipt settlements, its cycles) in that transaction, and commits once. Callers
    arriving meanwhile wait and form the next group. A transaction, its BEGIN/COMMIT and its WAL
    flush (or on SQLite its write lock and WAL commit) are paid once per group instead of once per
    batch; nothing is delayed on purpose (an idle server's group is one batch, stored exactly as
    without this class).

    Each batch keeps its own outcome:

    - results (accepted / duplicate / conflict / rejected) are per entry, as :func:`store_entries`
      classifies them; batches of one group are stored one after the other, so a later batch sees
      an earlier one's rows as stored (a retry in the same group is a duplicate);
    - when storing any batch of a group raises (a database error), the group's transaction is rolled
      back and every batch of it is stored again in a transaction of its own, so the error reaches
      only the request whose batch caused it; when the group's transaction cannot even begin (SQLite's
      write lock busy, the database unreachable), every caller gets that error (503, retried);
    - when the group's COMMIT fails, no batch of it is acknowledged: every caller gets the error
      (the request answers 503 or 500, the counter retries, the retry is idempotent).

    :meth:`store` returns only after the commit that stored the batch (a receipt is never signed
    for an uncommitted entry). One instance per process and database (:func:`group_commit`).
    """

    def __init__(self, *, max_batches: int = GROUP_MAX_BATCHES) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False
        self._max = max_batches
        #: batches the upload route stored without a group, nothing else waiting (store_extension_direct)
        self.direct = 0
        #: groups stored and batches in them, since start (for benchmarks and logs)
        self.groups = 0
        self.batches = 0
        self.largest = 0

    def waiting(self) -> int:
        """Batches queued for the next group (not yet taken by a leader)."""
        with self._cond:
            return len(self._queue)

    def stored_direct(self) -> None:
        """Count one batch the upload route stored without a group (:attr:`direct`)."""
        with self._cond:
            self.direct += 1

    def idle(self) -> bool:
        """True when no group is being stored and none waits: a batch stored now shares no commit."""
        with self._cond:
            return not self._busy and not self._queue

    def store(self, begin: Callable[[], Session], terminal: TerminalKey, batch_id: str | None,
              verified: Sequence[tuple[int, SignedEntry]], rejected: list[EntryResult], *,
              after: Callable[[Session], _T], at_once: bool = False) -> tuple[list[EntryResult], _T]:
        """Store one verified batch (as :func:`store_entries`) in a group transaction; return once committed.

        :param begin: this request's write session, its transaction begun (SQLite: ``BEGIN
            IMMEDIATE``); called only if this caller leads a group, so a waiting request holds no lock.
        :param after: run in the same transaction right after the batch is stored (its receipt
            settlements, its cycles); its value is returned with the results.
        :param at_once: as :func:`store_entries`, used when the group is this batch alone.
        :returns: one result per uploaded entry in upload order, and ``after``'s value.
        :raises: whatever storing this batch or committing its group raised (nothing was acknowledged).
        """
        mine = _Pending(terminal, batch_id, verified, rejected, after, at_once)
        with self._cond:
            self._queue.append(mine)
            while self._busy and not mine.done:
                self._cond.wait()
            if not mine.done:
                self._busy = True
                rest = [p for p in self._queue if p is not mine]
                group = [mine, *rest[:self._max - 1]]
                self._queue = rest[self._max - 1:]
        if not mine.done:
            try:
                self._run(begin, group)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.results is not None  # done without an error: stored
        return mine.results, cast(_T, mine.value)

    def _run(self, begin: Callable[[], Session], group: list[_Pending]) -> None:
        """Store ``group`` in one transaction on the leader's session; set every member's outcome."""
        if len(group) == 1:
            self._alone(begin, group[0])
            self._count(group)
            return
        group.sort(key=lambda p: p.terminal.terminal_id)  # one lock order for concurrent groups' inserts
        try:
            session = begin()
        except BaseException as exc:  # no transaction (SQLite's write lock busy, no connection): none stored
            self._finish(group, exc)
            self._count(group)
            return
        try:
            reads = _group_reads(session, group)
            for p in group:
                p.results = store_entries(session, p.terminal, p.batch_id, p.verified, p.rejected,
                                          read=reads.get(id(p)))
                p.value = p.after(session)
        except Exception as exc:
            log.info("group of %d batches: %s; storing each in a transaction of its own", len(group),
                     type(exc).__name__)
            with contextlib.suppress(Exception):
                session.rollback()
            for p in group:
                p.results = p.value = None
                self._alone(begin, p)
            self._count(group)
            return
        try:
            session.commit()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                session.rollback()
            self._finish(group, exc)
            self._count(group)
            return
        self._finish(group, None)
        self._count(group)

    @staticmethod
    def _alone(begin: Callable[[], Session], p: _Pending) -> None:
        """Store one batch in a write transaction of its own (rolled back on an error)."""
        session: Session | None = None
        try:
            session = begin()
            p.results = store_entries(session, p.terminal, p.batch_id, p.verified, p.rejected, at_once=p.at_once)
            p.value = p.after(session)
            session.commit()
        except BaseException as exc:
            p.results = p.value = None
            if session is not None:
                with contextlib.suppress(Exception):
                    session.rollback()
            p.error = exc
        p.done = True

    @staticmethod
    def _finish(group: list[_Pending], error: BaseException | None) -> None:
        for p in group:
            if error is not None:
                p.results = p.value = None
                p.error = error
            p.done = True

    def _count(self, group: list[_Pending]) -> None:
        self.groups += 1
        self.batches += len(group)
        self.largest = max(self.largest, len(group))


def _group_reads(session: Session, group: Sequence[_Pending]) -> dict[int, tuple[list[_Stored], set[bytes] | None]]:
    """PostgreSQL: read and insert the plain chain extensions of a group in one statement
    (:func:`_read_and_insert_pg_many`); the first such batch of each terminal only (a terminal's
    later batch in the group is stored after it and sees its rows). ``{id(pending): (rows read,
    hashes inserted or None)}``; empty on SQLite (in-process statements, nothing to save)."""
    if session.get_bind().dialect.name != "postgresql":
        return {}
    seen: set[str] = set()
    chosen = []
    for p in group:
        if p.terminal.terminal_id not in seen and _extends_chain(session, p.verified):
            seen.add(p.terminal.terminal_id)
            chosen.append(p)
    if len(chosen) < 2:
        return {}
    reads = _read_and_insert_pg_many(session, [(p.terminal.terminal_id, [s for _, s in p.verified], p.batch_id)
                                               for p in chosen], utcnow())
    return {id(p): r for p, r in zip(chosen, reads, strict=True)}


def _read_and_insert_pg_many(session: Session, batches: Sequence[tuple[str, Sequence[SignedEntry], str | None]],
                             now: dt.datetime) -> list[tuple[list[_Stored], set[bytes] | None]]:
    """:func:`_read_and_insert_pg` for several batches of distinct terminals in one statement.

    Each batch's stored neighbours are read and its rows inserted only when they show a plain
    extension of its terminal's chain, exactly as one :func:`_read_and_insert_pg` per batch would (the
    statement's snapshot is the one all of them read); one statement instead of one per batch saves
    a group its per-statement work (round trip, executor start, the driver's execute).

    :param batches: (terminal id, entries as :func:`_read_and_insert_pg` takes them, batch id), the
        terminal ids distinct.
    :returns: per batch, in order: the stored rows read, and the entry hashes inserted now or ``None``.
    """
    import psycopg  # the driver of every postgresql+psycopg URL (server/db.py)

    connection = session.connection()
    params: list[Any] = []
    for k, (terminal_id, entries, _batch_id) in enumerate(batches):
        first, last = entries[0].entry, entries[-1].entry
        params += [k, terminal_id, first.seq - 1, last.seq + 1, first.seq, first.prev_entry_hash]
    # Padded to bucket sizes (rows that match and insert nothing, k = -1), so a connection sees few
    # statement texts and each is prepared at its first use (issue 21): unprepared, parsing and
    # planning this statement cost a group of 4 batches ~1.6 ms of backend CPU of ~3 ms.
    n_batches = _bucket(len(batches))
    params += [-1, None, None, None, None, None] * (n_batches - len(batches))
    rows = 0
    for k, (_terminal_id, entries, batch_id) in enumerate(batches):
        rows += len(entries)
        for row in zip(*_driver_columns(_entry_columns(entries, batch_id, now), connection.dialect), strict=False):
            params += [k, *row]
    n_rows = _bucket(rows)
    params += [-1, *[None] * len(_ENTRY_COLUMNS)] * (n_rows - rows)
    driver = connection.connection.driver_connection
    assert driver is not None  # a checked-out pooled connection always has its DB-API connection
    with psycopg.RawCursor(driver) as cur:
        cur.execute(_pg_read_insert_many_sql(n_batches, n_rows), params, prepare=True)
        found = cur.fetchall()
    inserted_all = {bytes(r[5]) for r in found if r[0] == 1}
    out: list[tuple[list[_Stored], set[bytes] | None]] = []
    for k, (_terminal_id, entries, _batch_id) in enumerate(batches):
        stored = [_Stored(bytes(r[2]), r[3], r[4], bytes(r[5]), bytes(r[6])) for r in found if r[0] == 0 and r[1] == k]
        extends = _plain_extension(stored, entries)
        inserted = {s.entry_hash for s in entries} & inserted_all
        if not extends and inserted:  # the statement's guard is this test; they cannot disagree
            raise RuntimeError("upload store: rows inserted although the chain guard failed")
        out.append((stored, inserted if extends else None))
    return out


def _bucket(n: int) -> int:
    """The smallest power of two ≥ ``n`` (at least 2): the padded sizes of :func:`_pg_read_insert_many_sql`."""
    return max(2, 1 << (n - 1).bit_length())


@functools.lru_cache(maxsize=256)
def _pg_read_insert_many_sql(batches: int, rows: int) -> str:
    """The statement of :func:`_read_and_insert_pg_many`: ``batches`` rows of (k, terminal id, seq range
    read, first seq, its prev_entry_hash), then ``rows`` rows of (k, the journal columns). Rows with
    k < 0 are padding: their NULL terminal id matches no stored row and they are never inserted."""
    names = ", ".join(c.name for c in _ENTRY_COLUMNS)
    width = len(_ENTRY_COLUMNS) + 1
    casts = ["int4", *_pg_copy_types()]
    b = ", ".join(f"(${6 * i + 1}::int4, ${6 * i + 2}::text, ${6 * i + 3}::int8, ${6 * i + 4}::int8, "
                  f"${6 * i + 5}::int8, ${6 * i + 6}::bytea)" for i in range(batches))
    base = 6 * batches
    v = ", ".join("(" + ", ".join(f"${base + r * width + c + 1}::{casts[c]}" for c in range(width)) + ")"
                  for r in range(rows))
    table = JournalEntryRow.__tablename__
    return (f"WITH b (k, terminal_id, lo, hi, first_seq, prev_hash) AS (VALUES {b}), "
            f"v (k, {names}) AS (VALUES {v}), "
            f"near AS (SELECT b.k, j.entry_id, j.terminal_id, j.seq, j.entry_hash, j.prev_entry_hash "
            f"FROM b JOIN {table} j ON j.terminal_id = b.terminal_id AND j.seq >= b.lo AND j.seq <= b.hi), "
            f"bad AS (SELECT near.k FROM near JOIN b ON b.k = near.k WHERE near.seq >= b.first_seq "
            f"OR near.entry_hash <> b.prev_hash "
            f"OR EXISTS (SELECT 1 FROM v WHERE v.k = near.k AND v.entry_id = near.entry_id)), "
            f"ins AS (INSERT INTO {table} ({names}) SELECT {names} FROM v "
            f"WHERE v.k >= 0 AND v.k NOT IN (SELECT k FROM bad) "
            f"ORDER BY v.terminal_id, v.seq ON CONFLICT DO NOTHING RETURNING entry_hash) "
            f"SELECT 0, k, entry_id, terminal_id, seq, entry_hash, prev_entry_hash FROM near "
            f"UNION ALL SELECT 1, NULL, NULL, NULL, NULL, entry_hash, NULL FROM ins")
