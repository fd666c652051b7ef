"""The terminal journal store: an append-only, crash-safe SQLite file of signed, hash-chained entries.

One row per entry holds the exact COSE_Sign1 bytes of
:mod:`cardlib.records.journal` (what is uploaded and audited) next to indexed
copies of its claims (seq, kind, card, programme, amount, slot seq, …) and two
unsigned columns (the programme's ``unit``, the PENDING card state) so the daemon can answer
"is there an unfinished write for this card?" and "how much went out since
the last upload?" without decoding every entry. docs/design.md §Journal.

A daemon does not read those columns from the file: at open it checks every row against the
chain of signed entries (one signature, the head's, covers them all through the hashes) and keeps
its own copy in its connection's TEMP schema, appended to by each entry it journals; every cap,
open-write and replay look-up reads that copy, so an edit of the file (trigger dropped) under a
running daemon lifts no cap, and one made while it was stopped is refused at open
(:class:`terminal.errors.JournalEdited`; docs/security.md "What an insider with write access to the
journal file cannot fake").

Durability: WAL mode with ``synchronous=FULL`` makes SQLite fsync the WAL
before a commit returns, so :meth:`JournalStore.append` returns only once the
entry is on disk (the PENDING-before-write rule of docs/design.md §Tap sequence depends on it).
Nothing is deleted: triggers refuse DELETE and any UPDATE except marking an
entry uploaded. The server's signed settlements of torn writes (docs/reconciliation.md
§Settling torn writes) are local marks in their own table, written once, beside the
signed chain (:meth:`JournalStore.record_settlements`).

What the server confirmed (uploaded, refused, settled) counts only from what the pinned
server receipt key signed (docs/security.md "What an insider with write access to the
journal file cannot fake"): every upload receipt that marked or refused entries is kept
(``upload_receipts``) and every stored receipt and settlement row is verified again when the
journal opens; the result lives in this process only (TEMP tables and a watermark), so
``uploaded_at``, ``upload_problems`` or ``settlements`` rows written into the file by hand
change neither the exposure nor the upload queue.

Offline audit of a journal file lives in :mod:`terminal.journal_audit`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_der_public_key

from cardlib.keys.signer import PublicKey, Signer, cose_key, sign1_with, spki_der
from cardlib.records.claims import Unit
from cardlib.records.cose import parse_sign1_layout
from cardlib.records.errors import RecordError
from cardlib.records.journal import (
    GENESIS_HASH,
    JOURNAL_AAD,
    CardClaims,
    Claim,
    EntryKind,
    JournalEntry,
    SignedEntry,
    encode_payload,
    new_entry_id,
    verify_entry,
)
from cardlib.records.journal import (
    entry_hash as entry_hash_of,
)
from cardlib.records.statements import Settlement, SettlementOutcome, UploadReceipt, verify_receipt
from terminal.clock import Clock
from terminal.errors import (
    JournalDamaged,
    JournalEdited,
    JournalInUse,
    JournalReadOnly,
    JournalStoreError,
    SettlementRefused,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: At most this many problem lines are asked of ``PRAGMA integrity_check(N)``.
_MAX_PROBLEMS = 10

#: Kinds that open (PENDING, UNCERTAIN) or close (the rest) a card write.
WRITE_KINDS = (
    EntryKind.PENDING,
    EntryKind.COMMIT,
    EntryKind.UNCERTAIN,
    EntryKind.FINISHED,
    EntryKind.VOIDED,
)
#: Newest entries of a card :meth:`JournalStore.last_card_counter` reads (a recovery copies an older counter).
_COUNTER_LOOKBACK = 16
#: Upload marks (``uploaded_at``, ``upload_problems``) written before this time (POSIX ms, 2026-12-07T00:00Z)
#: stand without a stored receipt: the code that wrote them kept none. The bound is the entry's own
#: signed wall time, so no edit of the file can move an entry under it; a mark on a later entry that
#: no stored receipt backs is not believed (the entry is uploaded again, the server answers duplicate).
LEGACY_MARKS_BEFORE_MS = 1_796_601_600_000
#: :data:`WRITE_KINDS` as an SQL list of their integer codes.
_WRITE_KIND_LIST = ",".join(str(int(k)) for k in WRITE_KINDS)
#: An entry's signed wall time in ``[start, end)`` (epoch ms, two parameters), over alias ``e``.
_WALL_IN = "e.wall_ms >= ? AND e.wall_ms < ?"
#: Kinds by which this counter closes a card write itself, as an SQL list.
_CLOSING_KIND_LIST = ",".join(str(int(k)) for k in (EntryKind.COMMIT, EntryKind.FINISHED, EntryKind.VOIDED))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq            INTEGER PRIMARY KEY,          -- terminal seq, contiguous from 1
    entry_id       BLOB NOT NULL UNIQUE,         -- 16 random bytes, fixed at first write
    boot_id        INTEGER NOT NULL,
    kind           INTEGER NOT NULL,             -- cardlib.records.journal.EntryKind
    card_id        TEXT,
    programme      TEXT,
    unit           TEXT,                         -- Unit name in lower case (local index)
    amount         INTEGER,
    slot_seq_after INTEGER,
    state_hash_new BLOB,
    wall_ms        INTEGER NOT NULL,
    mono_ns        INTEGER NOT NULL,
    clock_synced   INTEGER NOT NULL,
    entry_hash     BLOB NOT NULL UNIQUE,         -- SHA-256 of message
    message        BLOB NOT NULL,                -- exact signed COSE_Sign1 bytes
    note           TEXT,                         -- unsigned local note (e.g. 'deferred'); declines are signed
    pending        BLOB,                         -- PENDING only: the new card state (CBOR), bound by state_hash_new
    uploaded_at    REAL                          -- NULL until the server acknowledged it
);
CREATE TABLE IF NOT EXISTS upload_problems (
    entry_id   BLOB PRIMARY KEY REFERENCES entries (entry_id),
    result     TEXT NOT NULL,                    -- "conflict" or "rejected" (docs/api.md)
    reason     TEXT,                             -- the server's reason code, if any
    flagged_at REAL NOT NULL                     -- POSIX seconds
);
CREATE TABLE IF NOT EXISTS settlements (
    entry_id   BLOB PRIMARY KEY REFERENCES entries (entry_id),  -- the torn write's PENDING entry
    outcome    TEXT NOT NULL CHECK (outcome IN ('finished', 'voided')),  -- took effect / did not
    settled_at REAL NOT NULL,                    -- POSIX seconds, when the signed receipt was verified
    receipt    BLOB NOT NULL                     -- the server's signed upload receipt that carried it (evidence)
);
CREATE TRIGGER IF NOT EXISTS settlements_written_once BEFORE UPDATE ON settlements
BEGIN SELECT RAISE(ABORT, 'a settlement is written once'); END;
CREATE TRIGGER IF NOT EXISTS settlements_no_delete BEFORE DELETE ON settlements
BEGIN SELECT RAISE(ABORT, 'settlements are never deleted'); END;
CREATE TABLE IF NOT EXISTS upload_receipts (
    id      INTEGER PRIMARY KEY,
    message BLOB NOT NULL                        -- a server-signed upload receipt that marked or refused entries
);
CREATE TRIGGER IF NOT EXISTS upload_receipts_written_once BEFORE UPDATE ON upload_receipts
BEGIN SELECT RAISE(ABORT, 'an upload receipt is written once'); END;
CREATE TRIGGER IF NOT EXISTS upload_receipts_no_delete BEFORE DELETE ON upload_receipts
BEGIN SELECT RAISE(ABORT, 'upload receipts are never deleted'); END;
CREATE INDEX IF NOT EXISTS entries_card ON entries (card_id, seq) WHERE card_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_unsent ON entries (seq) WHERE uploaded_at IS NULL;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
"""

#: What this process verified, kept out of the file (an insider writing the file cannot reach it):
#: seqs above the upload watermark that are done (uploaded or refused), refused seqs with the
#: server's verdict, and settlements whose signed receipt verified.
_VERIFIED_SCHEMA = """
DROP TABLE IF EXISTS temp.upload_ahead;
DROP TABLE IF EXISTS temp.upload_refused;
DROP TABLE IF EXISTS temp.verified_settlements;
CREATE TEMP TABLE upload_ahead (seq INTEGER PRIMARY KEY);
CREATE TEMP TABLE upload_refused (seq INTEGER PRIMARY KEY, result TEXT NOT NULL, reason TEXT);
CREATE TEMP TABLE verified_settlements (entry_id BLOB PRIMARY KEY, outcome TEXT NOT NULL);
"""

#: The daemon's own copy of the index columns (docs/security.md "What an insider with write access to the
#: journal file cannot fake"): every cap, open-write and replay look-up reads this, never ``entries``' columns.
#: Filled at open from rows checked against the chain-verified signed entries (:meth:`JournalStore._load_mirror`)
#: and by each append in its transaction; in the connection's TEMP schema, which no other process reaches.
#: ``pending_hash``: SHA-256 of the ``pending`` blob as verified (NULL: none, or not checked on a read-only store).
_MIRROR = "temp.verified_entries"
_MIRROR_SCHEMA = """
PRAGMA temp_store=MEMORY;
DROP TABLE IF EXISTS temp.verified_entries;
CREATE TEMP TABLE verified_entries (
    seq INTEGER PRIMARY KEY, entry_id BLOB NOT NULL UNIQUE, boot_id INTEGER NOT NULL, kind INTEGER NOT NULL,
    card_id TEXT, programme TEXT, unit TEXT, amount INTEGER, slot_seq_after INTEGER, state_hash_new BLOB,
    wall_ms INTEGER NOT NULL, entry_hash BLOB NOT NULL, pending_hash BLOB
);
CREATE INDEX temp.verified_entries_card ON verified_entries (card_id, seq) WHERE card_id IS NOT NULL;
"""
#: SQL: a column of the file's row at the mirror row's seq (alias ``entries``), by a look-up of its own so
#: that the caller's ``WHERE`` names only the mirror's columns.
_FILE_COLUMN = "(SELECT f.{0} FROM main.entries f WHERE f.seq = entries.seq)"
#: The mirrored columns, in :data:`_MIRROR_SCHEMA` order.
_MIRROR_COLUMNS = ("seq", "entry_id", "boot_id", "kind", "card_id", "programme", "unit", "amount", "slot_seq_after",
                   "state_hash_new", "wall_ms", "entry_hash", "pending_hash")
#: Index columns of ``entries`` that copy a signed claim, with the claim's key in the payload map (checked at
#: open; ``clock_synced`` and ``entry_hash`` are checked apart). A claim the payload omits is NULL.
_CLAIM_COLUMNS: tuple[tuple[str, int], ...] = tuple((name, int(claim)) for name, claim in (
    ("seq", Claim.SEQ), ("entry_id", Claim.ENTRY_ID), ("boot_id", Claim.BOOT_ID), ("kind", Claim.KIND),
    ("card_id", Claim.CARD_ID), ("programme", Claim.PROGRAMME), ("amount", Claim.AMOUNT),
    ("slot_seq_after", Claim.SLOT_SEQ_AFTER), ("state_hash_new", Claim.STATE_HASH_NEW), ("wall_ms", Claim.WALL_MS),
    ("mono_ns", Claim.MONO_NS)))
#: Unit column values (:func:`unit_column`).
_UNIT_COLUMNS = frozenset(u.name.lower() for u in Unit)
#: Kinds that copy the claims (and the unit) of the PENDING they follow (:func:`write_of`).
_FOLLOWING_KINDS = frozenset(int(k) for k in (EntryKind.COMMIT, EntryKind.UNCERTAIN, EntryKind.FINISHED,
                                              EntryKind.VOIDED))

#: Every column of ``entries`` but ``uploaded_at``; the trigger below refuses changing any of them.
_IMMUTABLE_COLUMNS = (
    "seq", "entry_id", "boot_id", "kind", "card_id", "programme", "unit", "amount", "slot_seq_after",
    "state_hash_new", "wall_ms", "mono_ns", "clock_synced", "entry_hash", "message", "note", "pending",
)

#: Live edits: only the upload mark may change, and only once. Replaced on open when a
#: journal carries an older, weaker version (which let ``unit``, ``slot_seq_after`` … change).
_UPDATE_TRIGGER = (
    "CREATE TRIGGER entries_only_mark_uploaded BEFORE UPDATE ON entries\nWHEN "
    + "\n  OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _IMMUTABLE_COLUMNS)
    + "\n  OR (OLD.uploaded_at IS NOT NULL AND NEW.uploaded_at IS NOT OLD.uploaded_at)\n"
    "BEGIN SELECT RAISE(ABORT, 'journal entries are immutable; only the upload mark may be set once'); END"
)


@dataclass(frozen=True)
class StoredEntry:
    """One journal row.

    :ivar signed: the verified-on-write entry with its exact bytes.
    :ivar unit: the programme's unit (local index, not signed) or None.
    :ivar note: unsigned local note (decline reason code) or None.
    :ivar uploaded_at: POSIX seconds when the server acknowledged it (by a receipt verified under
        the pinned key, or a mark older than :data:`LEGACY_MARKS_BEFORE_MS`), or None.
    """

    signed: SignedEntry
    unit: Unit | None
    note: str | None
    uploaded_at: float | None
    pending: bytes | None = None

    @property
    def entry(self) -> JournalEntry:
        """The decoded claims."""
        return self.signed.entry

    @property
    def seq(self) -> int:
        """Terminal sequence number."""
        return self.signed.entry.seq


class ProgrammeUnits(NamedTuple):
    """Units one card was given at this counter, by programme code (:meth:`JournalStore.card_programme_units`)."""

    card: dict[str, int]  # by card taps: redeemed, settled finished, or the open write
    fallback: dict[str, int]  # by the fallback desk (QR or supervisor entry)


@dataclass(frozen=True, kw_only=True)
class CardWrite(CardClaims):
    """The claims of a card write, as given to :meth:`JournalStore.append` (keywords only).

    The signed card claims are :class:`cardlib.records.journal.CardClaims` (card id,
    UID, programme, amount, slot sequence numbers and hashes, NFC counter, decline
    reason); an empty ``card_id`` is journalled as none.

    :ivar unit: the programme's unit, indexed locally for exposure sums (not signed).
    """

    unit: Unit | None = None


class JournalStore:
    """The journal of one terminal in one SQLite file. Thread-safe (one internal lock).

    Opening increments the boot counter and writes a BOOT entry; entries of an
    earlier boot left PENDING (a crash between PENDING and COMMIT) are followed
    by an UNCERTAIN entry each, so recovery on the card's next presentation
    sees them (docs/design.md §Tap sequence, step 6).

    :param path: the SQLite file (created with its schema when missing).
    :param terminal_id: the registered terminal id; must match an existing file's.
    :param signer: the terminal key (software or PKCS#11).
    :param clock: the clock source (wall, monotonic, synced flag).
    :param receipt_key: the server receipt key pinned at enrolment: stored receipts and settlements
        are verified under it when the journal opens. None (offline tools): nothing after
        :data:`LEGACY_MARKS_BEFORE_MS` counts as uploaded or settled until :meth:`use_receipt_key`.
    One writer per file: opening takes an exclusive ``flock`` on ``<journal>.lock``
    (:func:`lock_path`) and on the journal file itself (:func:`lock_journal_file`, so
    unlinking the lock file does not let a second one in) before anything is read or
    written, held until :meth:`close`, so a second daemon on the same profile is refused
    and writes nothing. To read a journal a daemon may hold (``huma terminal status``) use
    :meth:`open_read_only` instead.

    :raises JournalInUse: another open store (another ``huma terminal run``) holds the file.
    :raises JournalEdited: a row disagrees with the signed entries (:meth:`_load_mirror`); nothing journalled.
    :raises JournalDamaged: SQLite reports the file damaged.
    :raises JournalStoreError: the file belongs to another terminal or key, or cannot be opened.
    """

    _writer_fd: int | None
    _file_fd: int | None
    #: Boots counted: this store's own boot on a writer, the boots so far on a read-only store.
    boot_id: int
    _seq: int
    _head: bytes
    _wall_mark_ms: int

    def __init__(
        self, path: str | Path, *, terminal_id: str, signer: Signer, clock: Clock | None = None,
        receipt_key: PublicKey | None = None,
    ) -> None:
        self._setup(Path(path), terminal_id, signer, clock or Clock(), receipt_key)
        self._key = cose_key(signer)
        self._writer_fd = take_writer_lock(self.path)
        try:
            self._file_fd = lock_journal_file(self.path)
            self._open()
        except BaseException:
            self._release_writer_lock()
            raise

    @classmethod
    def open_read_only(cls, path: str | Path, receipt_key: PublicKey | None = None) -> JournalStore:
        """Open a journal to read it only, beside a daemon that may hold it (``huma terminal status``).

        SQLite opens the file with ``mode=ro`` (SQLite "URI filenames"), plus ``immutable=1`` when
        no ``-wal`` file lies beside it (no daemon has it open: the file is all there is, and no
        ``-wal``/``-shm`` is created). No writer lock is taken, no BOOT or UNCERTAIN entry is
        journalled, the boot counter is not moved, no table or trigger of a newer schema is
        created: the journal's bytes are not changed (a daemon's ``-shm``, SQLite's WAL index,
        records the read mark of every reader). The integrity check the daemon runs at open is
        not run (``huma journal verify`` does it). What the server confirmed is rebuilt as at a
        daemon's open, from the stored receipts verified under ``receipt_key``, in this process
        only. The terminal id and key are the file's own (``meta``).

        Read methods answer as on a daemon's store; :meth:`append`, :meth:`record_receipt` and
        :meth:`record_settlements` raise :class:`terminal.errors.JournalReadOnly`.
        :meth:`close` closes the connection.

        :param path: the SQLite journal file; it must exist.
        :param receipt_key: the server receipt key pinned at enrolment; None: nothing after
            :data:`LEGACY_MARKS_BEFORE_MS` counts as uploaded or settled.
        :returns: the read-only store (:attr:`read_only` True, :attr:`boot_id` the boots counted so far).
        :raises JournalStoreError: the file is missing, not a journal (no ``meta``/``entries``, no
            terminal key) or unreadable.
        """
        store = cls.__new__(cls)
        store._setup(Path(path), "", None, Clock(), receipt_key)
        store._open_read_only()
        return store

    def _setup(self, path: Path, terminal_id: str, signer: Signer | None, clock: Clock,
               receipt_key: PublicKey | None) -> None:
        """The state every store holds before its file is opened (``signer`` None: read-only)."""
        self.path = path
        self._receipt_key = receipt_key
        #: Upload watermark: every seq up to it is uploaded or refused by a verified receipt.
        self._upto = 0
        self.terminal_id = terminal_id
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        #: Held from reading the exposure to journalling the entry that spends it, by every
        #: path that hands out units on this journal (card taps and the fallback desk), so two
        #: of them cannot both pass one cap. Apart from the store's own lock (taken inside).
        self.decision_lock = threading.Lock()
        self._writer_fd = None
        self._file_fd = None

    def _open_read_only(self) -> None:
        """Connect read-only and load the head, boot count and verified receipts (see :meth:`open_read_only`)."""
        mode = "ro" if Path(f"{self.path}-wal").exists() else "ro&immutable=1"
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={mode}", uri=True,
                                       isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalStoreError(f"cannot read journal {self.path}: {exc}") from exc
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            last = self._db.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            (newest_ms,) = self._db.execute("SELECT max(wall_ms) FROM entries").fetchone()
            public = load_der_public_key(bytes(meta["public_key_spki"]))
            if not isinstance(public, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
                raise ValueError(f"its key is a {type(public).__name__}")
            self.terminal_id = str(meta["terminal_id"])
            with self._lock:
                # Read-only looks read the file's columns as they are, live beside a daemon that writes on
                # (``huma journal verify`` checks them): the mirror's name is a view of them.
                self._db.executescript(
                    "PRAGMA temp_store=MEMORY; DROP VIEW IF EXISTS temp.verified_entries; CREATE TEMP VIEW"
                    f" verified_entries AS SELECT {', '.join(_MIRROR_COLUMNS[:-1])}, NULL AS pending_hash"
                    " FROM main.entries")
                self._load_verified()
        except (sqlite3.Error, KeyError, ValueError) as exc:
            self._db.close()
            raise JournalStoreError(f"cannot read journal {self.path}: {exc}") from exc
        self._key = cose_key(public)
        self.boot_id = int(meta.get("boot_count", 0))
        self._seq = int(last[0]) if last else 0
        self._head = bytes(last[1]) if last else GENESIS_HASH
        self._wall_mark_ms = int(newest_ms or 0)

    @property
    def read_only(self) -> bool:
        """Opened by :meth:`open_read_only`: no lock held, every writing method raises."""
        return self._signer is None

    def _writer(self) -> Signer:
        """The terminal key, for a method about to write.

        :raises JournalReadOnly: the store was opened read-only.
        """
        if self._signer is None:
            raise JournalReadOnly(f"journal {self.path} is open read-only; nothing written")
        return self._signer

    def _open(self) -> None:
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError as exc:  # locked, unreadable directory, …
            raise JournalStoreError(f"cannot open journal {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT / SQLITE_NOTADB
            raise damaged_error(self.path, "open", (str(exc),), serving=True) from exc
        except sqlite3.Error as exc:
            raise JournalStoreError(f"cannot open journal {self.path}: {exc}") from exc
        # The look-ups that guard against double charging (open_write,
        # last_committed_slot_seq, exposure) go through the indexes: a damaged
        # index hides a card's history, so refuse to serve on it. A full
        # integrity_check, not quick_check: only it compares indexes with rows.
        check_sqlite_file(self._db, self.path, serving=True)
        try:
            self._db.executescript(_SCHEMA)
            (trigger,) = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name='entries_only_mark_uploaded'"
                " AND sql=?", (_UPDATE_TRIGGER,)).fetchone()
            if not trigger:
                self._db.executescript("BEGIN IMMEDIATE; DROP TRIGGER IF EXISTS entries_only_mark_uploaded; "
                                       f"{_UPDATE_TRIGGER}; COMMIT;")
        except sqlite3.Error as exc:
            raise JournalStoreError(f"cannot open journal {self.path}: {exc}") from exc
        self._check_identity()
        with self._lock:
            self._load_mirror()
            self._load_verified()
        self.boot_id = self._next_boot()
        last = self._db.execute(f"SELECT seq, entry_hash FROM {_MIRROR} ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq = int(last[0]) if last else 0
        self._head = bytes(last[1]) if last else GENESIS_HASH
        # One scan at open (no index on wall_ms), then kept up by append(): see wall_mark().
        (newest_ms,) = self._db.execute(f"SELECT max(wall_ms) FROM {_MIRROR}").fetchone()
        self._wall_mark_ms = int(newest_ms or 0)
        self.append(EntryKind.BOOT)
        for open_write in self._open_writes_at_boot():
            w = open_write.entry
            log.warning("journal: write seq %d was interrupted by a restart; marked UNCERTAIN", w.seq)
            self.append(EntryKind.UNCERTAIN, write_of(open_write))

    # ------------------------------------------------------------------ set-up

    def _check_identity(self) -> None:
        kid = self._writer().kid
        row = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not row:
            key = self._key

            with self._tx():
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("terminal_id", self.terminal_id),
                        ("kid", kid),
                        ("public_key_spki", spki_der(key.public_key)),
                        ("boot_count", "0"),
                    ],
                )
            return
        if row.get("terminal_id") != self.terminal_id:
            raise JournalStoreError(
                f"journal {self.path} belongs to terminal {row.get('terminal_id')!r}, "
                f"not {self.terminal_id!r}"
            )
        if bytes(row.get("kid", b"")) != kid:
            # A re-keyed terminal starts a new journal file; one chain, one key.
            raise JournalStoreError(f"journal {self.path} was signed by another terminal key")

    def _load_mirror(self) -> None:
        """Check every row against the signed entries and fill :data:`_MIRROR` from them (caller holds ``_lock``).

        What is checked, and why it is enough (docs/security.md "What an insider with write access to the
        journal file cannot fake"):

        - the chain: seqs contiguous from 1, each entry's ``prev_entry_hash`` the SHA-256 of the previous
          message, each entry this terminal's; and the **newest entry's signature** under the terminal key.
          The head's signed payload holds the hash of the entry before it, whose payload holds the hash of
          the one before, and so on: one signature covers every message (SHA-256 is collision resistant),
          so the others are decoded without checking theirs (one Ed25519 check per open, not per entry);
        - each row's index columns equal the claims of its payload, value and type (``entry_hash`` the
          SHA-256 of ``message``). The payload is read as a CBOR map, not re-validated as
          :func:`cardlib.records.journal.verify_entry` does: bytes the chain ties to the signed head are
          this daemon's own output;
        - the unsigned ``unit`` as far as the signed entries allow (as ``huma journal verify``: a unit
          value, present on a PENDING with an amount, the same on the entries that close a write as on
          its PENDING); ``pending`` only on PENDING entries. The blob's slot record is checked against
          the signed ``state_hash_new`` where it is used (recovery of a torn write, ``terminal.tap`` and
          ``terminal.secure_tap``); its other fields are not signed and no check can tell them apart.
          Its SHA-256 as read here is kept, so a blob changed under the running daemon is refused.

        Not found here: a whole write's (or a FALLBACK entry's) unit changed consistently while the
        daemon was stopped (the unit is not signed; the caps by programme are not moved by it), and
        deleting the newest entries (the chain of what is left verifies; the server finds it from the
        signed head it was sent, docs/security.md).

        :raises JournalEdited: a row disagrees (the file was edited); nothing is repaired.
        """
        self._db.executescript(_MIRROR_SCHEMA)
        cols = [name for name, _ in _CLAIM_COLUMNS]
        n = len(cols)
        cursor = self._db.execute(f"SELECT {', '.join(cols)}, clock_synced, entry_hash, unit, pending, message"
                                  " FROM entries ORDER BY seq")
        seq_key, prev_key, terminal_key = int(Claim.SEQ), int(Claim.PREV_ENTRY_HASH), int(Claim.TERMINAL_ID)
        synced_key, kind_key, card_key, amount_key = (int(Claim.CLOCK_SYNCED), int(Claim.KIND), int(Claim.CARD_ID),
                                                      int(Claim.AMOUNT))
        pending_kind = int(EntryKind.PENDING)
        link: bytes = GENESIS_HASH
        expected = 1
        last_message: bytes | None = None
        pending_unit: dict[object, object] = {}
        batch: list[tuple[object, ...]] = []
        insert = f"INSERT INTO {_MIRROR} VALUES ({','.join('?' * len(_MIRROR_COLUMNS))})"
        for row in cursor:
            message = row[-1]
            # Decoded without a signature check: the chain below ties these bytes to the head, which is checked.
            layout = parse_sign1_layout(message) if isinstance(message, bytes) else None
            try:
                claims = cbor2.loads(layout[3]) if layout is not None else None
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
                claims = None
            if type(claims) is not dict:
                raise self._edited("its signed entry does not decode", expected)
            seq = claims.get(seq_key)
            if seq != expected or claims.get(prev_key) != link or claims.get(terminal_key) != self.terminal_id:
                raise self._edited(f"the chain of signed entries breaks at seq {expected}", expected)
            hashed = hashlib.sha256(message).digest()
            for i, (name, key) in enumerate(_CLAIM_COLUMNS):
                stored, value = row[i], claims.get(key)
                if stored != value or type(stored) is not type(value):
                    raise self._edited(f"index column {name} differs from the signed entry", seq)
            synced = claims.get(synced_key)
            if type(synced) is not bool or row[n] != int(synced) or type(row[n]) is not int:
                raise self._edited("index column clock_synced differs from the signed entry", seq)
            if row[n + 1] != hashed:
                raise self._edited("index column entry_hash is not the SHA-256 of its signed entry", seq)
            unit, pending = row[n + 2], row[n + 3]
            kind, card = claims.get(kind_key), claims.get(card_key)
            # The unit is not signed: checked as far as the signed entries allow (as huma journal verify).
            if unit is not None and unit not in _UNIT_COLUMNS:
                raise self._edited(f"index column unit holds {unit!r}, not a unit", seq)
            if kind == pending_kind:
                if claims.get(amount_key) is not None and unit is None:
                    raise self._edited("index column unit is empty on a PENDING entry with an amount", seq)
                if card is not None:
                    pending_unit[card] = unit
            elif kind in _FOLLOWING_KINDS and card in pending_unit and (
                    unit != pending_unit[card] or type(unit) is not type(pending_unit[card])):
                raise self._edited("index column unit differs from that of the PENDING write it follows", seq)
            if pending is not None and (kind != pending_kind or not isinstance(pending, bytes)):
                raise self._edited("column pending holds a card state on an entry that is not a PENDING", seq)
            batch.append((seq, row[1], row[2], kind, card, row[5], unit, row[6], row[7], row[8], row[9], hashed,
                          None if pending is None else hashlib.sha256(pending).digest()))
            if len(batch) >= 1000:
                self._db.executemany(insert, batch)
                batch.clear()
            link, last_message, expected = hashed, message, seq + 1
        self._db.executemany(insert, batch)
        if last_message is not None:
            try:
                head = verify_entry(last_message, {self._key.kid: self._key})
            except RecordError as exc:
                raise self._edited(f"the newest entry's signature does not verify under this terminal's key "
                                   f"({exc})", expected - 1) from exc
            if head.entry_hash != link or head.entry.seq != expected - 1:
                raise self._edited("the newest entry is not the one the chain ends in", expected - 1)

    def _edited(self, what: str, seq: int | None) -> JournalEdited:
        """The :class:`JournalEdited` a counter raises for a row that disagrees with the signed entries."""
        at = f"entry seq {seq}: " if seq is not None else ""
        return JournalEdited(
            f"{self.path}: the journal file was edited outside the counter ({at}{what}) — the counter will not "
            "serve taps on it (its offline limits are summed from these rows); stop the counter, keep the file "
            "with its -wal/-shm as evidence, run `huma journal verify` and follow docs/terminal.md "
            "\"Damaged journal\"", seq)

    def _next_boot(self) -> int:
        with self._tx():
            (count,) = self._db.execute("SELECT value FROM meta WHERE key='boot_count'").fetchone()
            boot = int(count) + 1
            self._db.execute("UPDATE meta SET value=? WHERE key='boot_count'", (str(boot),))
        return boot

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # ------------------------------------------------------------------ writing

    def append(
        self,
        kind: EntryKind,
        write: CardWrite | Callable[[int], tuple[CardWrite, bytes]] | None = None,
        *,
        note: str | None = None,
        entry_id: bytes | None = None,
    ) -> StoredEntry:
        """Sign, chain and durably store one entry; return only after fsync.

        :param kind: the entry kind.
        :param write: the card claims (None for BOOT and other housekeeping), or for
            PENDING a builder called with the entry's seq under the journal lock that
            returns the claims and the new card state bytes (the slot signs the seq).
        :param note: an unsigned local note (e.g. the decline reason code).
        :param entry_id: the entry's 16-byte id when the caller derives it (a ``COMPLAINT`` entry's id seals
            the complaint, :mod:`cardlib.records.complaint`); default a fresh UUIDv7.
        :returns: the stored entry with its exact signed bytes.
        :raises JournalStoreError: the disk refused the write (the caller must not
            touch the card: docs/design.md §Tap sequence wants PENDING on disk first).
        :raises JournalReadOnly: the store was opened by :meth:`open_read_only`.
        """
        signer = self._writer()
        with self._lock:
            blob: bytes | None = None
            if callable(write):
                w, blob = write(self._seq + 1)
            else:
                w = write or CardWrite()
            stamp = self._clock.now()
            entry = JournalEntry(
                entry_id=entry_id or new_entry_id(),
                terminal_id=self.terminal_id,
                boot_id=self.boot_id,
                seq=self._seq + 1,
                kind=kind,
                wall_ms=int(stamp.wall * 1000),
                mono_ns=int(stamp.mono * 1e9),
                clock_synced=stamp.synced,
                prev_entry_hash=self._head,
                **{**w.card_claims(), "card_id": w.card_id or None},
            )
            message = sign1_with(signer, encode_payload(entry), JOURNAL_AAD)
            signed = SignedEntry(entry=entry, message=message, kid=signer.kid)
            try:
                with self._tx():
                    self._db.execute(
                        "INSERT INTO entries (seq, entry_id, boot_id, kind, card_id, programme, unit,"
                        " amount, slot_seq_after, state_hash_new, wall_ms, mono_ns, clock_synced,"
                        " entry_hash, message, note, pending) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            entry.seq,
                            entry.entry_id,
                            entry.boot_id,
                            int(kind),
                            entry.card_id,
                            entry.programme,
                            None if w.unit is None else unit_column(w.unit),
                            entry.amount,
                            entry.slot_seq_after,
                            entry.state_hash_new,
                            entry.wall_ms,
                            entry.mono_ns,
                            int(entry.clock_synced),
                            signed.entry_hash,
                            message,
                            note,
                            blob,
                        ),
                    )
                    self._db.execute(
                        f"INSERT INTO {_MIRROR} VALUES ({','.join('?' * len(_MIRROR_COLUMNS))})",
                        (entry.seq, entry.entry_id, entry.boot_id, int(kind), entry.card_id, entry.programme,
                         None if w.unit is None else unit_column(w.unit), entry.amount, entry.slot_seq_after,
                         entry.state_hash_new, entry.wall_ms, signed.entry_hash,
                         None if blob is None else hashlib.sha256(blob).digest()))
            except sqlite3.Error as exc:
                raise JournalStoreError(f"journal append failed: {exc}") from exc
            self._seq, self._head = entry.seq, signed.entry_hash
            self._wall_mark_ms = max(self._wall_mark_ms, entry.wall_ms)
            return StoredEntry(signed=signed, unit=w.unit, note=note, uploaded_at=None, pending=blob)

    # ------------------------------------------------------------------ what the server signed

    @property
    def receipt_key(self) -> PublicKey | None:
        """The pinned server receipt key the store verifies receipts under, or None."""
        return self._receipt_key

    def use_receipt_key(self, key: PublicKey) -> None:
        """Verify receipts under ``key`` from now on (a store opened without one reads its stored ones again).

        :raises JournalStoreError: the store already verifies under another key.
        """
        if self._receipt_key is not None:
            if spki_der(self._receipt_key) != spki_der(key):
                raise JournalStoreError("the journal was opened with another server receipt key than the sync's")
            return
        with self._lock:
            self._receipt_key = key
            self._load_verified()

    def _verify(self, message: bytes) -> UploadReceipt:
        """A receipt verified under the pinned key and naming this terminal.

        :raises JournalStoreError: no key pinned, a bad signature or shape, another terminal.
        """
        if self._receipt_key is None:
            raise JournalStoreError("the journal was opened without the pinned server receipt key; "
                                    "it records no receipt")
        try:
            got = verify_receipt(message, self._receipt_key)
        except RecordError as exc:
            raise JournalStoreError(f"upload receipt does not verify under the pinned server key: {exc}") from exc
        if got.terminal_id != self.terminal_id:
            raise JournalStoreError(f"upload receipt is for terminal {got.terminal_id!r}")
        return got

    def _load_verified(self) -> None:
        """Rebuild what the server confirmed from what it signed (caller holds ``_lock``; open time only).

        Legacy marks on entries dated before :data:`LEGACY_MARKS_BEFORE_MS` first, then every
        stored upload receipt and settlement row verified again under the pinned key; rows that
        do not verify (written by hand, another key or terminal) are logged and ignored.
        """
        self._db.executescript(_VERIFIED_SCHEMA)
        # A file no daemon of this version opened yet (a read-only look) may lack the later tables.
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        problems = "upload_problems" if "upload_problems" in tables else "(SELECT NULL AS entry_id WHERE 0)"
        # The signed wall time from the mirror, the legacy mark from the file.
        rows = f"{_MIRROR} v LEFT JOIN main.entries f ON f.seq = v.seq"
        legacy = (f"v.wall_ms < {LEGACY_MARKS_BEFORE_MS} AND (f.uploaded_at IS NOT NULL"
                  f" OR v.entry_id IN (SELECT entry_id FROM {problems}))")
        first = self._db.execute(f"SELECT v.seq FROM {rows} WHERE NOT ({legacy}) ORDER BY v.seq LIMIT 1").fetchone()
        if first is None:
            (last,) = self._db.execute(f"SELECT coalesce(max(seq), 0) FROM {_MIRROR}").fetchone()
            self._upto = int(last)
        else:
            self._upto = int(first[0]) - 1
        self._db.execute(f"INSERT INTO temp.upload_ahead SELECT v.seq FROM {rows} WHERE v.seq > ? AND {legacy}",
                         (self._upto,))
        if "upload_problems" in tables:
            self._db.execute("INSERT INTO temp.upload_refused SELECT e.seq, p.result, p.reason FROM upload_problems p"
                             f" JOIN {_MIRROR} e USING (entry_id) WHERE e.wall_ms < {LEGACY_MARKS_BEFORE_MS}")
        if self._receipt_key is not None:
            stored = (self._db.execute("SELECT id, message FROM upload_receipts ORDER BY id").fetchall()
                      if "upload_receipts" in tables else [])
            for rowid, message in stored:
                try:
                    self._apply_receipt(self._verify(bytes(message)))
                except JournalStoreError as exc:
                    log.error("journal: stored upload receipt %d ignored (%s); its entries count as not uploaded",
                              rowid, exc)
            if "settlements" in tables:
                self._load_settlements()
        self._advance()

    def _load_settlements(self) -> None:
        """Settlement rows whose stored receipt verifies and settles that entry, at its seq, so."""
        for entry_id, outcome, receipt in self._db.execute(
                "SELECT entry_id, outcome, receipt FROM settlements ORDER BY rowid").fetchall():
            entry_id = bytes(entry_id)
            row = self._db.execute(f"SELECT seq, kind, card_id FROM {_MIRROR} WHERE entry_id=?",
                                   (entry_id,)).fetchone()
            try:
                got = self._verify(bytes(receipt))
            except JournalStoreError as exc:
                log.error("journal: settlement row of entry %s… ignored (%s)", entry_id.hex()[:8], exc)
                continue
            if (row is None or int(row[1]) != int(EntryKind.PENDING) or row[2] is None
                    or Settlement(entry_id, int(row[0]), SettlementOutcome(outcome)) not in got.settlements):
                log.error("journal: settlement row of entry %s… ignored: its receipt does not settle that write so",
                          entry_id.hex()[:8])
                continue
            self._db.execute("INSERT OR IGNORE INTO temp.verified_settlements VALUES (?,?)", (entry_id, outcome))

    def _apply_receipt(self, receipt: UploadReceipt) -> tuple[list[int], list[tuple[int, str, str | None]]]:
        """Mark what a verified receipt confirms in this process's state (caller holds ``_lock``).

        Only lines naming the entry this journal holds at that seq count (a journal cut and written on
        holds other entries at old seqs). :returns: seqs newly uploaded, and ``(seq, result, reason)``
        newly refused.
        """
        seqs = [ln.seq for ln in receipt.lines if ln.seq is not None]
        if not seqs:
            return [], []
        held = {int(r[0]): bytes(r[1]) for r in self._db.execute(
            f"SELECT seq, entry_id FROM {_MIRROR} WHERE seq BETWEEN ? AND ?", (min(seqs), max(seqs)))}
        done: list[int] = []
        refused: list[tuple[int, str, str | None]] = []
        for ln in receipt.lines:
            if ln.seq is None or held.get(ln.seq) != ln.entry_id or self._refused(ln.seq):
                continue
            if ln.result in ("conflict", "rejected"):
                self._db.execute("INSERT INTO temp.upload_refused VALUES (?,?,?)", (ln.seq, ln.result, ln.reason))
                refused.append((ln.seq, ln.result, ln.reason))
            elif ln.result not in ("accepted", "duplicate") or self._done(ln.seq):
                continue
            else:
                done.append(ln.seq)
            if ln.seq > self._upto:
                self._db.execute("INSERT OR IGNORE INTO temp.upload_ahead VALUES (?)", (ln.seq,))
        return done, refused

    def _refused(self, seq: int) -> bool:
        return self._db.execute("SELECT 1 FROM temp.upload_refused WHERE seq=?", (seq,)).fetchone() is not None

    def _done(self, seq: int) -> bool:
        return seq <= self._upto or self._db.execute(
            "SELECT 1 FROM temp.upload_ahead WHERE seq=?", (seq,)).fetchone() is not None

    def _advance(self) -> None:
        """Move the watermark over the done seqs just above it (caller holds ``_lock``)."""
        for (seq,) in self._db.execute("SELECT seq FROM temp.upload_ahead WHERE seq > ? ORDER BY seq",
                                       (self._upto,)).fetchall():
            if seq != self._upto + 1:
                break
            self._upto = seq
        self._db.execute("DELETE FROM temp.upload_ahead WHERE seq <= ?", (self._upto,))

    def _unsent_sql(self, alias: str) -> str:
        """SQL: the row is neither uploaded nor refused (caller holds ``_lock``; the watermark is our int)."""
        return f"({alias}.seq > {int(self._upto)} AND {alias}.seq NOT IN (SELECT seq FROM temp.upload_ahead))"

    def _unconfirmed_sql(self, alias: str) -> str:
        """SQL: the row is not confirmed uploaded (unsent, or refused by the server: it keeps counting)."""
        return f"({self._unsent_sql(alias)} OR {alias}.seq IN (SELECT seq FROM temp.upload_refused))"

    def record_receipt(self, receipt: bytes,
                       when: float | None = None) -> tuple[int, list[tuple[int, str, str | None]]]:
        """Record a server-signed upload receipt: entries it names ``accepted``/``duplicate`` are uploaded,
        ``conflict``/``rejected`` refused (kept, counted in the exposure, not offered again).

        The receipt is verified here again under the pinned key and kept (``upload_receipts``) when it
        confirms or refuses anything new, so the marks survive a restart only as far as it verifies.
        ``uploaded_at`` and ``upload_problems`` are still written for people reading the file; the
        daemon does not read them back (but for entries before :data:`LEGACY_MARKS_BEFORE_MS`).

        :param receipt: the receipt's exact signed bytes (the caller checked it answers its request).
        :param when: POSIX seconds for ``uploaded_at``; defaults to now.
        :returns: how many entries were newly marked uploaded, and ``(seq, result, reason)`` newly refused.
        :raises JournalStoreError: no pinned key, the receipt does not verify or names another terminal,
            or the disk refused the write (then nothing changed).
        :raises JournalReadOnly: the store was opened by :meth:`open_read_only` (nothing changed).
        """
        self._writer()
        got = self._verify(receipt)
        at = time.time() if when is None else when
        with self._lock:
            upto = self._upto
            try:
                with self._tx():
                    done, refused = self._apply_receipt(got)
                    if done or refused:
                        self._db.execute("INSERT INTO upload_receipts (message) VALUES (?)", (receipt,))
                        self._db.executemany("UPDATE entries SET uploaded_at=? WHERE seq=? AND uploaded_at IS NULL",
                                             [(at, seq) for seq in done])
                        self._db.executemany(
                            "INSERT OR REPLACE INTO upload_problems (entry_id, result, reason, flagged_at)"
                            f" SELECT entry_id, ?, ?, ? FROM {_MIRROR} WHERE seq=?",
                            [(result, reason, at, seq) for seq, result, reason in refused])
                    self._advance()
            except sqlite3.Error as exc:
                self._upto = upto  # the TEMP rows rolled back with the transaction
                raise JournalStoreError(f"recording an upload receipt failed: {exc}") from exc
            return len(done), refused

    # ------------------------------------------------------------------ reading

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[StoredEntry]:
        """Entries chosen by ``sql`` over the mirror (``WHERE …`` on its columns, alias ``entries``).

        The row's message and ``pending`` are read from the file and must still hash to what was
        verified (a row edited while the daemon runs is refused, not believed).

        :raises JournalEdited: a chosen row's bytes changed (or it vanished) since they were verified.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMN.format('message')}, entries.unit, {_FILE_COLUMN.format('note')},"
                " CASE WHEN NOT " + self._unconfirmed_sql("entries")
                + f" THEN coalesce({_FILE_COLUMN.format('uploaded_at')}, 0.0) END, {_FILE_COLUMN.format('pending')},"
                f" entries.seq, entries.entry_hash, entries.pending_hash FROM {_MIRROR} AS entries "
                + sql,
                params,
            ).fetchall()
        keys = {self._key.kid: self._key}
        out = []
        for message, unit, note, uploaded_at, pending, seq, hashed, pending_hash in rows:
            if not isinstance(message, bytes) or entry_hash_of(message) != hashed:
                raise self._edited("its signed entry changed in the file since the counter verified it", seq)
            if pending_hash is not None and (not isinstance(pending, bytes)
                                             or hashlib.sha256(pending).digest() != pending_hash):
                raise self._edited("its pending card state changed in the file since the counter verified it", seq)
            out.append(StoredEntry(
                signed=verify_entry(message, keys), unit=None if unit is None else unit_of_column(unit),
                note=note, uploaded_at=uploaded_at, pending=None if pending is None else bytes(pending),
            ))
        return out

    def unsent(self, limit: int = 500) -> list[StoredEntry]:
        """The oldest entries no verified receipt confirmed or refused, in seq order.

        Entries the server refused (conflict or rejected, by a verified receipt) stay in the
        journal, unsent, and are not offered again: a retry cannot change the server's verdict,
        and re-sending them would block the queue. A mark written into the file by hand does not
        take an entry out of this queue.
        """
        with self._lock:
            where = self._unsent_sql("entries")
        return self._rows(f"WHERE {where} ORDER BY seq LIMIT ?", (limit,))

    def upload_problems(self) -> list[tuple[int, str, str | None]]:
        """``(seq, result, reason)`` of every entry a verified receipt refused, in seq order."""
        with self._lock:
            return [(int(r[0]), str(r[1]), r[2])
                    for r in self._db.execute("SELECT seq, result, reason FROM temp.upload_refused ORDER BY seq")]

    def unsent_count(self) -> int:
        """How many entries wait for upload (refused ones excluded)."""
        with self._lock:
            return int(self._db.execute(
                f"SELECT count(*) FROM {_MIRROR} e WHERE {self._unsent_sql('e')}").fetchone()[0])

    def entries(self, after_seq: int = 0, limit: int = 1000) -> list[StoredEntry]:
        """Entries with seq > ``after_seq`` in order (for export and tests)."""
        return self._rows("WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))

    def recent(self, kinds: Sequence[EntryKind], since: float, until: float, limit: int = 500) -> list[StoredEntry]:
        """Entries of ``kinds`` dated in ``[since, until]`` (POSIX seconds, the signed wall time), newest first.

        :param limit: at most this many (the newest).
        """
        marks = ",".join("?" * len(kinds))
        return self._rows(f"WHERE kind IN ({marks}) AND wall_ms BETWEEN ? AND ? ORDER BY seq DESC LIMIT ?",
                          (*(int(k) for k in kinds), int(since * 1000), int(until * 1000), limit))

    def wall_mark(self) -> float:
        """The newest wall time of any entry in the journal, POSIX seconds (0.0: empty).

        A floor under the counter's trusted time (:func:`terminal.tap.clock_wrong`): the clock
        already read that late, so a clock set back since is wrong.
        """
        with self._lock:
            return self._wall_mark_ms / 1000

    @property
    def head(self) -> tuple[int, bytes]:
        """``(last seq, its entry hash)``; ``(0, GENESIS_HASH)`` for an empty journal."""
        with self._lock:
            return self._seq, self._head

    def open_write(self, card_id: str) -> StoredEntry | None:
        """The unfinished card write for ``card_id``, if any.

        :returns: the PENDING entry whose write has no COMMIT, FINISHED or
            VOIDED after it (possibly followed by UNCERTAIN) and no settlement by the
            server (:meth:`record_settlements`), else None.
        """
        rows = self._rows(
            f"WHERE card_id=? AND kind IN ({_WRITE_KIND_LIST}) ORDER BY seq DESC LIMIT 1",
            (card_id,),
        )
        if not rows or rows[0].entry.kind not in (EntryKind.PENDING, EntryKind.UNCERTAIN):
            return None
        last = rows[0]
        if last.entry.kind is EntryKind.PENDING:
            return None if self._settled(last.entry.entry_id) is not None else last
        # UNCERTAIN copies the PENDING claims; return the PENDING it refers to.
        pend = self._rows(
            "WHERE card_id=? AND kind=? AND seq<? ORDER BY seq DESC LIMIT 1",
            (card_id, int(EntryKind.PENDING), last.seq),
        )
        write = pend[0] if pend else last
        return None if self._settled(write.entry.entry_id) is not None else write

    def _settled(self, entry_id: bytes) -> SettlementOutcome | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM temp.verified_settlements WHERE entry_id=?",
                                   (entry_id,)).fetchone()
        return None if row is None else SettlementOutcome(row[0])

    def _open_writes_at_boot(self) -> list[StoredEntry]:
        with self._lock:
            cards = [
                r[0]
                for r in self._db.execute(
                    f"SELECT DISTINCT card_id FROM {_MIRROR} WHERE kind=? AND card_id IS NOT NULL"
                    " AND boot_id<?",
                    (int(EntryKind.PENDING), self.boot_id),
                ).fetchall()
            ]
        out = []
        for card in cards:
            w = self.open_write(card)
            if w is not None and w.entry.kind is EntryKind.PENDING:
                last = self._rows(
                    f"WHERE card_id=? AND kind IN ({_WRITE_KIND_LIST}) ORDER BY seq DESC LIMIT 1",
                    (card,),
                )
                if last and last[0].entry.kind is EntryKind.PENDING:
                    out.append(w)
        return out

    def last_committed_slot_seq(self, card_id: str) -> int | None:
        """Highest slot seq committed here for the card (replay check, docs/design.md §Caps and offline limits)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT max(slot_seq_after) FROM {_MIRROR} WHERE card_id=? AND kind IN (?, ?)",
                (card_id, int(EntryKind.COMMIT), int(EntryKind.FINISHED)),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def last_card_counter(self, card_id: str) -> int | None:
        """Highest transaction counter of a `secure` card journalled here (docs/secure-card.md §5.1), else None.

        A secure card's entries carry no tag UID and its signed counter in the NFC counter claim. A tap
        journals only a counter above every earlier one, so the newest entries hold the highest: the
        last :data:`_COUNTER_LOOKBACK` of the card are read (each row is verified, a card's whole
        history would cost a signature check per entry it ever had).
        """
        rows = self._rows("WHERE card_id=? ORDER BY seq DESC LIMIT ?", (card_id, _COUNTER_LOOKBACK))
        counters = [s.entry.ntag_counter for s in rows if s.entry.tag_uid is None and s.entry.ntag_counter is not None]
        return max(counters, default=None)

    def exposure(self, card_id: str | None = None, *, open_since: float | None = None) -> dict[Unit, int]:
        """Units handed out and not yet confirmed uploaded, by unit (for the offline limits).

        Counts COMMIT, FINISHED and FALLBACK (units served without writing a card,
        :mod:`terminal.fallback`) entries no upload receipt verified under the pinned server
        key confirmed (:meth:`record_receipt`; a mark in the file alone does not count), plus writes still open (last
        write entry of the card is PENDING or UNCERTAIN: maybe spent, counted until
        resolved). VOIDED writes count nothing.

        A torn write the card could not settle (the card moved on elsewhere, ``deferred``)
        is decided by server reconciliation from the card's later states; once its signed
        settlement is recorded (:meth:`record_settlements`) it counts as a COMMIT when it
        took effect (``finished``) and nothing when it did not (``voided``). An open write
        journalled before ``open_since`` no longer counts either, settled or not, so one the
        server cannot decide does not pin this counter's exposure for ever
        (:meth:`aged_open_writes` lists them).

        :param card_id: restrict to one card; None for the whole terminal.
        :param open_since: POSIX seconds; None counts every open write.
        :returns: ``{unit: units}``.
        """
        return self._sum_written(card_id, done_filter=None, open_since=open_since)

    def card_cycle_exposure(self, card_id: str, start: float, end: float, *,
                            open_since: float | None = None) -> dict[Unit, int]:
        """Units this terminal handed ``card_id`` in ``[start, end)`` (POSIX seconds), uploaded or not.

        The per-card per-cycle cap counts this: an upload does not reset it
        (docs/design.md §Caps and offline limits). Card redemptions and fallback entries
        count alike; open writes count as in :meth:`exposure`.

        :returns: ``{unit: units}``.
        """
        return self._sum_written(card_id, done_filter=_WALL_IN,
                                 done_params=(int(start * 1000), int(end * 1000)), open_since=open_since,
                                 open_from=int(start * 1000))

    def card_fallback_units(self, card_id: str, start: float, end: float) -> dict[str, int]:
        """Units this terminal gave ``card_id`` by fallback (QR or supervisor entry) in ``[start, end)``.

        FALLBACK entries (:mod:`terminal.fallback`), uploaded or not, by their signed wall time (POSIX
        seconds): the card does not show them, so a card tap takes them off what the card says is left.

        :returns: ``{programme code: units}``.
        """
        with self._lock:
            rows = self._unit_rows("programme", card_id, done_kinds=(EntryKind.FALLBACK,), settled=False,
                                   done_filter=_WALL_IN, done_params=(int(start * 1000), int(end * 1000)))
        return {str(programme): int(units) for programme, units in rows if units}

    def card_programme_units(self, card_id: str, start: float, end: float) -> ProgrammeUnits:
        """Units this terminal gave ``card_id`` in ``[start, end)`` (POSIX seconds) by card taps and by fallback.

        By card: COMMIT and FINISHED entries, a torn write the server settled ``finished`` (counted once, as
        in :meth:`exposure`), and the card's open write (:meth:`open_write`: PENDING or UNCERTAIN, maybe
        spent). By fallback: FALLBACK entries, as :meth:`card_fallback_units`. Uploaded or not, by signed
        wall time. The fallback desk counts both toward its per-cycle step limit (docs/fallback.md). One
        query over the card's rows, through the ``entries_card`` index only.

        :returns: ``ProgrammeUnits(card={programme code: units}, fallback={programme code: units})``.
        """
        lo, hi = int(start * 1000), int(end * 1000)
        with self._lock:
            rows = self._unit_rows("programme", card_id, by_fallback=True, done_filter=_WALL_IN, done_params=(lo, hi),
                                   done_kinds=(EntryKind.COMMIT, EntryKind.FINISHED, EntryKind.FALLBACK))
        out = ProgrammeUnits({}, {})
        for programme, fallback, units in rows:
            if units:
                (out.fallback if fallback else out.card)[str(programme)] = int(units)
        write = self.open_write(card_id)
        if write is not None and write.entry.programme and write.entry.amount and lo <= write.entry.wall_ms < hi:
            out.card[write.entry.programme] = out.card.get(write.entry.programme, 0) + write.entry.amount
        return out

    def _sum_written(self, card_id: str | None, *, done_filter: str | None, done_params: tuple[object, ...] = (),
                     open_since: float | None, open_from: int | None = None) -> dict[Unit, int]:
        cutoff = max(int(open_since * 1000) if open_since is not None else 0, open_from or 0)
        with self._lock:
            done_where = self._unconfirmed_sql("e") if done_filter is None else done_filter
            rows = self._unit_rows("unit", card_id, done_filter=done_where, done_params=done_params,
                                   done_kinds=(EntryKind.COMMIT, EntryKind.FINISHED, EntryKind.FALLBACK),
                                   open_cutoff=cutoff)
        return {unit_of_column(u): int(n) for u, n in rows}

    def _unit_rows(self, group: str, card_id: str | None, *, done_kinds: Sequence[EntryKind], done_filter: str,
                   done_params: tuple[object, ...] = (), settled: bool = True, open_cutoff: int | None = None,
                   by_fallback: bool = False) -> list[tuple[Any, ...]]:
        """Units handed out, summed by the entries column ``group``: ``"unit"`` or ``"programme"``.

        The caller holds ``_lock``. One query behind :meth:`exposure`, :meth:`card_cycle_exposure`,
        :meth:`card_fallback_units` and :meth:`card_programme_units`; rows whose ``group`` is NULL count
        nothing. It sums:

        - entries of ``done_kinds`` passing ``done_filter`` (SQL over alias ``e``, with ``done_params``);
        - with ``settled``, torn writes (their PENDING) the server settled ``finished`` passing the same
          filter, unless this counter closed the write itself afterwards (COMMIT, FINISHED or VOIDED
          of the same new state): counted once; a ``voided`` settlement counts nothing;
        - with ``open_cutoff`` (epoch ms), each card's last write while still open (PENDING or UNCERTAIN,
          not settled) whose PENDING was journalled at or after the cutoff. An open write's age is that
          of its PENDING (the UNCERTAIN that follows it is newer).

        :param card_id: only this card's rows (read through ``entries_card``); None for the whole journal.
        :param by_fallback: group FALLBACK entries apart: rows ``(group, is_fallback, units)``.
        :returns: rows ``(group value, units)``, or ``(group value, is_fallback, units)``.
        """
        if group not in ("unit", "programme"):
            raise ValueError(f"cannot group units by {group!r}")
        key = f"e.{group}"
        where_card = " AND e.card_id=?" if card_id is not None else ""
        card_param: tuple[object, ...] = (card_id,) if card_id is not None else ()
        done = ",".join(str(int(k)) for k in done_kinds)
        keys = f"{key} AS g, e.kind = {int(EntryKind.FALLBACK)} AS fb" if by_fallback else f"{key} AS g"
        not_fallback = f"{key} AS g, 0 AS fb" if by_fallback else f"{key} AS g"
        branches = [f"SELECT {keys}, e.amount FROM {_MIRROR} e WHERE {done_filter} AND e.kind IN ({done})"
                    f" AND {key} IS NOT NULL{where_card}"]
        params = [*done_params, *card_param]
        if settled:
            branches.append(
                f"SELECT {not_fallback}, e.amount FROM {_MIRROR} e JOIN temp.verified_settlements s"
                f" ON s.entry_id = e.entry_id WHERE s.outcome = 'finished' AND e.kind = {int(EntryKind.PENDING)}"
                f" AND {done_filter} AND {key} IS NOT NULL{where_card}"
                f" AND NOT EXISTS (SELECT 1 FROM {_MIRROR} c WHERE c.card_id = e.card_id"
                f" AND c.kind IN ({_CLOSING_KIND_LIST}) AND c.seq > e.seq AND c.state_hash_new IS e.state_hash_new)")
            params += [*done_params, *card_param]
        if open_cutoff is not None:
            write_pending = (f"(SELECT p.entry_id FROM {_MIRROR} p WHERE p.card_id = e.card_id"
                             f" AND p.kind = {int(EntryKind.PENDING)} AND p.seq <= e.seq ORDER BY p.seq DESC LIMIT 1)")
            branches.append(
                f"SELECT {not_fallback}, e.amount FROM {_MIRROR} e"
                f" WHERE e.kind IN ({int(EntryKind.PENDING)},{int(EntryKind.UNCERTAIN)}) AND {key} IS NOT NULL"
                f"{where_card} AND e.seq = (SELECT max(x.seq) FROM {_MIRROR} x WHERE x.card_id = e.card_id"
                f" AND x.kind IN ({_WRITE_KIND_LIST}))"
                f" AND coalesce((SELECT max(p.wall_ms) FROM {_MIRROR} p WHERE p.card_id = e.card_id"
                f" AND p.kind = {int(EntryKind.PENDING)} AND p.seq <= e.seq), 0) >= ?"
                f" AND NOT EXISTS (SELECT 1 FROM temp.verified_settlements s WHERE s.entry_id = {write_pending})")
            params += [*card_param, open_cutoff]
        cols = "g, fb" if by_fallback else "g"
        sql = f"SELECT {cols}, coalesce(sum(amount), 0) FROM ({' UNION ALL '.join(branches)}) GROUP BY {cols}"
        return [tuple(r) for r in self._db.execute(sql, params)]

    def aged_open_writes(self, before: float) -> list[StoredEntry]:
        """Open card writes whose PENDING was journalled before ``before`` (POSIX seconds).

        They no longer count towards exposure (see :meth:`exposure`); server
        reconciliation settles them from the card's later states (a settled write is not
        open, so not listed). Listed for the counter's health view and the operator.
        """
        with self._lock:
            cards = [r[0] for r in self._db.execute(
                f"SELECT DISTINCT card_id FROM {_MIRROR} WHERE kind=? AND card_id IS NOT NULL AND wall_ms < ?",
                (int(EntryKind.PENDING), int(before * 1000)))]
        out = []
        for card in cards:
            w = self.open_write(card)
            if w is not None and w.entry.wall_ms < before * 1000:
                out.append(w)
        return out

    # ------------------------------------------------------------------ settlements

    def record_settlements(self, settlements: Sequence[Settlement], receipt: bytes,
                           when: float | None = None) -> int:
        """Record the server's signed settlements of torn writes (docs/reconciliation.md §Settling torn writes).

        A local mark beside the entries: the signed chain is not touched. The receipt is verified
        here again under the pinned key and must carry each settlement; it is kept with the row and
        verified again whenever the journal opens, so a row written into the file by hand releases
        nothing. All or nothing: every settlement is checked first, in one transaction.
        A settlement of a write this counter has closed itself since (the card came back and
        showed it: COMMIT, FINISHED or VOIDED) is skipped, as is one already recorded.

        :param settlements: from a verified upload receipt of this terminal (the caller checked
            the signature, terminal and request).
        :param receipt: the receipt's exact signed bytes, kept as evidence.
        :param when: POSIX seconds; defaults to now.
        :returns: the number of writes newly settled.
        :raises SettlementRefused: a settlement names an entry this journal does not hold, an
            entry that is not a card write's PENDING, another seq than the entry's, or another
            outcome than one recorded before; nothing was recorded.
        :raises JournalStoreError: no pinned key, the receipt does not verify, names another terminal
            or does not carry these settlements; or the disk refused the write.
        :raises JournalReadOnly: the store was opened by :meth:`open_read_only` (nothing recorded).
        """
        self._writer()
        signed = self._verify(receipt).settlements
        if any(st not in signed for st in settlements):
            raise JournalStoreError("the upload receipt does not carry these settlements; nothing recorded")
        at = time.time() if when is None else when
        blocked: list[bytes] = []
        try:
            with self._lock, self._tx():
                rows: list[tuple[bytes, str, float, bytes]] = []
                for st in settlements:
                    row = self._db.execute(
                        f"SELECT seq, kind, card_id, state_hash_new FROM {_MIRROR} WHERE entry_id=?", (st.entry_id,)
                    ).fetchone()
                    if row is None:
                        raise SettlementRefused(f"settlement names entry {st.entry_id.hex()}, which this journal "
                                                "does not hold; nothing recorded")
                    seq, kind, card, new_hash = int(row[0]), int(row[1]), row[2], row[3]
                    if kind != int(EntryKind.PENDING) or card is None:
                        raise SettlementRefused(f"settlement names seq {seq}, which is not a card write's PENDING "
                                                "entry; nothing recorded")
                    if seq != st.seq:
                        raise SettlementRefused(f"settlement names entry {st.entry_id.hex()} as seq {st.seq}, "
                                                f"the journal holds it at seq {seq}; nothing recorded")
                    held = self._db.execute("SELECT outcome FROM temp.verified_settlements WHERE entry_id=?",
                                            (st.entry_id,)).fetchone()
                    if held is not None:
                        if held[0] != st.outcome.value:
                            raise SettlementRefused(f"settlement says seq {seq} {st.outcome.value}, recorded "
                                                    f"{held[0]} before; nothing recorded")
                        continue
                    closed = self._db.execute(
                        f"SELECT kind FROM {_MIRROR} WHERE card_id=? AND kind IN ({_CLOSING_KIND_LIST}) AND seq>?"
                        " AND state_hash_new IS ? ORDER BY seq LIMIT 1", (card, seq, new_hash)).fetchone()
                    if closed is not None:
                        log.info("settlement of write seq %d (%s) arrived after this counter closed it (%s); kept "
                                 "the counter's own entry", seq, st.outcome.value, EntryKind(int(closed[0])).name)
                        continue
                    rows.append((st.entry_id, st.outcome.value, at, receipt))
                    if self._db.execute("SELECT 1 FROM settlements WHERE entry_id=?", (st.entry_id,)).fetchone():
                        blocked.append(st.entry_id)  # a row no receipt backs (by hand): written once, so kept
                self._db.executemany(
                    "INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
                    [r for r in rows if r[0] not in blocked])
                self._db.executemany("INSERT INTO temp.verified_settlements VALUES (?,?)",
                                     [(r[0], r[1]) for r in rows])
        except sqlite3.Error as exc:
            raise JournalStoreError(f"recording settlements failed: {exc}") from exc
        for entry_id, outcome, _at, _r in rows:
            log.info("torn write %s… settled by the server: %s", entry_id.hex()[:8], outcome)
        for entry_id in blocked:
            log.error("torn write %s…: the journal file holds a settlement row for it that no receipt backs "
                      "(written by hand?); the server's settlement holds until the daemon restarts and is "
                      "asked for again then", entry_id.hex()[:8])
        return len(rows)

    def settlements(self) -> dict[bytes, SettlementOutcome]:
        """Every settlement verified under the pinned key: the write's PENDING entry id → outcome."""
        with self._lock:
            return {bytes(r[0]): SettlementOutcome(r[1]) for r in self._db.execute(
                "SELECT entry_id, outcome FROM temp.verified_settlements ORDER BY rowid")}

    def awaiting_settlement(self, since: float | None = None, limit: int = 500) -> list[StoredEntry]:
        """Open torn writes the server could settle: their PENDING, in seq order.

        A write whose last entry is UNCERTAIN and uploaded (the server has the PENDING and the
        UNCERTAIN), not settled. :class:`terminal.sync.SyncClient` sends these PENDING entries
        again (a duplicate to the server) so that the receipt can carry their settlements.

        :param since: POSIX seconds; only writes whose PENDING was journalled then or later.
        :param limit: at most this many.
        """
        with self._lock:
            cards = [r[0] for r in self._db.execute(
                f"SELECT e.card_id FROM {_MIRROR} e WHERE e.kind=? AND e.card_id IS NOT NULL"
                f" AND NOT {self._unconfirmed_sql('e')} AND e.seq = (SELECT max(x.seq) FROM {_MIRROR} x"
                f" WHERE x.card_id = e.card_id AND x.kind IN ({_WRITE_KIND_LIST})) ORDER BY e.seq",
                (int(EntryKind.UNCERTAIN),))]
        out = []
        for card in cards:
            w = self.open_write(card)
            if (w is not None and w.entry.kind is EntryKind.PENDING and w.uploaded_at is not None
                    and (since is None or w.entry.wall_ms >= since * 1000)):
                out.append(w)
        return sorted(out, key=lambda w: w.seq)[:limit]

    def close(self) -> None:
        """Close the database (a WAL checkpoint runs on close, not on a read-only store), then release the
        writer lock (a read-only store holds none)."""
        with self._lock:
            self._db.close()
            self._release_writer_lock()

    def _release_writer_lock(self) -> None:
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        if self._writer_fd is not None:
            os.close(self._writer_fd)  # closing the descriptor drops the flock
            self._writer_fd = None


def lock_path(journal: Path) -> Path:
    """The writer lock file of a journal: ``<journal file name>.lock`` beside it."""
    return journal.with_name(journal.name + ".lock")


def take_writer_lock(journal: Path) -> int:
    """Take the journal's exclusive writer lock (``flock(LOCK_EX | LOCK_NB)``, POSIX.1-2008 / flock(2)).

    The lock belongs to the open file description, so it ends with the process (a
    SIGKILLed daemon leaves no stale lock); the file keeps the holder's pid for the message.

    :param journal: the journal file (its directory must exist).
    :returns: the open descriptor holding the lock (close it to release).
    :raises JournalInUse: another process or open store holds it.
    :raises JournalStoreError: the lock file cannot be opened.
    """
    def holder(fd: int) -> str:
        pid = os.pread(fd, 16, 0).decode("ascii", "replace").strip()
        return f" (pid {pid})" if pid.isdigit() else ""

    fd = _flock_exclusive(lock_path(journal), "journal lock", journal, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def lock_journal_file(journal: Path) -> int:
    """Take an exclusive ``flock`` on the journal database file itself (flock(2), non-blocking).

    The lock on ``<journal>.lock`` is by path: unlinking that file lets a second opener lock a
    new inode. The database file cannot be swapped that way without losing the journal, so
    its own lock refuses a second writer even then. flock(2) locks are apart from the POSIX
    record locks SQLite takes on the same file (Linux), so they do not disturb it.

    :param journal: the journal file (created empty when missing; SQLite accepts an empty file).
    :returns: the open descriptor holding the lock (close it, after the database, to release).
    :raises JournalInUse: another process or open store holds it.
    :raises JournalStoreError: the file cannot be opened.
    """
    return _flock_exclusive(journal, "journal", journal, lambda fd: " (its file is locked)")


def _flock_exclusive(path: Path, what: str, journal: Path, holder: Callable[[int], str]) -> int:
    """Open ``path`` (created 0600 when missing) and take an exclusive, non-blocking ``flock`` on it (flock(2)).

    The one rule :func:`take_writer_lock` and :func:`lock_journal_file` share.

    :param what: names ``path`` in the open error, e.g. ``"journal lock"``.
    :param journal: the journal the refusal names.
    :param holder: given the still-open descriptor when the lock is held elsewhere, what the refusal
        adds after the journal's name (e.g. ``" (pid 42)"``).
    :returns: the open descriptor holding the lock (close it to release).
    :raises JournalInUse: another process or open store holds the lock.
    :raises JournalStoreError: ``path`` cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalStoreError(f"cannot open {what} {Path(path).resolve()}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            who = holder(fd)
        finally:
            os.close(fd)
        raise JournalInUse(f"a counter daemon is already running on journal {Path(journal).resolve()}{who}; "
                           "not starting a second one") from None
    return fd


def unit_column(unit: Unit) -> str:
    """A unit as the ``unit`` column holds it: its name in lower case, as trust bundles spell it."""
    return unit.name.lower()


def unit_of_column(text: str) -> Unit:
    """The unit a ``unit`` column value names.

    :raises JournalStoreError: the column holds no unit name (the file was altered; ``huma journal verify`` names it).
    """
    try:
        return Unit[text.upper()]
    except KeyError:
        raise JournalStoreError(f"journal column unit holds {text!r}, not a unit") from None


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def write_of(stored: StoredEntry) -> CardWrite:
    """The card-write claims of a stored entry, to journal its COMMIT/UNCERTAIN/FINISHED/VOIDED."""
    claims = stored.entry.card_claims()
    return CardWrite(unit=stored.unit, **{**claims, "card_id": claims["card_id"] or "", "decline_reason": None})




def sqlite_problems(db: sqlite3.Connection) -> tuple[str, ...]:
    """What ``PRAGMA integrity_check`` reports (SQLite "PRAGMA integrity_check"), empty when "ok".

    :returns: at most :data:`_MAX_PROBLEMS` lines, e.g. ``"row 4 missing from index entries_card"``.
    :raises sqlite3.DatabaseError: the file is too damaged to check at all.
    """
    lines = tuple(str(r[0]) for r in db.execute(f"PRAGMA integrity_check({_MAX_PROBLEMS})"))
    return () if lines == ("ok",) else lines


_INDEX_NAMED = re.compile(r"\bindex (\S+)")
_TREE_ROOT = re.compile(r"\bTree (\d+) page")


def only_indexes_damaged(db: sqlite3.Connection, problems: Sequence[str]) -> bool:
    """True when every reported problem is in an index (named, or a b-tree rooted at an index's root page)."""
    try:
        index_roots = {int(r[0]) for r in db.execute("SELECT rootpage FROM sqlite_master WHERE type='index'")}
    except sqlite3.Error:
        return False
    for line in problems:
        if line.startswith("*** in database"):
            continue
        root = _TREE_ROOT.search(line)
        if root is not None:
            if int(root.group(1)) not in index_roots:
                return False
        elif _INDEX_NAMED.search(line) is None:
            return False
    return True


def damaged_error(path: Path, what: str, problems: Sequence[str], *, index_only: bool = False,
                  serving: bool = False) -> JournalDamaged:
    """The :class:`JournalDamaged` to raise for what SQLite reported, with what to do next in its message.

    :param what: ``"open"`` (SQLite refused the file) or ``"check"`` (``integrity_check`` lines).
    :param problems: SQLite's lines.
    :param index_only: every problem is in an index (``huma journal repair`` can fix it).
    :param serving: word the message for a counter that refuses to serve taps.
    """
    reported = "; ".join(problems)
    msg = (f"{path}: journal file is damaged (SQLite: {reported})" if what == "open"
           else f"{path}: journal file is damaged: SQLite integrity_check reports: {reported}")
    if serving:
        msg += " — the counter will not serve taps on it (a damaged journal can hide a card's earlier writes)"
    if index_only:
        msg += (f"; only its indexes are damaged, the signed entries are intact: stop the counter and run "
                f"`huma journal repair {path}` (backs the file up, rebuilds the indexes, re-verifies)")
    else:
        msg += ("; stop the counter, keep the file with its -wal/-shm as evidence and follow "
                "docs/terminal.md \"Damaged journal\"")
    return JournalDamaged(msg, tuple(problems), index_only)


def check_sqlite_file(db: sqlite3.Connection, path: Path, *, serving: bool = False) -> None:
    """Run ``PRAGMA integrity_check`` on an open journal and refuse a damaged one.

    :param serving: word the message for a counter that refuses to serve taps.
    :raises JournalDamaged: SQLite reports problems (listed; ``index_only`` says whether
        ``huma journal repair`` can fix them) or cannot read the file at all.
    """
    try:
        problems = sqlite_problems(db)
    except sqlite3.OperationalError as exc:  # locked, I/O: not evidence of damage
        raise JournalStoreError(f"{path}: cannot check the journal ({exc})") from exc
    except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT / SQLITE_NOTADB
        raise damaged_error(path, "open", (str(exc),), serving=serving) from exc
    if problems:
        raise damaged_error(path, "check", problems, index_only=only_indexes_damaged(db, problems), serving=serving)


__all__ = [
    "SCHEMA_VERSION",
    "WRITE_KINDS",
    "CardWrite",
    "JournalStore",
    "StoredEntry",
    "check_sqlite_file",
    "damaged_error",
    "only_indexes_damaged",
    "sqlite_problems",
    "unit_column",
    "unit_of_column",
    "write_of",
]
