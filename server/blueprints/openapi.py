"""The OpenAPI 3.0 description of the API, hand-written, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from server.http import JsonReason

bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_AUTH_ERRORS = {"401": _err("not logged in"), "403": _err("role not allowed")}
_BUSY = {"503": _err("database busy; retry after the Retry-After header's seconds")}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_TERMINAL_PATH = {"name": "terminal_id", "in": "path", "required": True,
                  "schema": {"type": "string", "minLength": 1, "maxLength": 64}}

_DATETIME = {"type": "string", "format": "date-time"}
_NULLABLE_DATETIME = {"type": "string", "format": "date-time", "nullable": True}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Huma Betang central server",
        "version": "1",
        "description": "Terminal enrolment, journal upload, trust bundle, people. See docs/api.md.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "terminalSignature": {
                "type": "apiKey", "in": "header", "name": "Huma-Signature",
                "description": "base64url COSE_Sign1 by the terminal key over "
                               "{1: 1, 2: terminal_id, 3: SHA-256(body)}",
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    "additionalProperties": True,
                }},
            },
            "Terminal": {
                "type": "object",
                "required": ["terminal_id", "status", "kid", "created_at", "decided_at"],
                "properties": {
                    "terminal_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "approved", "rejected", "revoked"]},
                    "kid": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
                    "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                    "description": "SHA-256 of the key's SubjectPublicKeyInfo DER; approval names it"},
                    "created_at": _DATETIME,
                    "decided_at": _NULLABLE_DATETIME,
                    "certificate": {"type": "string", "description": "PEM, when approved"},
                },
            },
            "EntryResult": {
                "type": "object",
                "required": ["index", "result", "status", "entry_id", "seq"],
                "properties": {
                    "index": {"type": "integer"},
                    "result": {"type": "string", "enum": ["accepted", "duplicate", "conflict", "rejected"]},
                    "status": {"type": "integer", "enum": [200, 409, 422]},
                    "entry_id": {"type": "string", "nullable": True},
                    "seq": {"type": "integer", "nullable": True},
                    "reason": {"type": "string", "enum": [
                        "undecodable", "malformed", "unknown_kid", "algorithm_not_allowed",
                        "bad_signature", "wrong_terminal", "chain_broken"]},
                    "detail": {"type": "string"},
                },
            },
            "UploadResult": {
                "type": "object",
                "required": ["terminal_id", "batch_id", "counts", "results"],
                "properties": {
                    "terminal_id": {"type": "string"},
                    "batch_id": {"type": "string", "nullable": True},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/EntryResult"}},
                    "receipt": {"type": "string", "format": "byte",
                                "description": "base64 COSE_Sign1 by the server receipt key: request hash and "
                                               "per-entry results (the only part a counter acts on)"},
                    "error": {"type": "object"},
                },
            },
            "Person": {
                "type": "object",
                "required": ["id", "username", "role", "disabled", "created_at"],
                "properties": {
                    "id": {"type": "integer"}, "username": {"type": "string"},
                    "role": {"type": "string", "enum": ["admin", "technician", "auditor", "manager"]},
                    "disabled": {"type": "boolean"}, "created_at": _DATETIME,
                },
            },
        },
    },
    "paths": {
        "/openapi.json": {"get": {
            "summary": "This description",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
        }},
        "/api/v1/auth/login": {"post": {
            "summary": "Password login; returns a bearer token",
            "requestBody": _body({
                "type": "object", "required": ["username", "password"],
                "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
            }),
            "responses": {
                "200": _json({"type": "object", "required": ["token", "role", "expires_at"],
                              "properties": {"token": {"type": "string"},
                                             "role": {"type": "string"},
                                             "expires_at": _DATETIME}}, "logged in"),
                "400": _err("malformed body"), "401": _err("wrong username or password"),
                "429": _err("too many failed logins (code login_throttled or login_locked): the password was "
                            "not checked; retry after the Retry-After header's seconds (docs/security.md)"),
                "503": _err("database busy, or too many password checks at once (code server_busy); "
                            "retry after the Retry-After header's seconds"),
            },
        }},
        "/api/v1/auth/logout": {"post": {
            "summary": "Invalidate the bearer token", "security": _BEARER,
            "responses": {"204": {"description": "logged out"}, "401": _err("not logged in"), **_BUSY},
        }},
        "/api/v1/people": {
            "get": {"summary": "List people (admin)", "security": _BEARER,
                    "responses": {"200": _json({"type": "object", "required": ["people"], "properties": {
                        "people": {"type": "array", "items": {"$ref": "#/components/schemas/Person"}}}},
                        "people"), **_AUTH_ERRORS}},
            "post": {"summary": "Create a person (admin, audited)", "security": _BEARER,
                     "requestBody": _body({
                         "type": "object", "required": ["username", "password", "role"],
                         "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                                        "role": {"type": "string",
                                                 "enum": ["admin", "technician", "auditor", "manager"]}}}),
                     "responses": {"201": _json({"$ref": "#/components/schemas/Person"}, "created"),
                                   "400": _err("malformed body"), "409": _err("username exists"),
                                   **_AUTH_ERRORS, **_BUSY}},
        },
        "/api/v1/people/{username}/unlock": {"post": {
            "summary": "Lift an account's login lock-out and back-off (admin, audited)", "security": _BEARER,
            "parameters": [{"name": "username", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 64}}],
            "responses": {"200": _json({"type": "object", "required": ["username", "lifted"], "properties": {
                "username": {"type": "string"}, "lifted": {"type": "boolean"}}}, "unlocked"),
                "404": _err("no such person"), **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/audit": {"get": {
            "summary": "Newest audit-log rows (admin, auditor)", "security": _BEARER,
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": _json({"type": "object", "required": ["audit"],
                                        "properties": {"audit": {"type": "array"}}}, "audit rows"),
                          "400": _err("limit out of range, or an unknown query parameter"),
                          **_AUTH_ERRORS},
        }},
        "/api/v1/terminals/enrol": {"post": {
            "summary": "Enrol a terminal with a PKCS#10 CSR (CN = terminal_id)",
            "requestBody": _body({
                "type": "object", "required": ["terminal_id", "csr", "code"],
                "properties": {"terminal_id": {"type": "string", "maxLength": 64},
                               "csr": {"type": "string", "description": "PEM, or base64 DER"},
                               "code": {"type": "string", "description": "the one-time enrolment code an admin "
                                                                          "issued for this terminal id"},
                               "region": {"type": "string", "pattern": r"^62\.\d{2}(\.\d{2}(\.\d{4})?)?$",
                                          "description": "Kemendagri code of the counter's region in "
                                                         "Kalimantan Tengah, e.g. 62.71 (optional)"},
                               "lat": {"type": "number", "minimum": -90, "maximum": 90,
                                       "description": "latitude, degrees WGS 84 (optional; with lon)"},
                               "lon": {"type": "number", "minimum": -180, "maximum": 180,
                                       "description": "longitude, degrees WGS 84 (optional; with lat)"}}}),
            "responses": {"202": _json({"$ref": "#/components/schemas/Terminal"}, "pending"),
                          "400": _err("malformed body"),
                          "403": _err("no valid enrolment code for this terminal id (enrolment_code_invalid)"),
                          "409": _err("enrolled with another key"),
                          "422": _err("invalid CSR"),
                          "429": _err("too many failed enrolments from this address (Retry-After)"), **_BUSY},
        }},
        "/api/v1/terminals/{terminal_id}/enrolment-code": {"post": {
            "summary": "Issue a one-time enrolment code for a terminal id (admin, audited; shown once)",
            "security": _BEARER, "parameters": [_TERMINAL_PATH],
            "responses": {"201": _json({"type": "object", "required": ["terminal_id", "code", "expires_at"],
                                        "properties": {"terminal_id": {"type": "string"},
                                                       "code": {"type": "string"}, "expires_at": _DATETIME}},
                                       "the code"),
                          "400": _err("not a terminal id"), "404": _err("not a storable terminal id"),
                          "409": _err("terminal already approved or revoked"), **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/terminals/{terminal_id}/approve": {"post": {
            "summary": "Approve a pending terminal's key, named by its fingerprint (admin, audited)",
            "security": _BEARER, "parameters": [_TERMINAL_PATH],
            "requestBody": _body({"type": "object", "required": ["fingerprint"], "properties": {
                "fingerprint": {"type": "string", "description": "64 hex digits as the counter printed them"}}}),
            "responses": {"200": _json({"$ref": "#/components/schemas/Terminal"}, "done"),
                          "400": _err("no fingerprint (fingerprint_required) or a malformed body"),
                          "404": _err("unknown terminal"),
                          "409": _err("wrong status, or another key pending (fingerprint_mismatch)"),
                          **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/terminals/{terminal_id}/certificate": {"get": {
            "summary": "The terminal certificate once approved",
            "parameters": [_TERMINAL_PATH],
            "responses": {"200": _json({"$ref": "#/components/schemas/Terminal"}, "approved, PEM included"),
                          "202": _json({"$ref": "#/components/schemas/Terminal"}, "still pending"),
                          "403": _err("rejected or revoked"), "404": _err("unknown terminal")},
        }},
        "/api/v1/terminals": {"get": {
            "summary": "Terminal registry", "security": _BEARER,
            "responses": {"200": _json({"type": "object", "required": ["terminals"], "properties": {
                "terminals": {"type": "array", "items": {"$ref": "#/components/schemas/Terminal"}}}},
                "terminals"), **_AUTH_ERRORS},
        }},
        **{
            f"/api/v1/terminals/{{terminal_id}}/{action}": {"post": {
                "summary": f"{action.capitalize()} a terminal (admin, audited)",
                "security": _BEARER, "parameters": [_TERMINAL_PATH],
                "responses": {"200": _json({"$ref": "#/components/schemas/Terminal"}, "done"),
                              "404": _err("unknown terminal"), "409": _err("wrong status"),
                              **_AUTH_ERRORS, **_BUSY},
            }}
            for action in ("reject", "revoke")
        },
        "/api/v1/cards": {"post": {
            "summary": "Register card issuances (technician, admin; audited)", "security": _BEARER,
            "requestBody": _body({"type": "object", "required": ["cards"], "properties": {"cards": {
                "type": "array", "minItems": 1, "maxItems": 1000, "items": {
                    "type": "object", "required": ["card_id", "tag_uid", "kid", "issued_at"],
                    "properties": {"card_id": {"type": "string"}, "tag_uid": {"type": "string"},
                                   "kid": {"type": "string"}, "issued_at": _DATETIME}}}}}),
            "responses": {"200": _json({"type": "object", "required": ["results"], "properties": {
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "card_id": {"type": "string"},
                    "result": {"type": "string", "enum": ["accepted", "duplicate", "conflict"]}}}}}},
                "a result per card"),
                "400": _err("malformed body"), "413": _err("too many cards"), **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/cards/issuances": {"post": {
            "summary": "Register a provisioning session's signed issuance file (technician, admin; audited)",
            "description": "The technician-signed COSE_Sign1 from the issuing station, verified against the "
                           "newest stored trust bundle (root TRUST_ROOT_CERT) incl. its issuer grant and quota. "
                           "Idempotent: the same file again answers duplicate per card. An issued card's record may "
                           "carry its identity record (issuer-signed COSE_Sign1): it must verify, and fills the "
                           "card's region and entitlements for reconciliation (422 reason identity otherwise).",
            "security": _BEARER,
            "requestBody": _body({"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "minLength": 1, "description": "base64 COSE_Sign1 issuance file"}}}),
            "responses": {"200": _json({"type": "object", "required": ["session_id", "results", "deny_candidates"],
                                        "properties": {
                "session_id": {"type": "string"}, "technician": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "card_id": {"type": "string"},
                    "result": {"type": "string", "enum": ["accepted", "duplicate", "conflict"]}}}},
                "deny_candidates": {"type": "array", "items": {"type": "string"}}}},
                "a result per card id"),
                "400": _err("malformed body"),
                "409": _err("no trust bundle published yet, or the newest does not verify under the root"),
                "422": _err("invalid_issuance_file: reason signature, quota, identity, reissue or genesis"),
                "500": _err("TRUST_ROOT_CERT not configured"),
                **_AUTH_ERRORS, **_BUSY},
        }},
        "/api/v1/deny-list/candidates": {"get": {
            "summary": "Card ids and chip UIDs (hex) for the next bundle's deny lists (admin, auditor)",
            "security": _BEARER,
            "responses": {"200": _json({"type": "object", "required": ["cards", "uids"], "properties": {
                "cards": {"type": "array", "items": {"type": "string"}},
                "uids": {"type": "array", "items": {"type": "string"}}}}, "sorted, unique"),
                **_AUTH_ERRORS},
        }},
        "/api/v1/cards/{card_id}": {"get": {
            "summary": "One card's registry entry", "security": _BEARER,
            "parameters": [{"name": "card_id", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}}],
            "responses": {"200": _json({"type": "object"}, "card"), "404": _err("unknown card"),
                          **_AUTH_ERRORS},
        }},
        "/api/v1/journal/batches": {"post": {
            "summary": "Upload a signed batch of journal entries (idempotent)",
            "security": [{"terminalSignature": []}],
            "requestBody": _body({
                "type": "object", "required": ["terminal_id", "entries"],
                "properties": {
                    "terminal_id": {"type": "string"},
                    "batch_id": {"type": "string", "maxLength": 64, "description": "informational"},
                    "entries": {"type": "array", "items": {
                        "type": "string", "format": "byte",
                        "description": "base64 of one COSE_Sign1 journal entry"}},
                }}),
            "responses": {
                "200": _json({"$ref": "#/components/schemas/UploadResult"}, "all accepted or duplicate"),
                "400": _err("malformed JSON or shape"),
                "401": _err("missing/bad envelope signature or unknown terminal"),
                "403": _err("terminal revoked or not approved"),
                "409": _json({"$ref": "#/components/schemas/UploadResult"},
                             "some entries conflict with stored ones (originals kept)"),
                "413": _err("too many bytes or entries; the limit is in the body"),
                "422": _json({"$ref": "#/components/schemas/UploadResult"},
                             "some entries rejected (reason per entry)"),
                **_BUSY,
            },
        }},
        "/api/v1/journal/heads": {"post": {
            "summary": "Report the counter's signed journal head (before each upload)",
            "requestBody": _body({
                "type": "object", "required": ["head"],
                "properties": {"head": {"type": "string", "format": "byte",
                                        "description": "base64 COSE_Sign1 by the terminal key: terminal id, "
                                                       "boot id, seq, entry hash, time"}}}),
            "responses": {
                "200": _json({"type": "object"}, "stored (or the same head seen before)"),
                "400": _err("malformed body, or a head that does not verify (reason bad_head)"),
                "401": _err("unknown terminal key"),
                "403": _err("terminal revoked or not approved"),
                **_BUSY,
            },
        }},
        "/api/v1/bundle": {"get": {
            "summary": "Newest signed trust bundle (opaque bytes); conditional with If-None-Match",
            "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                            "schema": {"type": "string"}},
                           {"name": "Huma-Nonce", "in": "header", "required": False,
                            "schema": {"type": "string", "pattern": "^([0-9a-fA-F]{2}){16,32}$"},
                            "description": "the counter's nonce; answered by Huma-Freshness"}],
            "responses": {
                "200": {"description": "the bundle",
                        "headers": {"ETag": {"schema": {"type": "string"}},
                                    "Huma-Bundle-Version": {"schema": {"type": "string"}},
                                    "Huma-Freshness": {"schema": {"type": "string"}}},
                        "content": {"application/cose": {"schema": {"type": "string",
                                                                    "format": "binary"}}}},
                "304": {"description": "unchanged (with Huma-Freshness when a nonce was sent)"},
                "400": _err("Huma-Nonce not 16-32 bytes of hex"),
                "404": _err("no bundle yet"),
            },
        }},
        "/api/v1/bundles": {"post": {
            "summary": "Publish a signed bundle (admin, audited)", "security": _BEARER,
            "description": "The blob is verified under TRUST_ROOT_CERT before it is stored; version and "
                           "expiry stored are the signed ones (version, if given, must match; expires_at, "
                           "if given, is superseded by the blob's).",
            "requestBody": _body({"type": "object", "required": ["blob"],
                                  "properties": {"version": {"type": "integer", "minimum": 1},
                                                 "expires_at": _DATETIME,
                                                 "blob": {"type": "string", "format": "byte"}}}),
            "responses": {"201": _json({"type": "object"}, "stored"), "400": _err("malformed body"),
                          "409": _err("version exists"),
                          "422": _err("invalid_bundle (reason malformed, signature or mismatch) or "
                                      "naive datetime"),
                          "500": _err("TRUST_ROOT_CERT not configured"),
                          **_AUTH_ERRORS, **_BUSY},
        }},
    },
}


def _document_body_limits(spec: dict[str, Any]) -> None:
    """Every operation with a JSON body may answer 413 ``{limit, unit}`` and 400 with a ``reason``."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                operation["responses"].setdefault("413", _err("body over the limit; limit and unit in the body"))
                operation["responses"].setdefault("400", _err(
                    "malformed body; reason one of " + ", ".join(r.value for r in JsonReason)
                    + " (field: the top-level key holding a bad string, when known)"))


_document_body_limits(SPEC)


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3 document."""
    return jsonify(SPEC)
