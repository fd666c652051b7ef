"""Households, not cards (issue 18): entitlement reconciled per household across every card it has had.

The attack: a household redeems its food package, reports the card lost, gets a re-issued
card whose remaining entitlement the technician typed (``--remaining 1=1``) and redeems food
again. Per card nothing is wrong (one package of one on each card); per household two
packages of one were taken. Everything goes through the real API: issuer-signed identity
records in a technician-signed issuance file, enrolled terminals, signed journal uploads.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.session import identity_aad
from server.reconcile.models import FindingKind
from simulator.journals import SimCard, SimTerminal
from tests.reconcile_support import audit_db, findings, run, upload  # noqa: F401 - audit_db: fixture
from tests.test_registry_reconcile import (  # noqa: F401 - keys, registry: fixtures
    UTC,
    Keys,
    _card,
    _enrol,
    _ms,
    _record,
    _upload_file,
    keys,
    registry,
)


def _terminal(world: Any) -> SimTerminal:
    t = SimTerminal.new("T-PKY", "62.71", random.Random(7))
    assert _enrol(world, t, region=t.region).status_code == 202
    world.approve(t.terminal_id)
    t.boot(_ms(2, 0))
    return t


def _issue(world: Any, ks: Keys, claims: Any, when: dt.datetime, reissue_of: bytes | None = None) -> None:
    identity = sign1_with(ks.issuer, claims.to_cbor(), identity_aad(claims.uid))
    r = _upload_file(world, ks, [_record(claims, identity, kid=ks.issuer.kid, when=int(when.timestamp()),
                                           reissue_of=reissue_of)])
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted", r.get_json()


def test_food_redeemed_on_the_lost_card_and_again_on_its_reissue_is_a_household_finding(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    old = _card(1, "62.71", {1: Entitlement(Unit.PACKAGE, 1)})
    new = dataclasses.replace(_card(2, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}), household_ref=old.household_ref)
    _issue(world, keys, old, dt.datetime(2026, 2, 1, tzinfo=UTC))
    t = _terminal(world)
    t.redeem(SimCard(old.card_id.hex(), old.uid, old.region), _ms(2, 2), "food", 1)
    _issue(world, keys, new, dt.datetime(2026, 3, 3, tzinfo=UTC), reissue_of=old.card_id)  # lost, re-issued
    t.redeem(SimCard(new.card_id.hex(), new.uid, new.region), _ms(4, 2), "food", 1)
    assert all(r.status_code == 200 for r in upload(world, t, t.messages()))
    run(app)

    assert findings(app, FindingKind.ENTITLEMENT_EXCEEDED) == []  # per card: one of one each
    over = findings(app, FindingKind("household_over_entitlement"))
    assert len(over) == 1, [f.summary for f in findings(app)]
    f = over[0]
    assert f.card_id == new.card_id.hex() and old.household_ref.hex() in f.summary
    assert '"total": 2' in f.detail and '"entitled": 1' in f.detail and '"programme": "food"' in f.detail
    assert old.card_id.hex() in f.detail and new.card_id.hex() in f.detail
    assert len(f.evidence.split(",")) == 2
    run(app)  # idempotent
    assert len(findings(app, FindingKind("household_over_entitlement"))) == 1


def test_a_claim_on_the_older_card_after_the_household_got_another_is_a_finding(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    """A second card for the household issued without naming the first (no re-issue, so nothing revoked)."""
    world = registry
    first = _card(3, "62.71", {1: Entitlement(Unit.PACKAGE, 2)})
    second = dataclasses.replace(_card(4, "62.71", {1: Entitlement(Unit.PACKAGE, 2)}),
                                 household_ref=first.household_ref)
    _issue(world, keys, first, dt.datetime(2026, 2, 1, tzinfo=UTC))
    _issue(world, keys, second, dt.datetime(2026, 3, 3, tzinfo=UTC))
    t = _terminal(world)
    t.redeem(SimCard(first.card_id.hex(), first.uid, first.region), _ms(2, 2), "food", 1)  # before: fine
    t.redeem(SimCard(first.card_id.hex(), first.uid, first.region), _ms(4, 2), "food", 1)  # after: finding
    assert all(r.status_code == 200 for r in upload(world, t, t.messages()))
    run(app)
    replaced = findings(app, FindingKind("claim_on_replaced_card"))
    assert [f.card_id for f in replaced] == [first.card_id.hex()], [f.summary for f in findings(app)]
    assert second.card_id.hex() in replaced[0].detail and '"count": 1' in replaced[0].detail
    assert findings(app, FindingKind("household_over_entitlement")) == []  # 2 of 2
    assert findings(app, FindingKind.REVOKED_CARD_USED) == []


def test_the_server_states_the_households_remaining_balance_for_the_reissue(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    """After the package was taken on the lost card, the statement says 0 packages left: the re-issue gets 0."""
    import base64
    import time

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.records.balance import verify_balance
    from cardlib.records.claims import cycle_of

    world = registry
    now = dt.datetime.now(UTC)
    today = int(now.timestamp() * 1000)
    old = dataclasses.replace(_card(7, "62.71", {1: Entitlement(Unit.PACKAGE, 1),
                                                 2: Entitlement(Unit.RUPIAH, 250_000)}),
                              valid_from=now.date() - dt.timedelta(days=30),
                              valid_to=now.date() + dt.timedelta(days=700))
    _issue(world, keys, old, now - dt.timedelta(days=10))
    t = SimTerminal.new("T-PKY", "62.71", random.Random(7))
    assert _enrol(world, t, region=t.region).status_code == 202
    world.approve(t.terminal_id)
    t.boot(today - 3_600_000)
    t.redeem(SimCard(old.card_id.hex(), old.uid, old.region), today - 1_800_000, "food", 1)
    t.redeem(SimCard(old.card_id.hex(), old.uid, old.region), today - 1_700_000, "cash", 100_000)
    assert all(r.status_code == 200 for r in upload(world, t, t.messages()))

    ref = old.household_ref.hex()
    r = world.client.get(f"/api/v1/households/{ref}", headers=world.auth())
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [c["card_id"] for c in body["cards"]] == [old.card_id.hex()]
    assert [(b["programme"], b["entitled"], b["redeemed"], b["remaining"]) for b in body["balances"]] == [
        ("food", 1, 1, 0), ("cash", 250_000, 100_000, 150_000)]
    assert {tap["programme"] for tap in body["last_taps"]} == {"food", "cash"} and body["last_taps"][0]["amount"]
    assert world.client.get("/api/v1/households/NOTHEX", headers=world.auth()).status_code == 400
    assert world.client.get("/api/v1/households/00000000000000ff", headers=world.auth()).status_code == 404

    r = world.client.post(f"/api/v1/households/{ref}/balance-statement", headers=world.auth(),
                          json={"reissue_of": old.card_id.hex()})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    s = verify_balance(base64.b64decode(body["statement"]), load_pem_public_key(body["server_key"].encode()))
    assert s.remaining == {1: 0, 2: 150_000} and s.household_ref == old.household_ref
    assert s.reissue_of == old.card_id and s.cycle == cycle_of(now) and s.valid_until > time.time()
    r = world.client.post(f"/api/v1/households/{ref}/balance-statement", headers=world.auth(),
                          json={"reissue_of": "00000000000000ff"})
    assert r.status_code == 404  # not a card of this household


def test_technician_tools_upload_look_up_and_state_the_balance(
        app: Any, registry: Any, keys: Keys,  # noqa: F811 - fixtures
        tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    """``huma server cards upload-issuance``, ``household show`` and ``household statement``, no curl."""
    import os
    import time

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.provision.session import grant_session, sign_issuance_file
    from cardlib.records.balance import verify_balance
    from huma.cli import main
    from server.auth import create_person
    from server.extensions import db
    from server.models import PersonRole
    from server.receipts import load_receipt_signer

    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_TRUST_ROOT_CERT", app.config["TRUST_ROOT_CERT"])
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(tmp_path / "receipt-key.pem"))
    load_receipt_signer(tmp_path / "receipt-key.pem", None)  # the server made it at its first start
    with app.app_context():
        create_person(db.write_session(), "tech-07", "technician password 1", PersonRole.TECHNICIAN)
        db.session.commit()
    now = dt.datetime.now(UTC)
    card = dataclasses.replace(_card(9, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}),
                               valid_from=now.date(), valid_to=now.date() + dt.timedelta(days=365))
    identity = sign1_with(keys.issuer, card.to_cbor(), identity_aad(card.uid))
    grant = grant_session(keys.issuer, keys.technician.kid, 10, int(time.time()) + 3600)
    issuances = tmp_path / "issuances.cose"
    issuances.write_bytes(sign_issuance_file(keys.technician, "tech-07", os.urandom(16),
                                             [_record(card, identity, kid=keys.issuer.kid, when=int(time.time()))],
                                             grant))
    assert main(["server", "cards", "upload-issuance", str(issuances), "--technician", "tech-07"]) == 0
    assert f"{card.card_id.hex()} accepted" in capsys.readouterr().out
    ref = card.household_ref.hex()
    assert main(["server", "household", "show", ref]) == 0
    out = capsys.readouterr().out
    assert card.card_id.hex() in out and "food: 1 of 1 package left (0 redeemed)" in out, out
    statement, key = tmp_path / "balance.cose", tmp_path / "server-key.pem"
    assert main(["server", "household", "statement", ref, "--reissue-of", card.card_id.hex(), "--out",
                 str(statement), "--key-out", str(key)]) == 0
    s = verify_balance(statement.read_bytes(), load_pem_public_key(key.read_bytes()))
    assert s.remaining == {1: 1} and s.reissue_of == card.card_id
    assert main(["server", "household", "show", "00000000000000ff"]) != 0
    assert main(["server", "grievance", "add", "--household", ref, "--text", "card lost, package not received"]) == 0
    assert main(["server", "grievance", "status", "1", "investigating", "--reason", "checking the journal"]) == 0
    assert main(["server", "grievance", "list", "--status", "investigating"]) == 0
    assert f"household={ref}" in capsys.readouterr().out
