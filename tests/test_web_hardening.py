"""The auditor view and API behind the documented TLS proxy (issue 17): Secure cookie, HSTS,
no caching, nosniff, CSRF on the login form, and X-Forwarded-* believed only from trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest

from server.extensions import db
from server.models import PersonRole
from tests.audit_login import form_login, login_csrf

PASSWORD = "auditor password 1"
HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.20"}


def _auditor(app: Any, username: str = "audrey") -> None:
    from server.auth import create_person

    with app.app_context():
        session = db.write_session()
        create_person(session, username, PASSWORD, PersonRole.AUDITOR)
        session.commit()


def _cookie(response: Any, name: str) -> str:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            return header
    raise AssertionError(f"no {name} cookie in {response.headers.getlist('Set-Cookie')}")


def test_behind_a_trusted_tls_proxy_the_session_cookie_is_secure_and_hsts_is_sent(app, client):
    """Before: behind the TLS proxy the docs recommend, the cookie never got Secure and no HSTS was sent."""
    app.config["TRUSTED_PROXIES"] = 1
    _auditor(app)
    r = form_login(client, "audrey", PASSWORD, headers=HTTPS)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    cookie = _cookie(r, "huma_audit")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert r.headers["Location"].startswith(("https://", "/"))
    page = client.get("/audit/findings", headers=HTTPS)
    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"] == f"max-age={app.config['HSTS_MAX_AGE']}"


def test_forwarded_headers_from_an_untrusted_client_are_ignored(app, client):
    """Without TRUSTED_PROXIES a client cannot claim https (no HSTS on http) or another address."""
    assert app.config["TRUSTED_PROXIES"] == 0
    _auditor(app)
    r = form_login(client, "audrey", PASSWORD, headers=HTTPS)
    assert "Secure" not in _cookie(r, "huma_audit")
    assert "Strict-Transport-Security" not in client.get("/audit/findings", headers=HTTPS).headers
    import json

    from sqlalchemy import select

    from server.models import AuditLog

    client.post("/api/v1/auth/login", json={"username": "audrey", "password": "wrong password"},
                headers={"X-Forwarded-For": "203.0.113.66"})
    with app.app_context():
        detail = json.loads(db.session.scalars(select(AuditLog.detail)
                                               .where(AuditLog.action == "login.failed")).one())
    assert detail["address"] == "127.0.0.1"  # the socket's peer, not the header


def test_a_trusted_proxy_gives_the_client_address_and_a_spoofed_one_is_not_believed(app, client):
    import json

    from sqlalchemy import select

    from server.models import AuditLog

    app.config["TRUSTED_PROXIES"] = 1
    # The client sent its own X-Forwarded-For; the proxy appended the real peer.
    client.post("/api/v1/auth/login", json={"username": "nobody", "password": "wrong password"},
                headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.77"})
    with app.app_context():
        detail = json.loads(db.session.scalars(select(AuditLog.detail)
                                               .where(AuditLog.action == "login.failed")).one())
    assert detail["address"] == "203.0.113.77"


@pytest.mark.parametrize("path", ["/audit/login", "/audit/findings", "/audit/regions", "/audit/exports",
                                  "/audit/export/findings.csv", "/audit/findings/0"])
def test_every_audit_page_is_not_stored_and_not_sniffed(app, client, path):
    """Before: audit pages (findings, beneficiaries' card ids) could stay in a shared browser's cache."""
    _auditor(app)
    form_login(client, "audrey", PASSWORD)
    r = client.get(path)
    r.get_data()  # consume a streamed export inside its context
    assert r.headers.get("Cache-Control") == "no-store", (path, r.status_code)
    assert r.headers.get("X-Content-Type-Options") == "nosniff"


def test_every_api_answer_is_not_stored_and_not_sniffed(world):
    for r in (world.client.get("/api/v1/people", headers=world.auth()),  # 200
              world.client.get("/api/v1/people"),  # 401
              world.client.post("/api/v1/auth/login", json={"username": "admin"})):  # 400
        assert r.headers.get("Cache-Control") == "no-store" and r.headers.get("X-Content-Type-Options") == "nosniff"


def test_login_form_needs_its_csrf_token(app, client):
    """Before: a page elsewhere could post the login form and log the victim's browser into the
    attacker's auditor account (login CSRF): everything they then decide is in that account."""
    _auditor(app)
    r = client.post("/audit/login", data={"username": "audrey", "password": PASSWORD, "next": ""})
    assert r.status_code == 403 and "huma_audit=" not in " ".join(r.headers.getlist("Set-Cookie"))
    page = client.get("/audit/login").get_data(as_text=True)
    token = login_csrf(page)
    r = client.post("/audit/login", data={"username": "audrey", "password": PASSWORD, "csrf": "0" * 64})
    assert r.status_code == 403  # a token, but not the one of this browser's cookie
    fresh = app.test_client()  # another browser: the right field value, but not its cookie
    r = fresh.post("/audit/login", data={"username": "audrey", "password": PASSWORD, "csrf": token})
    assert r.status_code == 403
    r = client.post("/audit/login", data={"username": "audrey", "password": PASSWORD, "csrf": token})
    assert r.status_code == 302


def test_login_csrf_cookie_is_strict_httponly_and_secure_over_https(app, client):
    app.config["TRUSTED_PROXIES"] = 1
    r = client.get("/audit/login", headers=HTTPS)
    cookie = _cookie(r, "huma_login_csrf")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie


def test_decision_forms_keep_their_session_bound_csrf(app, client):
    """The existing protection of state-changing forms (HMAC of the session token) is unchanged."""
    _auditor(app)
    form_login(client, "audrey", PASSWORD)
    assert client.post("/audit/logout", data={}).status_code == 403
    assert client.post("/audit/logout", data={"csrf": "0" * 64}).status_code == 403
