"""Households (issue 18): look one up, and the signed balance statement a re-issued card takes (docs/api.md).

- ``GET /api/v1/households/<ref>`` (technician, auditor, admin): cards, remaining entitlement
  this cycle per programme, last taps (:func:`server.households.household`).
- ``POST /api/v1/households/<ref>/balance-statement`` ``{"reissue_of": card id}`` (technician,
  admin): the household's remaining entitlement signed with the server receipt key
  (:mod:`cardlib.records.balance`), which ``huma provision card --reissue-of`` requires; audited.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, current_app, g, jsonify
from flask.typing import ResponseReturnValue

from server.auth import audit, require_role
from server.errors import BadRequest, NotFound, shown
from server.extensions import db
from server.households import HOUSEHOLD_REF, HouseholdView, balance_statement, household
from server.http import json_body, query_params
from server.models import PersonRole
from server.types import utcnow

bp = Blueprint("households", __name__, url_prefix="/api/v1")


def _ref(ref: str) -> str:
    if not HOUSEHOLD_REF.fullmatch(ref):
        raise BadRequest(f"household ref {shown(ref)} is not 16 lower-case hex digits", field="household_ref")
    return ref


def household_json(h: HouseholdView) -> dict[str, Any]:
    """The JSON shape of :class:`server.households.HouseholdView` (API and ``huma server household show --json``)."""
    return {
        "household_ref": h.household_ref,
        "cycle": h.cycle,
        "cards": h.cards,
        "balances": [{"programme_id": b.programme_id, "programme": b.programme, "unit": b.unit,
                      "entitled": b.entitled, "redeemed": b.redeemed, "remaining": b.remaining}
                     for b in h.balances],
        "last_taps": h.last_taps,
    }


@bp.get("/households/<ref>")
@require_role(PersonRole.TECHNICIAN, PersonRole.AUDITOR, PersonRole.ADMIN)
def get_household(ref: str) -> ResponseReturnValue:
    """One household: its cards, remaining entitlement this cycle, last taps (404 when no card serves it)."""
    query_params()
    h = household(db.session, _ref(ref), utcnow(), late_after_s=float(current_app.config["ISSUANCE_LATE_AFTER"]))
    if h is None:
        raise NotFound(f"no registered card serves household {ref}")
    return jsonify(household_json(h))


@bp.post("/households/<ref>/balance-statement")
@require_role(PersonRole.TECHNICIAN, PersonRole.ADMIN)
def post_balance_statement(ref: str) -> ResponseReturnValue:
    """Sign the household's remaining entitlement for re-issuing the card ``reissue_of`` (audited)."""
    from server.receipts import receipt_public_pem, receipt_signer

    _ref(ref)
    body = json_body()
    reissue_of = body.get("reissue_of")
    if not isinstance(reissue_of, str) or not HOUSEHOLD_REF.fullmatch(reissue_of):
        raise BadRequest("reissue_of must be the lost card's id, 16 lower-case hex digits", field="reissue_of")
    session = db.write_session()
    try:
        h, message = balance_statement(session, receipt_signer(current_app), ref, reissue_of, utcnow())
    except LookupError as exc:
        raise NotFound(str(exc)) from exc
    remaining = {str(b.programme_id): b.remaining for b in h.balances}
    audit(session, g.person, "households.balance_statement", f"household:{ref}", reissue_of=reissue_of,
          cycle=h.cycle, remaining=remaining)
    session.commit()
    return jsonify({"household_ref": ref, "cycle": h.cycle, "remaining": remaining, "reissue_of": reissue_of,
                    "statement": base64.b64encode(message).decode(), "server_key": receipt_public_pem(current_app)})


def _openapi_paths() -> dict[str, Any]:
    from server.blueprints.openapi import _AUTH_ERRORS, _BEARER, _BUSY, _body, _err, _json

    ref = {"name": "ref", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
    obj = {"type": "object"}
    return {
        "/api/v1/households/{ref}": {"get": {
            "summary": "A household's cards, remaining entitlement this cycle and last taps (technician, auditor, "
                       "admin)",
            "security": _BEARER, "parameters": [ref],
            "responses": {"200": _json({"type": "object", "required": ["household_ref", "cycle", "cards", "balances",
                                                                        "last_taps"], "properties": {
                "household_ref": {"type": "string"}, "cycle": {"type": "integer"},
                "cards": {"type": "array", "items": obj}, "balances": {"type": "array", "items": obj},
                "last_taps": {"type": "array", "items": obj}}}, "the household"),
                "400": _err("not 16 lower-case hex digits"), "404": _err("no registered card serves it"),
                **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/households/{ref}/balance-statement": {"post": {
            "summary": "Sign the household's remaining entitlement for re-issuing one of its cards (technician, "
                       "admin; audited)",
            "description": "COSE_Sign1 under the server receipt key (cardlib/records/balance.py); "
                           "huma provision card --reissue-of requires it.",
            "security": _BEARER, "parameters": [ref],
            "requestBody": _body({"type": "object", "required": ["reissue_of"], "properties": {
                "reissue_of": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}}),
            "responses": {"200": _json({"type": "object", "required": ["statement", "remaining", "server_key"],
                                        "properties": {
                "household_ref": {"type": "string"}, "cycle": {"type": "integer"}, "remaining": obj,
                "reissue_of": {"type": "string"}, "statement": {"type": "string", "format": "byte"},
                "server_key": {"type": "string"}}}, "the signed statement"),
                "400": _err("malformed body or household ref"), "404": _err("no such household or card of it"),
                "413": _err("body over the limit"), **_AUTH_ERRORS, **_BUSY},
        }},
    }


@bp.record_once
def _document(_state: object) -> None:
    from server.blueprints.openapi import SPEC

    SPEC.setdefault("paths", {}).update(_openapi_paths())
