"""Red team round 3, dishonest clerk: the end-of-shift slip leaves out fallback payouts.

``terminal.checkpoint.shift_checkpoint`` sums COMMIT and FINISHED entries only ("as the server's
reconciliation counts them"), but reconciliation also counts FALLBACK (server/reconcile/observations.py
``REDEMPTION_KINDS``). A clerk who hands out (or pockets) packages and cash through the QR or the
supervisor desk prints a signed slip whose totals do not show them: the supervisor counting the
drawer or the stock against the slip, and the auditor who scans it, see a shift without them.

The test asserts the DEFENCE (the slip's totals include the fallback); it fails while the gap is open.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cardlib.provision.qr import household_qr
from cardlib.records.bundle import Programme
from cardlib.records.issuance import issue_card_image
from firmware_config.models import CounterMode
from terminal.checkpoint import shift_checkpoint
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from tests.test_records_support import CYCLE, ISSUER, STATION, TERMINAL, bundle, identity

PROGRAMMES = (Programme(1, "pangan", "package", 1), Programme(2, "tunai", "rupiah", 250_000))


def test_the_shift_slip_counts_fallback_payouts(tmp_path: Path) -> None:
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-R3-CP", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    try:
        trust = dataclasses.replace(bundle(), issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 86400,
                                    programmes=PROGRAMMES,
                                    policies={"fallback.qr.pangan": 1, "fallback.manual.tunai": 250_000})
        desk = FallbackDesk(journal, lambda: trust, CounterMode.MARKET_REDEMPTION,
                            {"sri": supervisor_hash("kunci-sri-77")})
        # cash is paid at a cash counter only (red team #7): the same journal's cash desk (one shift, two modes
        # would be two counters in the field; the slip sums one journal)
        cash_desk = FallbackDesk(journal, lambda: trust, CounterMode.CASH_PAYOUT,
                                 {"sri": supervisor_hash("kunci-sri-77")})
        now = int(time.time())
        qr = household_qr(issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now).identity_cose,
                          ISSUER, now)
        assert desk.qr(qr, "pangan", 1, "clerk-ani").amount == 1
        assert cash_desk.manual(identity().card_id.hex(), "tunai", 250_000, "sri", "kunci-sri-77").amount == 250_000
        slip = shift_checkpoint(journal, TERMINAL).checkpoint
        totals = {(t.programme, t.amount) for t in slip.totals}
        assert ("pangan", 1) in totals and ("tunai", 250_000) in totals, (
            f"the signed shift slip shows {sorted(totals)} after a QR package and a Rp250,000 manual payout")
    finally:
        journal.close()
