"""Hostile input at the HTTP edge: lone surrogates in JSON, unbounded echoes in error messages, unverified bundles.

Every test runs on SQLite and PostgreSQL (the ``app`` fixture).
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import pytest

from server.http import JsonReason

JSON = {"Content-Type": "application/json"}

#: Every endpoint that parses a JSON body (``json_body`` in server/blueprints) with a body
#: that is otherwise plausible for it, so a lone surrogate is the only fault.
JSON_ENDPOINTS: dict[str, dict[str, Any]] = {
    "/api/v1/auth/login": {"username": "admin", "password": "correct horse battery"},
    "/api/v1/people": {"username": "someone", "password": "long enough pw", "role": "auditor"},
    "/api/v1/terminals/enrol": {"terminal_id": "t-1", "csr": "AAAA"},
    "/api/v1/cards": {"cards": [{"card_id": "c", "tag_uid": "04a1b2c3", "kid": "01020304",
                                 "issued_at": "2026-01-01T00:00:00+00:00"}]},
    "/api/v1/cards/issuances": {"file": "AAAA"},
    "/api/v1/bundles": {"version": 1, "expires_at": "2030-01-01T00:00:00+00:00", "blob": "AAAA"},
    "/api/v1/journal/batches": {"batch_id": "b", "entries": ["AAAA"]},
}

#: The JSON text of a lone high surrogate, a lone low one, and a reversed pair.
LONE = ["\\ud800", "x\\udfff", "\\udc00\\ud800"]


def _error(r: Any) -> dict[str, Any]:
    doc = json.loads(r.data)
    assert set(doc) >= {"error"} and doc["error"]["code"] and doc["error"]["message"], doc
    return dict(doc["error"])


def _with_surrogate(body: dict[str, Any], field: str, escape: str, *, in_key: bool, nested: bool) -> bytes:
    """``body`` as JSON text whose ``field`` holds ``escape`` (raw JSON escape text) in a key or value."""
    marker = "SURROGATE-MARKER"
    doc = dict(body)
    if in_key:
        doc[field] = {marker: 1} if nested else doc[field]
        text = json.dumps(doc)
        if nested:
            return text.replace(marker, escape).encode()
        return text.replace(json.dumps(field), json.dumps(field)[:-1] + marker + '"', 1).replace(marker, escape).encode()
    doc[field] = [{"k": marker}] if nested else marker
    return json.dumps(doc).replace(marker, escape).encode()


@pytest.mark.parametrize("escape", LONE)
def test_a_lone_surrogate_anywhere_in_any_json_body_is_400_naming_the_field(app, world, escape):
    """The reporter's 500 (UnicodeEncodeError from the DB driver) and mislabelled 400s, on every JSON endpoint."""
    for path, body in JSON_ENDPOINTS.items():
        field = next(iter(body))
        for in_key in (False, True):
            for nested in (False, True):
                raw = _with_surrogate(body, field, escape, in_key=in_key, nested=nested)
                r = world.client.post(path, data=raw, headers={**JSON, **world.auth()})
                where = (path, raw[:120], r.data[:300])
                assert r.status_code == 400, where
                error = _error(r)
                assert (error["code"], error["reason"]) == ("malformed_request", JsonReason.SURROGATE.value), where
                assert "codec" not in error["message"] and "position" not in error["message"], where
                if not in_key or nested:  # the key itself is the bad string: it cannot be named
                    assert error.get("field") == field, where


def test_the_reporters_two_requests(app, world):
    r = world.client.post("/api/v1/auth/login", data=b'{"username":"\\ud800","password":"x"}', headers=JSON)
    assert r.status_code == 400 and _error(r)["field"] == "username"
    r = world.client.post("/api/v1/people", headers={**JSON, **world.auth()},
                          data=b'{"username":"x\\ud800","password":"long enough pw","role":"auditor"}')
    assert r.status_code == 400 and _error(r)["field"] == "username"


def test_valid_surrogate_pairs_and_non_bmp_text_still_work(app, world):
    """An escaped pair is one code point (U+1F600): valid text, stored and answered as such."""
    r = world.client.post("/api/v1/people", headers={**JSON, **world.auth()},
                          data=b'{"username":"smile\\ud83d\\ude00","password":"long enough pw","role":"auditor"}')
    assert r.status_code == 201, r.data
    assert r.get_json()["username"] == "smile\U0001F600"
    r = world.client.post("/api/v1/auth/login", headers=JSON,
                          json={"username": "smile\U0001F600", "password": "long enough pw"})
    assert r.status_code == 200, r.data


# ----------------------------------------------------------------------------- bounded echoes

LONG = "x" * 100_000


def _short_error(r: Any, status: int) -> dict[str, Any]:
    """The error body of ``r``: the expected status and nowhere near the 100 kB the client sent."""
    assert r.status_code == status, r.data[:300]
    assert len(r.data) < 2000, (len(r.data), r.data[:300])
    return _error(r)


def test_ids_in_the_path_are_not_echoed_whole(app, world):
    """The reporter's 100 kB terminal id in a 404, and every other path id that reaches a message."""
    error = _short_error(world.client.get(f"/api/v1/terminals/{LONG}/certificate"), 404)
    assert "xxxx" in error["message"] and "…" in error["message"]  # still says which id, briefly
    for action in ("approve", "reject", "revoke"):
        _short_error(world.client.post(f"/api/v1/terminals/{LONG}/{action}", headers=world.auth()), 404)
    _short_error(world.client.get(f"/api/v1/cards/{LONG}", headers=world.auth()), 404)


def test_body_values_are_not_echoed_whole(app, world):
    """Parser messages that quote the offending value (fromisoformat, region codes) are capped too."""
    r = world.client.post("/api/v1/bundles", headers=world.auth(),
                          json={"version": 1, "expires_at": LONG, "blob": "AAAA"})
    _short_error(r, 400)
    card = {"card_id": "c", "tag_uid": "04a1b2c3", "kid": "01020304", "issued_at": LONG}
    _short_error(world.client.post("/api/v1/cards", headers=world.auth(), json={"cards": [card]}), 400)
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": "t-1", "csr": "AAAA", "region": LONG})
    assert _short_error(r, 400)["field"] == "region"


def test_a_csr_naming_a_long_subject_is_not_echoed_whole(app, world):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cryptography warns that CN is over 64 characters
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "y" * 20_000, _validate=False)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(ed25519.Ed25519PrivateKey.generate(), None)
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # again when the server reads the subject
        r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": "T-6271-0001", "csr": pem})
    assert _short_error(r, 422)["reason"] == "subject_mismatch"


def test_unknown_query_parameter_names_are_not_echoed_whole(app, world):
    query = "&".join(f"{c}{LONG[:20_000]}=1" for c in "abcdefghijkl")
    error = _short_error(world.client.get(f"/api/v1/terminals?{query}", headers=world.auth()), 400)
    assert error["reason"] == "unknown_parameter" and 0 < len(error["unknown"]) <= 10
    error = _short_error(world.client.get(f"/api/v1/terminals?{'&'.join(['lang=en'] * 2)}", headers=world.auth()), 400)
    assert error["repeated"] == ["lang"]


# ----------------------------------------------------------------------------- published bundles are verified


@pytest.fixture
def kit(app: Any, tmp_path: Any) -> Any:
    """A trust root and bundle key; the app's TRUST_ROOT_CERT is that root."""
    from tests.test_terminal_support import TrustKit

    kit = TrustKit()
    (tmp_path / "kit-root.pem").write_bytes(kit.root_pem())
    app.config["TRUST_ROOT_CERT"] = str(tmp_path / "kit-root.pem")
    return kit


def _post_bundle(world: Any, **fields: Any) -> Any:
    return world.client.post("/api/v1/bundles", headers=world.auth(), json=fields)


def _iso(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def test_the_reporters_garbage_bundle_is_refused_and_never_served(app, world, kit):
    r = _post_bundle(world, version=3, expires_at="2030-01-01T00:00:00+00:00", blob="AAAA")
    error = _short_error(r, 422)
    assert (error["code"], error["reason"]) == ("invalid_bundle", "malformed")
    assert world.client.get("/api/v1/bundle").status_code == 404


def test_a_bundle_signed_under_another_root_is_refused(app, world, kit):
    from tests.test_terminal_support import TrustKit

    foreign, blob = TrustKit().bundle(1)
    r = _post_bundle(world, version=1, expires_at=_iso(foreign.expires_at), blob=base64.b64encode(blob).decode())
    assert (_short_error(r, 422)["code"], _error(r)["reason"]) == ("invalid_bundle", "signature")
    good, blob = kit.bundle(1)
    tampered = blob[:-3] + bytes(3)
    r = _post_bundle(world, version=1, expires_at=_iso(good.expires_at), blob=base64.b64encode(tampered).decode())
    assert _short_error(r, 422)["code"] == "invalid_bundle"
    assert world.client.get("/api/v1/bundle").status_code == 404


def test_the_request_version_must_be_the_blobs(app, world, kit):
    bundle, blob = kit.bundle(2)
    r = _post_bundle(world, version=3, expires_at=_iso(bundle.expires_at), blob=base64.b64encode(blob).decode())
    error = _short_error(r, 422)
    assert (error["code"], error["reason"], error["field"]) == ("invalid_bundle", "mismatch", "version")
    assert world.client.get("/api/v1/bundle").status_code == 404


def test_a_verified_bundle_is_stored_with_its_own_version_and_expiry(app, world, kit):
    bundle, blob = kit.bundle(4)
    r = _post_bundle(world, blob=base64.b64encode(blob).decode())  # version, expires_at: taken from the blob
    assert r.status_code == 201, r.data
    assert r.get_json()["version"] == 4 and r.get_json()["expires_at"] == _iso(bundle.expires_at)
    got = world.client.get("/api/v1/bundle")
    assert got.data == blob and got.headers["Huma-Bundle-Version"] == "4"
    assert got.headers["Huma-Bundle-Expires"] == _iso(bundle.expires_at)
    bundle, blob = kit.bundle(5)
    r = _post_bundle(world, version=5, expires_at="2099-01-01T00:00:00+00:00", blob=base64.b64encode(blob).decode())
    assert r.status_code == 201 and r.get_json()["expires_at"] == _iso(bundle.expires_at)  # the signed expiry wins


def test_without_a_trust_root_no_bundle_is_stored(app, world, kit):
    app.config["TRUST_ROOT_CERT"] = None
    _bundle, blob = kit.bundle(1)
    r = _post_bundle(world, version=1, blob=base64.b64encode(blob).decode())
    assert (r.status_code, _error(r)["code"]) == (500, "configuration_error")
    assert "TRUST_ROOT_CERT" in _error(r)["message"]
    assert world.client.get("/api/v1/bundle").status_code == 404
