"""The HTTP edge through a real waitress server: JSON parsing, body limits, status lines, no bare 500.

Every test runs on SQLite and PostgreSQL (the ``app`` fixture).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask import Response

from server import create_app
from server.extensions import db
from server.http import JsonReason, waitress_options
from tests.fixtures.db import serving

#: The reporter's body: 50,000 nested arrays (RecursionError in json.loads).
DEEP = b"[" * 50_000 + b"]" * 50_000
JSON = {"Content-Type": "application/json"}
BODY_ENDPOINTS = ("/api/v1/auth/login", "/api/v1/terminals/enrol", "/api/v1/journal/batches",
                  "/api/v1/people", "/api/v1/cards", "/api/v1/cards/issuances", "/api/v1/bundles")


def _error(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    assert set(doc) >= {"error"} and doc["error"]["code"] and doc["error"]["message"], doc
    return dict(doc["error"])


@pytest.mark.parametrize("body, reason", [
    (DEEP, JsonReason.DEPTH),
    (b"\xff\xfe{}", JsonReason.ENCODING),
    (b'{"username": NaN}', JsonReason.SYNTAX),
    (b"{", JsonReason.SYNTAX),
    (b"[1,2]", JsonReason.NOT_OBJECT),
    (b'"text"', JsonReason.NOT_OBJECT),
    (b'{"username": "a\\u0000b", "password": "long enough pw"}', JsonReason.NUL),
], ids=["deep", "latin1", "nan", "truncated", "array", "string", "nul"])
def test_every_json_endpoint_answers_400_with_a_reason(app, world, live_server, body, reason):
    """One parser for every endpoint: never a RecursionError 500, always a machine-readable reason."""
    for path in BODY_ENDPOINTS:
        status, _reason, _h, data = live_server.request("POST", path, body, {**JSON, **world.auth()})
        assert status == 400, (path, data[:200])
        error = _error(data)
        assert (error["code"], error["reason"]) == ("malformed_request", reason.value), (path, error)
    status, _r, _h, data = live_server.request("POST", "/api/v1/auth/login", b"[1,2]", JSON)
    assert _error(data)["message"] == "body must be a JSON object"


def test_wrong_content_type_is_400_not_json_content_type(app, live_server):
    status, _r, _h, data = live_server.request("POST", "/api/v1/auth/login", b"{}", {"Content-Type": "text/plain"})
    assert status == 400 and _error(data)["reason"] == JsonReason.CONTENT_TYPE.value


def test_over_limit_body_gets_the_documented_json_413_from_the_app(db_url, ca_key_path, tmp_path):
    """waitress reads more than the app's limit, so the app (not waitress' text page) answers."""
    limit = 4096
    small = create_app({"DATABASE_URL": db_url, "TERMINAL_CA_KEY": str(ca_key_path), "MAX_CONTENT_LENGTH": limit})
    assert waitress_options(small)["max_request_body_size"] > limit
    try:
        with serving(small) as live:
            for size in (limit + 1, 3 * limit):
                body = b'{"username": "' + b"a" * size + b'"}'
                status, _r, headers, data = live.request("POST", "/api/v1/auth/login", body, JSON)
                assert status == 413 and headers["Content-Type"] == "application/json", data[:200]
                error = _error(data)
                assert (error["code"], error["limit"], error["unit"]) == ("payload_too_large", limit, "bytes")
            status, _r, _h, _d = live.request("POST", "/api/v1/auth/login", b'{"username": "x"}', JSON)
            assert status == 400  # under the limit: parsed, then the missing password is named
    finally:
        with small.app_context():
            db.engine.dispose()


def _app_with_bugs(db_url: str) -> Any:
    """The real app plus two routes that fail like a bug would (they cannot exist otherwise)."""
    app = create_app({"DATABASE_URL": db_url})

    def crash() -> Response:
        raise RuntimeError("simulated bug")

    def bad_status() -> Response:
        return Response("x", status="open")  # the audit page's old bug: "HTTP/1.1 0 open"

    app.add_url_rule("/test-only/crash", view_func=crash)
    app.add_url_rule("/test-only/bad-status", view_func=bad_status)
    return app


def test_an_unexpected_exception_is_a_logged_json_500_never_a_bare_one(db_url, caplog):
    app = _app_with_bugs(db_url)
    try:
        with serving(app) as live, caplog.at_level(logging.ERROR, logger="server.http"):
            status, reason, headers, data = live.get("/test-only/crash")
            assert (status, reason.lower()) == (500, "internal server error")
            assert headers["Content-Type"] == "application/json"
            assert _error(data)["code"] == "internal_error" and b"simulated bug" not in data
            assert any("RuntimeError" in r.getMessage() and r.exc_info for r in caplog.records)
            status, reason, headers, data = live.get("/test-only/bad-status")
            assert (status, reason.lower()) == (500, "internal server error") and _error(data)["code"] == "internal_error"
            assert any("invalid status line" in r.getMessage() for r in caplog.records)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_query_parameters_are_validated_on_api_lists(app, world, live_server):
    status, _r, _h, data = live_server.get("/api/v1/audit?limit=abc", world.auth())
    assert status == 400 and _error(data)["field"] == "limit"
    status, _r, _h, data = live_server.get("/api/v1/audit?limit=0", world.auth())
    assert status == 400
    status, _r, _h, data = live_server.get("/api/v1/audit?limt=5", world.auth())
    error = _error(data)
    assert status == 400 and error["reason"] == "unknown_parameter" and error["allowed"] == ["limit"]
    status, _r, _h, data = live_server.get("/api/v1/terminals?status=pending", world.auth())
    assert status == 400 and _error(data)["unknown"] == ["status"]
    status, _r, _h, data = live_server.get("/api/v1/audit?limit=2", world.auth())
    assert status == 200 and len(json.loads(data)["audit"]) <= 2
