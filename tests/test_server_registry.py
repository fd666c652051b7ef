"""Card registry from signed issuance files (POST /api/v1/cards/issuances) and deny-list candidates.

Real keys (keystore: root, issuer, technician, bundle), a real root-endorsed trust bundle
published through the API, real issuance files from cardlib.provision; SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.keystore import KeyStore, Role as KeystoreRole
from cardlib.provision.session import Issuance, IssuanceStatus, grant_session, sign_issuance_file
from cardlib.records.bundle import TrustBundle, keystore_bundle_keys, sign_bundle

ROOT_PW = b"root passphrase 0123"
KEY_PW = b"key passphrase 4567"


class Keys:
    """A district keystore and the signers a provisioning station holds."""

    def __init__(self, path: Path) -> None:
        self.store = KeyStore.init(path, ROOT_PW)
        root = self.store.root_signer(ROOT_PW)
        for role in (KeystoreRole.ISSUER, KeystoreRole.BUNDLE):
            self.store.issue(role, root, passphrase=KEY_PW)
        self.store.issue(KeystoreRole.TECHNICIAN, root, passphrase=KEY_PW, name="tech-07")
        self.issuer = self.store.signer(self.store.active(KeystoreRole.ISSUER).kid, KEY_PW)
        self.technician = self.store.signer(self.store.active(KeystoreRole.TECHNICIAN, "tech-07").kid, KEY_PW)
        self.root_cert = path / "certs" / f"{self.store.root_kid.hex()}.crt.pem"

    def bundle(self, version: int = 1) -> bytes:
        now = int(time.time())
        bundle_kid = self.store.active(KeystoreRole.BUNDLE).kid
        unsigned = TrustBundle(version=version, issued_at=now - 60, expires_at=now + 86400,
                               keys=keystore_bundle_keys(self.store.entries))
        return sign_bundle(unsigned, self.store.signer(bundle_kid, KEY_PW), self.store.endorsement(bundle_kid))


def _issuance(card: int, status: IssuanceStatus = IssuanceStatus.ISSUED, reissue_of: bytes | None = None,
              issuer_kid: bytes = b"") -> Issuance:
    return Issuance(card.to_bytes(8, "big"), bytes.fromhex("04A1B2C3D4E5") + bytes((card,)), os.urandom(8),
                    "62.71", issuer_kid, int(time.time()) - 30, status, b"\x11" * 8, reissue_of)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "ks")


@pytest.fixture
def registry(app: Any, world: Any, keys: Keys) -> Any:
    app.config["TRUST_ROOT_CERT"] = str(keys.root_cert)
    return world


def _publish(world: Any, keys: Keys, version: int = 1) -> None:
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={
        "version": version, "expires_at": "2099-01-01T00:00:00+00:00",
        "blob": base64.b64encode(keys.bundle(version)).decode()})
    assert r.status_code == 201, r.get_json()


def _upload(world: Any, message: bytes) -> Any:
    return world.client.post("/api/v1/cards/issuances", headers=world.auth(),
                             json={"file": base64.b64encode(message).decode()})


def _file(keys: Keys, issuances: list[Issuance], grant_cards: int | None = 10) -> bytes:
    grant = None
    if grant_cards is not None:
        grant = grant_session(keys.issuer, keys.technician.kid, grant_cards, int(time.time()) + 3600)
    return sign_issuance_file(keys.technician, "tech-07", os.urandom(16), issuances, grant)


def test_issuance_file_is_verified_stored_idempotently_and_feeds_the_deny_list(registry: Any, keys: Keys) -> None:
    world = registry
    _publish(world, keys)
    kid = keys.issuer.kid
    lost = _issuance(1, issuer_kid=kid)
    first = _file(keys, [lost])
    r = _upload(world, first)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"] == [{"card_id": lost.card_id.hex(), "result": "accepted"}]
    assert r.get_json()["deny_candidates"] == []

    issuances = [_issuance(2, issuer_kid=kid), _issuance(3, IssuanceStatus.ABANDONED, issuer_kid=kid),
                 _issuance(4, reissue_of=lost.card_id, issuer_kid=kid)]
    second = _file(keys, issuances)
    r = _upload(world, second)
    body = r.get_json()
    assert r.status_code == 200 and [x["result"] for x in body["results"]] == ["accepted"] * 3
    assert body["deny_candidates"] == [issuances[1].card_id.hex(), lost.card_id.hex()]
    # the same file again: nothing new, every card a duplicate
    again = _upload(world, second).get_json()
    assert [x["result"] for x in again["results"]] == ["duplicate"] * 3
    # another chip for a registered card id: conflict, the first registration kept
    clash = _issuance(2, issuer_kid=kid)
    clash = Issuance(clash.card_id, bytes.fromhex("04FFFFFFFFFFFF"), clash.household_ref, clash.region, kid,
                     clash.time, clash.status)
    assert _upload(world, _file(keys, [clash])).get_json()["results"][0]["result"] == "conflict"
    card = world.client.get(f"/api/v1/cards/{issuances[0].card_id.hex()}", headers=world.auth()).get_json()
    assert card["tag_uid"] == issuances[0].uid.hex()

    deny = world.client.get("/api/v1/deny-list/candidates", headers=world.auth()).get_json()
    # abandoned: the card id only; replaced (lost) card: its id and its chip UID
    assert deny == {"cards": sorted([issuances[1].card_id.hex(), lost.card_id.hex()]), "uids": [lost.uid.hex()]}


def test_issuance_files_that_do_not_verify_are_refused(registry: Any, keys: Keys, tmp_path: Path) -> None:
    world = registry
    body = _upload(world, _file(keys, [_issuance(5)]))
    assert body.status_code == 409  # no bundle yet: technician keys unknown
    _publish(world, keys)
    stranger = Keys(tmp_path / "other")  # a technician of another keystore
    r = _upload(world, _file(stranger, [_issuance(6)]))
    assert r.status_code == 422 and r.get_json()["error"]["reason"] == "signature"
    tampered = bytearray(_file(keys, [_issuance(7)]))
    tampered[-1] ^= 0x01
    r = _upload(world, bytes(tampered))
    assert r.status_code == 422 and r.get_json()["error"]["reason"] == "signature"
    r = _upload(world, _file(keys, [_issuance(8), _issuance(9)], grant_cards=1))
    assert r.status_code == 422 and r.get_json()["error"]["reason"] == "quota"
    r = world.client.post("/api/v1/cards/issuances", headers=world.auth(), json={"file": "not base64!"})
    assert r.status_code == 400
    assert world.client.get("/api/v1/deny-list/candidates", headers=world.auth()).get_json() == {"cards": [], "uids": []}


def test_without_a_trust_root_nothing_is_accepted(app: Any, world: Any, keys: Keys) -> None:
    fixture_root = app.config["TRUST_ROOT_CERT"]
    app.config["TRUST_ROOT_CERT"] = str(keys.root_cert)  # POST /bundles verifies under the configured root
    _publish(world, keys)
    app.config["TRUST_ROOT_CERT"] = fixture_root  # then the root changes (a rotation, a misconfiguration)
    r = _upload(world, _file(keys, [_issuance(10)]))
    assert r.status_code == 409  # the fixture's root did not sign this bundle
    app.config["TRUST_ROOT_CERT"] = None
    r = _upload(world, _file(keys, [_issuance(10)]))
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "configuration_error"
