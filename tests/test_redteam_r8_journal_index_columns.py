"""Red team r8, a dishonest clerk who can write the counter's journal file: caps read from unsigned index columns.

Each journal row keeps the signed entry (``message``) and, beside it, plain index columns copied from it
(``card_id``, ``programme``, ``unit``, ``amount``, ``slot_seq_after``, ``wall_ms`` ...). Every cap the counter
applies offline (``cap.terminal_exposure``, the per-card caps since the last upload and per cycle, the fallback
steps' limits, ``card_forked``'s last committed slot seq) is summed from those columns
(``JournalStore._unit_rows``, ``last_committed_slot_seq``). The trigger that keeps them immutable is part of the
file's schema: whoever can write the file drops it (SQLite lets any writer), runs ``UPDATE entries SET amount =
0``, and the running daemon (no restart needed) sees nothing handed out: the exposure the caps bound is reset
without a signed receipt, as the ``uploaded_at`` marks used to be (docs/security.md "What an insider with write
access to the journal file cannot fake"). The signed entries stay intact, so everything paid is uploaded and
reconciled later; ``huma journal verify`` (terminal/journal_audit.py) reports the edited column. Offline, the caps
are the bound ("The exposure that remains"), and this lifts them.

Fixed (docs/security.md, red team round 8): the daemon reads every cap from its own TEMP mirror of the index
columns (``JournalStore._load_mirror``), filled at open from rows checked against the chain-verified entries and
by each append; an edit found at open refuses the file (``JournalEdited``), a row whose bytes change under the
running daemon is refused when read. The live attack passed on the code before the mirror (strict xfail, XPASS
once the mirror was in).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from firmware_config.models import CounterMode
from terminal.errors import JournalEdited
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.fixtures.receipts import SERVER
from tests.test_terminal_caps_and_declines import TERMINAL, Counter, chip, fresh_bundle


def _clerk_edits(journal: Path) -> None:
    """What the clerk runs beside the daemon (the file's permissions, WAL: the daemon keeps it open)."""
    with sqlite3.connect(journal) as clerk:
        clerk.execute("DROP TRIGGER entries_only_mark_uploaded")
        clerk.execute("UPDATE entries SET amount = 0 WHERE amount IS NOT NULL")


def test_the_offline_audit_reports_an_edited_index_column(tmp_path: Path) -> None:
    """Guard: the offline audit compares every index column with the signed entry (holds today)."""
    c = Counter(tmp_path, CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({}))
    try:
        assert c.present(chip()).status is TapStatus.ACCEPTED
        _clerk_edits(c.journal.path)
    finally:
        c.journal.close()
    with pytest.raises(Exception, match="amount"):
        verify_journal_file(tmp_path / "journal.sqlite")


def test_editing_the_index_columns_does_not_lift_the_terminal_exposure_cap(tmp_path: Path) -> None:
    c = Counter(tmp_path, CounterMode.CLINIC_VISIT, "health",
                trust_bundle=fresh_bundle({"cap.terminal_exposure.visit": 2}))
    try:
        card = chip()
        assert [c.present(card).status for _ in range(2)] == [TapStatus.ACCEPTED] * 2
        assert c.present(card).reason is DeclineReason.OVER_TERMINAL_LIMIT  # offline: the cap holds
        _clerk_edits(c.journal.path)
        again = [c.present(card) for _ in range(3)]
        assert all(o.reason is DeclineReason.OVER_TERMINAL_LIMIT for o in again), [o.status for o in again]
    finally:
        c.journal.close()


def _reopen(journal: Path) -> JournalStore:
    """The daemon started again on the file (as ``Counter`` opens it)."""
    return JournalStore(journal, terminal_id="T-6271-0001", signer=TERMINAL, receipt_key=SERVER.public_key)


@pytest.mark.parametrize("edit", [
    "UPDATE entries SET amount = 0 WHERE amount IS NOT NULL",  # the exposure reset
    "UPDATE entries SET card_id = '6271000000009999' WHERE card_id IS NOT NULL",  # the per-card caps
    "UPDATE entries SET slot_seq_after = 0 WHERE slot_seq_after IS NOT NULL",  # card_forked's replay check
    "UPDATE entries SET unit = 'rupiah' WHERE kind = 2",  # a COMMIT's unsigned unit moved off its PENDING's
    "UPDATE entries SET pending = x'00' WHERE kind = 2",  # a card state where no write is open
    "UPDATE entries SET message = (SELECT message FROM entries WHERE seq = 1) WHERE seq = 2",  # a swapped entry
])
def test_a_file_edited_while_the_daemon_is_stopped_is_refused_at_open(tmp_path: Path, edit: str) -> None:
    c = Counter(tmp_path, CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({}))
    try:
        assert c.present(chip()).status is TapStatus.ACCEPTED
    finally:
        c.journal.close()
    journal = tmp_path / "journal.sqlite"
    _reopen(journal).close()  # the untouched file opens
    with sqlite3.connect(journal) as clerk:
        clerk.execute("DROP TRIGGER entries_only_mark_uploaded")
        assert clerk.execute(edit).rowcount >= 1
        before = clerk.execute("SELECT seq, amount, card_id, unit, pending, message FROM entries").fetchall()
    with pytest.raises(JournalEdited, match="edited outside the counter") as refused:
        _reopen(journal)
    assert refused.value.seq is not None and "will not serve taps" in str(refused.value)
    with sqlite3.connect(journal) as auditor:  # refused before journalling: no BOOT, nothing repaired
        assert auditor.execute("SELECT seq, amount, card_id, unit, pending, message FROM entries").fetchall() == before


def test_a_row_edited_under_the_running_daemon_is_refused_when_read(tmp_path: Path) -> None:
    """The mirror keeps the caps; a decision that reads the row itself (its signed entry, its pending card
    state) finds the bytes changed and refuses instead of believing them."""
    c = Counter(tmp_path, CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({}))
    try:
        card = chip()
        assert c.present(card).status is TapStatus.ACCEPTED
        (seq, card_id) = next((s.seq, s.entry.card_id) for s in c.journal.entries()
                              if s.entry.kind.name == "PENDING")
        assert card_id is not None
        with sqlite3.connect(c.journal.path) as clerk:
            clerk.execute("DROP TRIGGER entries_only_mark_uploaded")
            clerk.execute("UPDATE entries SET pending = x'00' WHERE seq = ?", (seq,))
        with pytest.raises(JournalEdited, match="pending card state changed"):
            c.journal.entries()
    finally:
        c.journal.close()


def test_a_head_whose_signature_does_not_verify_is_refused_at_open(tmp_path: Path) -> None:
    """One signature covers the chain: a newest entry re-written with its hash column kept consistent fails it."""
    c = Counter(tmp_path, CounterMode.CLINIC_VISIT, "health", trust_bundle=fresh_bundle({}))
    try:
        assert c.present(chip()).status is TapStatus.ACCEPTED
    finally:
        c.journal.close()
    journal = tmp_path / "journal.sqlite"
    with sqlite3.connect(journal) as clerk:
        clerk.execute("DROP TRIGGER entries_only_mark_uploaded")
        seq, message = clerk.execute("SELECT seq, message FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        forged = bytes(message[:-1]) + bytes([message[-1] ^ 1])  # the signature's last byte
        clerk.execute("UPDATE entries SET message = ?, entry_hash = ? WHERE seq = ?",
                      (forged, hashlib.sha256(forged).digest(), seq))
    with pytest.raises(JournalEdited, match="signature does not verify") as refused:
        _reopen(journal)
    assert refused.value.seq == seq
