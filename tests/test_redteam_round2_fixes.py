"""Red team round 2, the clerk at the counter and the office station: the attacks as regression tests.

1. Supervisor passwords at the manual fallback desk cannot be guessed without limit: back-off
   and lock-out per supervisor id and per counter, counted from the signed journal (a restart
   forgets nothing) and declined ``supervisor_locked`` without checking (docs/fallback.md §Step 2).
2. An office PIN reset journals its intent (card, technician, approver, new epoch) durably before
   any chip write; a station that cannot journal refuses before touching the card (docs/fallback.md §Step 3).
3. A settlement row written straight into the counter's journal file is reported by
   ``huma journal verify`` (docs/reconciliation.md §Settling torn writes).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import SUPERVISOR_WINDOW_S, FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_records_support import TERMINAL, identity
from tests.test_terminal_caps_and_declines import fresh_bundle

PW = "kunci-sri-77"
SUPERVISORS = {"sri": supervisor_hash(PW), "budi": supervisor_hash("budi-pw-55")}


def _desk(path: Path, clock=time.time) -> tuple[JournalStore, FallbackDesk]:  # type: ignore[no-untyped-def]
    bundle = fresh_bundle({"fallback.manual.food": 5})
    journal = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    desk = FallbackDesk(journal, lambda: bundle, CounterMode.MARKET_REDEMPTION, SUPERVISORS,  # type: ignore[arg-type, return-value]
                        clock=clock)
    return journal, desk


def test_supervisor_password_guessing_is_backed_off_and_locked(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        reasons = [desk.manual(card, "food", 1, "sri", f"guess-{n:04d}").reason for n in range(30)]
        assert reasons[:3] == [DeclineReason.SUPERVISOR_REFUSED] * 3
        assert set(reasons[3:]) == {DeclineReason.SUPERVISOR_LOCKED}  # not checked: no scrypt, no oracle
        out = desk.manual(card, "food", 1, "sri", PW)  # the 31st guess is the right one
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.SUPERVISOR_LOCKED
        assert "next try in" in (out.detail or "")
        # another supervisor at the same counter is not held back by sri's failures
        assert desk.manual(card, "food", 1, "budi", "budi-pw-55").status is TapStatus.ACCEPTED
    finally:
        journal.close()


def test_the_lock_out_survives_a_daemon_restart_and_ages_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures age by real (monotonic) time, which the test moves: the journal and the desk both read it."""
    path = tmp_path / "j.sqlite"
    card = identity().card_id.hex()
    real = time.monotonic
    elapsed = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: real() + elapsed[0])
    journal, desk = _desk(path)
    try:
        for n in range(5):  # real time passes each back-off (100 s between guesses): 5 checked
            elapsed[0] += 100 if n else 0
            assert desk.manual(card, "food", 1, "sri", f"guess-{n}").reason is DeclineReason.SUPERVISOR_REFUSED
    finally:
        journal.close()
    journal, desk = _desk(path)  # the daemon restarts
    try:
        held = desk.manual(card, "food", 1, "sri", PW)  # the last failures are within the window of this moment
        assert held.reason is DeclineReason.SUPERVISOR_LOCKED and "locked" in (held.detail or "")
        elapsed[0] += SUPERVISOR_WINDOW_S + 1  # every failure aged out of the window
        assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.ACCEPTED
    finally:
        journal.close()


def test_the_counter_locks_manual_entry_when_guesses_spread_over_ids(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        for n in range(15):  # ids nobody has: each fails once, the counter counts them all
            assert desk.manual(card, "food", 1, f"x{n}", "guess").reason is DeclineReason.SUPERVISOR_REFUSED
        out = desk.manual(card, "food", 1, "budi", "budi-pw-55")
        assert out.reason is DeclineReason.SUPERVISOR_LOCKED and "at this counter" in (out.detail or "")
    finally:
        journal.close()


def test_a_right_password_ends_the_run_of_wrong_ones(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        for _ in range(2):
            assert desk.manual(card, "food", 1, "sri", "typo").reason is DeclineReason.SUPERVISOR_REFUSED
            assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.ACCEPTED
        assert desk.manual(card, "food", 1, "sri", "typo").reason is DeclineReason.SUPERVISOR_REFUSED
    finally:
        journal.close()


# ---------------------------------------------------------------- 3. settlement rows outside the signed chain


def deferred_write(j: JournalStore, card: str = "6271000000000001"):  # type: ignore[no-untyped-def]
    """A torn PENDING (a real card state in ``pending``) the card could not settle: ``deferred``."""
    from cardlib.records.claims import Unit
    from terminal.journal_store import write_of
    from tests.test_terminal_journal_tamper import _redeem

    p = _redeem(j, card, 5, Unit.PACKAGE, "food", 3)
    j.append(EntryKind.UNCERTAIN, write_of(p))
    j.append(EntryKind.UNCERTAIN, write_of(p), note="deferred")
    return p


def _settled_journal(path: Path, server: object, receipt_for: str = "") -> tuple[bytes, int, bytes]:
    """A journal with one deferred torn write settled ``voided`` by a receipt of ``server``; its entry id,
    seq and the receipt. ``receipt_for``: another terminal id in the receipt."""
    import sqlite3

    import pytest

    from cardlib.records.statements import ReceiptLine, Settlement, SettlementOutcome, sign_receipt
    from terminal.errors import JournalStoreError
    from tests.test_sync_authenticity import PINNED

    j = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True),
                     receipt_key=PINNED.public_key)
    try:
        p = deferred_write(j)
        st = Settlement(p.entry.entry_id, p.seq, SettlementOutcome.VOIDED)
        receipt = sign_receipt(server, receipt_for or "T-6271-0001", b"{}",  # type: ignore[arg-type]
                               [ReceiptLine(p.entry.entry_id, p.seq, "duplicate")], now=int(time.time()),
                               settlements=[st])
        if server is PINNED and not receipt_for:
            assert j.record_settlements([st], receipt) == 1
            assert j.exposure() == {}
        else:  # the daemon refuses it (another key or terminal): written into the file, as an insider would
            with pytest.raises(JournalStoreError):
                j.record_settlements([st], receipt)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
                       (p.entry.entry_id, "voided", time.time(), receipt))
            db.close()
            assert sum(j.exposure().values()) == 3  # and it releases nothing
        return p.entry.entry_id, p.seq, receipt
    finally:
        j.close()


def test_red_team_a_settlement_row_inserted_into_the_journal_file_fails_verify(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from cardlib.keys.signer import cose_key
    from terminal.errors import JournalVerifyError
    from terminal.journal_audit import verify_journal_file

    path = tmp_path / "journal.sqlite"
    j = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    try:
        p = deferred_write(j)
    finally:
        j.close()
    assert verify_journal_file(path, cose_key(TERMINAL)).settlements == 0
    db = sqlite3.connect(path)  # the insider, beside the daemon: no trigger dropped
    db.execute("INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
               (p.entry.entry_id, "voided", time.time(), b"not a receipt"))
    db.commit()
    db.close()
    with pytest.raises(JournalVerifyError, match="not backed by a server receipt") as err:
        verify_journal_file(path, cose_key(TERMINAL))
    assert err.value.seq == p.seq  # type: ignore[attr-defined]


def test_a_settlement_is_checked_against_its_receipt_and_the_pinned_key(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from cardlib.keys.signer import cose_key
    from terminal.errors import JournalVerifyError
    from terminal.journal_audit import verify_journal_file
    from tests.test_sync_authenticity import PINNED
    from tests.test_terminal_support import new_signer

    honest = tmp_path / "honest.sqlite"
    _settled_journal(honest, PINNED)
    report = verify_journal_file(honest, cose_key(TERMINAL), receipt_key=PINNED.public_key)
    assert (report.settlements, report.receipts_signed) == (1, True)
    assert not verify_journal_file(honest, cose_key(TERMINAL)).receipts_signed  # shape only without the key

    forged = tmp_path / "forged.sqlite"  # a well-formed receipt signed by a key of the insider's
    _settled_journal(forged, new_signer())
    verify_journal_file(forged, cose_key(TERMINAL))  # passes the shape check: the key is what proves it
    with pytest.raises(JournalVerifyError, match="not backed by a server receipt"):
        verify_journal_file(forged, cose_key(TERMINAL), receipt_key=PINNED.public_key)

    elsewhere = tmp_path / "elsewhere.sqlite"  # a genuine receipt, for another terminal
    _settled_journal(elsewhere, PINNED, receipt_for="T-6271-0002")
    with pytest.raises(JournalVerifyError, match="for terminal"):
        verify_journal_file(elsewhere, cose_key(TERMINAL), receipt_key=PINNED.public_key)

    # a genuine receipt copied onto another torn write of the same journal
    j = JournalStore(honest, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    try:
        other = deferred_write(j, card="6271000000000002")
    finally:
        j.close()
    db = sqlite3.connect(honest)
    (receipt,) = db.execute("SELECT receipt FROM settlements").fetchone()
    db.execute("INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
               (other.entry.entry_id, "voided", time.time(), receipt))
    db.commit()
    db.close()
    with pytest.raises(JournalVerifyError, match="does not settle this entry") as err:
        verify_journal_file(honest, cose_key(TERMINAL), receipt_key=PINNED.public_key)
    assert err.value.seq == other.seq  # type: ignore[attr-defined]


def test_journal_verify_takes_the_pinned_receipt_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    from huma.cli import main as huma_main
    from tests.test_sync_authenticity import PINNED
    from tests.test_terminal_support import new_signer

    pem = tmp_path / "terminal.receipt-key.pem"
    pem.write_bytes(PINNED.public_key.public_bytes(serialization.Encoding.PEM,  # type: ignore[union-attr]
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    honest, forged = tmp_path / "honest.sqlite", tmp_path / "forged.sqlite"
    _settled_journal(honest, PINNED)
    _settled_journal(forged, new_signer())
    assert huma_main(["journal", "verify", str(honest), "--receipt-key", str(pem)]) == 0
    assert "checked against the shape" not in capsys.readouterr().err
    assert huma_main(["journal", "verify", str(forged)]) == 0
    assert "give --receipt-key" in capsys.readouterr().err
    assert huma_main(["journal", "verify", str(forged), "--receipt-key", str(pem)]) == 2
    assert "not backed by a server receipt" in capsys.readouterr().err
