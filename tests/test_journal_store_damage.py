"""SQLite-level damage of a terminal journal: corrupt indexes, a copy without its WAL, a cut file.

A damaged index hides a card's entries from the look-ups that guard against
double charging (open_write, last_committed_slot_seq, exposure), so audit
(``huma journal verify``) fails on it, the counter refuses to open it, and
``huma journal repair`` rebuilds indexes only. The damage is real bytes
changed in a copy of a real journal, found via ``sqlite_master.rootpage`` and
``PRAGMA page_size`` (SQLite file format §1.5: page N starts at (N-1)*page_size).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from huma.cli import main as huma_main
from terminal.clock import Clock
from terminal.errors import JournalDamaged, JournalVerifyError
from terminal.journal_audit import repair_journal_file, verify_journal_file
from terminal.journal_store import CardWrite, JournalStore, write_of

TID = "T-DAMAGE-01"


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def _write(card: str, after: int) -> CardWrite:
    return CardWrite(card_id=card, tag_uid=bytes.fromhex("04a1b2c3d4e5f6"), programme="pangan", unit=Unit.PACKAGE,
                     amount=1, slot_seq_before=after - 1, slot_seq_after=after,
                     state_hash_prev=bytes(32), state_hash_new=bytes([after]) * 32)


def _open(path: Path, signer: SoftwareSigner) -> JournalStore:
    return JournalStore(path, terminal_id=TID, signer=signer, clock=Clock(force_synced=True))


@pytest.fixture
def journal_file(tmp_path: Path, signer: SoftwareSigner) -> Path:
    """A closed journal: BOOT, then cards C-A (2 writes) and C-B (1 write), each PENDING + COMMIT."""
    path = tmp_path / "journal.sqlite"
    store = _open(path, signer)
    for card, after in (("C-A", 2), ("C-B", 2), ("C-A", 3)):
        store.append(EntryKind.COMMIT, write_of(store.append(EntryKind.PENDING, _write(card, after))))
    store.close()
    return path


def _page(path: Path, name: str) -> tuple[int, int]:
    """``(offset, page size)`` in bytes of the root page of table/index ``name``."""
    db = sqlite3.connect(path)
    try:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (name,)).fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    return (root - 1) * size, size


def _corrupt_card_index(src: Path, dst: Path) -> Path:
    """Copy and change one byte of the greatest key in the ``entries_card`` index, ``(C-B, 5)``, to ``C-C``.

    Cells are written from the page end down, so the lowest ``C-B`` is the last
    inserted (seq 5). The b-tree stays well-formed and in order, so only a full
    integrity_check, which compares index keys with the rows, can see it.
    """
    shutil.copy(src, dst)
    offset, size = _page(dst, "entries_card")
    data = bytearray(dst.read_bytes())
    page = data[offset:offset + size]
    at = page.find(b"C-B")
    assert at > 0, "the card id must be stored in the index page"
    data[offset + at + 2] = ord("C")
    dst.write_bytes(bytes(data))
    return dst


def _rows_for(path: Path, card: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM entries INDEXED BY entries_card WHERE card_id=?",
                              (card,)).fetchone()[0])
    finally:
        db.close()


def test_corrupt_card_index_fails_verify_and_the_original_verifies(
        journal_file: Path, tmp_path: Path, signer: SoftwareSigner, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _corrupt_card_index(journal_file, tmp_path / "bad.sqlite")
    assert _rows_for(journal_file, "C-B") == 2
    assert _rows_for(bad, "C-B") == 1  # the index hides the card's COMMIT (a double-charge risk)
    with pytest.raises(JournalDamaged, match="integrity_check reports: .*entries_card") as info:
        verify_journal_file(bad, cose_key(signer))
    assert info.value.index_only and "huma journal repair" in str(info.value)
    assert verify_journal_file(journal_file, cose_key(signer)).entries == 7
    assert huma_main(["journal", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "journal file is damaged" in err and "entries_card" in err and "Traceback" not in err
    assert huma_main(["journal", "verify", str(journal_file)]) == 0


def test_counter_refuses_to_open_a_journal_with_a_damaged_index(
        journal_file: Path, tmp_path: Path, signer: SoftwareSigner) -> None:
    bad = _corrupt_card_index(journal_file, tmp_path / "bad.sqlite")
    with pytest.raises(JournalDamaged, match="will not serve taps.*huma journal repair"):
        _open(bad, signer)
    _open(journal_file, signer).close()  # the undamaged one opens


def test_repair_rebuilds_the_indexes_after_a_backup(
        journal_file: Path, tmp_path: Path, signer: SoftwareSigner, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _corrupt_card_index(journal_file, tmp_path / "bad.sqlite")
    before = bad.read_bytes()
    assert huma_main(["journal", "repair", str(bad)]) == 0
    out = capsys.readouterr().out
    backup, = tmp_path.glob("bad.sqlite.damaged-*")
    assert f"backed up the damaged journal to {backup}" in out and "OK " in out and "7 entries" in out
    assert _rows_for(bad, "C-B") == 2
    store = _open(bad, signer)  # the counter serves again and sees the card's history
    try:
        assert store.last_committed_slot_seq("C-B") == 2
    finally:
        store.close()
    with pytest.raises(JournalDamaged):  # the backup keeps the damage as evidence
        verify_journal_file(backup)
    assert len(before) > 0
    with pytest.raises(JournalDamaged, match="nothing to repair"):
        repair_journal_file(journal_file)


def test_repair_refuses_damage_outside_the_indexes(journal_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "rows.sqlite"
    shutil.copy(journal_file, bad)
    offset, size = _page(bad, "entries")
    data = bytearray(bad.read_bytes())
    data[offset:offset + 12] = b"\xff" * 12  # the entries b-tree page header (file format §1.6)
    bad.write_bytes(bytes(data))
    before = bad.read_bytes()
    with pytest.raises(JournalDamaged, match="journal file is damaged") as info:
        repair_journal_file(bad)
    assert not info.value.index_only and "docs/terminal.md" in str(info.value)
    assert bad.read_bytes() == before and not list(tmp_path.glob("rows.sqlite.damaged-*"))


def test_copy_without_its_wal_gets_a_hint(tmp_path: Path, signer: SoftwareSigner,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    live = tmp_path / "counter" / "journal.sqlite"
    live.parent.mkdir()
    store = _open(live, signer)  # running counter: recent entries are in journal.sqlite-wal
    try:
        store.append(EntryKind.PENDING, _write("C-A", 2))
        copy = tmp_path / "journal.sqlite"
        shutil.copy(live, copy)
        assert huma_main(["journal", "verify", str(copy)]) == 2
        err = capsys.readouterr().err
        assert "not a terminal journal" in err
        assert "copy journal.sqlite-wal and journal.sqlite-shm together with journal.sqlite" in err
        assert "or stop the counter first" in err
        for suffix in ("-wal", "-shm"):
            shutil.copy(f"{live}{suffix}", f"{copy}{suffix}")
        assert huma_main(["journal", "verify", str(copy)]) == 0
    finally:
        store.close()


def test_a_cut_file_is_damaged_not_foreign(journal_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(journal_file.read_bytes()[: journal_file.stat().st_size // 2])
    with pytest.raises(JournalDamaged, match="journal file is damaged") as info:
        verify_journal_file(cut)
    assert "not a terminal journal" not in str(info.value)
    stub = tmp_path / "stub.sqlite"
    stub.write_bytes(journal_file.read_bytes()[:10])
    with pytest.raises(JournalDamaged, match="journal file is damaged"):
        verify_journal_file(stub)
    text = tmp_path / "notes.txt"
    text.write_text("this is not a journal at all\n")
    with pytest.raises(JournalVerifyError, match="not a terminal journal .not an SQLite database file"):
        verify_journal_file(text)
