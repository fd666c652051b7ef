"""OpenAPI 3 description of the ``/audit`` routes, merged into the served document.

The pages answer ``text/html`` to a browser session; a script that sends
``Authorization: Bearer`` gets the API's JSON error bodies. Exports are CSV or JSON.
"""

from __future__ import annotations

from typing import Any

_ERR = {"application/json": {"schema": {"type": "object", "required": ["error"],
                                        "properties": {"error": {"type": "object"}}}}}
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERR}


_PAGE_ERRORS = {"302": {"description": "not logged in: redirect to /audit/login"},
                "400": _err("bad query parameter"), "401": _err("invalid or expired token"),
                "403": _err("not an auditor, or missing CSRF token"), "404": _err("no such object")}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _page(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": ["audit"], "security": _BEARER, "parameters": params or [],
                    "responses": {"200": {"description": "the page", "content": _HTML}, **_PAGE_ERRORS}}}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": schema or {"type": "string", "minLength": 1, "maxLength": 64}}


def _query(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"}}


_FMT = _path("fmt", {"type": "string", "enum": ["csv", "json"]})
_EXPORT = {"200": {"description": "the export (streamed)",
                   "content": {"text/csv": {"schema": {"type": "string"}},
                               "application/json": {"schema": {"type": "object"}}}},
           **_PAGE_ERRORS, "422": _err("naive datetime")}

_CYCLE = _query("cycle", {"type": "string", "pattern": "^[0-9]{4}[12]$"})
_REGION = _query("region", {"type": "string", "maxLength": 13})
_PROGRAMME = _query("programme", {"type": "string", "maxLength": 32})  # a programme code of the cycle

PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "A browser (Accept prefers text/html) is sent to /audit/; other clients get 404",
                  "tags": ["audit"], "responses": {"302": {"description": "to /audit/"},
                                                   "404": _err("not a browser: no page here")}}},
    "/audit/": _page("Start page: redirects to the role's home (findings queue for an auditor, programme "
                     "dashboard for a manager or admin)"),
    "/audit/login": {
        "get": {"summary": "Login form", "tags": ["audit"], "parameters": [_query("next")],
                "responses": {"200": {"description": "the form", "content": _HTML},
                              "400": _err("a NUL character in the path or a query parameter")}},
        "post": {"summary": "Log in as an auditor (sets an HttpOnly session cookie)", "tags": ["audit"],
                 "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                     "schema": {"type": "object", "required": ["username", "password"],
                                "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                                               "next": {"type": "string"}, "csrf": {"type": "string"}}}}}},
                 "responses": {"302": {"description": "logged in"},
                               "400": _err("a NUL character in the path or a query parameter"),
                               "401": {"description": "wrong username or password", "content": _HTML},
                               "403": {"description": "not an auditor, or the form's CSRF token does not match "
                                                      "its cookie", "content": _HTML},
                               "429": {"description": "too many failed logins: the password was not checked; "
                                                      "Retry-After gives the seconds", "content": _HTML},
                               "503": {"description": "too many password checks at once, or database busy; "
                                                      "Retry-After gives the seconds", "content": _HTML}}},
    },
    "/audit/logout": {"post": {
        "summary": "Log out (token deleted)", "tags": ["audit"], "security": _BEARER,
        "requestBody": {"content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {"csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "logged out"}, **_PAGE_ERRORS}}},
    "/audit/findings": _page("Findings queue, most urgent first, 100 a page", [
        _query("status", {"type": "string", "enum": ["open", "confirmed", "dismissed", "all"]}), _query("kind"),
        _query("q", {"type": "string", "maxLength": 64}), _query("page", {"type": "integer", "minimum": 1})]),
    "/audit/findings/decisions": {"post": {
        "summary": "One decision and reason for several findings (each audited; all or none)", "tags": ["audit"],
        "security": _BEARER,
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["finding_id", "status", "reason", "csrf"],
                       "properties": {"finding_id": {"type": "array", "items": {"type": "string"}},
                                      "status": {"type": "string", "enum": ["confirmed", "dismissed"]},
                                      "reason": {"type": "string"}, "back": {"type": "string"},
                                      "csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "decided"}, **_PAGE_ERRORS,
                      "422": _err("no finding selected, too many, or no reason")}}},
    "/audit/findings/{finding_id}": _page("One finding with its evidence", [_path("finding_id")]),
    "/audit/findings/{finding_id}/decision": {"post": {
        "summary": "Confirm or dismiss a finding with a reason (audited)", "tags": ["audit"], "security": _BEARER,
        "parameters": [_path("finding_id")],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["status", "reason", "csrf"],
                       "properties": {"status": {"type": "string", "enum": ["confirmed", "dismissed"]},
                                      "reason": {"type": "string"}, "csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "decided"}, **_PAGE_ERRORS, "422": _err("no reason")}}},
    "/audit/grievances": _page("Complaints, newest first, 100 a page", [
        _query("status", {"type": "string", "enum": ["open", "investigating", "resolved", "all"]}),
        _query("q", {"type": "string", "maxLength": 64}), _query("page", {"type": "integer", "minimum": 1})]),
    "/audit/grievances/{grievance_id}": _page("One complaint with its receipt, taps and history",
                                              [_path("grievance_id")]),
    "/audit/grievances/{grievance_id}/status": {"post": {
        "summary": "Move a complaint to investigating or resolved with a reason (audited)", "tags": ["audit"],
        "security": _BEARER, "parameters": [_path("grievance_id")],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["status", "reason", "csrf"],
                       "properties": {"status": {"type": "string", "enum": ["open", "investigating", "resolved"]},
                                      "reason": {"type": "string"}, "csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "moved"}, **_PAGE_ERRORS,
                      "422": _err("no reason")}}},
    "/audit/cards/{card_id}": _page("Card history: every tap, terminal and remaining entitlement",
                                    [_path("card_id")]),
    "/audit/cards/{card_id}/block": {"post": {
        "summary": "Block a card reported lost, stolen or damaged: the next bundle denies it (audited)",
        "tags": ["audit"], "security": _BEARER, "parameters": [_path("card_id")],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["reason", "csrf"],
                       "properties": {"reason": {"type": "string", "enum": ["lost", "stolen", "damaged"]},
                                      "note": {"type": "string"}, "csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "blocked: to the card page"}, **_PAGE_ERRORS,
                      "409": _err("the card is already blocked")}}},
    "/audit/cards/{card_id}/unblock": {"post": {
        "summary": "Lift a card's block with a reason: the next bundle drops it unless something else denies it "
                   "(audited)", "tags": ["audit"], "security": _BEARER, "parameters": [_path("card_id")],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["reason", "csrf"],
                       "properties": {"reason": {"type": "string"}, "csrf": {"type": "string"}}}}}},
        "responses": {"302": {"description": "lifted: to the card page"}, **_PAGE_ERRORS,
                      "409": _err("the card has no block")}}},
    "/audit/terminals/{terminal_id}": _page("Terminal history in seq order", [
        _path("terminal_id"), _query("after", {"type": "integer", "minimum": 0})]),
    "/audit/settlements": _page("Settled torn writes (taken or not taken), 100 a page", [
        _query("terminal_id", {"type": "string", "maxLength": 64}),
        _query("card_id", {"type": "string", "maxLength": 64}),
        _query("after", {"type": "integer", "minimum": 0})]),
    "/audit/declines": _page("Declined taps of copied, forged or deny-listed cards, every terminal, newest "
                             "first, 100 a page", [
        _query("uid", {"type": "string", "maxLength": 32}),
        _query("reason", {"type": "string", "enum": ["clone_check_failed", "card_forked", "card_counter_repeated",
                                                     "state_from_another_card", "card_signature_invalid",
                                                     "card_denied"]}),
        _query("before", {"type": "integer", "minimum": 0})]),
    "/audit/households/{ref}": _page("A household's cards and their copy attempts", [_path("ref")]),
    "/audit/terminals": _page("Every enrolled terminal with its last upload"),
    "/audit/regions": _page("Totals per region, cycle and programme"),
    "/audit/exports": _page("Export links"),
    "/audit/export/findings.{fmt}": {"get": {
        "summary": "Findings as CSV or JSON", "tags": ["audit"], "security": _BEARER,
        "parameters": [_FMT, _query("status", {"type": "string", "enum": ["open", "confirmed", "dismissed"]})],
        "responses": _EXPORT}},
    "/audit/export/journal.{fmt}": {"get": {
        "summary": "The raw signed journal (base64 COSE_Sign1) with terminal keys, as CSV or JSON",
        "tags": ["audit"], "security": _BEARER,
        "parameters": [_FMT, _query("terminal_id"), _query("card_id"),
                       _query("since", {"type": "string", "format": "date-time"}),
                       _query("until", {"type": "string", "format": "date-time"})],
        "responses": _EXPORT}},
    "/audit/programme/": _page("Programme dashboard: progress, throughput, terminal health (admin, auditor, "
                               "manager)", [_CYCLE, _REGION]),
    "/audit/programme/pending": _page("Households not yet collected in a region (one programme with ?programme=)", [
        _CYCLE, _REGION, _PROGRAMME, _query("page", {"type": "integer", "minimum": 1})]),
    "/audit/programme/charts/{name}.svg": {"get": {
        "summary": "A dashboard chart (pygal SVG)", "tags": ["audit"], "security": _BEARER,
        "parameters": [_path("name", {"type": "string", "enum": ["progress", "daily", "throughput"]}),
                       _CYCLE, _REGION, _query("lang", {"type": "string", "enum": ["id", "en"]})],
        "responses": {"200": {"description": "the chart", "content": {"image/svg+xml": {"schema": {
            "type": "string"}}}}, **_PAGE_ERRORS}}},
    "/audit/programme/export/pending.csv": {"get": {
        "summary": "Every household not yet collected in a region, as CSV for field workers (audited)",
        "tags": ["audit"], "security": _BEARER, "parameters": [_CYCLE, _REGION, _PROGRAMME],
        "responses": {"200": {"description": "the export (streamed)", "content": {"text/csv": {"schema": {
            "type": "string"}}}}, **_PAGE_ERRORS}}},
}


def merge_into(spec: dict[str, Any]) -> None:
    """Add :data:`PATHS` to an OpenAPI document (idempotent)."""
    spec.setdefault("paths", {}).update(PATHS)
