"""Red team r5: a colluding technician withdraws an ``unknown_card`` finding by issuing the invented id.

A clerk with a supervisor's password pays a food package at the fallback desk to an invented card id
(red team r4 #3); reconciliation raises ``unknown_card`` (504d020). The finding was withdrawn as soon as
any issuance named the card id, so a technician in on it provisioned a card with that id *afterwards*
(an ordinary signed issuance file, dated when he made it) and the finding was dismissed as resolved: the
phantom redemption became an ordinary redemption of a card that did not exist when it was paid.
A redemption dated before its card's issuance stays a finding (server/reconcile/issuance_checks.py), in
both modes; an issuance dated before the redemption (a file that reached the server late) still
withdraws it (tests/test_reconcile_unknown_cards.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from cardlib.records.claims import Entitlement, Unit
from server.reconcile.models import FindingStatus, Severity
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_households import _issue
from tests.test_reconcile_unknown_cards import PHANTOM, _manual, _round, _terminal
from tests.test_registry_reconcile import UTC, Keys, _card, _ms, keys, registry  # noqa: F401 - fixtures


def test_issuing_the_invented_card_id_afterwards_does_not_withdraw_the_finding(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    t = _terminal(world)
    _manual(t, PHANTOM, _ms(2, 3))  # the clerk pays an invented card id on 2 March
    mode, unknown, sent = _round(app, world, t, 0)
    assert unknown[PHANTOM][1:3] == (Severity.HIGH.value, FindingStatus.OPEN.value)

    # the technician makes a card with that id on 5 March; its signed issuance file is in order
    cover = dataclasses.replace(_card(9, "62.71", {1: Entitlement(Unit.PACKAGE, 3)}), card_id=bytes.fromhex(PHANTOM))
    _issue(world, keys, cover, dt.datetime(2026, 3, 5, tzinfo=UTC))
    _, after, sent = _round(app, world, t, sent)
    # whichever mode the run took (_round checks a full run leaves the same findings)
    f = after[PHANTOM]
    assert f[2] == FindingStatus.OPEN.value, f  # not dismissed as resolved
    assert f[1] == Severity.HIGH.value
    assert "before its issuance" in f[6], f[6]
    assert json.loads(f[7])["before_issuance"] == 1


def test_a_redemption_minutes_before_issuance_by_the_clocks_is_no_finding(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    """The station's and the counter's clocks differ: within ``skew_threshold_s`` (300 s) is no finding."""
    from simulator.journals import SimCard

    world = registry
    t = _terminal(world)
    card = _card(8, "62.71", {1: Entitlement(Unit.PACKAGE, 3)})
    _issue(world, keys, card, dt.datetime(2026, 3, 2, 3, 2, tzinfo=UTC))  # the counter's clock is 2 min behind
    t.redeem(SimCard(card.card_id.hex(), card.uid, card.region), _ms(2, 3), "food", 1)
    _, unknown, _ = _round(app, world, t, 0)
    assert unknown == {}
