"""The HTTP edge: one JSON body parser, JSON error bodies with machine-readable codes; busy database → 503.

Error body shape (every 4xx/5xx)::

    {"error": {"code": "<snake_case>", "message": "<text>", ...detail}}

No request ever ends in a bare 500 or a malformed status line: every exception
type gets a handler here (an unexpected one is logged with its traceback and
answered ``500 internal_error`` in the same JSON shape), and a response whose
status is not an HTTP status code (RFC 9110 §15) is replaced by that 500.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.sansio.app import App
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from server.db import driver_error, is_busy, is_unreachable
from server.errors import ECHO_MAX, MESSAGE_MAX, BadRequest, DatabaseBusy, DatabaseUnavailable, ServerError, clipped

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **detail: Any) -> Response:
    """A JSON error response."""
    response = jsonify({"error": {"code": code, "message": message, **detail}})
    response.status_code = status
    return response


class JsonReason(str, enum.Enum):
    """Why a request body is not acceptable JSON (``reason`` of a 400 ``malformed_request``)."""

    CONTENT_TYPE = "not_json_content_type"  #: Content-Type is not application/json
    ENCODING = "invalid_utf8"  #: not UTF-8 (RFC 8259 §8.1)
    SYNTAX = "invalid_json"  #: not JSON text (RFC 8259 §2), including NaN/Infinity
    DEPTH = "too_deeply_nested"  #: nested deeper than the parser's recursion limit
    NOT_OBJECT = "not_an_object"  #: valid JSON, but the endpoint needs an object
    NUL = "nul_character"  #: a string holds U+0000, which no text column (PostgreSQL) can store
    SURROGATE = "lone_surrogate"  #: a ``\\uD800``..``\\uDFFF`` escape without its pair: not Unicode text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON request body (RFC 8259): strict UTF-8, no NaN/Infinity, bounded nesting.

    :param raw: the exact body bytes (a UTF-8 BOM is refused, RFC 8259 §8.1).
    :raises BadRequest: ``reason`` one of :class:`JsonReason` (never RecursionError:
        a deeply nested ``[[[[…]]]]`` is ``too_deeply_nested``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc.reason} at byte {exc.start}",
                         reason=JsonReason.ENCODING.value) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("body is nested too deeply", reason=JsonReason.DEPTH.value) from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", reason=JsonReason.SYNTAX.value) from None
    if "\\u" in text:  # NUL and surrogates can only come from escapes (the bytes were strict UTF-8)
        _check_strings(value)
    return value


#: A surrogate code point: a JSON escape that is half of a pair, or no pair at all (RFC 8259 §7).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Longest top-level key named as ``field`` in an error (longer keys are no field of any endpoint).
_FIELD_NAME_MAX = 64


def _check_strings(value: Any) -> None:
    """Refuse a string (key or value, any depth) no database text column can hold.

    :raises BadRequest: ``reason`` ``nul_character`` (U+0000) or ``lone_surrogate`` (a
        code point U+D800..U+DFFF: json.loads turns a lone ``\\uD800`` escape into one;
        UTF-8 cannot encode it, so the driver would fail with UnicodeEncodeError). ``field``
        names the top-level key under which it was found, when that key is itself sound.
    """
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for key, item in items:
        fault = _string_fault(key) if key is not None else None
        field = None
        if fault is None:
            fault = _string_fault(item)
            field = key if key is not None and len(key) <= _FIELD_NAME_MAX else None
        if fault is None:
            continue
        detail = {"field": field} if field is not None else {}
        if fault is JsonReason.NUL:
            raise BadRequest("strings must not contain U+0000", reason=fault.value, **detail)
        raise BadRequest("strings must be Unicode text: a \\uD800-\\uDFFF escape must be half of a "
                         "surrogate pair", reason=fault.value, **detail)


def _string_fault(value: Any) -> JsonReason | None:
    """The first fault of :func:`_check_strings` in any string (key or value) of ``value`` (iterative walk)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return JsonReason.NUL
            if _SURROGATE.search(item) is not None:
                return JsonReason.SURROGATE
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def json_body(*, require_object: bool = True) -> Any:
    """The request's JSON body, parsed once with :func:`parse_json` (every endpoint uses this).

    The exact bytes stay available as ``request.get_data(cache=True)`` (the journal
    upload signs them).

    :param require_object: refuse anything but a JSON object (every v1 endpoint takes one).
    :raises BadRequest: wrong Content-Type, undecodable, or not an object; ``reason``
        one of :class:`JsonReason`.
    :raises werkzeug.exceptions.RequestEntityTooLarge: over ``MAX_CONTENT_LENGTH`` (JSON 413).
    """
    if not request.is_json:
        raise BadRequest("expected Content-Type: application/json", reason=JsonReason.CONTENT_TYPE.value)
    body = parse_json(request.get_data(cache=True))
    if require_object and not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", reason=JsonReason.NOT_OBJECT.value)
    return body


#: Query parameters every page accepts (the auditor view's language switch).
GLOBAL_PARAMS = frozenset({"lang"})
#: Unknown query parameter names an error lists at most (the URL may hold thousands).
_NAMES_SHOWN = 10


def query_params(*allowed: str) -> Any:
    """The request's query parameters, refusing any not in ``allowed`` (or :data:`GLOBAL_PARAMS`).

    A misspelt filter (``?terminal=`` for ``?terminal_id=``) would otherwise be ignored
    silently and export or list everything.

    :returns: ``request.args`` (a werkzeug ``MultiDict``).
    :raises BadRequest: ``reason`` ``unknown_parameter``, naming the ``unknown`` (the first
        :data:`_NAMES_SHOWN`, each cut to ``ECHO_MAX`` characters) and ``allowed`` ones;
        or a parameter given twice (``reason`` ``repeated_parameter``).
    """
    known = set(allowed) | GLOBAL_PARAMS
    unknown = [clipped(name, ECHO_MAX) for name in sorted(set(request.args) - known)[:_NAMES_SHOWN]]
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed)) or 'none'}",
                         reason="unknown_parameter", unknown=unknown, allowed=sorted(allowed))
    repeated = sorted(k for k, v in request.args.lists() if len(v) > 1)  # known names only: short
    if repeated:
        raise BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}",
                         reason="repeated_parameter", repeated=repeated)
    return request.args


def int_param(name: str, default: int, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    """An integer query parameter in ``[minimum, maximum]``.

    :raises BadRequest: not a decimal integer in range (``field`` = ``name``).
    """
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if re.fullmatch(r"-?[0-9]{1,19}", text) is None or not minimum <= int(text) <= maximum:
        raise BadRequest(f"{name} must be an integer from {minimum} to {maximum}", field=name)
    return int(text)


#: waitress reads (spooling to disk) bodies up to this multiple of ``MAX_CONTENT_LENGTH``,
#: so a body somewhat over the limit reaches the app and gets the documented JSON 413
#: ``{limit, unit}``; beyond it waitress refuses from the Content-Length header alone.
WAITRESS_BODY_FACTOR = 4


def waitress_options(app: Flask) -> dict[str, Any]:
    """Keyword arguments for ``waitress.serve``/``create_server`` (``huma server run`` and tests).

    ``max_request_body_size`` (bytes) is :data:`WAITRESS_BODY_FACTOR` × ``MAX_CONTENT_LENGTH``:
    strictly above the app's limit, so the app, not waitress, answers an over-limit body.
    """
    return {"max_request_body_size": WAITRESS_BODY_FACTOR * int(app.config["MAX_CONTENT_LENGTH"])}


#: ``app.extensions`` key: URL prefix → page renderer for HTTP errors no view raised (routing 404/405).
HTML_ERROR_PAGES = "huma_html_error_pages"


def register_html_error_page(app: App, prefix: str, page: Callable[[HTTPException], Response]) -> None:
    """Answer HTTP errors under ``prefix`` (``"/audit/"``) with ``page`` instead of the API's JSON body.

    Blueprint error handlers never see a routing error (no endpoint matched, so no
    blueprint is known); a person who mistypes an address under a web UI should still
    get that UI's page in their language. Requests carrying ``Authorization`` (scripts)
    keep the JSON error body.
    """
    app.extensions.setdefault(HTML_ERROR_PAGES, {})[prefix] = page


def register_error_handlers(app: Flask) -> None:
    """Translate typed errors once, here; guard the status line of every response."""

    @app.after_request
    def _valid_status(response: Response) -> Response:
        if not 100 <= response.status_code <= 599:
            log.error("%s %s produced the invalid status line %r: answering 500",
                      request.method, request.path, response.status)
            return error_response(500, "internal_error", "internal server error")
        return response

    def _busy(code: str = DatabaseBusy.code, message: str = "database busy, retry later") -> Response:
        retry = int(app.config["RETRY_AFTER"])
        response = error_response(503, code, message, retry_after=retry)
        response.headers["Retry-After"] = str(retry)
        return response

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        if is_busy(exc):  # a bare driver error (raw-connection statements) meaning "retry"
            log.warning("database busy, answering 503: %s", exc)
            return _busy()
        if is_unreachable(exc):  # PostgreSQL down or failing over (docs/operations.md): retry
            log.warning("database unreachable, answering 503: %s", driver_error(exc))
            return _busy(DatabaseUnavailable.code, "database unreachable, retry later")
        if driver_error(exc) is not None:
            log.exception("database error")
            return error_response(500, "database_error", "internal database error")
        # Reached only by exceptions no typed handler knows: a bug, logged with its traceback.
        log.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
        return error_response(500, "internal_error", "internal server error")

    @app.errorhandler(ServerError)
    def _server_error(exc: ServerError) -> Response:
        # Safety net: a message or string detail quoting client input (a library's error text) is cut.
        detail = {k: clipped(v) if isinstance(v, str) else v for k, v in exc.detail.items()}
        response = error_response(int(exc.status), exc.code, clipped(str(exc), MESSAGE_MAX), **detail)
        retry_after = getattr(exc, "retry_after", None)  # DatabaseBusy, ServerBusy, LoginThrottled
        if isinstance(retry_after, int):
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError) -> Response:
        if is_busy(exc):
            log.warning("database busy, answering 503: %s", exc.orig)
            return _busy()
        if is_unreachable(exc):
            log.warning("database unreachable, answering 503: %s", exc.orig)
            return _busy(DatabaseUnavailable.code, "database unreachable, retry later")
        log.exception("database error")
        return error_response(500, "database_error", "internal database error")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, "payload_too_large", f"request body over {limit} bytes",
                              limit=limit, unit="bytes")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if not request.headers.get("Authorization"):
            for prefix, page in app.extensions.get(HTML_ERROR_PAGES, {}).items():
                if request.path.startswith(prefix):
                    return page(exc)
        code = (exc.name or "http_error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or code)
        if exc.code == 405 and exc.response is None:
            valid = getattr(exc, "valid_methods", None)
            if valid:
                response.headers["Allow"] = ", ".join(valid)
        return response
