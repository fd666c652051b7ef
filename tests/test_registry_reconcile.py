"""Reconciliation fed by real data only: issuance file with identity records, enrolment with a site, journals.

No registry row is inserted by hand: card profiles and entitlements come from the
issuer-signed identity records in a technician-signed issuance file (POST
/api/v1/cards/issuances), terminal sites from the enrolment request, benefit cycles from
the journal upload (cycle_of ids, WIB bounds). Entries are real Ed25519-signed journal
entries (:class:`simulator.journals.SimTerminal`). SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from cardlib.keys.keystore import KeyStore, Role as KeystoreRole
from cardlib.keys.signer import sign1_with
from cardlib.provision.session import Issuance, IssuanceStatus, grant_session, sign_issuance_file
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.bundle import TrustBundle, keystore_bundle_keys, sign_bundle
from cardlib.records.claims import Entitlement, IdentityClaims, Unit, state_hash
from cardlib.records.session import identity_aad
from server.reconcile.models import BenefitCycle, CardEntitlement, CardProfile, FindingKind, TerminalSite
from simulator.journals import SimCard, SimTerminal
from tests.reconcile_support import add_auditor, audit_db, findings, run, upload  # noqa: F401 - audit_db: fixture

ROOT_PW = b"root passphrase 0123"
KEY_PW = b"key passphrase 4567"
UTC = dt.timezone.utc
PROGRAMMES = (BundleProgramme(1, "food", "package", 2), BundleProgramme(2, "cash", "rupiah", 250_000))  # z: 2


def _ms(day: int, hour: int) -> int:
    return int(dt.datetime(2026, 3, day, hour, tzinfo=UTC).timestamp() * 1000)


class Keys:
    """A district keystore: root, issuer, bundle and technician keys."""

    def __init__(self, path: Path) -> None:
        self.store = KeyStore.init(path, ROOT_PW)
        root = self.store.root_signer(ROOT_PW)
        for role in (KeystoreRole.ISSUER, KeystoreRole.BUNDLE):
            self.store.issue(role, root, passphrase=KEY_PW)
        self.store.issue(KeystoreRole.TECHNICIAN, root, passphrase=KEY_PW, name="tech-07")
        self.issuer = self.store.signer(self.store.active(KeystoreRole.ISSUER).kid, KEY_PW)
        self.technician = self.store.signer(self.store.active(KeystoreRole.TECHNICIAN, "tech-07").kid, KEY_PW)
        self.root_cert = path / "certs" / f"{self.store.root_kid.hex()}.crt.pem"

    def bundle(self) -> bytes:
        now = int(time.time())
        kid = self.store.active(KeystoreRole.BUNDLE).kid
        unsigned = TrustBundle(version=1, issued_at=now - 60, expires_at=now + 86400,
                               keys=keystore_bundle_keys(self.store.entries), programmes=PROGRAMMES)
        return sign_bundle(unsigned, self.store.signer(kid, KEY_PW), self.store.endorsement(kid))


def _card(n: int, region: str, programmes: dict[int, Entitlement]) -> IdentityClaims:
    return IdentityClaims(card_id=bytes([0xCA, n]) + bytes(6), household_ref=os.urandom(8), region=region,
                          programmes=programmes, valid_from=dt.date(2026, 1, 1), valid_to=dt.date(2027, 12, 31),
                          offline_cap={}, uid=bytes([4, 0x5A, n, 1, 2, 3, 4]))


def _record(claims: IdentityClaims, identity: bytes | None, *, kid: bytes, when: int,
            reissue_of: bytes | None = None) -> Issuance:
    return Issuance(claims.card_id, claims.uid, claims.household_ref, claims.region, kid, when,
                    IssuanceStatus.ISSUED, state_hash(identity) if identity else b"", reissue_of, identity)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "ks")


@pytest.fixture
def registry(app: Any, audit_db: str, world: Any, keys: Keys) -> Any:
    """The server with the district's trust root and a bundle (with programmes) published."""
    app.config["TRUST_ROOT_CERT"] = str(keys.root_cert)
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={
        "version": 1, "expires_at": "2099-01-01T00:00:00+00:00", "blob": base64.b64encode(keys.bundle()).decode()})
    assert r.status_code == 201, r.get_json()
    return world


def _upload_file(world: Any, keys: Keys, records: list[Issuance]) -> Any:
    grant = grant_session(keys.issuer, keys.technician.kid, 10, int(time.time()) + 3600)
    message = sign_issuance_file(keys.technician, "tech-07", os.urandom(16), records, grant)
    return world.client.post("/api/v1/cards/issuances", headers=world.auth(),
                             json={"file": base64.b64encode(message).decode()})


def _enrol(world: Any, t: SimTerminal, **site: Any) -> Any:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, t.terminal_id)]))
           .sign(t.private_key, None))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    return world.client.post("/api/v1/terminals/enrol", json={"terminal_id": t.terminal_id, "csr": pem,
                                                              "code": world.enrolment_code(t.terminal_id), **site})


def test_issuance_and_journal_uploads_alone_make_entitlement_revocation_and_region_findings(
        app: Any, registry: Any, keys: Keys) -> None:
    world, kid = registry, keys.issuer.kid
    x = _card(1, "62.71", {1: Entitlement(Unit.PACKAGE, 1), 2: Entitlement(Unit.RUPIAH, 250_000)})
    y = _card(2, "62.01", {1: Entitlement(Unit.PACKAGE, 1)})
    z = _card(3, "62.71", {1: Entitlement(Unit.PACKAGE, 2)})  # two: its second tap is only a revocation finding
    w = dataclasses.replace(_card(4, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}),  # re-issues z: z's household
                            household_ref=z.household_ref)
    ids = {c.card_id: sign1_with(keys.issuer, c.to_cbor(), identity_aad(c.uid)) for c in (x, y, z, w)}
    issued = int(dt.datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    r = _upload_file(world, keys, [_record(c, ids[c.card_id], kid=kid, when=issued) for c in (x, y, z)])
    assert r.status_code == 200 and [c["result"] for c in r.get_json()["results"]] == ["accepted"] * 3, r.get_json()
    # Card z is lost: w replaces it from 2 March 12:00 UTC on.
    lost_at = dt.datetime(2026, 3, 2, 12, tzinfo=UTC)
    r = _upload_file(world, keys, [_record(w, ids[w.card_id], kid=kid, when=int(lost_at.timestamp()),
                                           reissue_of=z.card_id)])
    assert r.status_code == 200 and r.get_json()["deny_candidates"] == [z.card_id.hex()], r.get_json()

    rng = random.Random(5)
    palangka, pangkalan_bun = SimTerminal.new("T-PKY", "62.71", rng), SimTerminal.new("T-PBU", "62.01", rng)
    for t in (palangka, pangkalan_bun):
        r = _enrol(world, t, region=t.region, lat=t.lat, lon=t.lon)
        assert r.status_code == 202, r.get_json()
        world.approve(t.terminal_id)
        t.boot(_ms(2, 0))
    cx, cy, cz = (SimCard(c.card_id.hex(), c.uid, c.region) for c in (x, y, z))
    palangka.redeem(cx, _ms(2, 2), "food", 1)
    palangka.redeem(cx, _ms(2, 3), "cash", 250_000)
    pangkalan_bun.redeem(cy, _ms(2, 4), "food", 1)
    palangka.redeem(cz, _ms(2, 9), "food", 1)  # before the loss: fine
    palangka.redeem(cx, _ms(3, 2), "food", 1)  # a second package in the same cycle: one too many
    for t in (palangka, pangkalan_bun):
        assert all(resp.status_code == 200 for resp in upload(world, t, t.messages()))
    # A later tap of the replaced card, uploaded later.
    palangka.redeem(cz, _ms(4, 9), "food", 1)
    assert upload(world, palangka, palangka.messages()[-2:])[0].status_code == 200
    run(app)

    over = findings(app, FindingKind.ENTITLEMENT_EXCEEDED)
    assert [(f.card_id, f.detail) for f in over] == [(x.card_id.hex(), over[0].detail)]
    assert '"cycle_id": "20261"' in over[0].detail and '"entitled": 1' in over[0].detail \
        and '"total": 2' in over[0].detail and '"programme": "food"' in over[0].detail
    revoked = findings(app, FindingKind.REVOKED_CARD_USED)
    assert [f.card_id for f in revoked] == [z.card_id.hex()] and '"count": 1' in revoked[0].detail
    assert {f.kind for f in findings(app)} == {FindingKind.ENTITLEMENT_EXCEEDED, FindingKind.REVOKED_CARD_USED}

    from server.extensions import db

    with app.app_context():
        ents = db.session.execute(select(CardEntitlement.programme, CardEntitlement.cycle_id, CardEntitlement.amount,
                                         CardEntitlement.programme_id, CardEntitlement.unit)
                                  .where(CardEntitlement.card_id == x.card_id.hex())
                                  .order_by(CardEntitlement.cycle_id, CardEntitlement.programme)).all()
        # Valid 2026-01-01..2027-12-31 (UTC dates): four half-year cycles, plus 20281 because the last
        # day ends 2028-01-01 07:00 WIB; two programmes each.
        assert [tuple(e) for e in ents] == [(p, c, a, i, u) for c in ("20261", "20262", "20271", "20272", "20281")
                                            for p, a, i, u in (("cash", 250_000, 2, "rupiah"), ("food", 1, 1, "package"))]
        cycle = db.session.get(BenefitCycle, "20261")
        assert cycle is not None and cycle.starts_at == dt.datetime(2025, 12, 31, 17, tzinfo=UTC) \
            and cycle.ends_at == dt.datetime(2026, 6, 30, 17, tzinfo=UTC)
        assert db.session.get(CardProfile, y.card_id.hex()).region == "62.01"
        zp = db.session.get(CardProfile, z.card_id.hex())
        assert zp.revoked_at == lost_at and w.card_id.hex() in zp.revoke_reason
        site = db.session.get(TerminalSite, "T-PBU")
        assert (site.region, site.lat, site.lon) == ("62.01", pangkalan_bun.lat, pangkalan_bun.lon)

    add_auditor(app)
    client = world.client
    from tests.audit_login import form_login

    form_login(client, "audrey", "auditor password 1")
    page = client.get("/audit/regions?lang=en").get_data(as_text=True)
    # Redemptions (COMMIT entries), distinct cards, total in the programme's unit.
    rows = [re.sub(r"<[^>]+>", "|", r) for r in re.findall(r'<tr class="region-total">.*?</tr>', page)]
    assert "||2026 semester 1||62.71||Food package||4||2||4||" in rows, rows
    assert "||2026 semester 1||62.71||Cash aid||1||1||250,000||" in rows
    assert "||2026 semester 1||62.01||Food package||1||1||1||" in rows


def test_identity_records_that_do_not_verify_refuse_the_whole_file(app: Any, registry: Any, keys: Keys) -> None:
    world, kid = registry, keys.issuer.kid
    good = _card(5, "62.71", {1: Entitlement(Unit.PACKAGE, 1)})
    other = _card(6, "62.71", {1: Entitlement(Unit.PACKAGE, 1)})
    good_id = sign1_with(keys.issuer, good.to_cbor(), identity_aad(good.uid))
    cases = {
        # signed by the technician key, not an issuer key
        "technician": sign1_with(keys.technician, good.to_cbor(), identity_aad(good.uid)),
        # a genuine identity bound to another chip's UID
        "other UID": sign1_with(keys.issuer, good.to_cbor(), identity_aad(other.uid)),
        # a genuine identity of another card
        "other card": sign1_with(keys.issuer, other.to_cbor(), identity_aad(other.uid)),
        # one byte of the signature changed
        "tampered": good_id[:-1] + bytes([good_id[-1] ^ 1]),
    }
    for name, identity in cases.items():
        rec = Issuance(good.card_id, good.uid, good.household_ref, good.region, kid, int(time.time()),
                       IssuanceStatus.ISSUED, b"", None, identity)
        r = _upload_file(world, keys, [rec])
        body = r.get_json()
        assert r.status_code == 422 and body["error"]["reason"] == "identity", (name, body)
    from server.extensions import db
    from server.models import Card

    with app.app_context():
        assert db.session.scalars(select(Card).where(Card.card_id == good.card_id.hex())).first() is None
        assert db.session.get(CardProfile, good.card_id.hex()) is None
    # A wrong identity_hash next to a good identity is refused too; the right one is accepted.
    bad_hash = _record(good, good_id, kid=kid, when=int(time.time()))
    bad_hash = Issuance(*[getattr(bad_hash, f) for f in ("card_id", "uid", "household_ref", "region", "issuer_kid",
                                                         "time", "status")], b"\x00" * 8, None, good_id)
    assert _upload_file(world, keys, [bad_hash]).status_code == 422
    r = _upload_file(world, keys, [_record(good, good_id, kid=kid, when=int(time.time()))])
    assert r.status_code == 200 and r.get_json()["results"][0]["result"] == "accepted"


@pytest.mark.parametrize("site, field", [
    ({"region": "99.01"}, "region"),
    ({"region": "62.99"}, "region"),
    ({"region": 62.71}, "region"),
    ({"lat": -2.2}, "lon"),
    ({"lon": 113.9}, "lat"),
    ({"lat": 91, "lon": 113.9}, "lat"),
    ({"lat": -2.2, "lon": -181}, "lon"),
    ({"lat": True, "lon": 113.9}, "lat"),
    ({"lat": "-2.2", "lon": 113.9}, "lat"),
])
def test_enrolment_site_is_validated(app: Any, audit_db: str, world: Any, site: dict[str, Any], field: str) -> None:
    t = SimTerminal.new("T-SITE", "62.71", random.Random(1))
    r = _enrol(world, t, **site)
    assert r.status_code == 400 and r.get_json()["error"]["field"] == field, r.get_json()


def test_enrolment_site_is_stored_and_a_resend_does_not_move_it(app: Any, audit_db: str, world: Any) -> None:
    t = SimTerminal.new("T-SITE", "62.71", random.Random(1))
    assert _enrol(world, t, region="62.71.01").status_code == 202
    assert _enrol(world, t, region="62.02", lat=-2.5, lon=112.9).status_code == 202  # same CSR again
    from server.extensions import db

    with app.app_context():
        site = db.session.get(TerminalSite, "T-SITE")
        assert (site.region, site.lat, site.lon) == ("62.71.01", None, None)


def test_enrolment_site_refuses_huge_and_non_finite_coordinates(app: Any, audit_db: str, world: Any) -> None:
    t = SimTerminal.new("T-SITE", "62.71", random.Random(1))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, t.terminal_id)]))
           .sign(t.private_key, None)).public_bytes(serialization.Encoding.PEM).decode()
    for lat in ("1" + "0" * 400, "NaN", "Infinity"):  # raw JSON: an integer no float holds, NaN, inf
        body = '{"terminal_id": "T-SITE", "csr": %s, "lat": %s, "lon": 113.9}' % (
            json.dumps(csr), lat)
        r = world.client.post("/api/v1/terminals/enrol", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (lat, r.get_json())
