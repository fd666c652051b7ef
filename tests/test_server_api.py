"""Enrolment, cards, people, audit, trust bundle and time zones (SV-4), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError

from cardlib.keys.signer import SoftwareSigner
from cardlib.keys.terminal_ca import TerminalCA
from server.errors import NaiveDatetimeError
from server.extensions import db
from server.models import AuditLog, PublishedBundle
from server.types import UTC, utcnow


def _csr(terminal_id: str, key: Any = None) -> tuple[Any, str]:
    key = key or ed25519.Ed25519PrivateKey.generate()
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else __import__(
        "cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
           .sign(key, algorithm))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _person(world, username: str, role: str) -> str:
    r = world.client.post("/api/v1/people", headers=world.auth(),
                          json={"username": username, "password": "long enough pw", "role": role})
    assert r.status_code == 201, r.get_json()
    r = world.client.post("/api/v1/auth/login", json={"username": username, "password": "long enough pw"})
    return r.get_json()["token"]


def _actions(app: Any) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


def test_enrolment_csr_to_certificate(app, world, ca_key_path):
    key, pem = _csr("T-100")
    c = world.client
    code = world.enrolment_code("T-100")
    r = c.post("/api/v1/terminals/enrol", json={"terminal_id": "T-100", "csr": pem, "code": code})
    assert r.status_code == 202 and r.get_json()["status"] == "pending"
    assert c.get("/api/v1/terminals/T-100/certificate").status_code == 202
    # Idempotent re-send; DER form accepted too.
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    r = c.post("/api/v1/terminals/enrol", json={"terminal_id": "T-100", "csr": base64.b64encode(der).decode(),
                                                "code": code})
    assert r.status_code == 202
    # Another key for the same terminal id: 409.
    r = c.post("/api/v1/terminals/enrol", json={"terminal_id": "T-100", "csr": _csr("T-100")[1],
                                                "code": world.enrolment_code("T-100")})
    assert r.status_code == 409
    r = world.approve("T-100")
    assert r.status_code == 200 and r.get_json()["status"] == "approved"
    r = c.get("/api/v1/terminals/T-100/certificate")
    assert r.status_code == 200
    cert = x509.load_pem_x509_certificate(r.get_json()["certificate"].encode())
    ca = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    # no TERMINAL_CA_CERT and no keystore next to the key: the CA key certifies itself
    cert.verify_directly_issued_by(TerminalCA.self_signed(SoftwareSigner(ca)).certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "T-100"
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_after_utc > utcnow()
    assert _actions(app)[-1] == "terminal.approved"


def test_keystore_terminal_ca_issues_certificates_that_chain_to_the_root(app, world, tmp_path):
    """Production path: the keystore's encrypted terminal-CA key and its root-signed certificate."""
    from cardlib.keys.keystore import KeyStore, Role as KeyRole
    from cardlib.keys.terminal_ca import make_terminal_csr, verify_terminal_certificate

    store = KeyStore.init(tmp_path / "ks", b"root passphrase 0123")
    ca_entry = store.issue(KeyRole.TERMINAL_CA, store.root_signer(b"root passphrase 0123"),
                           passphrase=b"key passphrase 4567")
    app.config["TERMINAL_CA_KEY"] = str(next((tmp_path / "ks" / "keys").glob("terminal-ca-*.p8.pem")))
    app.config["TERMINAL_CA_KEY_PASSWORD"] = "key passphrase 4567"
    key, csr = make_terminal_csr("T-200")
    c = world.client
    assert c.post("/api/v1/terminals/enrol", json={"terminal_id": "T-200", "csr": csr.decode(),
                                                   "code": world.enrolment_code("T-200")}).status_code == 202
    world.approve("T-200")
    pem = c.get("/api/v1/terminals/T-200/certificate").get_json()["certificate"].encode()
    ca_cert = store.certificate(ca_entry.kid)
    info = verify_terminal_certificate(pem, ca_cert.public_bytes(serialization.Encoding.PEM),
                                       expected_key=key.public_key())
    assert info.terminal_id == "T-200"
    ca_cert.verify_directly_issued_by(store.certificate(store.root_kid))
    app.config["TERMINAL_CA_KEY_PASSWORD"] = "wrong passphrase 0000"
    assert c.post("/api/v1/terminals/enrol", json={"terminal_id": "T-201", "code": world.enrolment_code("T-201"),
                                                   "csr": make_terminal_csr("T-201")[1].decode()}).status_code == 202
    fingerprint = c.get("/api/v1/terminals", headers=world.auth()).get_json()["terminals"][-1]["fingerprint"]
    r = c.post("/api/v1/terminals/T-201/approve", headers=world.auth(), json={"fingerprint": fingerprint})
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "configuration_error"


@pytest.mark.parametrize(
    ("terminal_id", "csr", "status", "reason"),
    [
        ("T-101", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", 422,
         "undecodable"),
        ("T-102", _csr("T-999")[1], 422, "subject_mismatch"),
        ("T-103", _csr("T-103", ec.generate_private_key(ec.SECP384R1()))[1], 422, "unsupported_key"),
        ("T-104", "!!not base64!!", 400, None),
    ],
)
def test_bad_csrs(world, terminal_id, csr, status, reason):
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": terminal_id, "csr": csr})
    assert r.status_code == status, r.get_json()
    if reason:
        assert r.get_json()["error"] == {**r.get_json()["error"], "code": "invalid_csr", "reason": reason}


def test_roles_are_enforced_and_changes_audited(app, world):
    tech = _person(world, "tech1", "technician")
    auditor = _person(world, "aud1", "auditor")
    world.enrol("T-110", approve=False)
    c = world.client
    assert c.post("/api/v1/terminals/T-110/approve").status_code == 401
    assert c.post("/api/v1/terminals/T-110/approve", headers=world.auth(tech)).status_code == 403
    assert c.post("/api/v1/people", headers=world.auth(auditor),
                  json={"username": "x", "password": "long enough pw", "role": "admin"}).status_code == 403
    assert c.get("/api/v1/terminals", headers=world.auth(auditor)).status_code == 200
    assert c.get("/api/v1/audit", headers=world.auth(tech)).status_code == 403
    audit = c.get("/api/v1/audit", headers=world.auth(auditor)).get_json()["audit"]
    assert audit[0]["action"] == "enrolment.code_issued" and audit[0]["target"] == "terminal:T-110", audit[0]
    assert [a["action"] for a in audit][1:4] == ["login", "person.create", "login"]
    # Wrong password: one message whether or not the user exists.
    for user in ("tech1", "nobody"):
        r = c.post("/api/v1/auth/login", json={"username": user, "password": "wrong password"})
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthenticated"
    # Logout invalidates the token.
    assert c.post("/api/v1/auth/logout", headers=world.auth(tech)).status_code == 204
    assert c.get("/api/v1/terminals", headers=world.auth(tech)).status_code == 401


def test_card_registry_insert_or_ignore(app, world):
    tech = _person(world, "tech2", "technician")
    card = {"card_id": "6271-000001", "tag_uid": "04a1b2c3d4e5f6", "kid": "0a0b0c0d",
            "issued_at": "2026-02-01T09:00:00+07:00"}
    c = world.client
    r = c.post("/api/v1/cards", headers=world.auth(tech), json={"cards": [card]})
    assert r.get_json()["results"] == [{"card_id": "6271-000001", "result": "accepted"}]
    other = {**card, "tag_uid": "04ffffffffffff", "card_id": "6271-000001"}
    r = c.post("/api/v1/cards", headers=world.auth(tech), json={"cards": [card, other]})
    assert [x["result"] for x in r.get_json()["results"]] == ["duplicate", "conflict"]
    got = c.get("/api/v1/cards/6271-000001", headers=world.auth(tech)).get_json()
    assert got["tag_uid"] == "04a1b2c3d4e5f6" and got["issued_at"] == "2026-02-01T02:00:00+00:00"
    naive = {**card, "card_id": "6271-000002", "issued_at": "2026-02-01T09:00:00"}
    assert c.post("/api/v1/cards", headers=world.auth(tech), json={"cards": [naive]}).status_code == 422
    assert "cards.issue" in _actions(app)


def test_trust_bundle_etag_and_304(app, world, tmp_path):
    from tests.test_terminal_support import TrustKit

    kit = TrustKit()  # POST /bundles verifies the blob under TRUST_ROOT_CERT: make it this kit's root
    (tmp_path / "root.pem").write_bytes(kit.root_pem())
    app.config["TRUST_ROOT_CERT"] = str(tmp_path / "root.pem")
    c = world.client
    assert c.get("/api/v1/bundle").status_code == 404
    for version in (1, 2):
        signed, blob = kit.bundle(version)
        r = c.post("/api/v1/bundles", headers=world.auth(), json={
            "version": version, "expires_at": "2026-04-01T00:00:00+07:00",
            "blob": base64.b64encode(blob).decode()})
        assert r.status_code == 201, r.get_json()
    r = c.get("/api/v1/bundle")
    assert r.status_code == 200 and r.data == blob
    assert r.headers["Huma-Bundle-Version"] == "2"
    assert r.headers["Huma-Bundle-Expires"] == dt.datetime.fromtimestamp(signed.expires_at, UTC).isoformat()
    etag = r.headers["ETag"]
    r = c.get("/api/v1/bundle", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.data == b""
    assert c.get("/api/v1/bundle", headers={"If-None-Match": '"stale"'}).status_code == 200
    dup = c.post("/api/v1/bundles", headers=world.auth(), json={
        "version": 2, "expires_at": "2026-04-01T00:00:00Z", "blob": base64.b64encode(kit.bundle(2)[1]).decode()})
    assert dup.status_code == 409
    assert _actions(app).count("bundle.publish") == 2


def test_SV_4_timezone_round_trip(app):
    """+03:00 in → the same instant out, aware UTC, on SQLite and PostgreSQL; naive refused."""
    plus3 = dt.timezone(dt.timedelta(hours=3))
    when = dt.datetime(2025, 3, 1, 8, 0, tzinfo=plus3)
    with app.app_context():
        session = db.write_session()
        session.add(PublishedBundle(version=7, blob=b"x", sha256=bytes(32), expires_at=when))
        session.commit()
        session.expunge_all()
        got = session.scalars(select(PublishedBundle.expires_at)).one()
        assert got == when
        assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)
        assert (got.hour, got.minute) == (5, 0)
        assert got < utcnow()  # comparing with an aware "now" works
        # Ordering and filtering happen on the UTC value on both databases.
        assert session.scalars(select(PublishedBundle.version).where(
            PublishedBundle.expires_at > dt.datetime(2025, 3, 1, 4, 59, tzinfo=UTC))).all() == [7]
        assert session.scalars(select(PublishedBundle.version).where(
            PublishedBundle.expires_at > dt.datetime(2025, 3, 1, 8, 30, tzinfo=plus3))).all() == []
        session.rollback()
        session = db.write_session()
        session.add(PublishedBundle(version=8, blob=b"y", sha256=bytes(32),
                                expires_at=dt.datetime(2025, 3, 1, 8, 0)))
        with pytest.raises(StatementError) as exc:
            session.flush()
        assert isinstance(exc.value.orig, NaiveDatetimeError)
        session.rollback()
        if db.engine.dialect.name == "postgresql":
            # A session in another time zone still reads UTC back.
            with db.engine.connect() as conn:
                conn.execute(text("SET TIME ZONE 'Asia/Jakarta'"))
                raw = conn.execute(select(PublishedBundle.expires_at)).scalar_one()
                assert raw == when and raw.utcoffset() == dt.timedelta(0)
                conn.rollback()


def test_path_ids_no_row_can_have_are_404_not_database_errors(world):
    """NUL cannot be stored in PostgreSQL text: such ids are unknown, not a 500 (found by schemathesis)."""
    c = world.client
    assert c.get("/api/v1/terminals/%00/certificate").status_code == 404
    assert c.get("/api/v1/cards/a%00b", headers=world.auth()).status_code == 404
    assert c.get("/api/v1/cards/" + "a" * 65, headers=world.auth()).status_code == 404
