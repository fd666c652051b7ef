"""Red team r6, a technician: a "re-issue" that names a stranger's card revokes and deny-lists it.

A re-issue replaces a lost card of the *same* household (docs/keys-and-provisioning.md "Re-issuing a
lost card": the server's balance statement is refused for a card that does not serve the household).
But the server's issuance upload (``server.registry.register_issuance_file``) took the record's
``reissue_of`` as it came: any card id, of any household. A technician with a signing key and a grant
(or whoever carries a station's files and has its key) uploads one record for some household
(an accomplice's, or a new one) with ``reissue_of`` = a stranger's card, dated as he likes:

- the stranger's card id *and chip UID* go on the next bundle's deny lists (``deny_candidates``):
  every counter declines the household's genuine card until somebody notices (a denial that needs
  an office visit and a real re-issue);
- ``card_profiles.revoked_at`` is set from the record's (technician-chosen) time, so the stranger's
  honest redemptions after it become ``revoked_card_used`` (critical) findings: blame on the victim.

Real stack: the Flask test client, the real issuance upload with technician-signed files and
issuer-signed identity records, as tests/test_registry_reconcile.py. SQLite (the check is plain
ORM; no dialect matters).

Fixed: a re-issue whose household (the record's signed ``household_ref``) is not the household of the
card it replaces, as the server knows it from that card's verified identity, is refused whole
(422 ``invalid_issuance_file`` reason ``reissue``), nothing stored. A re-issue of the same household is
accepted as before (the second test).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.session import identity_aad
from server.models import Card
from server.reconcile.models import CardProfile
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_registry_reconcile import Keys, _card, _record, _upload_file, keys, registry  # noqa: F401

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

UTC = dt.UTC


def _issue(world: Any, keys: Keys, n: int, household: bytes | None = None, *, reissue_of: bytes | None = None,  # noqa: F811
           when: int) -> Any:
    claims = _card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)})
    if household is not None:
        claims = dataclasses.replace(claims, household_ref=household)
    identity = sign1_with(keys.issuer, claims.to_cbor(), identity_aad(claims.uid))
    return claims, _upload_file(world, keys, [_record(claims, identity, kid=keys.issuer.kid, when=when,
                                                      reissue_of=reissue_of)])


def test_a_reissue_naming_another_households_card_is_refused(app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811
    world = registry
    issued = int(dt.datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    victim, r = _issue(world, keys, 0x31, when=issued)
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted", r.get_json()

    # The technician's card for another household, "replacing" the victim's card, dated a day after its issue.
    cover, r = _issue(world, keys, 0x32, reissue_of=victim.card_id, when=issued + 86400)
    body = r.get_json()
    assert victim.card_id.hex() not in body.get("deny_candidates", []), body
    assert r.status_code == 422 and body["error"]["reason"] == "reissue", body

    from server.extensions import db

    with app.app_context():
        assert db.session.get(CardProfile, victim.card_id.hex()).revoked_at is None
        assert db.session.scalars(select(Card).where(Card.card_id == cover.card_id.hex())).first() is None


def test_a_reissue_for_the_same_household_still_revokes_the_lost_card(app: Any, registry: Any,  # noqa: F811
                                                                      keys: Keys) -> None:  # noqa: F811
    world = registry
    issued = int(dt.datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    lost, r = _issue(world, keys, 0x41, when=issued)
    assert r.status_code == 200
    lost_at = issued + 86400
    new, r = _issue(world, keys, 0x42, lost.household_ref, reissue_of=lost.card_id, when=lost_at)
    assert r.status_code == 200 and r.get_json()["deny_candidates"] == [lost.card_id.hex()], r.get_json()
    from server.extensions import db

    with app.app_context():
        p = db.session.get(CardProfile, lost.card_id.hex())
        assert p.revoked_at == dt.datetime.fromtimestamp(lost_at, UTC) and new.card_id.hex() in p.revoke_reason
