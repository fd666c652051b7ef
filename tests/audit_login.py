"""Logging in through the auditor form as a browser does: GET the form (CSRF cookie + field), then POST."""

from __future__ import annotations

import re
from typing import Any

_FIELD = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def login_csrf(html: str) -> str:
    """The login form's CSRF token (64 hex digits) from the page's HTML."""
    m = _FIELD.search(html)
    assert m, "no CSRF field in the login form"
    return m.group(1)


def form_login(client: Any, username: str, password: str, next_url: str = "", **kwargs: Any) -> Any:
    """GET /audit/login then POST the form with its CSRF token (the Flask test client keeps the cookie)."""
    token = login_csrf(client.get("/audit/login", **kwargs).get_data(as_text=True))
    return client.post("/audit/login", data={"username": username, "password": password, "next": next_url,
                                             "csrf": token}, **kwargs)


def http_form_login(live: Any, username: str, password: str) -> tuple[int, dict[str, str]]:
    """The same over real HTTP (a ``LiveServer``): (status of the POST, ``{"Cookie": "huma_audit=..."}``)."""
    import http.client
    from urllib.parse import urlencode

    _status, _r, headers, body = live.get("/audit/login")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    form = urlencode({"username": username, "password": password, "next": "",
                      "csrf": login_csrf(body.decode())}).encode()
    conn = http.client.HTTPConnection(live.host, live.port, timeout=60)
    try:
        conn.request("POST", "/audit/login", body=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
        resp = conn.getresponse()
        resp.read()
        session = [c.split(";", 1)[0] for c in resp.headers.get_all("Set-Cookie") or []
                   if c.startswith("huma_audit=")]
        return resp.status, {"Cookie": session[0]} if session else {}
    finally:
        conn.close()
