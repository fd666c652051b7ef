"""Red team, insider with write access to the counter's journal file (not the terminal key).

Two attacks on the offline exposure (docs/security.md "Server answers are signed" and
§Caps, clocks and unsettled writes), both by plain SQL on the journal file while the
daemon runs or between restarts, with the triggers left as they are:

1. ``UPDATE entries SET uploaded_at=…`` on entries the server never got: they used to
   drop out of the exposure (so the clerk could pay past ``cap.terminal_exposure``) and
   out of the upload queue (so the server did not see them until a head report).
2. ``INSERT INTO settlements …`` naming an open torn write: it used to release the write
   from the exposure as if the server had settled it.

Now only what the pinned server receipt key signed counts: upload receipts are stored and
re-verified when the journal opens, settlement rows too; a hand-made mark or row changes
nothing. ``huma journal verify`` shows torn writes settled by a backed settlement as
settled, not open.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.records.statements import ReceiptLine, Settlement, SettlementOutcome, sign_receipt
from huma.cli import main as huma_main
from terminal.clock import Clock
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import LEGACY_MARKS_BEFORE_MS, CardWrite, JournalStore, StoredEntry, write_of
from terminal.sync import HttpApi, SyncClient, TrustStore
from tests.test_settlements import _answer_with
from tests.test_sync_authenticity import PINNED, TID, FakeServer, _know, _signed_answer
from tests.test_terminal_journal_tamper import _redeem
from tests.test_terminal_support import TrustKit, new_signer

CARD = "00112233445566aa"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


class Counter:
    """A counter's journal (opened as the daemon opens it: with the pinned receipt key) and sync client."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.path = tmp / "journal.sqlite"
        self.signer: SoftwareSigner = new_signer()
        _know(self.signer)
        self.trust = TrustStore(tmp / "bundle.cose", TrustKit().root.public_key)
        self.url = url
        self.journal = self._open()

    def _open(self) -> JournalStore:
        journal = JournalStore(self.path, terminal_id=TID, signer=self.signer, clock=Clock(force_synced=True),
                               receipt_key=PINNED.public_key)
        self.client = SyncClient(HttpApi(self.url, timeout_s=5), journal, self.signer, TID, self.trust,
                                 receipt_key=PINNED.public_key)
        return journal

    def restart(self) -> None:
        self.journal.close()
        self.journal = self._open()

    def pay(self, n: int, amount: int = 100_000) -> list[StoredEntry]:
        return [self.journal.append(EntryKind.COMMIT, CardWrite(card_id=f"6271{i:012d}", programme="cash",
                                                                unit=Unit.RUPIAH, amount=amount))
                for i in range(n)]

    def insider(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """Plain SQL on the journal file, as someone with write access to it (triggers untouched)."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(sql, params)
        finally:
            db.close()


@pytest.fixture
def counter(tmp_path: Path, fake: FakeServer) -> Iterator[Counter]:
    c = Counter(tmp_path, fake.url)
    yield c
    c.journal.close()


def _deferred_write(j: JournalStore, amount: int = 3) -> StoredEntry:
    """A PENDING (with a card state ``huma journal verify`` accepts) torn, then ``deferred``."""
    p = _redeem(j, CARD, 5, Unit.PACKAGE, "food", amount)
    j.append(EntryKind.UNCERTAIN, write_of(p))
    j.append(EntryKind.UNCERTAIN, write_of(p), note="deferred")
    return p


# ---------------------------------------------------------------- 1. uploaded_at set by hand


def test_an_upload_mark_set_by_hand_neither_lowers_exposure_nor_skips_the_upload(
        counter: Counter, fake: FakeServer) -> None:
    fake.answer = _signed_answer(PINNED)
    counter.client.upload_pending()  # the BOOT entry: a genuine, signed upload
    assert counter.journal.exposure() == {}
    paid = counter.pay(3)
    assert counter.journal.exposure() == {Unit.RUPIAH: 300_000}
    counter.insider("UPDATE entries SET uploaded_at=? WHERE uploaded_at IS NULL", (time.time(),))
    # Live: the daemon keeps counting them, and offers them for upload.
    assert counter.journal.exposure() == {Unit.RUPIAH: 300_000}
    assert counter.journal.exposure(paid[0].entry.card_id) == {Unit.RUPIAH: 100_000}
    assert [e.seq for e in counter.journal.unsent()] == [p.seq for p in paid]
    assert counter.journal.unsent_count() == 3
    # After a restart too (the marks are read again from the file).
    counter.restart()
    assert counter.journal.exposure() == {Unit.RUPIAH: 300_000}
    unsent = counter.journal.unsent()
    assert [p.seq for p in paid] == [e.seq for e in unsent if e.entry.kind is EntryKind.COMMIT]
    assert all(e.uploaded_at is None for e in unsent)
    # The upload loop still sends them; the server's signed receipt releases them, restart or not.
    counter.client.upload_pending()
    sent = {e.seq for e in report_entries(fake)}
    assert {p.seq for p in paid} <= sent
    assert counter.journal.exposure() == {}
    counter.restart()
    assert counter.journal.exposure() == {}
    assert counter.journal.unsent_count() == 1  # the BOOT entry of this restart only


def report_entries(fake: FakeServer) -> list[StoredEntry]:
    """Every entry the fake server received (decoded from the request bodies)."""
    import base64
    import json

    from cardlib.records.journal import verify_entry
    from tests.test_sync_authenticity import _any_key

    out = []
    for method, path, _h, body in fake.requests:
        if method == "POST" and path.endswith("/batches"):
            out += [StoredEntry(signed=verify_entry(base64.b64decode(e), _any_key), unit=None, note=None,
                                uploaded_at=None) for e in json.loads(body)["entries"]]
    return out


def test_an_upload_problem_row_written_by_hand_does_not_park_an_entry(counter: Counter) -> None:
    paid = counter.pay(1)
    counter.insider("INSERT INTO upload_problems (entry_id, result, reason, flagged_at) VALUES (?,?,?,?)",
                    (paid[0].entry.entry_id, "rejected", "forged", time.time()))
    counter.restart()
    assert paid[0].seq in [e.seq for e in counter.journal.unsent()]
    assert counter.journal.upload_problems() == []


def test_a_receipt_row_copied_from_another_key_or_terminal_marks_nothing(counter: Counter) -> None:
    paid = counter.pay(2)
    lines = [ReceiptLine(p.entry.entry_id, p.seq, "accepted") for p in paid]
    for key, terminal in ((new_signer(), TID), (PINNED, "T-6271-9999")):
        counter.insider("INSERT INTO upload_receipts (message) VALUES (?)",
                        (sign_receipt(key, terminal, b"{}", lines, now=time.time()),))
    counter.restart()
    assert counter.journal.exposure() == {Unit.RUPIAH: 200_000}
    assert {p.seq for p in paid} <= {e.seq for e in counter.journal.unsent()}


# ---------------------------------------------------------------- 2. settlement rows by hand


def test_a_settlement_row_inserted_by_hand_releases_nothing(counter: Counter, fake: FakeServer) -> None:
    p = _deferred_write(counter.journal)
    fake.answer = _signed_answer(PINNED)
    counter.client.upload_pending()
    assert counter.journal.exposure() == {Unit.PACKAGE: 3}
    # A genuine receipt, but one that settles nothing, copied in as the "evidence".
    other = sign_receipt(PINNED, TID, b"{}", [ReceiptLine(p.entry.entry_id, p.seq, "duplicate")], now=time.time())
    counter.insider("INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
                    (p.entry.entry_id, "voided", time.time(), other))
    assert counter.journal.exposure() == {Unit.PACKAGE: 3}
    assert counter.journal.open_write(CARD) is not None
    counter.restart()
    assert counter.journal.exposure() == {Unit.PACKAGE: 3}
    assert counter.journal.open_write(CARD) is not None
    assert counter.journal.settlements() == {}
    assert [w.seq for w in counter.journal.awaiting_settlement()] == [p.seq]


def test_a_signed_settlement_releases_the_write_and_still_does_after_a_restart(
        counter: Counter, fake: FakeServer) -> None:
    p = _deferred_write(counter.journal)
    fake.answer = _signed_answer(PINNED)
    counter.client.upload_pending()
    fake.answer = _answer_with(lambda results: [Settlement(bytes.fromhex(r["entry_id"]), r["seq"],
                                                           SettlementOutcome.VOIDED) for r in results])
    assert counter.client.settle_open_writes() == 1
    assert counter.journal.exposure() == {}
    counter.restart()
    assert counter.journal.exposure() == {}
    assert counter.journal.settlements() == {p.entry.entry_id: SettlementOutcome.VOIDED}
    assert counter.journal.open_write(CARD) is None


def test_a_forged_settlement_row_in_the_way_does_not_hold_back_the_servers_settlement(
        counter: Counter, fake: FakeServer) -> None:
    """Settlement rows are written once: a forged row for the write stays, yet the server's
    settlement still releases it, after a restart too (it is asked for again)."""
    p = _deferred_write(counter.journal)
    fake.answer = _signed_answer(PINNED)
    counter.client.upload_pending()
    counter.insider("INSERT INTO settlements (entry_id, outcome, settled_at, receipt) VALUES (?,?,?,?)",
                    (p.entry.entry_id, "voided", time.time(), b"forged"))
    fake.answer = _answer_with(lambda results: [Settlement(bytes.fromhex(r["entry_id"]), r["seq"],
                                                           SettlementOutcome.VOIDED) for r in results])
    assert counter.client.settle_open_writes() == 1
    assert counter.journal.exposure() == {}
    counter.restart()
    assert counter.journal.exposure() == {Unit.PACKAGE: 3}  # the forged row backs nothing
    assert counter.client.settle_open_writes() == 1
    assert counter.journal.exposure() == {}


# ---------------------------------------------------------------- huma journal verify


def test_journal_verify_shows_a_settled_torn_write_as_settled_not_open(
        counter: Counter, fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _deferred_write(counter.journal)
    fake.answer = _signed_answer(PINNED)
    counter.client.upload_pending()
    report = verify_journal_file(counter.path, receipt_key=PINNED.public_key)
    assert report.open_writes == (CARD,)
    fake.answer = _answer_with(lambda results: [Settlement(bytes.fromhex(r["entry_id"]), r["seq"],
                                                           SettlementOutcome.FINISHED) for r in results])
    assert counter.client.settle_open_writes() == 1
    report = verify_journal_file(counter.path, receipt_key=PINNED.public_key)
    assert report.open_writes == ()
    assert report.settled_writes == (CARD,)
    pem = counter.tmp / "receipt-key.pem"
    from cryptography.hazmat.primitives import serialization

    pem.write_bytes(PINNED.public_key.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    capsys.readouterr()
    assert huma_main(["journal", "verify", str(counter.path), "--receipt-key", str(pem)]) == 0
    out = capsys.readouterr().out
    assert "unfinished card writes" not in out
    assert "torn writes settled by the server: 1" in out


# ---------------------------------------------------------------- journals written before the receipts were kept


class _ClockAt(Clock):
    """The real clock shifted to run from ``wall`` (POSIX seconds) on."""

    def __init__(self, wall: float) -> None:
        super().__init__(force_synced=True)
        self._shift = wall - time.time()

    def now(self):  # type: ignore[no-untyped-def]
        stamp = super().now()
        return dataclasses.replace(stamp, wall=stamp.wall + self._shift)


def test_a_journal_marked_by_the_old_code_keeps_its_marks_up_to_the_cut_over_only(tmp_path: Path) -> None:
    """The code before this fix kept no receipts: its marks stand on entries signed before
    LEGACY_MARKS_BEFORE_MS (the old daemon's own uploads), not on later ones (a mark by hand)."""
    path, signer = tmp_path / "journal.sqlite", new_signer()
    cut = LEGACY_MARKS_BEFORE_MS / 1000
    old = JournalStore(path, terminal_id=TID, signer=signer, clock=_ClockAt(cut - 86_400))
    before = [old.append(EntryKind.COMMIT, CardWrite(card_id="6271000000000001", programme="cash",
                                                     unit=Unit.RUPIAH, amount=100_000)) for _ in range(2)]
    refused = old.append(EntryKind.COMMIT, CardWrite(card_id="6271000000000002", programme="cash",
                                                     unit=Unit.RUPIAH, amount=7))
    old.close()
    after = JournalStore(path, terminal_id=TID, signer=signer, clock=_ClockAt(cut + 60))
    late = after.append(EntryKind.COMMIT, CardWrite(card_id="6271000000000003", programme="cash",
                                                    unit=Unit.RUPIAH, amount=50_000))
    after.close()
    # What the old daemon wrote after its receipts (and what an insider writes on the late entry).
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE entries SET uploaded_at=1 WHERE seq <> ?", (refused.seq,))
    db.execute("INSERT INTO upload_problems VALUES (?, 'conflict', 'same seq, other bytes', 1)",
               (refused.entry.entry_id,))
    db.close()
    j = JournalStore(path, terminal_id=TID, signer=signer, clock=Clock(force_synced=True),
                     receipt_key=PINNED.public_key)
    try:
        assert j.exposure() == {Unit.RUPIAH: 50_007}  # the late entry, and the refused one keeps counting
        unsent = [e.seq for e in j.unsent()]
        assert late.seq in unsent and refused.seq not in unsent
        assert not {e.seq for e in before} & set(unsent)
        assert j.upload_problems() == [(refused.seq, "conflict", "same seq, other bytes")]
    finally:
        j.close()
