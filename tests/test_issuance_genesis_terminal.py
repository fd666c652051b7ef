"""A genesis state must name the station key that signed it: checked by the server on upload (docs/security.md).

Attack: a technician with a station changed to skip ``--station-id``'s refusal (or his own script over
:func:`cardlib.records.issuance.issue_card_image`, ``station_id=N``) issues cards whose genesis state claims
terminal id N, another station's or counter's (docs/card-format.md §4: the writing key's kid read
big-endian). Counters verify the signature, not the id, so the cards work; a card dump frames N. The
issuance file now carries each card's genesis state and the server verifies it like the identity: under a
terminal key of the bundle, bound to the card's identity (external_aad), seq 0, ``prev_hash`` the identity's,
and ``terminal_id`` the signing key's own. A file with any other is refused whole (422
``invalid_issuance_file`` reason ``genesis``), nothing stored: the technician's upload fails at the office,
and the cards' redemptions are ``unknown_card`` findings until the station is examined.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.keystore import Role as KeystoreRole
from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.provision.session import Issuance
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle, keystore_bundle_keys, sign_bundle
from cardlib.records.claims import Entitlement, Unit, terminal_id_of
from cardlib.records.cose import Algorithm
from cardlib.records.issuance import issue_card_image
from server.models import Card
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_registry_reconcile import KEY_PW, PROGRAMMES, Keys, _card, _record, _upload_file, keys  # noqa: F401

STATION = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
OUTSIDER = SoftwareSigner(generate_private_key(Algorithm.EDDSA))  # a terminal key no bundle lists


@pytest.fixture
def station_registry(app: Any, audit_db: str, world: Any, keys: Keys) -> Any:  # noqa: F811 - fixtures
    """The server with the district's trust root and a bundle listing the station's terminal key."""
    app.config["TRUST_ROOT_CERT"] = str(keys.root_cert)
    now = int(time.time())
    kid = keys.store.active(KeystoreRole.BUNDLE).kid
    unsigned = TrustBundle(version=1, issued_at=now - 60, expires_at=now + 86400, programmes=PROGRAMMES,
                           keys=(*keystore_bundle_keys(keys.store.entries),
                                 BundleKey(STATION.kid, KeyRole.TERMINAL, STATION.alg, STATION.public_key)))
    blob = sign_bundle(unsigned, keys.store.signer(kid, KEY_PW), keys.store.endorsement(kid))
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={
        "version": 1, "expires_at": "2099-01-01T00:00:00+00:00", "blob": base64.b64encode(blob).decode()})
    assert r.status_code == 201, r.get_json()
    return world


def _issued(ks: Keys, n: int, station: SoftwareSigner = STATION, station_id: int | None = None) -> Issuance:
    claims = _card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)})
    card = issue_card_image(claims, ks.issuer, station, now=int(time.time()) - 600, station_id=station_id)
    return dataclasses.replace(_record(claims, card.identity_cose, kid=ks.issuer.kid, when=int(time.time()) - 600),
                               genesis=card.genesis_cose)


def _registered(app: Any, record: Issuance) -> bool:
    from server.extensions import db

    with app.app_context():
        return db.session.scalars(select(Card).where(Card.card_id == record.card_id.hex())).one_or_none() is not None


def test_a_genesis_claiming_another_terminal_id_is_refused(
        app: Any, station_registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = station_registry
    honest = _issued(keys, 1)
    framed = _issued(keys, 2, station_id=17)  # another station's id, signed by this station's key
    assert terminal_id_of(STATION.kid) != 17
    r = _upload_file(world, keys, [honest, framed])
    body = r.get_json()
    assert r.status_code == 422 and body["error"]["reason"] == "genesis", body
    assert framed.card_id.hex() in body["error"]["message"] and "17" in body["error"]["message"], body
    assert not _registered(app, honest) and not _registered(app, framed)  # refused whole

    r = _upload_file(world, keys, [honest])
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted", r.get_json()


def test_a_genesis_by_an_unlisted_key_or_of_another_card_is_refused(
        app: Any, station_registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = station_registry
    outsider = _issued(keys, 3, station=OUTSIDER)
    r = _upload_file(world, keys, [outsider])
    assert r.status_code == 422 and r.get_json()["error"]["reason"] == "genesis", r.get_json()
    a, b = _issued(keys, 4), _issued(keys, 5)
    swapped = dataclasses.replace(b, genesis=a.genesis)  # a genuine genesis of another card
    r = _upload_file(world, keys, [swapped])
    assert r.status_code == 422 and r.get_json()["error"]["reason"] == "genesis", r.get_json()
    assert not _registered(app, outsider) and not _registered(app, swapped)
    older = dataclasses.replace(b, genesis=None)  # a station before this release sends none: not checked
    r = _upload_file(world, keys, [older])
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted", r.get_json()
