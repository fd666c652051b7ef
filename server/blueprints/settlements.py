"""Settled torn writes, read-only, for auditors and scripts (docs/api.md "Settled torn writes").

- ``GET /api/v1/settlements?terminal_id=&card_id=&after=&limit=`` (auditor, admin): the
  settlements reconciliation decided (:func:`server.audit.settled_writes.settled_writes`), in
  decision order, ``limit`` (default 100, at most 500) after the row id ``after``;
  ``next_after`` is the id to ask for the next page, null on the last.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from server.audit.settled_writes import MAX_LIMIT, settled_writes
from server.auth import require_role
from server.errors import BadRequest
from server.extensions import db
from server.http import int_param, query_params
from server.models import PersonRole

bp = Blueprint("settlements", __name__, url_prefix="/api/v1")

#: Longest terminal or card id a filter takes (the columns' width).
ID_MAX = 64


def id_filter(name: str) -> str | None:
    """A ``terminal_id`` / ``card_id`` filter from the query: printable ASCII, 1..:data:`ID_MAX` characters.

    :raises BadRequest: anything else (``field`` = ``name``).
    """
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if len(value) > ID_MAX or not value.isascii() or not value.isprintable():
        raise BadRequest(f"{name} must be 1 to {ID_MAX} printable ASCII characters", field=name)
    return value


@bp.get("/settlements")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def list_settlements() -> ResponseReturnValue:
    """Settled torn writes, filtered by ``terminal_id`` and/or ``card_id``, paged by ``after`` (row id)."""
    query_params("terminal_id", "card_id", "after", "limit")
    limit = int_param("limit", 100, minimum=1, maximum=MAX_LIMIT)
    rows = settled_writes(db.session, terminal_id=id_filter("terminal_id"), card_id=id_filter("card_id"),
                          after=int_param("after", 0), limit=limit)
    return jsonify({"settlements": [r.to_json() for r in rows],
                    "next_after": rows[-1].id if len(rows) == limit else None})


def _openapi_paths() -> dict[str, Any]:
    from server.blueprints.openapi import _AUTH_ERRORS, _BEARER, _err, _json

    def q(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    text = {"type": "string", "nullable": True}
    when = {"type": "string", "format": "date-time", "nullable": True}
    item = {"type": "object", "required": ["id", "outcome", "terminal_id", "seq", "card_id", "entry_id",
                                           "settled_at"], "properties": {
        "id": {"type": "integer"}, "outcome": {"type": "string", "enum": ["taken", "not_taken"]},
        "terminal_id": {"type": "string"}, "seq": {"type": "integer"}, "card_id": {"type": "string"},
        "household_ref": text, "entry_id": {"type": "string"}, "programme": text,
        "amount": {"type": "integer", "nullable": True}, "wall_time": when,
        "evidence": {"type": "object", "nullable": True, "properties": {
            "terminal_id": {"type": "string"}, "seq": {"type": "integer"}}},
        "run_id": {"type": "integer", "nullable": True}, "run_started_at": when,
        "settled_at": {"type": "string", "format": "date-time"}}}
    ident = {"type": "string", "minLength": 1, "maxLength": ID_MAX}
    return {"/api/v1/settlements": {"get": {
        "summary": "Torn card writes reconciliation settled as taken or not taken, in decision order (auditor, "
                   "admin)",
        "security": _BEARER,
        "parameters": [q("terminal_id", ident), q("card_id", ident),
                       q("after", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
                       q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
        "responses": {"200": _json({"type": "object", "required": ["settlements", "next_after"], "properties": {
            "settlements": {"type": "array", "items": item},
            "next_after": {"type": "integer", "nullable": True}}}, "one page"),
            "400": _err("a malformed filter, page or unknown query parameter"), **_AUTH_ERRORS},
    }}}


@bp.record_once
def _document(_state: object) -> None:
    from server.blueprints.openapi import SPEC

    SPEC.setdefault("paths", {}).update(_openapi_paths())
