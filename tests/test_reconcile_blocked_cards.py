"""A redemption by a card the office had already blocked is a ``blocked_card_used`` finding (SQLite, PostgreSQL).

The gap: a block reaches a counter only with the next bundle it fetches. A card reported lost and
tapped at a counter still holding the previous bundle was served, and reconciliation said nothing:
``revoked_card_used`` needs a revocation, and a block does not revoke. Now a redemption dated after
the block (by more than the clock skew threshold, ``skew_threshold_s``: the counter's clock against
the server's) and before its lift (by as much) is reported, medium severity, per card.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select

from server.extensions import db
from server.models import Person
from server.reconcile.models import FindingKind, Severity
from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    add_auditor,
    audit_db,
    evidence,
    findings,
    install,
    run,
    upload_all,
)

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def _ms(minutes: float) -> int:
    return int(DAY.timestamp() * 1000 + minutes * 60_000)


def _at(minutes: float) -> dt.datetime:
    return DAY + dt.timedelta(minutes=minutes)


def test_a_blocked_card_served_by_a_counter_with_the_old_bundle_is_a_medium_finding(
        app: Any, audit_db: str, world: Any) -> None:  # noqa: F811
    from server.card_blocks import BlockReason, block_card, unblock_card

    d = District.new(2, 4, seed=41, regions=["62.71"])
    lost, found_again, honest = d.cards[0], d.cards[1], d.cards[2]
    a, b = d.terminals
    for t in d.terminals:
        t.boot(_ms(-30))
    a.redeem(lost, _ms(60), "food", 1)  # before the block: the household's own tap
    b.redeem(lost, _ms(122), "food", 1)  # 2 min after the block: within the clocks' uncertainty
    b.balance(lost, _ms(170))  # a balance check takes nothing
    _, served = b.redeem(lost, _ms(180), "cash", 1)  # an hour after the block, at a counter with the old bundle
    _, during = a.redeem(found_again, _ms(200), "food", 1)  # blocked 150..300 min, then lifted (found at home)
    a.redeem(found_again, _ms(330), "cash", 1)
    a.redeem(honest, _ms(200), "food", 1)
    install(app, world, d)
    add_auditor(app)
    with app.app_context():
        session = db.write_session()
        audrey = session.scalars(select(Person).where(Person.username == "audrey")).one()
        block_card(session, lost.card_id, BlockReason.STOLEN, person=audrey, now=_at(120))
        block_card(session, found_again.card_id, BlockReason.LOST, person=audrey, now=_at(150))
        unblock_card(session, found_again.card_id, person=audrey, reason="found at home", now=_at(300))
        session.commit()
    upload_all(world, d)
    run(app)

    used = findings(app, FindingKind.BLOCKED_CARD_USED)
    assert sorted(f.card_id for f in used) == sorted([lost.card_id, found_again.card_id]), used
    by_card = {f.card_id: f for f in used}
    f = by_card[lost.card_id]
    assert f.severity is Severity.MEDIUM
    assert evidence(f) == {served.entry.entry_id.hex()}
    assert "1 redemption" in f.summary and "blocked" in f.summary
    detail = json.loads(f.detail)
    assert detail["count"] == 1 and detail["reason"] == "stolen" and detail["blocked_by"] == "audrey"
    assert evidence(by_card[found_again.card_id]) == {during.entry.entry_id.hex()}  # not the tap after the lift
    run(app)  # a second run keeps the one finding per card
    assert len(findings(app, FindingKind.BLOCKED_CARD_USED)) == 2


def test_the_kind_is_named_in_both_languages_of_the_auditor_pages() -> None:
    from server.audit.i18n import translations

    assert translations("en").gettext("blocked_card_used") == "redemption by a card blocked at the office"
    assert translations("id").gettext("blocked_card_used") == "penukaran dengan kartu yang sudah diblokir di kantor"
