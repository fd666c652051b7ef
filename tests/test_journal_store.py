"""The terminal journal store: append-only, fsync'd, hash-chained, offline-verifiable."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind, verify_chain
from huma.cli import main as huma_main
from terminal.clock import Clock
from terminal.errors import JournalStoreError, JournalVerifyError
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import CardWrite, JournalStore, write_of
from tests.fixtures.receipts import SERVER, receipt

TID = "T-017"


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def open_store(path: Path, signer: SoftwareSigner) -> JournalStore:
    return JournalStore(path, terminal_id=TID, signer=signer, clock=Clock(force_synced=True),
                        receipt_key=SERVER.public_key)


def redemption(card: str = "C-1", amount: int = 1, after: int = 2) -> CardWrite:
    return CardWrite(
        card_id=card,
        tag_uid=bytes.fromhex("04a1b2c3d4e5f6"),
        programme="pangan",
        unit=Unit.PACKAGE,
        amount=amount,
        slot_seq_before=after - 1,
        slot_seq_after=after,
        state_hash_prev=bytes(32),
        state_hash_new=bytes([after]) * 32,
    )


def test_entries_chain_and_verify_with_the_terminal_key(tmp_path: Path, signer: SoftwareSigner) -> None:
    store = open_store(tmp_path / "j.sqlite", signer)
    pend = store.append(EntryKind.PENDING, redemption())
    store.append(EntryKind.COMMIT, write_of(pend))
    store.close()
    key = cose_key(signer)
    report = verify_journal_file(tmp_path / "j.sqlite", key)
    assert (report.entries, report.boots, report.open_writes) == (3, 1, ())
    assert not report.key_from_file
    msgs = [e.signed.message for e in open_store(tmp_path / "j.sqlite", signer).entries()]
    kinds = [s.entry.kind for s in verify_chain(msgs, {key.kid: key}, first_seq=1)]
    assert kinds == [EntryKind.BOOT, EntryKind.PENDING, EntryKind.COMMIT, EntryKind.BOOT]


def test_reopen_continues_seq_and_counts_boots(tmp_path: Path, signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    a = open_store(path, signer)
    a.append(EntryKind.BALANCE, CardWrite(card_id="C-9"))
    a.close()
    b = open_store(path, signer)
    assert b.boot_id == 2
    assert b.head[0] == 3  # BOOT, BALANCE, BOOT
    b.close()
    assert verify_journal_file(path, cose_key(signer)).boots == 2


def test_other_terminal_or_key_refused(tmp_path: Path, signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    open_store(path, signer).close()
    with pytest.raises(JournalStoreError, match="belongs to terminal"):
        JournalStore(path, terminal_id="T-099", signer=signer)
    with pytest.raises(JournalStoreError, match="another terminal key"):
        open_store(path, SoftwareSigner(ed25519.Ed25519PrivateKey.generate()))


def test_nothing_can_be_deleted_or_rewritten(tmp_path: Path, signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    store = open_store(path, signer)
    store.append(EntryKind.PENDING, redemption())
    store.close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM entries WHERE seq=2")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE entries SET amount=0 WHERE seq=2")
    db.execute("UPDATE entries SET uploaded_at=1 WHERE seq=2")  # the one allowed change
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE entries SET uploaded_at=NULL WHERE seq=2")
    db.commit()
    db.close()


def _tampered_copy(src: Path, dst: Path, sql: str) -> Path:
    shutil.copy(src, dst)
    db = sqlite3.connect(dst)
    db.executescript("DROP TRIGGER entries_no_delete; DROP TRIGGER entries_only_mark_uploaded;" + sql)
    db.commit()
    db.close()
    return dst


@pytest.fixture
def journal_file(tmp_path: Path, signer: SoftwareSigner) -> Path:
    path = tmp_path / "j.sqlite"
    store = open_store(path, signer)
    for i in range(5):
        pend = store.append(EntryKind.PENDING, redemption(after=i + 2))
        store.append(EntryKind.COMMIT, write_of(pend))
    store.close()
    return path


@pytest.mark.parametrize(
    ("sql", "reason", "seq"),
    [
        ("DELETE FROM entries WHERE seq=4;", "Gap", 4),
        ("UPDATE entries SET amount=0 WHERE seq=5;", "indexed columns", 5),
        (
            # flip the signature's last byte (always a change, whatever its value)
            "UPDATE entries SET message=CAST(substr(message,1,length(message)-1)"
            "||CASE WHEN substr(message,-1)=x'00' THEN x'01' ELSE x'00' END AS BLOB) WHERE seq=6;",
            "BadSignature",
            6,
        ),
        ("DELETE FROM entries WHERE seq=11;", None, None),  # truncating the tail is not detectable here
    ],
)
def test_verify_finds_tampering(journal_file: Path, tmp_path: Path, signer: SoftwareSigner,
                                sql: str, reason: str | None, seq: int | None) -> None:
    bad = _tampered_copy(journal_file, tmp_path / "bad.sqlite", sql)
    if reason is None:
        # A cut tail verifies; only the head hash the server acknowledged reveals it.
        assert verify_journal_file(bad, cose_key(signer)).head_hash != verify_journal_file(
            journal_file, cose_key(signer)).head_hash
        return
    with pytest.raises(JournalVerifyError, match=reason) as info:
        verify_journal_file(bad, cose_key(signer))
    if seq is not None:
        assert info.value.seq == seq


def test_verify_rejects_the_wrong_key(journal_file: Path, signer: SoftwareSigner) -> None:
    other = cose_key(SoftwareSigner(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(JournalVerifyError) as info:
        verify_journal_file(journal_file, other)
    assert info.value.seq == 1
    assert f"journal signed by key {cose_key(signer).kid.hex()}, but the key/certificate given is for key " \
           f"{other.kid.hex()}" in str(info.value)


def test_cli_verify_prints_the_head_and_expect_head_catches_a_cut_tail(
        journal_file: Path, tmp_path: Path, signer: SoftwareSigner, capsys: pytest.CaptureFixture[str]) -> None:
    head = verify_journal_file(journal_file, cose_key(signer))
    assert head.last_seq == 11
    cut = _tampered_copy(journal_file, tmp_path / "cut.sqlite", "DELETE FROM entries WHERE seq >= 10;")
    assert huma_main(["journal", "verify", str(cut)]) == 0  # every entry left is intact ...
    out = capsys.readouterr().out
    cut_head = verify_journal_file(cut, cose_key(signer))
    assert f"head seq 9 entry hash {cut_head.head_hash.hex()}" in out  # ... and the head says where it ends
    expect = f"11:{head.head_hash.hex()}"
    assert huma_main(["journal", "verify", str(journal_file), "--expect-head", expect]) == 0
    assert huma_main(["journal", "verify", str(cut), "--expect-head", expect]) == 2
    assert "ends at seq 9 but seq 11 was expected: 2 entries are missing at the end" in capsys.readouterr().err
    assert huma_main(["journal", "verify", str(cut), "--expect-head", "9:" + "00" * 32]) == 2
    assert "entry seq 9: entry hash" in capsys.readouterr().err
    assert huma_main(["journal", "verify", str(cut), "--expect-head", "nine"]) == 2  # click usage error
    assert "SEQ or SEQ:HASH" in capsys.readouterr().err


def test_cli_verify_names_a_cert_file_that_is_not_a_certificate(journal_file: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "terminal.toml"
    toml.write_text('terminal_id = "market"\n')
    assert huma_main(["journal", "verify", str(journal_file), "--cert", str(toml)]) == 2
    err = capsys.readouterr().err
    assert str(toml) in err and "not a PEM X.509 certificate" in err and "Traceback" not in err


def test_cli_verify_exit_codes(journal_file: Path, tmp_path: Path, signer: SoftwareSigner,
                               capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "t.pub.pem"
    pem.write_bytes(signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert huma_main(["journal", "verify", str(journal_file), "--key", str(pem)]) == 0
    assert "11 entries" in capsys.readouterr().out
    bad = _tampered_copy(journal_file, tmp_path / "bad.sqlite", "DELETE FROM entries WHERE seq=3;")
    assert huma_main(["journal", "verify", str(bad), "--key", str(pem)]) == 2
    assert "entries 3..3 missing" in capsys.readouterr().err
    assert huma_main(["journal", "verify", str(tmp_path / "none.sqlite")]) == 2


def test_open_write_and_exposure_follow_the_protocol(tmp_path: Path, signer: SoftwareSigner) -> None:
    store = open_store(tmp_path / "j.sqlite", signer)
    pend = store.append(EntryKind.PENDING, redemption("C-1", 2))
    assert store.open_write("C-1") == pend
    store.append(EntryKind.UNCERTAIN, write_of(pend))
    assert store.open_write("C-1").seq == pend.seq  # type: ignore[union-attr]
    assert store.exposure("C-1") == {Unit.PACKAGE: 2}  # uncertain counts as spent
    store.append(EntryKind.VOIDED, write_of(pend))
    assert store.open_write("C-1") is None
    assert store.exposure("C-1") == {}  # a voided write handed nothing out
    p2 = store.append(EntryKind.PENDING, redemption("C-1", 1, after=3))
    store.append(EntryKind.COMMIT, write_of(p2))
    assert store.last_committed_slot_seq("C-1") == 3
    assert store.exposure("C-1") == {Unit.PACKAGE: 1}
    assert store.exposure() == {Unit.PACKAGE: 1}
    unsent = store.unsent()
    assert [e.seq for e in unsent] == list(range(1, 7))
    assert store.record_receipt(receipt(store, unsent)) == (6, [])
    assert store.record_receipt(receipt(store, unsent)) == (0, [])  # already marked: nothing new, not stored
    assert store.exposure() == {} and store.unsent() == []


def test_pending_left_by_a_crash_becomes_uncertain_at_boot(tmp_path: Path, signer: SoftwareSigner) -> None:
    path = tmp_path / "j.sqlite"
    key_pem = tmp_path / "k.pem"
    key_pem.write_bytes(signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # A separate process appends PENDING and is SIGKILLed right after append returned:
    # the entry must be on disk (fsync before return) and resolved as UNCERTAIN at next boot.
    child = textwrap.dedent(f"""
        import os, signal, sys
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from cardlib.keys.signer import SoftwareSigner
        from cardlib.records.journal import EntryKind
        from cardlib.records.claims import Unit
        from terminal.journal_store import JournalStore, CardWrite
        s = SoftwareSigner(load_pem_private_key(open({str(key_pem)!r}, 'rb').read(), None))
        j = JournalStore({str(path)!r}, terminal_id={TID!r}, signer=s)
        j.append(EntryKind.PENDING, CardWrite(card_id='C-7', programme='pangan', unit=Unit.PACKAGE,
                 amount=1, slot_seq_after=5))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = open_store(path, signer)
    kinds = [e.entry.kind for e in store.entries()]
    assert kinds == [EntryKind.BOOT, EntryKind.PENDING, EntryKind.BOOT, EntryKind.UNCERTAIN]
    assert store.open_write("C-7").entry.kind is EntryKind.PENDING  # type: ignore[union-attr]
    store.close()
    assert verify_journal_file(path, cose_key(signer)).open_writes == ("C-7",)


def test_decline_reason_is_a_signed_claim_only_on_declined_entries(tmp_path: Path, signer: SoftwareSigner) -> None:
    from cardlib.records.journal import MalformedEntry, verify_entry

    store = open_store(tmp_path / "j.sqlite", signer)
    e = store.append(EntryKind.DECLINED, CardWrite(card_id="6271000000001234", decline_reason="card_denied"))
    again = verify_entry(e.signed.message, {cose_key(signer).kid: cose_key(signer)})
    assert again.entry.decline_reason == "card_denied"
    with pytest.raises(MalformedEntry, match="only on DECLINED"):  # never signed on another kind
        store.append(EntryKind.BALANCE, CardWrite(card_id="6271000000001234", decline_reason="card_denied"))
    store.close()
    assert verify_journal_file(tmp_path / "j.sqlite").entries == 2


def test_flagged_upload_problems_are_kept_and_skipped(tmp_path: Path, signer: SoftwareSigner) -> None:
    store = open_store(tmp_path / "j.sqlite", signer)
    a = store.append(EntryKind.BALANCE, CardWrite(card_id="6271000000001234"))
    assert store.record_receipt(receipt(store, [a], result="conflict", reason="same seq, other bytes")) == (
        0, [(2, "conflict", "same seq, other bytes")])
    assert [s.seq for s in store.unsent()] == [1] and store.unsent_count() == 1
    assert store.upload_problems() == [(2, "conflict", "same seq, other bytes")]
    with pytest.raises(sqlite3.IntegrityError):  # still append-only underneath
        store._db.execute("DELETE FROM entries WHERE seq = 2")
    store.close()
