"""Receipt codes of fallback payouts (docs/fallback.md) are found on the server, as a card tap's are.

A counter gives a receipt for every payout: a card tap's COMMIT, a recovered write's FINISHED and a
QR or supervisor entry's FALLBACK (terminal/fallback.py builds a :class:`terminal.outcome.Receipt` for
it). The real desk pays by QR and by supervisor entry, its journal is uploaded to the live server, and
each printed code is then found by ``huma server receipt``, a complaint filed with it is linked to the
card, and the auditor's search leads to the card.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.bundle import Programme
from cardlib.records.journal import EntryKind
from cardlib.records.receipt import receipt_code
from firmware_config.models import CounterMode
from huma.cli import main
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.sync import HttpApi, SyncClient, TrustStore
from tests.fallback_support import card_and_qr
from tests.reconcile_support import audit_db  # noqa: F401 - audit_db: fixture
from tests.test_records_support import bundle
from tests.test_terminal_support import enrol_terminal, new_signer
from tests.test_terminal_sync import pinned_receipt_key

TERMINAL_ID = "T-6271-0093"
#: A card id for the supervisor's entry (the household came with no card at all).
MANUAL_CARD = "62710000000000a7"


def desk_at(world: Any, tmp_path: Path, terminal_id: str) -> tuple[FallbackDesk, JournalStore, SoftwareSigner]:
    """The real fallback desk of an enrolled counter ``terminal_id`` on a fresh journal.

    Its bundle serves ``food`` (1 package a cycle), one package by QR or supervisor entry together;
    supervisor ``sri`` has password ``kunci-sri``.

    :returns: ``(desk, journal, the counter's signing key)``.
    """
    key = new_signer()
    enrol_terminal(world, terminal_id, key)
    now = int(time.time())
    trust = dataclasses.replace(bundle(), programmes=(Programme(1, "food", "package", 1, 182),),
                                policies={"fallback.qr.food": 1, "fallback.manual.food": 1},
                                issued_at=now - 60, expires_at=now + 30 * 86400)
    journal = JournalStore(tmp_path / f"{terminal_id}.sqlite", terminal_id=terminal_id, signer=key,
                           clock=Clock(force_synced=True))
    desk = FallbackDesk(journal, lambda: trust, CounterMode.MARKET_REDEMPTION, {"sri": supervisor_hash("kunci-sri")})
    return desk, journal, key


def upload_journal(world: Any, live_server: Any, tmp_path: Path, journal: JournalStore, key: SoftwareSigner) -> None:
    """Upload all of ``journal`` to the live server as the counter's sync does (receipts checked); close it."""
    tid = journal.terminal_id
    sync = SyncClient(HttpApi(f"http://{live_server.host}:{live_server.port}/", timeout_s=30), journal, key,
                      tid, TrustStore(tmp_path / f"trust-{tid}.cose", new_signer().public_key),
                      receipt_key=pinned_receipt_key(world, tid))
    sync.upload_pending()
    assert journal.unsent_count() == 0
    journal.close()


def test_qr_and_supervisor_receipts_are_found_by_the_cli_and_a_complaint(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path, capsys: Any) -> None:  # noqa: F811
    desk, journal, key = desk_at(world, tmp_path, TERMINAL_ID)
    _, qr_text = card_and_qr(1, 1)
    paid = [desk.qr(qr_text, "food", 1, "clerk-ani"), desk.manual(MANUAL_CARD, "food", 1, "sri", "kunci-sri")]
    assert [o.status for o in paid] == [TapStatus.ACCEPTED] * 2, paid
    receipts = [o.receipt for o in paid]
    assert all(r is not None for r in receipts)
    upload_journal(world, live_server, tmp_path, journal, key)

    from sqlalchemy import select

    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        rows = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.terminal_id == TERMINAL_ID,
                                                                JournalEntryRow.kind == int(EntryKind.FALLBACK))
                                  .order_by(JournalEntryRow.seq)).all()
        # the server's receipt_code(entry_hash) of each uploaded FALLBACK row is what the counter printed
        assert [receipt_code(r.entry_hash) for r in rows] == [r.code for r in receipts if r]
        card_ids = [r.card_id for r in rows]

    capsys.readouterr()
    for receipt, card_id in zip(receipts, card_ids, strict=True):
        assert receipt is not None
        assert main(["server", "receipt", receipt.code, "--database", audit_db]) == 0
        out = capsys.readouterr().out
        assert f"{TERMINAL_ID} #{receipt.seq} card {card_id}" in out and " food 1" in out, out
        # a complaint filed with the printed code is linked to the card the payout went to
        assert main(["server", "grievance", "add", "--receipt-code", receipt.code, "--text",
                     "the counter printed this, I got nothing", "--database", audit_db]) == 0
        capsys.readouterr()
    assert main(["server", "grievance", "list", "--database", audit_db]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [f"receipt={r.code} card={c}" in line for r, c, line in zip(receipts, card_ids, listed, strict=True)
            if r] == [True, True], listed

    # the auditor's search by the code leads to the card
    from server.audit.views import lookup

    with app.test_request_context():
        for receipt, card_id in zip(receipts, card_ids, strict=True):
            assert receipt is not None
            assert card_id in lookup(receipt.code)["cards"]
