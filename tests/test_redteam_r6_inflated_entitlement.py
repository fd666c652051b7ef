"""Red team r6, a technician: a card issued with more than the province's programme gives is never a finding.

The province's programme list (id, code, unit, ``per_cycle``) is in the trust bundle, signed by the bundle
key (``huma server bundle publish --programmes``). The card's own entitlement is whatever the station's
provisioning profile says (``[programmes.N] per_cycle``, a TOML file on the station, docs/keys-and-provisioning.md):
nothing compares the two. A technician who edits that file (or writes the issuance by hand with the station's
keys) issues a card for an accomplice household with 50 food packages and Rp 25,000,000 a cycle where the
province gives 2 and Rp 250,000. Counters pay it (bounded only by the bundle's caps, where set), the server
registers the card's entitlement as 50 / 25,000,000 (``card_entitlements`` from the identity), and
reconciliation measures every redemption against that figure: ``entitlement_exceeded`` never fires. The
grant's quota bounds how many cards a technician issues, not what each is worth.

Real stack: technician-signed issuance file with an issuer-signed identity through ``POST /api/v1/cards/issuances``,
Ed25519-signed journal entries through the real upload, a real reconciliation run (SQLite).

Fixed on the server: it takes a card's entitlement per programme as at most the bundle's ``per_cycle`` for it
(``server.registry._audit_rows``, logged), so redemptions beyond what the province gives are
``entitlement_exceeded`` like any other over-redemption.

Fixed at the counter too (second test, in-process as tests/test_redteam_counter.py: the daemon's real
TapProcessor and journal, the card on a simulated NTAG215): the counter paid such a card its own figure, 50
packages in one tap where the bundle's programme gives 10, when no bundle cap bound (a strict xfail until
then). ``terminal.policy.card_facts`` now takes ``min(card per_cycle, bundle per_cycle)`` as the entitlement,
for NTAG and secure cards alike.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.session import identity_aad
from firmware_config.models import CounterMode
from server.reconcile.models import CardEntitlement, FindingKind
from simulator.journals import SimCard, SimTerminal
from terminal.outcome import TapStatus
from tests.reconcile_support import audit_db, findings, run, upload  # noqa: F401 - audit_db: fixture
from tests.test_redteam_counter import counter  # noqa: F401 - fixture
from tests.test_registry_reconcile import Keys, _card, _enrol, _ms, _record, _upload_file, keys, registry  # noqa: F401
from tests.test_terminal_caps_and_declines import FOOD, chip, fresh_bundle


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_card_above_the_provinces_programme_is_measured_against_the_programme(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811
    world = registry  # bundle programmes: food 2 packages, cash Rp 250,000 per cycle
    inflated = _card(0x51, "62.71", {1: Entitlement(Unit.PACKAGE, 50), 2: Entitlement(Unit.RUPIAH, 25_000_000)})
    identity = sign1_with(keys.issuer, inflated.to_cbor(), identity_aad(inflated.uid))
    issued = int(dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp())
    r = _upload_file(world, keys, [_record(inflated, identity, kid=keys.issuer.kid, when=issued)])
    assert r.status_code == 200, r.get_json()

    t = SimTerminal.new("T-6271-0651", "62.71", random.Random(6))
    r = _enrol(world, t, region=t.region, lat=t.lat, lon=t.lon)
    assert r.status_code == 202, r.get_json()
    world.approve(t.terminal_id)
    t.boot(_ms(2, 0))
    card = SimCard(inflated.card_id.hex(), inflated.uid, inflated.region)
    for hour in range(1, 11):  # ten visits in one cycle: 10 packages and Rp 2,500,000 taken
        t.redeem(card, _ms(2 + hour, 8), "food", 1)
        t.redeem(card, _ms(2 + hour, 9), "cash", 250_000)
    assert all(resp.status_code == 200 for resp in upload(world, t, t.messages()))
    run(app)

    over = findings(app, FindingKind.ENTITLEMENT_EXCEEDED)
    assert {(f.card_id, '"programme": "food"' in f.detail) for f in over} == {
        (inflated.card_id.hex(), True), (inflated.card_id.hex(), False)}, [f.detail for f in over]
    from server.extensions import db

    with app.app_context():
        amounts = set(db.session.execute(select(CardEntitlement.programme, CardEntitlement.amount).where(
            CardEntitlement.card_id == inflated.card_id.hex())).tuples())
    assert amounts == {("food", 2), ("cash", 250_000)}


def test_a_counter_pays_no_more_than_the_provinces_programme(counter) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle())  # food: 10 packages a cycle
    card = chip(programmes={FOOD: Entitlement(Unit.PACKAGE, 50)}, offline_cap={FOOD: 50})
    out = c.present(card, qty=50)
    paid = out.amount if out.status is TapStatus.ACCEPTED else 0
    assert paid <= 10, f"{paid} packages paid in one tap; the province's programme gives 10 a cycle"
