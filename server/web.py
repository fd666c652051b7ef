"""The web edge: trusted reverse proxies and the security headers of every answer.

Behind the TLS proxy of docs/operations.md ("Behind a TLS proxy") the app sees plain
HTTP from the proxy's address. With ``TRUSTED_PROXIES`` = *n* (the number of proxies in
front, usually 1), werkzeug's ``ProxyFix`` believes the last *n* entries of
``X-Forwarded-For``/``-Proto``/``-Host``/``-Port``, so ``request.is_secure`` is true for
https clients (the session cookie gets ``Secure``) and ``request.remote_addr`` is the
client (login throttling per address). With 0 (the default) those headers are ignored:
a client talking to the app directly cannot claim another address or https.

Headers (RFC 6797 HSTS, RFC 9111 §5.2.2.5 ``no-store``, WHATWG Fetch ``nosniff``):

- ``X-Content-Type-Options: nosniff`` on every answer;
- ``Cache-Control: no-store`` on every ``/audit`` page and ``/api`` answer (findings,
  card ids, tokens must not stay in a shared browser's or proxy's cache);
- ``Strict-Transport-Security: max-age=HSTS_MAX_AGE`` on answers to https requests only
  (RFC 6797 §7.2: never over plain HTTP).

``GET /``: a browser (one that prefers ``text/html`` to JSON in ``Accept``, RFC 9110 §12.5.1)
is sent to the auditor login, ``/audit/``; any other client keeps the JSON 404 of an unknown
path. Both answers carry ``Vary: Accept``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, redirect, request
from flask.typing import ResponseReturnValue
from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Path prefixes whose answers are never stored by a cache.
NO_STORE_PREFIXES = ("/audit", "/api/")


def trusted_proxies(app: Flask) -> int:
    """``TRUSTED_PROXIES`` as a count of proxies (0..16).

    :raises ValueError: not an integer in that range (a typo must not silently trust every header).
    """
    value = app.config.get("TRUSTED_PROXIES", 0)
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        count = int(value)
        if not 0 <= count <= 16:
            raise ValueError
    except ValueError:
        raise ValueError(f"TRUSTED_PROXIES must be the number of reverse proxies in front (0 to 16), "
                         f"not {value!r}") from None
    return count


def init_web(app: Flask) -> None:
    """Install the proxy handling and the security headers on ``app`` (called by ``create_app``).

    The proxy count is read per request, so a test may change ``TRUSTED_PROXIES`` after
    ``create_app``; it is checked once here.

    :raises ValueError: ``TRUSTED_PROXIES`` is not a count (see :func:`trusted_proxies`).
    """
    trusted_proxies(app)
    inner = app.wsgi_app
    fixed: dict[int, ProxyFix] = {}

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        count = trusted_proxies(app)
        if count == 0:
            return inner(environ, start_response)
        if count not in fixed:
            fixed[count] = ProxyFix(inner, x_for=count, x_proto=count, x_host=count, x_port=count)
        return fixed[count](environ, start_response)

    app.wsgi_app = wsgi  # type: ignore[method-assign]  # Flask's documented way to wrap in WSGI middleware

    @app.get("/")
    def root() -> ResponseReturnValue:
        """The auditor pages for a browser; the JSON 404 for an API client.

        :raises werkzeug.exceptions.NotFound: the client does not prefer HTML.
        """
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
            abort(404)
        return redirect("/audit/")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path == "/":
            response.vary.add("Accept")
        if request.path.startswith(NO_STORE_PREFIXES):
            response.headers["Cache-Control"] = "no-store"
        max_age = int(app.config.get("HSTS_MAX_AGE") or 0)
        if request.is_secure and max_age > 0:
            response.headers["Strict-Transport-Security"] = f"max-age={max_age}"
        return response
