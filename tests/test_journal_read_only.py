"""``JournalStore.open_read_only``: a journal read beside its daemon (``huma terminal status``), never written.

The journals here are written by the daemon's own store (:class:`terminal.journal_store.JournalStore`
with a terminal key and the pinned server receipt key); the read-only store must answer as that store
does and leave every byte of the journal, its ``-wal`` and its lock file as they were.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.records.statements import Settlement, SettlementOutcome
from terminal.errors import JournalInUse, JournalReadOnly, JournalStoreError, TerminalError
from terminal.journal_store import JournalStore, write_of
from tests.fixtures.receipts import SERVER, receipt
from tests.test_journal_store import TID, open_store, redemption


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def _digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file in ``directory`` but ``-shm`` (SQLite's WAL index, where each reader of a WAL
    database records its read mark)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.endswith("-shm")}


def _served(path: Path, signer: SoftwareSigner) -> tuple[JournalStore, int]:
    """A daemon's journal: a redemption uploaded (signed receipt), a second one uploaded, a third torn
    (PENDING only, open). :returns: the open store and the torn write's PENDING seq."""
    store = open_store(path, signer)
    first = store.append(EntryKind.PENDING, redemption("C-1", 2))
    store.append(EntryKind.COMMIT, write_of(first))
    store.record_receipt(receipt(store, store.entries()))
    second = store.append(EntryKind.PENDING, redemption("C-2", 1))
    store.append(EntryKind.COMMIT, write_of(second))
    torn = store.append(EntryKind.PENDING, redemption("C-3", 3))
    return store, torn.seq


def test_writing_methods_on_a_read_only_journal_raise_and_write_nothing(tmp_path: Path,
                                                                        signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    daemon, torn = _served(path, signer)
    head = daemon.head
    daemon.close()
    before = _digest(tmp_path)

    ro = JournalStore.open_read_only(path, SERVER.public_key)
    assert ro.read_only and not daemon.read_only
    assert ro.terminal_id == TID and ro.boot_id == 1 and ro.head == head
    assert ro.unsent_count() == 3 and ro.exposure() == {Unit.PACKAGE: 4}  # C-2 committed, C-3 open
    write = ro.open_write("C-3")
    assert write is not None and write.seq == torn
    assert issubclass(JournalReadOnly, JournalStoreError) and issubclass(JournalReadOnly, TerminalError)
    with pytest.raises(JournalReadOnly):
        ro.append(EntryKind.BOOT)
    with pytest.raises(JournalReadOnly):
        ro.append(EntryKind.UNCERTAIN, write_of(write))
    with pytest.raises(JournalReadOnly):
        ro.record_receipt(receipt(ro, ro.entries()))
    settlement = Settlement(write.entry.entry_id, write.seq, SettlementOutcome.VOIDED)
    with pytest.raises(JournalReadOnly):
        ro.record_settlements([settlement], receipt(ro, [], settlements=[settlement]))
    # nothing changed, in the file or in what the store answers
    assert ro.head == head and ro.unsent_count() == 3 and ro.exposure() == {Unit.PACKAGE: 4}
    assert ro.settlements() == {}
    ro.close()
    assert _digest(tmp_path) == before  # no entry, no boot, no -wal left behind

    # the daemon's next start is the second boot and marks the torn write UNCERTAIN: the read-only open did neither
    again = open_store(path, signer)
    assert again.boot_id == 2
    assert [s.entry.kind for s in again.entries(after_seq=head[0])] == [EntryKind.BOOT, EntryKind.UNCERTAIN]
    again.close()


def test_read_only_beside_the_running_daemon_changes_no_byte(tmp_path: Path, signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    daemon, _torn = _served(path, signer)
    assert Path(f"{path}-wal").exists()  # the daemon holds it open in WAL mode
    before = _digest(tmp_path)
    assert {"j.sqlite", "j.sqlite-wal", "j.sqlite.lock"} <= set(before)

    ro = JournalStore.open_read_only(path, SERVER.public_key)
    assert ro.head == daemon.head and ro.boot_id == daemon.boot_id
    assert ro.unsent_count() == daemon.unsent_count() == 3
    assert ro.exposure() == daemon.exposure() == {Unit.PACKAGE: 4}
    assert [s.seq for s in ro.unsent()] == [s.seq for s in daemon.unsent()]
    assert ro.wall_mark() == daemon.wall_mark()
    assert _digest(tmp_path) == before
    # no lock taken: the daemon goes on writing while it is open, and the read-only store sees what it commits
    late = daemon.append(EntryKind.PENDING, redemption("C-4", 1))
    assert ro.entries(after_seq=late.seq - 1)[0].entry.entry_id == late.entry.entry_id
    before = _digest(tmp_path)
    ro.close()
    assert _digest(tmp_path) == before
    # the daemon's lock is intact: a second daemon is still refused
    with pytest.raises(JournalInUse):
        open_store(path, signer)
    daemon.close()


def test_a_journal_of_an_older_schema_is_read_without_creating_its_missing_tables(tmp_path: Path,
                                                                                  signer: SoftwareSigner) -> None:
    """A journal no daemon of this version opened yet: no receipt, settlement or refusal tables, no update
    trigger. A writer's open creates them; a read-only one must not."""
    path = tmp_path / "j.sqlite"
    store = open_store(path, signer)
    store.append(EntryKind.PENDING, redemption("C-1", 2))
    store.close()
    with sqlite3.connect(path) as db:
        db.executescript("DROP TABLE upload_receipts; DROP TABLE settlements; DROP TABLE upload_problems;"
                         " DROP TRIGGER entries_only_mark_uploaded;")
    db.close()
    schema = "SELECT type, name FROM sqlite_master ORDER BY name"
    with sqlite3.connect(path) as db:
        old = db.execute(schema).fetchall()
    db.close()
    before = _digest(tmp_path)

    ro = JournalStore.open_read_only(path, SERVER.public_key)
    assert ro.unsent_count() == 2 and ro.exposure() == {Unit.PACKAGE: 2} and ro.upload_problems() == []
    ro.close()
    assert _digest(tmp_path) == before

    writer = open_store(path, signer)  # what the read-only open did not do
    writer.close()
    with sqlite3.connect(path) as db:
        assert db.execute(schema).fetchall() != old
    db.close()


def test_a_missing_or_foreign_file_is_a_store_error_and_nothing_is_created(tmp_path: Path) -> None:
    with pytest.raises(JournalStoreError):
        JournalStore.open_read_only(tmp_path / "none.sqlite")
    assert list(tmp_path.iterdir()) == []
    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    before = _digest(tmp_path)
    with pytest.raises(JournalStoreError, match="cannot read journal"):
        JournalStore.open_read_only(tmp_path / "other.sqlite")
    assert _digest(tmp_path) == before
