"""The HTTP edge: JSON error bodies with machine-readable codes; busy database → 503.

Error body shape (every 4xx/5xx)::

    {"error": {"code": "<snake_case>", "message": "<text>", ...detail}}
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from server.db import is_busy
from server.errors import BadRequest, DatabaseBusy, ServerError

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **detail: Any) -> Response:
    """A JSON error response."""
    response = jsonify({"error": {"code": code, "message": message, **detail}})
    response.status_code = status
    return response


def json_body() -> Any:
    """The request's JSON body.

    :raises BadRequest: not ``application/json`` or not valid JSON.
    """
    if not request.is_json:
        raise BadRequest("expected Content-Type: application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body is not valid JSON")
    return body


def register_error_handlers(app: Flask) -> None:
    """Translate typed errors once, here."""

    @app.errorhandler(ServerError)
    def _server_error(exc: ServerError) -> Response:
        response = error_response(int(exc.status), exc.code, str(exc), **exc.detail)
        if isinstance(exc, DatabaseBusy):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError) -> Response:
        if is_busy(exc):
            retry = int(app.config["RETRY_AFTER"])
            log.warning("database busy, answering 503: %s", exc.orig)
            response = error_response(503, DatabaseBusy.code, "database busy, retry later",
                                      retry_after=retry)
            response.headers["Retry-After"] = str(retry)
            return response
        log.exception("database error")
        return error_response(500, "database_error", "internal database error")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, "payload_too_large", f"request body over {limit} bytes",
                              limit=limit, unit="bytes")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = (exc.name or "http_error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or code)
        if exc.code == 405 and exc.response is None:
            valid = getattr(exc, "valid_methods", None)
            if valid:
                response.headers["Allow"] = ", ".join(valid)
        return response
