"""Grievances and receipt look-up (issue 18, docs/api.md "Grievances").

- ``POST /api/v1/grievances`` ``{"text", "receipt_code"?, "card_id"?, "household_ref"?}``
  (technician, auditor, admin): record a complaint (201).
- ``GET /api/v1/grievances?status=`` and ``GET /api/v1/grievances/<id>`` (auditor, admin).
- ``POST /api/v1/grievances/<id>/status`` ``{"status", "reason"}`` (auditor, admin): open,
  investigating, resolved; who and why are kept and audited.
- ``GET /api/v1/receipts/<code>`` (auditor, admin): the journal entries a receipt code names.
- ``POST /api/v1/terminal/grievances`` (a counter, signed like a journal upload): complaints taken at
  the counter's screen, each stored once under the counter's id for it; the answer carries a receipt
  signed by the server receipt key (docs/grievances.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from typing import Any

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.auth import audit, require_role
from server.db import busy_as_503
from server.errors import BadRequest, NotFound
from server.extensions import db
from server.grievances import (
    Grievance,
    GrievanceCategory,
    GrievanceError,
    GrievanceStatus,
    change_status,
    find_from_counter,
    grievance_json,
    receipt_entries,
    record_grievance,
)
from server.http import json_body, query_params
from server.models import PersonRole

bp = Blueprint("grievances", __name__, url_prefix="/api/v1")


def _str(body: dict[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", field=key)
    return value


def _id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound(f"no grievance {text[:20]!r}")
    return int(text)


@bp.post("/grievances")
@require_role(PersonRole.TECHNICIAN, PersonRole.AUDITOR, PersonRole.ADMIN)
def post_grievance() -> ResponseReturnValue:
    """Record a complaint about a receipt code, card or household (201; audited)."""
    body = json_body()
    session = db.write_session()
    try:
        grievance = record_grievance(session, g.person, _str(body, "text") or "",
                                     receipt_code=_str(body, "receipt_code"), card_id=_str(body, "card_id"),
                                     household_ref=_str(body, "household_ref"))
    except GrievanceError as exc:
        raise BadRequest(str(exc), field=exc.field) from exc
    session.commit()
    return jsonify(grievance_json(grievance)), 201


@bp.get("/grievances")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def list_grievances() -> ResponseReturnValue:
    """Complaints, oldest first (``?status=open|investigating|resolved``, default every status)."""
    query_params("status")
    stmt = select(Grievance).order_by(Grievance.id)
    status = request.args.get("status")
    if status is not None:
        if status not in {s.value for s in GrievanceStatus}:
            raise BadRequest("status is open, investigating or resolved", field="status")
        stmt = stmt.where(Grievance.status == status)
    return jsonify({"grievances": [grievance_json(x) for x in db.session.scalars(stmt.limit(1000))]})


@bp.get("/grievances/<grievance_id>")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def get_grievance(grievance_id: str) -> ResponseReturnValue:
    """One complaint."""
    query_params()
    grievance = db.session.get(Grievance, _id(grievance_id))
    if grievance is None:
        raise NotFound(f"no grievance {grievance_id}")
    return jsonify(grievance_json(grievance))


@bp.post("/grievances/<grievance_id>/status")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def post_grievance_status(grievance_id: str) -> ResponseReturnValue:
    """Move a complaint to ``status`` with a ``reason`` (400 for a move that is not allowed; audited)."""
    body = json_body()
    try:
        status = GrievanceStatus(_str(body, "status"))
    except ValueError as exc:
        raise BadRequest("status is open, investigating or resolved", field="status") from exc
    session = db.write_session()
    try:
        grievance = change_status(session, _id(grievance_id), g.person, status, _str(body, "reason") or "")
    except LookupError as exc:
        raise NotFound(str(exc)) from exc
    except GrievanceError as exc:
        raise BadRequest(str(exc), field=exc.field) from exc
    session.commit()
    return jsonify(grievance_json(grievance))


#: Most complaints one counter request may carry.
TERMINAL_BATCH_MAX = 100
_CLIENT_REF = re.compile(r"[0-9a-f]{32}")


def _counter_time(value: object) -> dt.datetime | None:
    """A counter's ISO 8601 instant with offset, or None when absent or unreadable (it is evidence, not a key)."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _check_seal(ref: str, item: dict[str, Any], fields: dict[str, Any]) -> None:
    """Refuse a complaint whose fields are not the ones its id sealed when the counter took it.

    A counter's ``client_ref`` is the ``entry_id`` of its signed ``COMPLAINT`` journal entry; since red team
    round 8 it commits to the complaint's fields under the random ``seal`` sent with it
    (:mod:`cardlib.records.complaint`): words or links rewritten in the counter's file after it was taken do
    not match, and are not filed under that id (``rejected``, reason ``seal``; the journalled complaint then
    stays ``complaint_not_received``). An id of a counter from before (a random UUIDv7) seals nothing.

    :raises GrievanceError: a sealed id with no seal, a malformed one, or other fields.
    """
    from cardlib.records.complaint import SEAL_LEN, sealed, seals

    if not sealed(bytes.fromhex(ref)):
        return
    seal, at = item.get("seal"), item.get("recorded_at")
    if not isinstance(seal, str) or not re.fullmatch(f"[0-9a-f]{{{2 * SEAL_LEN}}}", seal) or not seals(
            bytes.fromhex(ref), bytes.fromhex(seal), at if isinstance(at, str) else None, fields["receipt_code"],
            fields["card_id"], fields["household_ref"], fields["category"], fields["text"]):
        raise GrievanceError("the complaint is not the one its counter journalled under this id "
                             "(changed after it was taken)", "seal")


@bp.post("/terminal/grievances")
def post_terminal_grievances() -> ResponseReturnValue:
    """Complaints taken at a counter: ``{"terminal_id", "grievances": [{"client_ref", "text", ...}]}``.

    Authenticated like a journal upload (``Huma-Signature`` envelope by the terminal key over
    the exact body, docs/api.md "Journal upload"). Each complaint gets one line in the signed
    receipt, in order: ``accepted`` (stored now; ``seq`` = its grievance id), ``duplicate``
    (stored before under the same ``client_ref``) or ``rejected`` with the bad field as reason
    (a resend would be refused again, so the counter stops offering it).

    :raises BadRequest: not JSON, no list of complaints, more than :data:`TERMINAL_BATCH_MAX`,
        an item without a 32-hex ``client_ref``.
    :raises AuthenticationFailed, Forbidden: as for journal uploads (bad envelope, unknown,
        revoked or unapproved terminal).
    """
    from flask import current_app

    from cardlib.records.statements import ReceiptLine, sign_receipt
    from server.receipts import receipt_signer
    from server.upload import SIGNATURE_HEADER, authenticate

    body = json_body()
    raw = request.get_data(cache=True)
    retry_after = int(current_app.config["RETRY_AFTER"])
    items = body.get("grievances")
    if not isinstance(items, list) or not items:
        raise BadRequest("grievances must be a non-empty list", field="grievances")
    if len(items) > TERMINAL_BATCH_MAX:
        raise BadRequest(f"at most {TERMINAL_BATCH_MAX} grievances per request", field="grievances")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("client_ref"), str) \
                or not _CLIENT_REF.fullmatch(item["client_ref"]):
            raise BadRequest("every grievance has a client_ref of 32 lower-case hex digits", field="client_ref")
    with busy_as_503(retry_after):
        session = db.write_session()
        terminal = authenticate(session, request.headers.get(SIGNATURE_HEADER), raw)
        lines: list[ReceiptLine] = []
        results: list[dict[str, Any]] = []
        for item in items:
            ref = item["client_ref"]
            known = find_from_counter(session, terminal.terminal_id, ref)
            if known is not None:
                lines.append(ReceiptLine(bytes.fromhex(ref), known.id, "duplicate", None))
                results.append({"client_ref": ref, "result": "duplicate", "id": known.id})
                continue
            try:
                fields = {k: item.get(k) for k in ("text", "receipt_code", "card_id", "household_ref", "category")}
                if any(v is not None and not isinstance(v, str) for v in fields.values()):
                    raise GrievanceError("text, receipt_code, card_id, household_ref and category are strings",
                                         "text")
                with session.begin_nested():
                    grievance = record_grievance(
                        session, None, fields["text"] or "", receipt_code=fields["receipt_code"],
                        card_id=fields["card_id"], household_ref=fields["household_ref"],
                        category=fields["category"], source_terminal=terminal.terminal_id, client_ref=ref,
                        counter_time=_counter_time(item.get("recorded_at")))
                    _check_seal(ref, item, fields)  # after the fields' own checks; raising undoes the insert
            except GrievanceError as exc:
                lines.append(ReceiptLine(bytes.fromhex(ref), None, "rejected", exc.field or "invalid"))
                results.append({"client_ref": ref, "result": "rejected", "reason": exc.field, "error": str(exc)})
                continue
            lines.append(ReceiptLine(bytes.fromhex(ref), grievance.id, "accepted", None))
            results.append({"client_ref": ref, "result": "accepted", "id": grievance.id})
        session.commit()
    receipt = sign_receipt(receipt_signer(current_app), terminal.terminal_id, raw, lines, time.time())
    return jsonify({"terminal_id": terminal.terminal_id, "results": results,
                    "receipt": base64.b64encode(receipt).decode("ascii")}), 200


@bp.get("/receipts/<code>")
@require_role(PersonRole.AUDITOR, PersonRole.ADMIN)
def get_receipt(code: str) -> ResponseReturnValue:
    """The redemptions a receipt code names (404 when none; audited: a look-up names a household)."""
    query_params()
    session = db.write_session()
    try:
        entries = receipt_entries(session, code)
    except GrievanceError as exc:
        raise BadRequest(str(exc), field=exc.field) from exc
    if not entries:
        session.commit()
        raise NotFound("no redemption with this receipt code")
    audit(session, g.person, "receipts.lookup", f"receipt:{entries[0]['receipt_code']}", matches=len(entries))
    session.commit()
    return jsonify({"entries": entries})


def _openapi_paths() -> dict[str, Any]:
    from server.blueprints.openapi import _AUTH_ERRORS, _BEARER, _BUSY, _body, _err, _json

    gid = {"name": "grievance_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
    statuses = [s.value for s in GrievanceStatus]
    grievance = {"type": "object", "required": ["id", "status", "text"], "properties": {
        "id": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
        "created_by": {"type": "integer", "nullable": True}, "text": {"type": "string"},
        "receipt_code": {"type": "string", "nullable": True}, "card_id": {"type": "string", "nullable": True},
        "household_ref": {"type": "string", "nullable": True}, "status": {"type": "string", "enum": statuses},
        "decided_by": {"type": "integer", "nullable": True},
        "decided_at": {"type": "string", "format": "date-time", "nullable": True},
        "reason": {"type": "string", "nullable": True}}}
    text = {"type": "string", "nullable": True}
    return {
        "/api/v1/grievances": {
            "post": {
                "summary": "Record a complaint about a receipt code, card or household (technician, auditor, admin; "
                           "audited)",
                "security": _BEARER,
                "requestBody": _body({"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string"}, "receipt_code": text, "card_id": text, "household_ref": text}}),
                "responses": {"201": _json(grievance, "recorded, open"),
                              "400": _err("blank text, a malformed link or none"), "413": _err("body over the limit"),
                              **_AUTH_ERRORS, **_BUSY},
            },
            "get": {
                "summary": "Complaints, oldest first (auditor, admin)",
                "security": _BEARER,
                "parameters": [{"name": "status", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": statuses}}],
                "responses": {"200": _json({"type": "object", "required": ["grievances"], "properties": {
                    "grievances": {"type": "array", "items": grievance}}}, "at most 1000"),
                    "400": _err("unknown status or query parameter"), **_AUTH_ERRORS},
            },
        },
        "/api/v1/grievances/{grievance_id}": {"get": {
            "summary": "One complaint (auditor, admin)", "security": _BEARER, "parameters": [gid],
            "responses": {"200": _json(grievance, "the complaint"), "400": _err("unknown query parameter"),
                          "404": _err("no such complaint"), **_AUTH_ERRORS},
        }},
        "/api/v1/grievances/{grievance_id}/status": {"post": {
            "summary": "Move a complaint to open, investigating or resolved with a reason (auditor, admin; audited)",
            "security": _BEARER, "parameters": [gid],
            "requestBody": _body({"type": "object", "required": ["status", "reason"], "properties": {
                "status": {"type": "string", "enum": statuses}, "reason": {"type": "string"}}}),
            "responses": {"200": _json(grievance, "moved"), "400": _err("blank reason or a move not allowed"),
                          "404": _err("no such complaint"), "413": _err("body over the limit"),
                          **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/terminal/grievances": {"post": {
            "summary": "Complaints taken at a counter (terminal-signed like a journal upload; a signed receipt "
                       "with one line per complaint: accepted, duplicate or rejected)",
            "parameters": [{"name": "Huma-Signature", "in": "header", "required": True,
                            "schema": {"type": "string"}}],
            "requestBody": _body({"type": "object", "required": ["terminal_id", "grievances"], "properties": {
                "terminal_id": {"type": "string"},
                "grievances": {"type": "array", "maxItems": TERMINAL_BATCH_MAX, "items": {
                    "type": "object", "required": ["client_ref", "text"], "properties": {
                        "client_ref": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "text": {"type": "string"},
                        "receipt_code": text, "card_id": text, "household_ref": text,
                        "category": {"type": "string", "nullable": True,
                                     "enum": [c.value for c in GrievanceCategory]},
                        "recorded_at": {"type": "string", "format": "date-time"}}}}}}),
            "responses": {"200": _json({"type": "object", "required": ["results", "receipt"], "properties": {
                "terminal_id": {"type": "string"}, "results": {"type": "array", "items": {"type": "object"}},
                "receipt": {"type": "string", "format": "byte"}}}, "one result per complaint, in order"),
                "400": _err("not a list of complaints, or one without a client_ref"),
                "401": _err("bad envelope or unknown terminal key"), "403": _err("terminal revoked or not approved"),
                "413": _err("body over the limit"), **_BUSY},
        }},
        "/api/v1/receipts/{code}": {"get": {
            "summary": "The redemptions a receipt code names (auditor, admin; audited)",
            "security": _BEARER,
            "parameters": [{"name": "code", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json({"type": "object", "required": ["entries"], "properties": {
                "entries": {"type": "array", "items": {"type": "object"}}}}, "one entry, rarely more"),
                "400": _err("not a receipt code"), "404": _err("no redemption with it"), **_AUTH_ERRORS, **_BUSY},
        }},
    }


@bp.record_once
def _document(_state: object) -> None:
    from server.blueprints.openapi import SPEC

    SPEC.setdefault("paths", {}).update(_openapi_paths())
