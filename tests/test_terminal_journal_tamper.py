"""Every index column of the journal's ``entries`` table is checked by ``huma journal verify``.

The daemon decides from these columns (``last_committed_slot_seq`` reads
``slot_seq_after``, ``exposure`` reads ``unit`` and ``amount``, ``open_write``
reads ``card_id`` and ``kind``), so an edited copy must not verify as OK. The
journal is written by :class:`terminal.journal_store.JournalStore` the way the tap
writes it (PENDING with its card state blob, COMMIT, DECLINED, BALANCE,
UNCERTAIN with a note, FINISHED, VOIDED), then one column of one row is changed
with the triggers dropped, as someone editing a copy would.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.records.layout import SlotName
from cardlib.records.session import PendingWrite
from huma.cli import main as huma_main
from terminal.clock import Clock
from terminal.errors import JournalVerifyError
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import CardWrite, JournalStore, write_of
from terminal.tap import _pending_blob
from tests.test_journal_store import _tampered_copy  # the one copy-and-drop-triggers helper

TID = "T-6271-0001"
SIGNER = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
UID = bytes.fromhex("04a1b2c3d4e5f6")


def _redeem(store: JournalStore, card: str, after: int, unit: Unit, programme: str, amount: int):
    cose = f"slot record {card} {after}".encode()

    def build(seq: int) -> tuple[CardWrite, bytes]:
        p = PendingWrite(uid=UID, card_id=bytes.fromhex(card), slot=SlotName(list(SlotName)[after % 2].value),
                         seq=after, cose=cose, base_hash=bytes(8), amounts={1: amount}, cycle=7,
                         first_page=16, slot_len=160, old_region=bytes(160))
        return CardWrite(card_id=card, tag_uid=UID, programme=programme, unit=unit, amount=amount,
                         slot_seq_before=after - 1, slot_seq_after=after,
                         state_hash_prev=bytes(32), state_hash_new=hashlib.sha256(cose).digest(),
                         ntag_counter=after), _pending_blob(p)

    return store.append(EntryKind.PENDING, build)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seq 1 BOOT, 2 PENDING, 3 COMMIT, 4 DECLINED, 5 BALANCE, 6 PENDING, 7 UNCERTAIN (note),
    8 FINISHED, 9 PENDING, 10 VOIDED, 11 BOOT."""
    path = tmp_path_factory.mktemp("journal") / "journal.sqlite"
    store = JournalStore(path, terminal_id=TID, signer=SIGNER, clock=Clock(force_synced=True))
    pend = _redeem(store, "00112233445566aa", 1, Unit.PACKAGE, "food", 1)
    store.append(EntryKind.COMMIT, write_of(pend))
    store.append(EntryKind.DECLINED, CardWrite(card_id="00112233445566aa", tag_uid=UID, programme="food",
                                               decline_reason="nothing_left"))
    store.append(EntryKind.BALANCE, CardWrite(card_id="00112233445566aa", tag_uid=UID, programme="food",
                                              slot_seq_before=1))
    pend = _redeem(store, "00112233445566bb", 3, Unit.RUPIAH, "cash", 250_000)
    store.append(EntryKind.UNCERTAIN, write_of(pend), note="deferred")
    store.append(EntryKind.FINISHED, write_of(pend))
    pend = _redeem(store, "00112233445566cc", 2, Unit.VISIT, "health", 1)
    store.append(EntryKind.VOIDED, write_of(pend))
    store.close()
    store = JournalStore(path, terminal_id=TID, signer=SIGNER, clock=Clock(force_synced=True))
    store.close()
    verify_journal_file(path, cose_key(SIGNER))
    return path


#: (column, new value as SQL, seq): every index column derivable from the signed entry,
#: on an entry where the daemon would act on it.
DERIVED = [
    ("seq", "seq+1000", 11),  # the last row, so the order (and the chain) is unchanged
    ("entry_id", "randomblob(16)", 3),
    ("boot_id", "boot_id+1", 3),
    ("kind", str(int(EntryKind.VOIDED)), 3),
    ("card_id", "'00112233445566ff'", 3),
    ("card_id", "NULL", 6),
    ("programme", "'cash'", 2),
    ("programme", "NULL", 3),
    ("amount", "0", 8),
    ("slot_seq_after", "0", 3),
    ("slot_seq_after", "0", 8),
    ("slot_seq_after", "x'03'", 8),  # 3 as a BLOB: INTEGER affinity keeps it a BLOB, not the signed 3
    ("state_hash_new", "zeroblob(32)", 2),
    ("wall_ms", "0", 4),
    ("mono_ns", "mono_ns+1", 5),
    ("clock_synced", "0", 7),
    ("entry_hash", "zeroblob(32)", 10),
]


@pytest.mark.parametrize(("column", "value", "seq"), DERIVED, ids=[f"{c}-{s}" for c, _, s in DERIVED])
def test_each_derived_column_is_compared_with_the_signed_entry(journal: Path, tmp_path: Path,
                                                               column: str, value: str, seq: int) -> None:
    where = "seq=(SELECT max(seq) FROM entries)" if column == "seq" else f"seq={seq}"
    bad = _tampered_copy(journal, tmp_path / "bad.sqlite", f"UPDATE entries SET {column}={value} WHERE {where};")
    with pytest.raises(JournalVerifyError, match=rf"\b{column}\b") as info:
        verify_journal_file(bad, cose_key(SIGNER))
    assert info.value.seq == seq


@pytest.mark.parametrize(("sql", "seq", "reason"), [
    ("UPDATE entries SET unit='x' WHERE seq=3;", 3, "unit"),
    ("UPDATE entries SET unit='visit' WHERE seq=3;", 3, "unit"),  # differs from its PENDING's
    ("UPDATE entries SET unit='visit' WHERE seq=2;", 3, "unit"),  # PENDING changed: its COMMIT differs
    ("UPDATE entries SET unit=NULL WHERE seq=8;", 8, "unit"),
    ("UPDATE entries SET pending=(SELECT pending FROM entries WHERE seq=2) WHERE seq=9;", 9, "pending"),
    ("UPDATE entries SET pending=(SELECT pending FROM entries WHERE seq=2) WHERE seq=3;", 3, "pending"),
    ("UPDATE entries SET pending=x'00' WHERE seq=2;", 2, "pending"),
], ids=["unit-not-a-unit", "unit-commit", "unit-pending", "unit-null", "pending-other",
        "pending-on-commit", "pending-garbage"])
def test_unsigned_columns_are_checked_against_what_is_signed(journal: Path, tmp_path: Path,
                                                            sql: str, seq: int, reason: str) -> None:
    bad = _tampered_copy(journal, tmp_path / "bad.sqlite", sql)
    with pytest.raises(JournalVerifyError, match=rf"\b{reason}\b") as info:
        verify_journal_file(bad, cose_key(SIGNER))
    assert info.value.seq == seq


def test_the_brief_s_edit_fails_on_the_command_line(journal: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = _tampered_copy(journal, tmp_path / "bad.sqlite",
                    "UPDATE entries SET slot_seq_after=0, unit='x', wall_ms=0 WHERE kind IN (2,4);")
    assert huma_main(["journal", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "entry seq 3" in err and "slot_seq_after" in err


ALL_BUT_UPLOAD_MARK = ["seq", "entry_id", "boot_id", "kind", "card_id", "programme", "unit", "amount",
                       "slot_seq_after", "state_hash_new", "wall_ms", "mono_ns", "clock_synced",
                       "entry_hash", "message", "note", "pending"]


def test_the_schema_lists_every_column_here(journal: Path) -> None:
    db = sqlite3.connect(journal)
    cols = [r[1] for r in db.execute("PRAGMA table_info(entries)")]
    db.close()
    assert cols == ALL_BUT_UPLOAD_MARK + ["uploaded_at"]


@pytest.mark.parametrize("column", ALL_BUT_UPLOAD_MARK)
def test_the_trigger_refuses_changing_any_column_but_the_upload_mark(journal: Path, tmp_path: Path,
                                                                     column: str) -> None:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(journal, copy)
    db = sqlite3.connect(copy)
    value = ("'x'" if column in ("unit", "note", "card_id", "programme")
             else f"{column}+1000" if column == "seq" else "zeroblob(16)")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute(f"UPDATE entries SET {column}={value} WHERE seq=7")
    db.execute("UPDATE entries SET uploaded_at=1 WHERE seq=7")
    db.commit()
    db.close()


def test_an_older_journal_gets_the_full_trigger_on_open(journal: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    shutil.copy(journal, old)
    db = sqlite3.connect(old)
    db.executescript(
        "DROP TRIGGER entries_only_mark_uploaded;"
        "CREATE TRIGGER entries_only_mark_uploaded BEFORE UPDATE ON entries"
        " WHEN NEW.seq IS NOT OLD.seq OR NEW.message IS NOT OLD.message"
        " BEGIN SELECT RAISE(ABORT, 'journal entries are immutable'); END;")
    db.close()
    JournalStore(old, terminal_id=TID, signer=SIGNER, clock=Clock(force_synced=True)).close()
    db = sqlite3.connect(old)
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE entries SET unit='x' WHERE seq=3")
    db.close()
