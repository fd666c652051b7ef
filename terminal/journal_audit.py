"""Offline audit of a terminal journal file: verification, head check and index repair.

:func:`verify_journal_file` (``huma journal verify FILE``) re-checks every
signature against the terminal's public key, the hash chain, contiguous
sequence numbers from 1, and that every index column agrees with the signed
bytes (the unsigned ones as far as the signed claims allow).
:func:`repair_journal_file` (``huma journal repair FILE``) rebuilds damaged
indexes after a backup. The file is written by :mod:`terminal.journal_store`;
this module only reads it (read-only, immutable when no WAL is next to it).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cardlib.keys.errors import UnsupportedAlgorithmError
from cardlib.keys.signer import PublicKey, cose_key, public_key_from_spki
from cardlib.records.claims import Unit
from cardlib.records.cose import CoseKey
from cardlib.records.errors import RecordError, UnknownKid
from cardlib.records.journal import EntryKind, JournalEntry, SignedEntry, verify_chain
from cardlib.records.statements import read_receipt_unverified, verify_receipt
from terminal.errors import JournalDamaged, JournalStoreError, JournalVerifyError
from terminal.journal_store import (
    WRITE_KINDS,
    check_sqlite_file,
    damaged_error,
    only_indexes_damaged,
    sqlite_problems,
    unit_column,
)

log = logging.getLogger(__name__)

#: The first 16 bytes of every SQLite database file (SQLite file format §1.3.1).
_SQLITE_MAGIC = b"SQLite format 3\x00"




@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_journal_file` checked.

    :ivar terminal_id: from the file.
    :ivar entries: number of entries verified.
    :ivar boots: number of distinct boot ids.
    :ivar head_hash: entry hash of the last entry (32 bytes) — compare with the server's receipt.
    :ivar open_writes: card ids whose last write is PENDING/UNCERTAIN and not settled by the server.
    :ivar settled_writes: card ids whose last write is PENDING/UNCERTAIN and settled by a settlement row
        its stored receipt backs (the server decided it; not open any more).
    :ivar key_from_file: True when no key was given and the file's own key was used
        (proves integrity, not authenticity).
    :ivar last_seq: seq of the last entry. A journal cut short at the *end* still
        verifies (every entry left is intact): compare ``(last_seq, head_hash)``
        with the server's record of this terminal (:func:`check_head`).
    :ivar settlements: settlement rows checked against their stored receipts.
    :ivar receipts_signed: True when those receipts were verified under the given server
        receipt key; False: their shape only (a forged but well-formed receipt passes).
    """

    terminal_id: str
    entries: int
    boots: int
    head_hash: bytes
    open_writes: tuple[str, ...]
    key_from_file: bool
    last_seq: int = 0
    settlements: int = 0
    receipts_signed: bool = False
    settled_writes: tuple[str, ...] = ()


def parse_head(text: str) -> tuple[int, bytes | None]:
    """Parse an expected journal head ``SEQ`` or ``SEQ:HASH`` (HASH: 64 hex digits, the entry hash).

    :raises ValueError: not of that form.
    """
    seq_text, _, hash_text = text.strip().partition(":")
    seq = int(seq_text)
    if seq < 1:
        raise ValueError("SEQ must be >= 1")
    if not hash_text:
        return seq, None
    digest = bytes.fromhex(hash_text)
    if len(digest) != 32:
        raise ValueError("HASH must be 64 hex digits (a SHA-256 entry hash)")
    return seq, digest


def check_head(report: VerifyReport, seq: int, entry_hash: bytes | None) -> None:
    """Compare a verified journal's head with the one the server (or an earlier audit) recorded.

    :raises JournalVerifyError: the journal ends elsewhere (cut short at the end, or rolled back).
    """
    if report.last_seq < seq:
        raise JournalVerifyError(f"the journal ends at seq {report.last_seq} but seq {seq} was expected: "
                                 f"{seq - report.last_seq} entries are missing at the end (truncated?)")
    if report.last_seq > seq:
        raise JournalVerifyError(f"the journal goes on to seq {report.last_seq}, past the expected head {seq}")
    if entry_hash is not None and entry_hash != report.head_hash:
        raise JournalVerifyError(f"entry hash {report.head_hash.hex()} differs from the expected "
                                 f"{entry_hash.hex()} (the journal was rewritten)", seq)



def _copy_hint(path: Path) -> str:
    """Advice for a journal copied without its WAL (the counter keeps recent entries in ``FILE-wal``)."""
    if Path(f"{path}-wal").exists():
        return ""
    return (f"; if it was copied from a running counter, copy {path.name}-wal and {path.name}-shm together "
            f"with {path.name} (the counter keeps recent entries there), or stop the counter first")


def _read_only(path: Path) -> sqlite3.Connection:
    """Open a journal read-only for audit after SQLite's own integrity check.

    :raises JournalVerifyError: no such file, not an SQLite file, or no ``entries`` table.
    :raises JournalDamaged: SQLite reports the file damaged (truncated, malformed, bad index).
    """
    if not path.is_file():
        raise JournalVerifyError(f"{path}: " + ("not a regular file" if path.exists() else "no such file"))
    try:
        with path.open("rb") as f:
            magic = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise JournalVerifyError(f"{path}: cannot read ({exc})") from exc
    if len(magic) == len(_SQLITE_MAGIC) and magic != _SQLITE_MAGIC:
        raise JournalVerifyError(f"{path}: not a terminal journal (not an SQLite database file)")
    if 0 < len(magic) < len(_SQLITE_MAGIC):
        raise damaged_error(path, "open", (f"only {len(magic)} bytes, cut short",))
    hint = _copy_hint(path)
    # Without a -wal sibling the file is all there is: open it immutable, so the
    # audit creates no -wal/-shm next to a copy (which would also hide the hint).
    mode = "ro&immutable=1" if hint else "ro"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
    except sqlite3.Error as exc:
        raise JournalVerifyError(f"{path}: cannot open ({exc})") from exc
    try:
        check_sqlite_file(db, path)
    except JournalDamaged as exc:
        db.close()
        raise JournalDamaged(str(exc) + hint, exc.problems, exc.index_only) from exc
    except JournalStoreError:
        db.close()
        raise
    try:
        db.execute("SELECT 1 FROM entries LIMIT 1")
    except sqlite3.Error as exc:
        db.close()
        raise JournalVerifyError(f"{path}: not a terminal journal ({exc}){hint}") from exc
    return db


def repair_journal_file(path: str | Path, key: CoseKey | None = None) -> tuple[Path, VerifyReport]:
    """Rebuild a journal's damaged indexes (``REINDEX``) after backing the file up, then re-verify it.

    Only for damage confined to indexes (the signed rows are intact and the
    indexes are derived from them); the counter must be stopped first.

    :param path: the journal (with its -wal/-shm, if any, next to it).
    :param key: the terminal's verification key for the re-verification (None: the file's own).
    :returns: ``(backup file, report of the repaired journal)``; the backup is
        ``FILE.damaged-YYYYmmddTHHMMSS`` (an SQLite copy including the WAL's content).
    :raises JournalDamaged: nothing to repair, or the damage is not only in indexes, or
        SQLite still reports problems after REINDEX.
    :raises JournalVerifyError: the repaired journal fails verification.
    """
    p = Path(path)
    if not p.is_file():
        raise JournalVerifyError(f"{p}: " + ("not a regular file" if p.exists() else "no such file"))
    db = sqlite3.connect(p, isolation_level=None, timeout=1.0)
    try:
        try:
            problems = sqlite_problems(db)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise damaged_error(p, "open", (str(exc),)) from exc
        if not problems:
            raise JournalDamaged(f"{p}: SQLite reports no damage; nothing to repair")
        if not only_indexes_damaged(db, problems):
            raise damaged_error(p, "check", problems)
        backup = p.with_name(f"{p.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        dst = sqlite3.connect(backup)
        try:
            db.backup(dst)
        finally:
            dst.close()
        log.warning("journal %s: indexes damaged (%s); backed up to %s, rebuilding", p, "; ".join(problems), backup)
        try:
            db.execute("REINDEX")
        except sqlite3.Error as exc:
            raise JournalDamaged(f"{p}: REINDEX failed ({exc}); the backup is {backup}") from exc
        left = sqlite_problems(db)
        if left:
            raise damaged_error(p, "check", left)
    except sqlite3.OperationalError as exc:  # locked: the counter still runs
        raise JournalStoreError(f"{p}: cannot repair ({exc}); stop the counter first") from exc
    finally:
        db.close()
    return backup, verify_journal_file(p, key)


#: The index columns that copy a signed claim, with how to read that claim from a verified
#: entry (SQLite storage class included: an INTEGER 3 stored as TEXT '3' differs).
_SIGNED_COLUMNS: tuple[tuple[str, Callable[[SignedEntry], object]], ...] = (
    ("seq", lambda s: s.entry.seq),
    ("entry_id", lambda s: s.entry.entry_id),
    ("boot_id", lambda s: s.entry.boot_id),
    ("kind", lambda s: int(s.entry.kind)),
    ("card_id", lambda s: s.entry.card_id),
    ("programme", lambda s: s.entry.programme),
    ("amount", lambda s: s.entry.amount),
    ("slot_seq_after", lambda s: s.entry.slot_seq_after),
    ("state_hash_new", lambda s: s.entry.state_hash_new),
    ("wall_ms", lambda s: s.entry.wall_ms),
    ("mono_ns", lambda s: s.entry.mono_ns),
    ("clock_synced", lambda s: int(s.entry.clock_synced)),
    ("entry_hash", lambda s: s.entry_hash),  # SHA-256 of the exact signed bytes
)
#: The values ``unit`` may hold.
_UNITS = frozenset(unit_column(u) for u in Unit)
#: Kinds that carry the claims of the PENDING they follow (:func:`write_of`), ``unit`` included.
_CLOSING_KINDS = (EntryKind.COMMIT, EntryKind.UNCERTAIN, EntryKind.FINISHED, EntryKind.VOIDED)
#: Position of the new slot record's COSE bytes in a PENDING entry's ``pending`` blob
#: (a CBOR array; layout: ``terminal.tap._pending_blob``); SHA-256 of it is ``state_hash_new``.
_PENDING_COSE_AT = 4


def _short(value: object) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _same(stored: object, signed: object) -> bool:
    """Equal and of the same type (SQLite returns int/str/bytes/None as stored)."""
    if isinstance(stored, bytes) and isinstance(signed, bytes):
        return stored == signed
    return type(stored) is type(signed) and stored == signed


def _pending_cose(blob: object) -> bytes | None:
    """The slot record bytes in a ``pending`` blob, or None when it is not of that layout."""
    import cbor2

    if not isinstance(blob, bytes):
        return None
    try:
        fields = cbor2.loads(blob)
    except Exception:
        return None
    if not isinstance(fields, list) or len(fields) <= _PENDING_COSE_AT:
        return None
    cose = fields[_PENDING_COSE_AT]
    return cose if isinstance(cose, bytes) else None


def _check_unsigned(e: JournalEntry, unit: object, pending: object, pending_unit: dict[str, object]) -> None:
    """Check the columns that are not signed claims (``unit``, ``pending``) against what is signed.

    :param pending_unit: card id -> ``unit`` of its latest PENDING so far (updated here).
    :raises JournalVerifyError: naming the column and the entry's seq.
    """
    if unit is not None and unit not in _UNITS:
        raise JournalVerifyError(f"index column unit is {_short(unit)}, not a unit ({', '.join(sorted(_UNITS))})",
                                 e.seq)
    if e.kind is EntryKind.PENDING:
        if e.amount is not None and unit is None:
            raise JournalVerifyError("index column unit is empty on a PENDING entry with an amount "
                                     "(the offline limits would not count it)", e.seq)
        if e.card_id:
            pending_unit[e.card_id] = unit
    elif e.kind in _CLOSING_KINDS and e.card_id and e.card_id in pending_unit:
        if not _same(unit, pending_unit[e.card_id]):
            raise JournalVerifyError(f"index column unit is {_short(unit)} but the PENDING write it follows "
                                     f"has {_short(pending_unit[e.card_id])}", e.seq)
    if pending is None:
        return
    if e.kind is not EntryKind.PENDING:
        raise JournalVerifyError(f"column pending holds a card state on a {e.kind.name} entry "
                                 "(only PENDING entries have one)", e.seq)
    cose = _pending_cose(pending)
    if cose is None:
        raise JournalVerifyError("column pending is not a pending card write", e.seq)
    if hashlib.sha256(cose).digest() != e.state_hash_new:
        raise JournalVerifyError("column pending does not hash to the signed state_hash_new", e.seq)


def verify_journal_file(path: str | Path, key: CoseKey | None = None, *,
                        receipt_key: PublicKey | None = None) -> VerifyReport:
    """Check a journal file offline, as an auditor: signatures, chain, gaps, every index column.

    Follows docs/design.md §Journal: seq contiguous from 1, each entry's
    prev_entry_hash the SHA-256 of the previous entry's exact bytes, every entry
    signed by the terminal key (RFC 9052 §4.4), and the columns the daemon
    decides from agree with the signed bytes (a tampered index could hide spending):

    - copies of signed claims, compared value and type with the decoded entry:
      ``seq, entry_id, boot_id, kind, card_id, programme, amount, slot_seq_after,
      state_hash_new, wall_ms, mono_ns, clock_synced`` and ``entry_hash`` (SHA-256
      of ``message``);
    - ``unit`` (not signed: the programme's unit from the trust bundle, which the
      file does not hold) is checked as far as the signed entries allow: a unit
      value or NULL, present on every PENDING with an amount, and on COMMIT /
      UNCERTAIN / FINISHED / VOIDED equal to the unit of the card's PENDING they
      follow. Changing the unit of a whole write consistently to another unit is
      not detectable here; live edits are refused by the ``entries_only_mark_uploaded``
      trigger, which covers every column but ``uploaded_at``;
    - ``pending`` (not signed, bound by the signed ``state_hash_new``): only on
      PENDING entries, and its slot record hashes to ``state_hash_new``.

    ``note`` (a local remark, e.g. ``deferred``) and ``uploaded_at`` (the upload
    mark) are local state, not checked; the trigger protects ``note``.

    Each ``settlements`` row (outside the signed chain) must be backed by its stored
    ``receipt``: an upload receipt for this terminal that settles that entry, at its seq,
    with that outcome, and the entry a card write's PENDING. With ``receipt_key`` (the
    server receipt key the terminal pinned at enrolment) the receipt's signature is
    verified; without it only its shape (:func:`read_receipt_unverified`).

    :param path: the SQLite journal (opened read-only).
    :param key: the terminal's verification key (from its certificate or the
        server); None uses the key stored in the file itself, which proves
        integrity only.
    :returns: a short report.
    :param receipt_key: the pinned server receipt key (Ed25519); None checks receipts' shape only.
    :raises JournalVerifyError: with the first failing entry's seq and the reason
        (naming the column for a column that disagrees, or the settlement that no receipt backs).
    """
    p = Path(path)
    db = _read_only(p)
    columns = [name for name, _ in _SIGNED_COLUMNS]
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        from_file = key is None
        if key is None:
            key = cose_key(public_key_from_spki(bytes(meta["public_key_spki"])))
        rows = db.execute(
            f"SELECT {', '.join(columns)}, unit, pending, CAST(message AS BLOB) FROM entries ORDER BY seq"
        ).fetchall()
        settled = _settlement_rows(db)
    except (sqlite3.Error, KeyError, ValueError, TypeError, UnsupportedAlgorithmError) as exc:
        raise JournalVerifyError(f"{p}: unreadable journal ({exc})") from exc
    finally:
        db.close()
    if not rows:
        raise JournalVerifyError(f"{p}: the journal has no entries")
    file_kid = _file_kid(meta)
    verified: list[SignedEntry] = []
    link: bytes | None = None
    for row in rows:
        # One entry at a time, so every failure names the entry it is in (the row's seq column).
        try:
            (signed,) = verify_chain([bytes(row[-1])], {key.kid: key}, prev_hash=link,
                                     first_seq=verified[-1].entry.seq + 1 if verified else 1)
        except UnknownKid as exc:
            raise JournalVerifyError(_kid_message(exc.kid, key.kid, file_kid), int(row[0])) from exc
        except RecordError as exc:
            seq = getattr(exc, "seq", None) or getattr(exc, "first", None) or int(row[0])
            raise JournalVerifyError(f"{type(exc).__name__}: {exc}", seq) from exc
        verified.append(signed)
        link = signed.entry_hash
    open_cards: dict[str, EntryKind] = {}
    last_pending: dict[str, bytes] = {}
    pending_unit: dict[str, object] = {}
    terminal_id = str(meta.get("terminal_id", ""))
    for row, s in zip(rows, verified, strict=False):
        e = s.entry
        if e.terminal_id != terminal_id:
            raise JournalVerifyError(f"terminal id {e.terminal_id!r} differs from the file's", e.seq)
        for (name, claim), stored in zip(_SIGNED_COLUMNS, row, strict=False):
            if not _same(stored, claim(s)):
                raise JournalVerifyError(f"indexed columns differ from the signed entry: {name} is "
                                         f"{_short(stored)}, signed {_short(claim(s))}", e.seq)
        _check_unsigned(e, row[len(columns)], row[len(columns) + 1], pending_unit)
        if e.card_id and e.kind in WRITE_KINDS:
            open_cards[e.card_id] = e.kind
            if e.kind is EntryKind.PENDING:
                last_pending[e.card_id] = e.entry_id
    _check_settlements(settled, {s.entry.entry_id: s.entry for s in verified}, terminal_id, receipt_key)
    boots = len({s.entry.boot_id for s in verified})
    # Every row passed _check_settlements: a write it settles is the server's to close, not open.
    settled_ids = {entry_id for entry_id, _outcome, _receipt in settled}
    torn = sorted(c for c, k in open_cards.items() if k in (EntryKind.PENDING, EntryKind.UNCERTAIN))
    still_open = tuple(c for c in torn if last_pending.get(c) not in settled_ids)
    settled_writes = tuple(c for c in torn if last_pending.get(c) in settled_ids)
    return VerifyReport(
        terminal_id=terminal_id,
        entries=len(verified),
        boots=boots,
        head_hash=verified[-1].entry_hash,
        open_writes=still_open,
        key_from_file=from_file,
        last_seq=verified[-1].entry.seq,
        settlements=len(settled),
        receipts_signed=receipt_key is not None,
        settled_writes=settled_writes,
    )


def _settlement_rows(db: sqlite3.Connection) -> list[tuple[bytes, object, bytes]]:
    """``(entry_id, outcome, receipt)`` of every settlement row; none in a journal made before the table."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='settlements'").fetchone() is None:
        return []
    return [(bytes(r[0]), r[1], bytes(r[2]) if isinstance(r[2], bytes) else b"")
            for r in db.execute("SELECT entry_id, outcome, CAST(receipt AS BLOB) FROM settlements ORDER BY rowid")]


def _check_settlements(rows: list[tuple[bytes, object, bytes]], entries: dict[bytes, JournalEntry],
                       terminal_id: str, receipt_key: PublicKey | None) -> None:
    """Every settlement row backed by its stored receipt (see :func:`verify_journal_file`).

    :raises JournalVerifyError: naming the settled entry's seq (or the unknown entry id).
    """
    for entry_id, outcome, receipt in rows:
        e = entries.get(entry_id)
        if e is None:
            raise JournalVerifyError(f"settlement of entry {entry_id.hex()}, which the journal does not hold")
        if e.kind is not EntryKind.PENDING or not e.card_id:
            raise JournalVerifyError("settlement of an entry that is not a card write's PENDING", e.seq)
        try:
            got = verify_receipt(receipt, receipt_key) if receipt_key is not None else read_receipt_unverified(receipt)
        except RecordError as exc:
            raise JournalVerifyError(f"settlement ({outcome}) not backed by a server receipt: {exc}", e.seq) from exc
        if got.terminal_id != terminal_id:
            raise JournalVerifyError(f"settlement ({outcome}) backed by a receipt for terminal "
                                     f"{got.terminal_id!r}", e.seq)
        if not any(st.entry_id == entry_id and st.seq == e.seq and st.outcome.value == outcome
                   for st in got.settlements):
            raise JournalVerifyError(f"settlement ({outcome}): its stored receipt does not settle this entry so",
                                     e.seq)


def _file_kid(meta: dict[str, object]) -> bytes | None:
    """The kid of the public key the journal file says it was written with (None if absent/unreadable)."""
    spki = meta.get("public_key_spki")
    if not isinstance(spki, bytes):
        return None
    try:
        return cose_key(public_key_from_spki(spki)).kid
    except (ValueError, UnsupportedAlgorithmError):
        return None


def _kid_message(entry_kid: bytes, given_kid: bytes, file_kid: bytes | None) -> str:
    msg = f"journal signed by key {entry_kid.hex()}, but the key/certificate given is for key {given_kid.hex()}"
    if file_kid is not None and file_kid != entry_kid:
        msg += f" (and the file names key {file_kid.hex()})"
    return msg + ": give the certificate this terminal received at enrolment"


def iter_messages(path: str | Path) -> Iterator[bytes]:
    """The signed entry bytes of a journal file in seq order (read-only)."""
    db = _read_only(Path(path))
    try:
        for (message,) in db.execute("SELECT message FROM entries ORDER BY seq"):
            yield bytes(message)
    finally:
        db.close()


__all__ = [
    "VerifyReport",
    "check_head",
    "iter_messages",
    "parse_head",
    "repair_journal_file",
    "verify_journal_file",
]
