"""A backdated issuance shows: the server's arrival time stands beside ``issued_at`` (docs/security.md).

Attack (red team r5's known gap): ``issued_at`` is the station's signed word. A technician in on a phantom
payment dates the cover card's issuance weeks back, so the redemption made before the card existed
looks like a tap on an issued card and ``unknown_card`` is withdrawn. The server kept when the file
arrived (``cards.created_at``) but no page, nor ``huma server household show``, showed it beside
``issued_at``: the backdating was invisible. Now both times are shown, and an issuance that reached
the server more than ``ISSUANCE_LATE_AFTER`` (7 days, the default life of a session grant) after its
``issued_at`` is flagged on the card page, in the household API (``received_late``) and on the console.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.session import identity_aad
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_registry_reconcile import UTC, Keys, _card, _record, _upload_file, keys, registry  # noqa: F401


def _issue(world: Any, ks: Keys, n: int, when: dt.datetime, household: bytes | None = None) -> Any:
    now = dt.datetime.now(UTC)
    claims = dataclasses.replace(_card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}),
                                 valid_from=now.date() - dt.timedelta(days=60),
                                 valid_to=now.date() + dt.timedelta(days=365))
    if household is not None:
        claims = dataclasses.replace(claims, household_ref=household)
    identity = sign1_with(ks.issuer, claims.to_cbor(), identity_aad(claims.uid))
    r = _upload_file(world, ks, [_record(claims, identity, kid=ks.issuer.kid, when=int(when.timestamp()))])
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted", r.get_json()
    return claims


def test_a_backdated_issuance_is_shown_with_its_arrival_and_flagged(
        app: Any, registry: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch,  # noqa: F811 - fixtures
        capsys: pytest.CaptureFixture[str]) -> None:
    from huma.cli import main
    from tests.audit_login import form_login

    world = registry
    now = dt.datetime.now(UTC)
    backdated = _issue(world, keys, 1, now - dt.timedelta(days=30))
    honest = _issue(world, keys, 2, now - dt.timedelta(hours=3), household=backdated.household_ref)
    ref = backdated.household_ref.hex()

    r = world.client.get(f"/api/v1/households/{ref}", headers=world.auth())
    assert r.status_code == 200, r.get_json()
    cards = {c["card_id"]: c for c in r.get_json()["cards"]}
    late, fine = cards[backdated.card_id.hex()], cards[honest.card_id.hex()]
    assert late["received_at"] is not None and late["received_late"] is True, late
    assert fine["received_at"] is not None and fine["received_late"] is False, fine
    received = dt.datetime.fromisoformat(late["received_at"])
    assert abs((received - now).total_seconds()) < 120  # the arrival, not the station's word
    assert dt.datetime.fromisoformat(late["issued_at"]) < received - dt.timedelta(days=29)

    from server.auth import create_person
    from server.extensions import db
    from server.models import PersonRole

    with app.app_context():
        create_person(db.write_session(), "auditor-r", "a long enough password", PersonRole.AUDITOR)
        db.session.commit()
    form_login(world.client, "auditor-r", "a long enough password")
    page = world.client.get(f"/audit/cards/{backdated.card_id.hex()}?lang=en")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'id="issued"' in text and "received by the server" in text, text
    assert 'id="issued-late"' in text and "30 days after its issuance date" in text, text
    text_id = world.client.get(f"/audit/cards/{backdated.card_id.hex()}?lang=id").get_data(as_text=True)
    assert 'id="issued-late"' in text_id and "diterima server" in text_id and "30 hari" in text_id, text_id
    honest_page = world.client.get(f"/audit/cards/{honest.card_id.hex()}?lang=en").get_data(as_text=True)
    assert 'id="issued"' in honest_page and 'id="issued-late"' not in honest_page

    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_TRUST_ROOT_CERT", app.config["TRUST_ROOT_CERT"])
    assert main(["server", "household", "show", ref]) == 0
    out = capsys.readouterr().out
    lines = {c: next(line for line in out.splitlines() if f"card {c}" in line)
             for c in (backdated.card_id.hex(), honest.card_id.hex())}
    assert "received" in lines[backdated.card_id.hex()] and "LATE: 30 days" in lines[backdated.card_id.hex()], out
    assert "received" in lines[honest.card_id.hex()] and "LATE" not in lines[honest.card_id.hex()], out


def test_the_bound_is_a_setting(app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    app.config["ISSUANCE_LATE_AFTER"] = 3600
    claims = _issue(world, keys, 3, dt.datetime.now(UTC) - dt.timedelta(hours=3))
    r = world.client.get(f"/api/v1/households/{claims.household_ref.hex()}", headers=world.auth())
    assert r.get_json()["cards"][0]["received_late"] is True
