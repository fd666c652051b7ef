"""The single error root of :mod:`server`, subclassed by cause.

HTTP translation happens once, in :mod:`server.http` (the error handlers):
each subclass carries a machine-readable ``code`` and an HTTP ``status``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

#: Longest user-supplied value an error message quotes whole (characters); longer ones are cut.
ECHO_MAX = 64
#: Longest error message (and string detail) the API sends (characters): a safety net for
#: library messages that quote their input (``fromisoformat``, CSR subjects, region codes).
MESSAGE_MAX = 1024


def shown(value: object, limit: int = ECHO_MAX) -> str:
    """``repr`` of a client-supplied value for an error message: at most ``limit`` characters, then ``…``.

    A 100 kB path id must not come back whole in a 404 (response size, log size, reflection).
    """
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def clipped(text: str, limit: int = MESSAGE_MAX) -> str:
    """``text`` cut to ``limit`` characters with a trailing ``…`` (for messages built from exception text)."""
    return text if len(text) <= limit else text[:limit] + "…"


class ServerError(Exception):
    """Root of every error raised by the server package.

    :ivar code: machine-readable reason (snake_case), stable across releases.
    :ivar status: the HTTP status the API answers with.
    :ivar detail: extra JSON-serialisable fields for the error body.
    """

    code: str = "server_error"
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail: dict[str, Any] = detail


class ConfigurationError(ServerError):
    """The server is misconfigured (missing CA key, bad DATABASE_URL...)."""

    code = "configuration_error"


class NaiveDatetimeError(ServerError, ValueError):
    """A datetime without tzinfo was given where an aware UTC instant is required (SV-4)."""

    code = "naive_datetime"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class BadRequest(ServerError):
    """The request body is malformed (not JSON, wrong shape, bad base64...)."""

    code = "malformed_request"
    status = HTTPStatus.BAD_REQUEST


class PayloadTooLarge(ServerError):
    """The request is larger than the configured limit (bytes or entries)."""

    code = "payload_too_large"
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class AuthenticationFailed(ServerError):
    """No, or wrong, credentials (person token, terminal signature)."""

    code = "unauthenticated"
    status = HTTPStatus.UNAUTHORIZED


class BadBatchSignature(AuthenticationFailed):
    """The upload envelope signature does not verify with the terminal's enrolled key."""

    code = "bad_batch_signature"


class UnknownTerminal(AuthenticationFailed):
    """The envelope names a terminal that is not enrolled and approved."""

    code = "unknown_terminal"


class Forbidden(ServerError):
    """Authenticated, but the role (or the terminal's status) does not allow this."""

    code = "forbidden"
    status = HTTPStatus.FORBIDDEN


class TerminalRevoked(Forbidden):
    """The terminal's certificate was revoked; its uploads are refused."""

    code = "terminal_revoked"


class NotFound(ServerError):
    """The addressed object does not exist."""

    code = "not_found"
    status = HTTPStatus.NOT_FOUND


class Conflict(ServerError):
    """The request contradicts stored state (different key for an enrolled terminal...)."""

    code = "conflict"
    status = HTTPStatus.CONFLICT


class InvalidCsr(ServerError):
    """The certificate signing request is undecodable, badly signed or names the wrong terminal."""

    code = "invalid_csr"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class InvalidIssuanceFile(ServerError):
    """A provisioning issuance file does not verify (``reason`` ``signature``) or exceeds its grant (``quota``)."""

    code = "invalid_issuance_file"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class InvalidBundle(ServerError):
    """A trust bundle offered for publication does not verify under ``TRUST_ROOT_CERT`` or contradicts the request.

    ``reason``: ``malformed`` (not a bundle file), ``signature`` (root endorsement or bundle
    signature does not verify), ``mismatch`` (the request's ``version`` is not the signed one;
    ``field`` names it).
    """

    code = "invalid_bundle"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class DatabaseBusy(ServerError):
    """The database is busy (SQLite locked, PostgreSQL lock/serialization timeout): retry later (SV-3).

    :ivar retry_after: seconds the client should wait before retrying.
    """

    code = "database_busy"
    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class LoginThrottled(ServerError):
    """Too many failed logins for this account or from this address: retry after ``retry_after`` seconds.

    The password was not checked. HTTP 429 with ``Retry-After`` (RFC 6585 §4).

    :ivar retry_after: whole seconds until the next attempt is considered (at least 1).
    """

    code = "login_throttled"
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class EnrolThrottled(ServerError):
    """Too many failed enrolments from this address: retry after ``retry_after`` seconds (HTTP 429, RFC 6585 §4).

    :ivar retry_after: whole seconds until the next attempt is looked at (at least 1).
    """

    code = "enrol_throttled"
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class EnrolmentCodeInvalid(Forbidden):
    """An enrolment without a valid one-time code for its terminal id (missing, unknown, expired or spent)."""

    code = "enrolment_code_invalid"


class FingerprintMismatch(Conflict):
    """An approval names another key than the pending terminal's (or, with ``missing``, none: 400)."""

    code = "fingerprint_mismatch"

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        if missing:
            self.code = "fingerprint_required"
            self.status = HTTPStatus.BAD_REQUEST


class LoginLocked(LoginThrottled):
    """The account is locked after too many failed logins (docs/security.md, "Logins and web").

    Even the right password is refused until the lock ends or an admin lifts it.
    """

    code = "login_locked"


class ServerBusy(ServerError):
    """Too many password checks at once in this process: retry after ``retry_after`` seconds (503).

    :ivar retry_after: seconds the client should wait before retrying.
    """

    code = "server_busy"
    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class ExportError(ServerError):
    """A journal export (``huma audit export journal``) cannot be used or does not verify."""

    code = "export_error"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class NotAJournalExport(ExportError):
    """The document is not a JSON journal export (wrong format tag, no ``terminals`` or ``items``)."""

    code = "not_a_journal_export"

    def __init__(self, why: str) -> None:
        super().__init__(f"not a journal export: {why}")


class BadPinnedAnchor(ExportError):
    """A pinned anchor given to verify an export (``--server-key``, ``--terminal-ca``) is not a usable key/certificate.

    :ivar anchor: ``"server_key"`` or ``"terminal_ca"``: which one.
    """

    code = "bad_pinned_anchor"

    def __init__(self, message: str, anchor: str) -> None:
        super().__init__(message)
        self.anchor = anchor


class ExportDoesNotVerify(ExportError):
    """An entry's signature, chain link, seq order or an exported column disagrees with the signed bytes.

    :ivar terminal_id: the terminal whose entries fail (None when not known).
    :ivar seq: the first failing seq (None when not known).
    """

    code = "export_does_not_verify"

    def __init__(self, message: str, terminal_id: str | None = None, seq: int | None = None) -> None:
        where = f"{terminal_id} seq {seq}: " if terminal_id is not None and seq is not None else (
            f"{terminal_id}: " if terminal_id is not None else "")
        super().__init__(f"does not verify: {where}{message}", terminal_id=terminal_id, seq=seq)
        self.terminal_id = terminal_id
        self.seq = seq


class DatabaseUnavailable(ServerError):
    """The database cannot be reached (PostgreSQL down, wrong host/port, SQLite file not openable).

    The message names the database as ``driver://host:port/name`` (no password).
    """

    code = "database_unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE


class ListenError(ServerError):
    """``huma server run`` cannot listen on the address (port in use, no permission, unknown host)."""

    code = "listen_error"


class SchemaNotCurrent(ServerError):
    """The database has no schema, or one older than this release's Alembic head: run ``huma server db upgrade``.

    :ivar revision: the database's current Alembic revision (None when it has none).
    :ivar head: the newest revision this release ships.
    """

    code = "schema_not_current"
    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, revision: str | None, head: str) -> None:
        super().__init__(message, revision=revision, head=head)
        self.revision = revision
        self.head = head
