"""Enrolment squatting (issue 17): the next terminal id cannot be taken by whoever asks first.

Before: anyone who could reach the server enrolled any terminal id with their own key,
approval named only the terminal id (so an admin approved whichever key came first),
the real counter then got 409, and nothing limited the attempts. Now an admin issues a
one-time enrolment code for a named terminal id, enrolment requires it, approval names
the key's fingerprint, and failed enrolments are throttled per address.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID


def _csr(terminal_id: str) -> tuple[str, str]:
    """(CSR PEM, fingerprint hex: SHA-256 of the key's SubjectPublicKeyInfo DER)."""
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)])).sign(key, None))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return csr.public_bytes(serialization.Encoding.PEM).decode(), hashlib.sha256(spki).hexdigest()


def _code(world: Any, terminal_id: str) -> str:
    r = world.client.post(f"/api/v1/terminals/{terminal_id}/enrolment-code", headers=world.auth())
    assert r.status_code == 201, r.get_json()
    return str(r.get_json()["code"])


def test_squatter_without_a_code_cannot_take_the_next_terminal_id(world) -> None:
    squatter, _ = _csr("T-6271-0100")
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": "T-6271-0100", "csr": squatter})
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["error"]["code"] == "enrolment_code_invalid"
    # the real counter, with the code its admin issued, is not locked out by the attempt
    real, fingerprint = _csr("T-6271-0100")
    r = world.client.post("/api/v1/terminals/enrol",
                          json={"terminal_id": "T-6271-0100", "csr": real, "code": _code(world, "T-6271-0100")})
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["fingerprint"] == fingerprint


def test_a_code_is_for_one_terminal_id_and_one_use(world) -> None:
    code = _code(world, "T-6271-0101")
    other, _ = _csr("T-6271-0102")
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": "T-6271-0102", "csr": other, "code": code})
    assert r.status_code == 403
    first, _ = _csr("T-6271-0101")
    body = {"terminal_id": "T-6271-0101", "csr": first, "code": code}
    assert world.client.post("/api/v1/terminals/enrol", json=body).status_code == 202
    assert world.client.post("/api/v1/terminals/enrol", json=body).status_code == 202  # same CSR again: idempotent
    second, _ = _csr("T-6271-0101")
    r = world.client.post("/api/v1/terminals/enrol", json={**body, "csr": second})
    assert r.status_code == 403, r.get_json()  # the code is spent: another key cannot use it


def test_approval_binds_the_key_fingerprint(world) -> None:
    csr, fingerprint = _csr("T-6271-0103")
    code = _code(world, "T-6271-0103")
    assert world.client.post("/api/v1/terminals/enrol",
                             json={"terminal_id": "T-6271-0103", "csr": csr, "code": code}).status_code == 202
    listed = world.client.get("/api/v1/terminals", headers=world.auth()).get_json()["terminals"]
    assert [t["fingerprint"] for t in listed if t["terminal_id"] == "T-6271-0103"] == [fingerprint]
    r = world.client.post("/api/v1/terminals/T-6271-0103/approve", headers=world.auth())
    assert r.status_code == 400, r.get_json()  # approval must name the key
    _, wrong = _csr("T-6271-0103")
    r = world.client.post("/api/v1/terminals/T-6271-0103/approve", headers=world.auth(), json={"fingerprint": wrong})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "fingerprint_mismatch", r.get_json()
    assert world.client.get("/api/v1/terminals/T-6271-0103/certificate").status_code == 202  # still pending
    r = world.client.post("/api/v1/terminals/T-6271-0103/approve", headers=world.auth(),
                          json={"fingerprint": fingerprint.upper()[:32] + ":" + fingerprint[32:]})
    assert r.status_code == 200 and r.get_json()["status"] == "approved", r.get_json()


def test_enrolment_attempts_are_throttled_per_address(app, world) -> None:
    app.config["ENROL_FREE_FAILURES"] = 5
    statuses = []
    for i in range(8):
        csr, _ = _csr(f"T-6271-02{i:02d}")
        r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": f"T-6271-02{i:02d}", "csr": csr,
                                                               "code": "guess-" + str(i)},
                              environ_base={"REMOTE_ADDR": "198.51.100.7"})
        statuses.append(r.status_code)
    assert statuses[:5] == [403] * 5 and 429 in statuses[5:], statuses
    refused = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": "T-6271-0299", "csr": "x"},
                                environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    # another address is not affected
    csr, _ = _csr("T-6271-0300")
    r = world.client.post("/api/v1/terminals/enrol",
                          json={"terminal_id": "T-6271-0300", "csr": csr, "code": _code(world, "T-6271-0300")},
                          environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert r.status_code == 202, r.get_json()


def test_a_rejected_squatter_is_replaced_by_the_next_coded_enrolment(world) -> None:
    """A code that leaked to a squatter: the admin sees the wrong fingerprint, rejects, issues a new code."""
    squatter, squatter_fp = _csr("T-6271-0104")
    body = {"terminal_id": "T-6271-0104", "csr": squatter, "code": _code(world, "T-6271-0104")}
    assert world.client.post("/api/v1/terminals/enrol", json=body).status_code == 202
    assert world.client.post("/api/v1/terminals/T-6271-0104/reject", headers=world.auth()).status_code == 200
    real, fingerprint = _csr("T-6271-0104")
    r = world.client.post("/api/v1/terminals/enrol",
                          json={"terminal_id": "T-6271-0104", "csr": real, "code": _code(world, "T-6271-0104")})
    assert r.status_code == 202 and r.get_json()["status"] == "pending", r.get_json()
    assert r.get_json()["fingerprint"] == fingerprint != squatter_fp
    r = world.client.post("/api/v1/terminals/T-6271-0104/approve", headers=world.auth(),
                          json={"fingerprint": fingerprint})
    assert r.status_code == 200 and r.get_json()["status"] == "approved", r.get_json()
