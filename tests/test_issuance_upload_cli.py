"""``huma server cards upload-issuance``: the deny-list candidates it prints are the ones still to deny.

A card a published bundle already denies is no candidate for the next one: listing it on every
upload sent technicians to ask for a deny that was done.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.keystore import Role as KeystoreRole
from cardlib.keys.signer import sign1_with
from cardlib.provision.session import grant_session, sign_issuance_file
from cardlib.records.bundle import CARD_ID_LENGTH, SortedIdSet, TrustBundle, keystore_bundle_keys, sign_bundle
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.session import identity_aad
from huma.cli import main
from server.auth import create_person
from server.extensions import db
from server.models import PersonRole
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_registry_reconcile import (  # noqa: F401 - keys, registry: fixtures
    KEY_PW,
    PROGRAMMES,
    Keys,
    _card,
    _record,
    keys,
    registry,
)

PREFIX = "deny-list candidates for the next bundle: "


def _file(tmp_path: Path, ks: Keys, name: str, records: list[Any]) -> Path:
    grant = grant_session(ks.issuer, ks.technician.kid, 10, int(time.time()) + 3600)
    path = tmp_path / name
    path.write_bytes(sign_issuance_file(ks.technician, "tech-07", os.urandom(16), records, grant))
    return path


def _upload(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["server", "cards", "upload-issuance", str(path), "--technician", "tech-07"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(PREFIX)]


def _publish_denying(world: Any, ks: Keys, version: int, *card_ids: bytes) -> None:
    now = int(time.time())
    kid = ks.store.active(KeystoreRole.BUNDLE).kid
    unsigned = TrustBundle(version=version, issued_at=now - 60, expires_at=now + 86400,
                           keys=keystore_bundle_keys(ks.store.entries), programmes=PROGRAMMES,
                           deny_cards=SortedIdSet.from_ids(card_ids, CARD_ID_LENGTH))
    blob = sign_bundle(unsigned, ks.store.signer(kid, KEY_PW), ks.store.endorsement(kid))
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={
        "version": version, "expires_at": "2099-01-01T00:00:00+00:00", "blob": base64.b64encode(blob).decode()})
    assert r.status_code == 201, r.get_json()


def test_a_card_the_newest_bundle_denies_is_no_longer_listed(app: Any, registry: Any, keys: Keys,  # noqa: F811
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_TRUST_ROOT_CERT", app.config["TRUST_ROOT_CERT"])
    with app.app_context():
        create_person(db.write_session(), "tech-07", "technician password 1", PersonRole.TECHNICIAN)
        db.session.commit()
    kid, when = keys.issuer.kid, int(time.time()) - 3600
    lost, other = (_card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}) for n in (1, 2))
    new, new2 = (dataclasses.replace(_card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}),
                                     household_ref=c.household_ref) for n, c in ((3, lost), (4, other)))
    ids = {c.card_id: sign1_with(keys.issuer, c.to_cbor(), identity_aad(c.uid)) for c in (lost, other, new, new2)}
    assert _upload(_file(tmp_path, keys, "first.cose",
                         [_record(c, ids[c.card_id], kid=kid, when=when) for c in (lost, other)]), capsys) == []

    reissue = _file(tmp_path, keys, "reissue.cose",
                    [_record(new, ids[new.card_id], kid=kid, when=when + 60, reissue_of=lost.card_id)])
    assert _upload(reissue, capsys) == [PREFIX + lost.card_id.hex()]

    _publish_denying(registry, keys, 2, lost.card_id)
    assert _upload(reissue, capsys) == []  # the same file again: bundle v2 denies the lost card already
    second = _file(tmp_path, keys, "second.cose",
                   [_record(new2, ids[new2.card_id], kid=kid, when=when + 120, reissue_of=other.card_id)])
    assert _upload(second, capsys) == [PREFIX + other.card_id.hex()]
