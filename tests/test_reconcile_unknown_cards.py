"""``unknown_card``: redemptions on a card id no issuance names (server/reconcile/issuance_checks.py).

Real issuance files and journal uploads (the fixtures of tests/test_registry_reconcile.py), on SQLite
and PostgreSQL. After every round an incremental run records its findings and a full run in the same
transaction (rolled back) must leave them exactly so (as tests/test_reconcile_incremental.py).
A card whose issuance arrives after its redemptions were reconciled: its finding is withdrawn
(dismissed as resolved by the system) in both modes, since the registry change makes the next run a
full one; an auditor's decision on it stays (docs/reconciliation.md §Unknown cards).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

from sqlalchemy import select

from cardlib.records.claims import Entitlement, Unit
from cardlib.records.journal import EntryKind
from server.extensions import db
from server.reconcile.findings import RESOLVED_REASON
from server.reconcile.models import Finding, FindingKind, FindingStatus, Severity
from server.reconcile.observations import ReconcileConfig
from simulator.journals import SimCard, SimTerminal
from tests.reconcile_support import audit_db, incremental_then_full, upload  # noqa: F401 - audit_db: fixture
from tests.test_households import _issue
from tests.test_registry_reconcile import (  # noqa: F401 - keys, registry: fixtures
    UTC,
    Keys,
    _card,
    _enrol,
    _ms,
    keys,
    registry,
)

#: Exact watermark (uploads here are seconds apart; see ReconcileConfig.watermark_margin_s).
CFG = ReconcileConfig(watermark_margin_s=0)
PHANTOM = "6271ffff00000001"
PHANTOM_2 = "6271ffff00000002"


def _terminal(world: Any) -> SimTerminal:
    t = SimTerminal.new("T-PHN", "62.71", random.Random(9))
    assert _enrol(world, t, region=t.region).status_code == 202
    world.approve(t.terminal_id)
    t.boot(_ms(2, 0))
    return t


def _manual(t: SimTerminal, card_id: str, when: int) -> None:
    """A supervisor's manual fallback entry: one food package on a typed card id."""
    t.append(EntryKind.FALLBACK, when, card_id=card_id, programme="food", amount=1, fallback="manual",
             approved_by="sri")


def _round(app: Any, world: Any, t: SimTerminal, sent: int) -> tuple[str, dict[str, tuple[Any, ...]], int]:
    """Upload the entries after ``sent``, run incrementally, check a full run would leave the same findings.

    :returns: the incremental run's mode, the unknown_card findings by card id, entries sent so far.
    """
    messages = t.messages()
    if messages[sent:]:
        assert all(r.status_code == 200 for r in upload(world, t, messages[sent:]))
    with app.app_context():
        result, incremental = incremental_then_full(CFG)
    mode = result.mode
    unknown = {v[4]: v for v in incremental.values() if v[0] == FindingKind.UNKNOWN_CARD.value}
    return mode, unknown, len(messages)


def test_unknown_card_ids_are_found_in_both_modes_and_withdrawn_once_issued(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    x = _card(1, "62.71", {1: Entitlement(Unit.PACKAGE, 3)})
    late = _card(2, "62.71", {1: Entitlement(Unit.PACKAGE, 3)})
    _issue(world, keys, x, dt.datetime(2026, 2, 1, tzinfo=UTC))
    t = _terminal(world)
    t.redeem(SimCard(x.card_id.hex(), x.uid, x.region), _ms(2, 2), "food", 1)
    _manual(t, PHANTOM, _ms(2, 3))
    t.redeem(SimCard(late.card_id.hex(), late.uid, late.region), _ms(2, 4), "food", 1)  # issued, file not here yet

    mode, unknown, sent = _round(app, world, t, 0)
    assert mode == "full"  # the first run
    assert sorted(unknown) == sorted([PHANTOM, late.card_id.hex()])  # never the issued card x
    assert unknown[PHANTOM][1] == Severity.HIGH.value and unknown[late.card_id.hex()][1] == Severity.MEDIUM.value
    assert unknown[PHANTOM][6] == f"card {PHANTOM}: 1 redemption(s) on a card id no issuance names (1 at the " \
                                  "fallback desk)"
    detail = json.loads(unknown[PHANTOM][7])
    assert detail == {"count": 1, "fallback": 1, "amounts": {"food": 1}, "terminals": [t.terminal_id]}
    assert len(json.loads(unknown[late.card_id.hex()][8])) == 1  # the COMMIT, not its PENDING

    t.redeem(SimCard(x.card_id.hex(), x.uid, x.region), _ms(2, 5), "food", 1)  # only x touched
    mode, unknown2, sent = _round(app, world, t, sent)
    assert mode == "incremental" and unknown2 == unknown  # the untouched cards' findings stay open as they were

    # issued before its redemption (2 March 04:00), its issuance file arrives after (an issuance dated after
    # the redemption leaves the finding open: tests/test_redteam_r5_unknown_card.py)
    _issue(world, keys, late, dt.datetime(2026, 3, 2, 3, tzinfo=UTC))
    mode, unknown3, sent = _round(app, world, t, sent)
    assert mode == "incremental"  # the issuance's cards row names the card (registry_changes): it is re-checked
    assert unknown3[PHANTOM] == unknown[PHANTOM]
    withdrawn = unknown3[late.card_id.hex()]
    assert withdrawn[2] == FindingStatus.DISMISSED.value and withdrawn[3].startswith(RESOLVED_REASON.split("{")[0])

    _manual(t, PHANTOM, _ms(2, 7))
    _manual(t, PHANTOM_2, _ms(2, 8))
    mode, unknown4, sent = _round(app, world, t, sent)
    assert mode == "incremental"
    assert len(json.loads(unknown4[PHANTOM][8])) == 2 and json.loads(unknown4[PHANTOM][7])["fallback"] == 2
    assert unknown4[PHANTOM_2][1] == Severity.HIGH.value and unknown4[PHANTOM_2][2] == FindingStatus.OPEN.value
    assert unknown4[late.card_id.hex()] == withdrawn  # stays withdrawn


def test_an_auditors_decision_on_an_unknown_card_survives_its_late_issuance(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    late = _card(3, "62.71", {1: Entitlement(Unit.PACKAGE, 3)})
    t = _terminal(world)
    t.redeem(SimCard(late.card_id.hex(), late.uid, late.region), _ms(2, 2), "food", 1)
    _round(app, world, t, 0)
    with app.app_context():
        session = db.write_session()
        f = session.scalars(select(Finding).where(Finding.kind == FindingKind.UNKNOWN_CARD)).one()
        f.status, f.reason = FindingStatus.CONFIRMED, "card sold at the market"
        session.commit()
    _issue(world, keys, late, dt.datetime(2026, 3, 2, 1, tzinfo=UTC))  # issued before its redemption
    _, unknown, _ = _round(app, world, t, len(t.messages()))
    assert unknown[late.card_id.hex()][2:4] == (FindingStatus.CONFIRMED.value, "card sold at the market")
