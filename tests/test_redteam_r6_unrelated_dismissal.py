"""Red team r6, a cloner who waits for an auditor's unrelated dismissal: it lifts the clone's provisional denial.

A clone redeemed at a far counter leaves signed proof (``card_fork``, ``counter_backwards``): the card is denied
provisionally in the next bundle without a human (docs/security.md "Deny lists without waiting for a human").
The same taps also raise findings an auditor often dismisses for good reasons: ``impossible_travel`` (a
counter's site coordinates entered wrong), ``entitlement_exceeded``. ``server.reconcile.denylist`` took the
newest dismissal of *any* deny-kind finding of the card as "the auditor cleared this card", so dismissing the
travel finding ("the far counter's site was entered wrong") lifted the fork's denial too, although nobody looked
at the fork: the clone is honoured again at every counter from the next bundle. A cloner only has to make his
taps look like a site or clock error, or wait.

Real stack: Ed25519-signed journals through the real upload, a real reconciliation run, the real decision
function (``decide_finding``) and deny-list candidates, as tests/test_provisional_deny.py (SQLite).

Fixed: only a dismissal of a *proof* finding (``PROOF_KINDS``) lifts the provisional denial of the proofs seen
before it; dismissing another kind still clears a card an auditor had denied by confirming that kind.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.extensions import db
from server.reconcile.denylist import deny_list_candidates
from server.reconcile.models import FindingKind, FindingStatus
from tests.reconcile_support import audit_db, findings  # noqa: F401 - audit_db: fixture
from tests.test_provisional_deny import _cloned_card, _decide

pytestmark = [pytest.mark.usefixtures("audit_db"), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@pytest.mark.parametrize("dismissed", [FindingKind.IMPOSSIBLE_TRAVEL, FindingKind.ENTITLEMENT_EXCEEDED])
def test_dismissing_another_finding_of_a_clone_keeps_its_provisional_denial(app: Any, world: Any,
                                                                            dismissed: FindingKind) -> None:
    card = _cloned_card(app, world)
    with app.app_context():
        assert [(c.card_id, c.provisional) for c in deny_list_candidates(db.session)] == [(card.card_id, True)]
    other = [f for f in findings(app, dismissed) if f.card_id == card.card_id]
    assert other, [f.kind for f in findings(app)]
    for f in other:
        _decide(app, f.id, FindingStatus.DISMISSED, "the far counter's site coordinates were entered wrong")
    with app.app_context():
        after = [(c.card_id, c.provisional) for c in deny_list_candidates(db.session)]
    assert after == [(card.card_id, True)], "an unrelated dismissal lifted the clone's denial (card_fork still open)"


def test_dismissing_the_proof_itself_still_lifts_the_denial(app: Any, world: Any) -> None:
    card = _cloned_card(app, world)
    for f in findings(app):
        if f.card_id == card.card_id and f.kind in (FindingKind.CARD_FORK, FindingKind.COUNTER_BACKWARDS):
            _decide(app, f.id, FindingStatus.DISMISSED, "the household's own spare card, re-issued by the office")
    with app.app_context():
        assert deny_list_candidates(db.session) == []
