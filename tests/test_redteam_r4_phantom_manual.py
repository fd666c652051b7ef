"""Red team round 4, a dishonest clerk who knows a supervisor's password: pay households that do not exist.

The fallback desk's supervisor entry (docs/fallback.md, step 2) takes a card id typed "from the household's
papers": any 16 hex digits. The counter has no list of issued cards (the bundle carries only the deny
list), so it cannot tell a real card id from an invented one, and its limits are per card id: a clerk
with the password (a supervisor, or one who watched it typed) pays one package to each of as many
invented ids as the terminal exposure cap allows, again after every upload. Each is a signed FALLBACK
entry, uploaded and stored like any redemption, but reconciliation only checks entitlements of
cards it knows: a redemption on a card id no issuance names raises no finding, so the auditor, who
reads findings, never sees the phantom households.

Real stack: the counter's FallbackDesk on its JournalStore, a real upload with signed receipts to the
live Flask server, a real reconciliation run.

Fixed: reconciliation raises ``unknown_card`` (server/reconcile/issuance_checks.py) for redemptions on a
card id that no issuance or registry row names, ``high`` when FALLBACK entries are among them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from cardlib.records.bundle import Programme
from firmware_config.models import CounterMode
from server.reconcile.models import FindingKind, Severity
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.sync import HttpApi, SyncClient, TrustStore
from tests.reconcile_support import audit_db, evidence, findings, run  # noqa: F401 - audit_db: fixture
from tests.test_records_support import bundle
from tests.test_terminal_support import enrol_terminal, new_signer
from tests.test_terminal_sync import pinned_receipt_key

TERMINAL_ID = "T-6271-0091"
#: Card ids nobody issued (region 62.71, serials far beyond any batch).
PHANTOMS = [f"6271ffff{n:08x}" for n in range(1, 4)]


def test_supervisor_entries_for_invented_card_ids_are_found(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path) -> None:  # noqa: F811 - fixture
    key = new_signer()
    enrol_terminal(world, TERMINAL_ID, key)
    now = int(time.time())
    trust = dataclasses.replace(bundle(), programmes=(Programme(1, "food", "package", 1, 182),),
                                policies={"fallback.manual.food": 1}, issued_at=now - 60, expires_at=now + 30 * 86400)
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=TERMINAL_ID, signer=key,
                           clock=Clock(force_synced=True))
    desk = FallbackDesk(journal, lambda: trust, CounterMode.MARKET_REDEMPTION, {"sri": supervisor_hash("kunci-sri")})
    paid = [desk.manual(card, "food", 1, "sri", "kunci-sri") for card in PHANTOMS]
    assert [o.status for o in paid] == [TapStatus.ACCEPTED] * len(PHANTOMS)  # the counter cannot know

    sync = SyncClient(HttpApi(f"http://{live_server.host}:{live_server.port}/", timeout_s=30), journal, key,
                      TERMINAL_ID, TrustStore(tmp_path / "trust.cose", new_signer().public_key),
                      receipt_key=pinned_receipt_key(world, TERMINAL_ID))
    sync.upload_pending()
    assert journal.unsent_count() == 0  # stored by the server, receipts signed
    journal.close()
    run(app)
    named = {f.card_id for f in findings(app)}
    missing = [c for c in PHANTOMS if c not in named]
    assert not missing, f"{len(missing)} packages paid to card ids nobody issued, no finding: {missing}"
    unknown = {f.card_id: f for f in findings(app, FindingKind.UNKNOWN_CARD)}
    assert sorted(unknown) == PHANTOMS
    assert {f.severity for f in unknown.values()} == {Severity.HIGH}
    assert all(len(evidence(f)) == 1 and '"fallback": 1' in f.detail for f in unknown.values())
