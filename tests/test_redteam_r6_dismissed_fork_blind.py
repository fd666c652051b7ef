"""Red team r6, a cloner after one dismissal: every later fork of the card folds into the dismissed finding.

Findings are upserted by fingerprint, ``kind | key``, and a card's fork finding is keyed by the card id alone
(``card_fork``; ``counter_backwards`` by card and UID). Once an auditor dismissed a card's fork (the test suite's
own example reason: "the household's own spare card, re-issued by the office"), the next fork of that card
(a fresh dump, redeemed again at a far counter while the genuine card is paid at home) only refreshed the
dismissed row's evidence: status, reason and decider stay (server/reconcile/findings.py). No open finding, so no
provisional denial ("proof first seen after the dismissal denies again" never happens for the same kind), and
the auditor's lists of open findings never show it: the card is fork-blind for good, and the clone is paid at
every counter its dump reaches, within the caps, every cycle.

Real stack: Ed25519-signed journals through the real upload, real reconciliation runs, the real decision function
and deny-list candidates, as tests/test_provisional_deny.py (SQLite).

Fixed: a dismissed proof finding whose anomaly grew since the last run (more forked redemptions, more counter
drops, rollback steps or repeated card counters) is reopened, seen anew from that run (so it denies again), its
earlier decision kept in the audit log.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.extensions import db
from server.reconcile.denylist import PROOF_KINDS, deny_list_candidates
from server.reconcile.models import FindingKind, FindingStatus
from simulator.journals import ENTITLEMENTS, District
from tests.reconcile_support import audit_db, findings, install, run, upload, upload_all  # noqa: F401 - fixture
from tests.test_provisional_deny import _decide, _ms

pytestmark = [pytest.mark.usefixtures("audit_db"), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_a_new_fork_after_a_dismissal_is_seen_and_denied_again(app: Any, world: Any) -> None:
    d = District.new(3, 4, seed=7, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    home, far = d.terminals[0], d.terminals[1]
    card = d.cards[0]
    clone = card.clone(counter=3)
    home.redeem(card, _ms(2), "food", ENTITLEMENTS["food"])
    far.redeem(clone, _ms(2, 40), "food", ENTITLEMENTS["food"])
    install(app, world, d)
    upload_all(world, d)
    run(app)
    for f in findings(app):  # the auditor clears the card: every proof finding dismissed
        if f.card_id == card.card_id and f.kind in PROOF_KINDS:
            _decide(app, f.id, FindingStatus.DISMISSED, "the household's own spare card, re-issued by the office")
    with app.app_context():
        assert deny_list_candidates(db.session) == []

    # A new dump of the card as it is now, redeemed far away; the genuine card is paid at home as well.
    second = card.clone(counter=40)
    n_home, n_far = len(home.entries), len(far.entries)
    home.redeem(card, _ms(5), "cash", ENTITLEMENTS["cash"])
    far.redeem(second, _ms(5, 30), "cash", ENTITLEMENTS["cash"])
    for t, n in ((home, n_home), (far, n_far)):
        assert all(r.status_code == 200 for r in upload(world, t, t.messages()[n:]))
    run(app)

    forks = [f for f in findings(app, FindingKind.CARD_FORK) if f.card_id == card.card_id]
    assert any(f.status is FindingStatus.OPEN for f in forks), [(f.status, f.detail) for f in forks]
    with app.app_context():
        denied = [(c.card_id, c.provisional) for c in deny_list_candidates(db.session)]
    assert denied == [(card.card_id, True)], "the new fork of a once-dismissed card denies nothing"
