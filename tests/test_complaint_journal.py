"""Each complaint taken at the counter is a signed journal entry (terminal/grievances.py, docs/grievances.md).

``EntryKind.COMPLAINT``, its ``entry_id`` the complaint's ``client_ref``, appended before the complaint is
kept; a journal that refuses the entry leaves nothing kept and nothing acknowledged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.records.journal import EntryKind
from terminal.errors import JournalReadOnly
from terminal.grievances import GrievanceQueue
from terminal.journal_store import JournalStore
from tests.test_terminal_support import new_signer

TID = "T-6271-0607"


def test_a_complaint_is_journalled_under_its_client_ref(tmp_path: Path) -> None:
    signer = new_signer()
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=TID, signer=signer)
    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=journal)
    try:
        g = queue.add("the clerk kept my Rp250,000", "staff", card_id="6271000000000abc")
        [entry] = [e for e in journal.entries() if e.entry.kind is EntryKind.COMPLAINT]
        assert entry.entry.entry_id.hex() == g.client_ref
        assert journal.head == (entry.seq, entry.signed.entry_hash)  # the next signed head covers it
        # no personal word in the signed entry: no card, no text, no category
        claims = entry.entry.to_claims()
        assert entry.entry.card_id is None and b"Rp250" not in entry.signed.message and b"staff" not in \
            entry.signed.message
        assert set(claims) == {1, 2, 3, 4, 5, 6, 7, 8, 9, 19}
    finally:
        queue.close()
        journal.close()


def test_no_journal_entry_no_complaint(tmp_path: Path) -> None:
    """A journal that refuses the entry (here: opened read-only) leaves the complaint unkept and unacknowledged."""
    path = tmp_path / "journal.sqlite"
    JournalStore(path, terminal_id=TID, signer=new_signer()).close()
    journal = JournalStore.open_read_only(path)
    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=journal)
    try:
        with pytest.raises(JournalReadOnly):
            queue.add("nothing handed out", "not_received", receipt_code="ABCD-EF23")
        assert queue.all() == [] and queue.unsent_count() == 0
    finally:
        queue.close()
        journal.close()
