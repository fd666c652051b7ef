"""``POST /api/v1/checkpoints``: an auditor or admin hands the server a scanned shift slip (docs/api.md)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from server.auth import require_role
from server.checkpoints import add_checkpoint
from server.errors import BadRequest
from server.extensions import db
from server.http import json_body
from server.models import PersonRole

bp = Blueprint("checkpoints", __name__, url_prefix="/api/v1")

#: Longest QR text accepted, characters (a version-40 QR code holds 4296 alphanumerics).
MAX_TEXT = 4296


@bp.post("/checkpoints")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def add() -> ResponseReturnValue:
    """Store a scanned checkpoint ``{"checkpoint": "HBCP1:…"}``: 201 when new, 200 when already stored.

    :raises BadRequest: no ``checkpoint`` text, or longer than :data:`MAX_TEXT`.
    :raises InvalidCheckpoint: 422, ``reason`` ``malformed``, ``unknown_terminal``, ``signature``, ``mismatch``.
    """
    body = json_body()
    text = body.get("checkpoint")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("give the scanned text as {\"checkpoint\": \"HBCP1:…\"}", field="checkpoint")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"checkpoint text above {MAX_TEXT} characters", field="checkpoint")
    session = db.write_session()
    added = add_checkpoint(session, text, g.person, source="api")
    session.commit()
    return jsonify(view(added.row, added.created)), 201 if added.created else 200


def view(row: Any, created: bool) -> dict[str, Any]:
    """The JSON answer for a stored checkpoint."""
    return {
        "id": row.id, "created": created, "terminal_id": row.terminal_id, "boot_id": row.boot_id,
        "head_seq": row.head_seq, "head_hash": row.head_hash.hex(), "first_seq": row.first_seq,
        "signed_at": row.signed_at.isoformat(), "declined": row.declined,
    }


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


#: This blueprint's part of the served OpenAPI document.
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/checkpoints": {"post": {
        "summary": "Store a scanned end-of-shift checkpoint (auditor or admin; audited)",
        "tags": ["audit"], "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["checkpoint"],
            "properties": {"checkpoint": {"type": "string", "maxLength": MAX_TEXT,
                                          "description": "the QR text, HBCP1: + base45 (RFC 9285)"}}}}}},
        "responses": {
            "201": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
            "200": {"description": "already stored", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": _err("malformed body or no checkpoint text"),
            "413": _err("body over the limit; limit and unit in the body"),
            "422": _err("invalid_checkpoint: reason malformed, unknown_terminal, signature or mismatch"),
            "401": _err("not logged in"), "403": _err("role not allowed"),
            "503": _err("database busy; retry after the Retry-After header's seconds"),
        },
    }},
}


@bp.record_once
def _document(_state: object) -> None:
    from server.blueprints.openapi import SPEC

    SPEC.setdefault("paths", {}).update(OPENAPI_PATHS)
