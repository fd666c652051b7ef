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

Strict xfail (documented in docs/security.md, red team round 8): the fix is to read the caps from values the
daemon verified itself (a TEMP mirror of the index columns in its own connection, filled from verified messages
at open and by each append, as the verified receipts are), a change to the journal store's every query.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firmware_config.models import CounterMode
from terminal.journal_audit import verify_journal_file
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_terminal_caps_and_declines import Counter, chip, fresh_bundle


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


@pytest.mark.xfail(strict=True, reason="red team r8: the counter's caps are summed from the journal's unsigned index "
                                       "columns, which a writer of the file edits after dropping the trigger "
                                       "(docs/security.md, red team round 8)")
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
