"""Complaints taken at the counter: kept durably, sent to the server by sync (issue 18, docs/grievances.md).

A clerk records a beneficiary's complaint on the counter screen ("Keluhan"). It is written to
a small SQLite file next to the journal (WAL, ``synchronous=FULL``: once the screen answers
"saved", a power cut does not lose it), whether or not the server is reachable. Each sync
round sends the unsent ones to ``POST /api/v1/terminal/grievances`` in a body signed with the
terminal key like a journal upload (:func:`cardlib.records.upload.sign_envelope`); a
complaint is marked sent only when the server's receipt, signed by the pinned receipt key,
names its id (``accepted`` or ``duplicate``: the server stores each id once, so a resend after
a lost answer is harmless). A ``rejected`` line (a field the server refuses) is kept with its
reason and not offered again.

The file is plain SQLite that whoever can write the counter's files can edit (docs/security.md
"A complaint erased at the clerk's own counter"), so with a journal (the daemon's) each complaint
is also a signed journal entry (:attr:`cardlib.records.journal.EntryKind.COMPLAINT`, docs/card-format.md
§Conventions) whose ``entry_id`` is the complaint's ``client_ref``, appended before the complaint is
acknowledged; the signed head covers it and the server's reconciliation reports a journalled complaint
it never received (``complaint_not_received``). Each sync round, before sending, the queue is checked
against what is signed: a "sent" or "refused" mark counts only with the server's receipt kept beside it
(verified under the pinned key, naming that complaint, answering the complaint request kept with it: the journal
upload's receipt names the entry id too), and a journalled complaint missing from the
file is put back as a stub (its text is lost; the server's finding names it either way).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cardlib.keys.signer import PublicKey, Signer
from cardlib.records.complaint import complaint_id, new_seal
from cardlib.records.errors import RecordError
from cardlib.records.journal import EntryKind
from cardlib.records.statements import UploadReceipt, verify_receipt
from cardlib.records.upload import SIGNATURE_HEADER, sign_envelope
from terminal.errors import InputRefused, SyncError, SyncRejected

if TYPE_CHECKING:
    from terminal.journal_store import JournalStore
    from terminal.sync import HttpApi

__all__ = ["CATEGORIES", "GRIEVANCE_PATH", "TEXT_MAX", "GrievanceQueue", "GrievanceSender", "QueuedGrievance"]

GRIEVANCE_PATH = "/api/v1/terminal/grievances"
#: What a complaint is about (the server's ``GrievanceCategory`` values).
CATEGORIES = ("not_received", "wrong_amount", "card_problem", "staff", "other")
#: Longest complaint text taken at the counter, characters (the server keeps up to 4000).
TEXT_MAX = 1000
#: Complaints per request (the server takes up to 100).
BATCH = 50
_CODE = re.compile(r"[A-Z2-7]{4}-[A-Z2-7]{4}")  # RFC 4648 base32, as cardlib.records.receipt.receipt_code
_HEX16 = re.compile(r"[0-9a-f]{16}")
#: Text of a complaint put back from its journal entry after its row vanished from the file.
ERASED_TEXT = ("[erased from this counter's complaint file before it was sent; only its signed journal entry "
               "(seq {seq}) remains, the beneficiary's words are lost]")
#: Receipt results that prove a complaint stored (``sent_at``) or refused (``refused``).
_PROVES = {"sent": ("accepted", "duplicate"), "refused": ("rejected",)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grievances (
    client_ref TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL,
    receipt_code TEXT,
    card_id TEXT,
    household_ref TEXT,
    category TEXT NOT NULL,
    text TEXT NOT NULL,
    sent_at TEXT,
    server_id INTEGER,
    refused TEXT,
    receipt BLOB,
    request BLOB,
    seal TEXT
)
"""


@dataclass(frozen=True)
class QueuedGrievance:
    """One complaint as kept at the counter; ``server_id`` once the server's receipt named it."""

    client_ref: str
    recorded_at: str
    receipt_code: str | None
    card_id: str | None
    household_ref: str | None
    category: str
    text: str
    sent_at: str | None = None
    server_id: int | None = None
    refused: str | None = None
    #: the random seal (32 hex digits) the ``client_ref`` commits to with the fields above
    #: (:mod:`cardlib.records.complaint`); None for a complaint taken before, or put back as a stub
    seal: str | None = None

    def to_json(self) -> dict[str, str | None]:
        """The request item (docs/api.md "Complaints from counters")."""
        return {"client_ref": self.client_ref, "recorded_at": self.recorded_at, "receipt_code": self.receipt_code,
                "card_id": self.card_id, "household_ref": self.household_ref, "category": self.category,
                "text": self.text, "seal": self.seal}


class GrievanceQueue:
    """The counter's durable list of complaints (thread-safe; one SQLite file).

    :param path: the file, e.g. next to the journal (``grievances.sqlite``).
    :param journal: the counter's journal: every complaint is also a signed ``COMPLAINT`` entry whose
        ``entry_id`` is its ``client_ref``, which seals its words (:mod:`cardlib.records.complaint`; None: no
        signed trace, the same sealed id; tools and tests).
    """

    def __init__(self, path: Path, journal: JournalStore | None = None) -> None:
        self.path = path
        self.journal = journal
        self._lock = threading.Lock()
        self._proven: set[bytes] = set()  # SHA-256 of receipts verified in this process
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(grievances)")}
        if "receipt" not in columns:  # a file from before the receipts were kept: its marks prove nothing
            self._db.execute("ALTER TABLE grievances ADD COLUMN receipt BLOB")
        if "request" not in columns:  # nor before the request was kept beside it (red team round 8): resent once
            self._db.execute("ALTER TABLE grievances ADD COLUMN request BLOB")
        if "seal" not in columns:  # complaints taken before their id sealed their words (red team round 8)
            self._db.execute("ALTER TABLE grievances ADD COLUMN seal TEXT")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def add(self, text: str, category: str, *, receipt_code: str | None = None, card_id: str | None = None,
            household_ref: str | None = None, now: dt.datetime | None = None) -> QueuedGrievance:
        """Check and keep one complaint (on disk when this returns).

        :param receipt_code: ``XXXX-XXXX`` as the receipt shows it (case and dash tolerated).
        :param card_id, household_ref: 16 lower-case hex digits.
        :raises terminal.errors.InputRefused: blank or too long text, unknown category, a malformed link, or none
            (its ``code``: ``complaint_text``, ``category``, ``receipt_code``, ``card_id``, ``household_id``,
            ``complaint_link``).
        :raises terminal.errors.JournalStoreError: the journal refused the ``COMPLAINT`` entry: nothing is
            kept and the complaint must not be acknowledged (the clerk retries).
        """
        text = text.strip()
        if not text or len(text) > TEXT_MAX or "\x00" in text:
            raise InputRefused("complaint_text", f"the complaint text is required, at most {TEXT_MAX} characters")
        if category not in CATEGORIES:
            raise InputRefused("category", f"category is one of {', '.join(CATEGORIES)}")
        code = None
        if receipt_code:
            compact = receipt_code.strip().upper().replace("-", "").replace(" ", "")
            code = f"{compact[:4]}-{compact[4:]}"
            if not _CODE.fullmatch(code):
                raise InputRefused("receipt_code", "the receipt code is 8 characters A-Z, 2-7: XXXX-XXXX")
        for value, name in ((card_id, "card"), (household_ref, "household")):
            if value and not _HEX16.fullmatch(value):
                raise InputRefused(f"{name}_id", f"the {name} id is 16 hex digits")
        if not (code or card_id or household_ref):
            raise InputRefused("complaint_link", "a complaint names a receipt code, a card or a household")
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        with self._lock:
            # The signed trace first (fsynced when append returns): a complaint the file then loses is one the
            # server still learns of; an append that fails leaves nothing kept and nothing acknowledged. Its id
            # seals the words and links (red team round 8): rewritten in the file, they no longer match it.
            seal = new_seal()
            sealed_id = complaint_id(seal, when, code, card_id or None, household_ref or None, category, text)
            ref = (self.journal.append(EntryKind.COMPLAINT, entry_id=sealed_id).entry.entry_id
                   if self.journal else sealed_id).hex()
            g = QueuedGrievance(ref, when, code, card_id or None, household_ref or None, category, text,
                                seal=seal.hex())
            self._db.execute(
                "INSERT INTO grievances (client_ref, recorded_at, receipt_code, card_id, household_ref, category,"
                " text, seal) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (g.client_ref, g.recorded_at, g.receipt_code, g.card_id, g.household_ref, g.category, g.text,
                 g.seal))
        return g

    def _rows(self, where: str, limit: int) -> list[QueuedGrievance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT client_ref, recorded_at, receipt_code, card_id, household_ref, category, text, sent_at,"
                f" server_id, refused, seal FROM grievances WHERE {where} ORDER BY recorded_at, rowid LIMIT ?",
                (limit,)).fetchall()
        return [QueuedGrievance(*row) for row in rows]

    def unsent(self, limit: int = BATCH) -> list[QueuedGrievance]:
        """Complaints the server has not confirmed nor refused, oldest first."""
        return self._rows("sent_at IS NULL AND refused IS NULL", limit)

    def all(self, limit: int = 1000) -> list[QueuedGrievance]:
        """Every complaint kept, oldest first."""
        return self._rows("1", limit)

    def unsent_count(self) -> int:
        """How many wait for the server."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT count(*) FROM grievances WHERE sent_at IS NULL AND refused IS NULL").fetchone()
        return int(n)

    def mark_sent(self, client_ref: str, server_id: int | None, receipt: bytes | None = None,
                  request: bytes | None = None) -> None:
        """The server's signed receipt (``receipt``: its exact bytes, kept as proof) named it stored (``server_id``).

        :param request: the exact complaint request body the receipt answers (kept with it: only a receipt
            for a complaint request proves a complaint, :meth:`recheck`).
        """
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            self._db.execute("UPDATE grievances SET sent_at = ?, server_id = ?, receipt = ?, request = ?"
                             " WHERE client_ref = ?", (now, server_id, receipt, request, client_ref))

    def mark_refused(self, client_ref: str, reason: str, receipt: bytes | None = None,
                     request: bytes | None = None) -> None:
        """The server's signed receipt (``receipt``, kept as proof, with its ``request``) refused it (``reason``:
        the field); not resent."""
        with self._lock:
            self._db.execute("UPDATE grievances SET refused = ?, receipt = ?, request = ? WHERE client_ref = ?",
                             (reason, receipt, request, client_ref))

    def recheck(self, receipt_key: PublicKey, terminal_id: str) -> tuple[int, int]:
        """Hold the file to what is signed (each sync round, before sending).

        - A ``sent`` or ``refused`` mark stands only with a kept receipt that ``receipt_key`` signed for
          ``terminal_id``, answering the kept request body (its SHA-256), which is a complaint request of
          this terminal carrying this ``client_ref``, and whose line for it says so (accepted/duplicate,
          rejected); otherwise the mark is cleared and the complaint is offered again (the server stores each
          ``client_ref`` once, so a resend is harmless). The request matters because the ``client_ref`` is
          also the ``COMPLAINT`` journal entry's id: the journal upload's receipt names it ``accepted`` too
          (red team round 8).
        - A ``COMPLAINT`` entry of the journal whose ``client_ref`` has no row is put back as a stub
          (:data:`ERASED_TEXT`, category ``other``, dated by the entry's signed wall time): the text is
          lost, but the complaint's id reaches the server, which reports it (docs/grievances.md).

        :returns: ``(marks cleared, complaints put back)``.
        """
        with self._lock:
            marked = self._db.execute(
                "SELECT client_ref, sent_at IS NOT NULL, receipt, request FROM grievances"
                " WHERE sent_at IS NOT NULL OR refused IS NOT NULL").fetchall()
        cleared = [ref for ref, sent, receipt, request in marked
                   if not self._proves(receipt, request, receipt_key, terminal_id, ref,
                                       "sent" if sent else "refused")]
        restored: list[QueuedGrievance] = []
        if self.journal is not None:
            # Every COMPLAINT entry (complaints are few; the signed bytes, not the file's index columns).
            journalled = self.journal.recent((EntryKind.COMPLAINT,), 0.0, 2.0**42, limit=1_000_000)
            with self._lock:
                kept = {row[0] for row in self._db.execute("SELECT client_ref FROM grievances")}
            restored = [QueuedGrievance(e.entry.entry_id.hex(), e.entry.wall_time.isoformat(timespec="seconds"),
                                        None, None, None, "other", ERASED_TEXT.format(seq=e.seq))
                        for e in reversed(journalled) if e.entry.entry_id.hex() not in kept]
        with self._lock:
            for ref in cleared:
                self._db.execute("UPDATE grievances SET sent_at = NULL, server_id = NULL, refused = NULL,"
                                 " receipt = NULL, request = NULL WHERE client_ref = ?", (ref,))
            for g in restored:
                self._db.execute(
                    "INSERT OR IGNORE INTO grievances (client_ref, recorded_at, category, text) VALUES (?, ?, ?, ?)",
                    (g.client_ref, g.recorded_at, g.category, g.text))
        return len(cleared), len(restored)

    def _proves(self, receipt: bytes | None, request: bytes | None, key: PublicKey, terminal_id: str, ref: str,
                mark: str) -> bool:
        """Whether ``receipt`` (kept bytes) answering ``request`` (kept body) is the server's word that complaint
        ``ref`` was ``mark`` (sent/refused)."""
        if not receipt or not request:
            return False
        receipt, request = bytes(receipt), bytes(request)
        digest = hashlib.sha256(hashlib.sha256(receipt).digest() + hashlib.sha256(request).digest()
                                + ref.encode() + mark.encode()).digest()
        if digest in self._proven:
            return True
        try:
            verified: UploadReceipt = verify_receipt(receipt, key)
            asked = json.loads(request)
        except (RecordError, ValueError, TypeError):
            return False
        # A complaint request of this terminal naming ``ref``: not the journal upload that carried its entry.
        complaint_request = (isinstance(asked, dict) and asked.get("terminal_id") == terminal_id
                             and isinstance(asked.get("grievances"), list)
                             and any(isinstance(item, dict) and item.get("client_ref") == ref
                                     for item in asked["grievances"]))
        ok = complaint_request and verified.terminal_id == terminal_id \
            and verified.request_sha256 == hashlib.sha256(request).digest() and any(
                line.entry_id.hex() == ref and line.result in _PROVES[mark] for line in verified.lines)
        if ok:
            self._proven.add(digest)
        return ok


class GrievanceSender:
    """Sends a :class:`GrievanceQueue` to the server (called from a sync round; no thread of its own).

    :param api: the server (:class:`terminal.sync.HttpApi`).
    :param queue: the counter's complaints.
    :param signer: the terminal key (signs the envelope).
    :param terminal_id: the registered terminal id.
    :param receipt_key: the pinned server receipt key: only what it signed marks a complaint sent.
    """

    def __init__(self, api: HttpApi, queue: GrievanceQueue, signer: Signer, terminal_id: str, *,
                 receipt_key: PublicKey) -> None:
        self.api = api
        self.queue = queue
        self._signer = signer
        self.terminal_id = terminal_id
        self.receipt_key = receipt_key

    def send_pending(self, max_batches: int = 20) -> int:
        """Send unsent complaints in batches; returns how many the server confirmed.

        :raises terminal.sync.ServerBusy, SyncError: 503, 5xx or no connection (nothing marked).
        :raises SyncRejected: the server refuses the request or the terminal (4xx).
        :raises terminal.sync.UnverifiedAnswer: the answer's receipt is missing, not by the pinned
            key, for another request, or names other complaints (nothing marked).
        """
        from terminal.sync import ServerBusy, UnverifiedAnswer, parse_retry_after

        confirmed = 0
        self.queue.recheck(self.receipt_key, self.terminal_id)
        for _ in range(max_batches):
            batch = self.queue.unsent()
            if not batch:
                break
            body = json.dumps({"terminal_id": self.terminal_id,
                               "grievances": [g.to_json() for g in batch]}).encode()
            headers = {"Content-Type": "application/json",
                       SIGNATURE_HEADER: sign_envelope(body, self.terminal_id, self._signer)}
            resp = self.api.request("POST", GRIEVANCE_PATH, body, headers)
            if resp.status == 503:
                raise ServerBusy("server busy (503)", parse_retry_after(resp.headers.get("retry-after")))
            if resp.status >= 500:
                raise SyncError(f"complaints: server error {resp.status}")
            if resp.status != 200:
                raise SyncRejected(f"complaints refused: {resp.status} {resp.body[:300]!r}")
            try:
                receipt = verify_receipt(base64.b64decode(json.loads(resp.body)["receipt"], validate=True),
                                         self.receipt_key)
            except (ValueError, KeyError, TypeError, binascii.Error, RecordError) as exc:
                raise UnverifiedAnswer(f"complaints answer without a receipt by the pinned key ({exc}); "
                                       "nothing marked") from exc
            proof = receipt.message
            if receipt.terminal_id != self.terminal_id or receipt.request_sha256 != hashlib.sha256(body).digest():
                raise UnverifiedAnswer("complaints receipt answers another request; nothing marked")
            if [ln.entry_id for ln in receipt.lines] != [bytes.fromhex(g.client_ref) for g in batch]:
                raise UnverifiedAnswer("complaints receipt names other complaints; nothing marked")
            for g, line in zip(batch, receipt.lines, strict=True):
                if line.result in ("accepted", "duplicate"):
                    self.queue.mark_sent(g.client_ref, line.seq, proof, body)
                    confirmed += 1
                elif line.result == "rejected":
                    self.queue.mark_refused(g.client_ref, line.reason or "rejected", proof, body)
                else:
                    raise UnverifiedAnswer(f"complaints receipt: unknown result {line.result!r}")
        return confirmed
