"""Reconciliation/audit errors: subclasses of the server's error root by cause."""

from __future__ import annotations

from http import HTTPStatus

from server.errors import BadRequest, NotFound, ServerError


class ReconcileError(ServerError):
    """Root of reconciliation errors."""

    code = "reconcile_error"


class FindingNotFound(NotFound, ReconcileError):
    """No finding with that id."""

    code = "finding_not_found"
    status = HTTPStatus.NOT_FOUND


class InvalidDecision(BadRequest, ReconcileError):
    """A decision without a reason, or to a status a person may not set (``open``)."""

    code = "invalid_decision"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ReconcileBusy(ReconcileError):
    """Another reconciliation run holds the single-flight lock (docs/reconciliation.md §Incremental)."""

    code = "reconcile_busy"
    status = HTTPStatus.CONFLICT
