"""Enrolment: terminals (CSR → approval → certificate) and the card registry."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cardlib.provision.regions import check_region
from server.auth import audit, require_role
from server.enrolment import (
    EnrolPolicy,
    check_enrol_throttle,
    count_enrol_failure,
    fingerprint,
    issue_code,
    receipt_key_chain,
    redeem_code,
)
from server.errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    NaiveDatetimeError,
    NotFound,
    ServerError,
    clipped,
    shown,
)
from server.extensions import db
from server.http import json_body, query_params
from server.models import Card, PersonRole, Terminal, TerminalStatus
from server.receipts import receipt_public_pem
from server.reconcile.models import TerminalSite
from server.terminals import check_csr, decide_terminal, storable_id
from server.terminals import list_terminals as list_terminals_of
from server.types import require_aware, utcnow
from server.upload import insert_or_ignore

bp = Blueprint("enrol", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)

MAX_CARDS_PER_REQUEST = 1000


def _terminal_json(t: Terminal) -> dict[str, Any]:
    return {
        "terminal_id": t.terminal_id,
        "status": t.status.value,
        "kid": t.kid.hex(),
        "fingerprint": fingerprint(t.public_key).hex(),
        "created_at": t.created_at.isoformat(),
        "decided_at": t.decided_at.isoformat() if t.decided_at else None,
    }


def _get_terminal(terminal_id: str) -> Terminal:
    storable_id(terminal_id, "terminal")
    terminal = db.session.scalars(
        select(Terminal).where(Terminal.terminal_id == terminal_id)
    ).one_or_none()
    if terminal is None:
        raise NotFound(f"no terminal {shown(terminal_id)}")
    return terminal


#: WGS 84 coordinate ranges, degrees.
_LAT_RANGE = (-90.0, 90.0)
_LON_RANGE = (-180.0, 180.0)


def parse_site(body: dict[str, Any]) -> dict[str, Any] | None:
    """The optional site of an enrolment request: ``region``, ``lat``, ``lon``.

    :param body: the request object.
    :returns: a ``terminal_sites`` row without ``terminal_id`` (absent fields None), or
        None when none is given.
    :raises BadRequest: ``region`` not a Kalimantan Tengah Kemendagri code (``62.71``,
        ``62.71.01``; :func:`cardlib.provision.regions.check_region`), ``lat``/``lon`` not
        finite numbers in degrees (WGS 84, lat −90..90, lon −180..180), or only one of them.
    """
    region, lat, lon = body.get("region"), body.get("lat"), body.get("lon")
    if region is None and lat is None and lon is None:
        return None
    if region is not None:
        if not isinstance(region, str):
            raise BadRequest("region must be a Kemendagri code like 62.71", field="region")
        try:
            region = check_region(region)
        except ValueError as exc:
            raise BadRequest(clipped(str(exc), 200), field="region") from exc
    if (lat is None) != (lon is None):
        raise BadRequest("lat and lon go together", field="lat" if lat is None else "lon")
    for name, value, (low, high) in (("lat", lat, _LAT_RANGE), ("lon", lon, _LON_RANGE)):
        if value is None:
            continue
        # Range first: NaN and ±inf fail it, and a huge JSON integer is compared exactly
        # (math.isfinite/float() would raise OverflowError on it).
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise BadRequest(f"{name} must be degrees in {low:g}..{high:g} (WGS 84)", field=name)
    return {"region": region, "lat": None if lat is None else float(lat), "lon": None if lon is None else float(lon)}


@bp.post("/terminals/<terminal_id>/enrolment-code")
@require_role(PersonRole.ADMIN)
def enrolment_code(terminal_id: str) -> ResponseReturnValue:
    """A one-time enrolment code for ``terminal_id`` → 201 ``{"terminal_id", "code", "expires_at"}`` (admin, audited).

    The code is shown once (only its SHA-256 is stored); hand it to the technician who
    sets up that counter (:mod:`server.enrolment`).
    """
    from cardlib.keys.terminal_id import check_terminal_id

    storable_id(terminal_id, "terminal")
    try:
        check_terminal_id(terminal_id)
    except ValueError as exc:
        raise BadRequest(clipped(str(exc), 200), field="terminal_id") from exc
    session = db.write_session()
    code, expires = issue_code(session, terminal_id, g.person, EnrolPolicy.from_config(current_app.config))
    audit(session, g.person, "enrolment.code_issued", f"terminal:{terminal_id}", expires_at=expires.isoformat())
    session.commit()
    return jsonify({"terminal_id": terminal_id, "code": code, "expires_at": expires.isoformat()}), 201


@bp.post("/terminals/enrol")
def enrol() -> ResponseReturnValue:
    """A terminal asks to be enrolled: ``{"terminal_id", "csr": PEM text or base64 DER, "code"}`` → 202 pending.

    ``code``: the one-time enrolment code an admin issued for this terminal id (403
    ``enrolment_code_invalid`` without it). Optional ``region`` (Kemendagri code),
    ``lat``/``lon`` (degrees, WGS 84): where the counter stands, stored in
    ``terminal_sites`` for reconciliation (impossible travel) and the per-region audit
    totals (:func:`parse_site`). Re-sending the same CSR with its code is idempotent (a
    site given then is stored if the terminal has none yet); another key for a known
    terminal is 409. Every refused enrolment counts against the client address; past
    ``ENROL_FREE_FAILURES`` it is 429 with ``Retry-After`` (:mod:`server.enrolment`).
    """
    policy = EnrolPolicy.from_config(current_app.config)
    address = request.remote_addr
    check_enrol_throttle(db.write_session, address, policy)
    try:
        return _enrol()
    except ServerError as exc:
        if int(exc.status) >= 500:
            raise
        db.session.rollback()
        count_enrol_failure(db.write_session, address, policy)
        raise


def _enrol() -> ResponseReturnValue:
    body = json_body()
    terminal_id, csr_text = body.get("terminal_id"), body.get("csr")
    if not isinstance(terminal_id, str) or not 0 < len(terminal_id) <= 64:
        raise BadRequest("terminal_id must be 1..64 characters", field="terminal_id")
    if not isinstance(csr_text, str) or not csr_text:
        raise BadRequest("csr must be PEM text or base64 DER", field="csr")
    if csr_text.lstrip().startswith("-----BEGIN"):
        raw = csr_text.encode("ascii", "replace")
    else:
        try:
            raw = base64.b64decode(csr_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("csr is neither PEM nor base64 DER", field="csr") from exc
    site = parse_site(body)
    csr = check_csr(raw, terminal_id)
    session = db.write_session()
    redeem_code(session, terminal_id, body.get("code"), fingerprint(csr.spki_der))
    existing = session.scalars(select(Terminal).where(Terminal.terminal_id == terminal_id)).one_or_none()
    if existing is not None and existing.status is TerminalStatus.REJECTED and existing.public_key != csr.spki_der:
        # a fresh code after a rejection (a squatter's key, say): the new key replaces the rejected one
        if session.scalars(select(Terminal).where(Terminal.kid == csr.kid)).first() is not None:
            raise Conflict("this key is already enrolled for another terminal")
        existing.csr_der, existing.public_key, existing.kid = csr.der, csr.spki_der, csr.kid
        existing.status, existing.certificate_der, existing.decided_at, existing.decided_by = \
            TerminalStatus.PENDING, None, None, None
        existing.created_at = utcnow()
    if existing is not None:
        if existing.public_key != csr.spki_der:
            raise Conflict(f"terminal {shown(terminal_id)} is already enrolled with another key")
        if site is not None:
            session.execute(insert_or_ignore(session, TerminalSite), [{"terminal_id": terminal_id, **site}])
        session.commit()  # the site, the code spent, a rejected key replaced
        return jsonify(_terminal_json(existing)), 202
    kid = csr.kid
    if session.scalars(select(Terminal).where(Terminal.kid == kid)).first() is not None:
        raise Conflict("this key is already enrolled for another terminal")
    terminal = Terminal(terminal_id=terminal_id, status=TerminalStatus.PENDING, csr_der=csr.der,
                        public_key=csr.spki_der, kid=kid)
    try:
        with session.begin_nested():  # savepoint: a concurrent enrolment may win the race
            session.add(terminal)
    except IntegrityError:
        winner = session.scalars(select(Terminal).where(Terminal.terminal_id == terminal_id)).one_or_none()
        if winner is None or winner.public_key != csr.spki_der:
            raise Conflict(f"terminal {shown(terminal_id)} or this key is already enrolled") from None
        return jsonify(_terminal_json(winner)), 202
    if site is not None:
        session.execute(insert_or_ignore(session, TerminalSite), [{"terminal_id": terminal_id, **site}])
    session.commit()
    return jsonify(_terminal_json(terminal)), 202


@bp.get("/terminals/<terminal_id>/certificate")
def certificate(terminal_id: str) -> ResponseReturnValue:
    """The terminal's certificate (PEM) once approved; 202 while pending; 403 if rejected/revoked."""
    terminal = _get_terminal(terminal_id)
    body = _terminal_json(terminal)
    if terminal.status is TerminalStatus.PENDING:
        return jsonify(body), 202
    if terminal.status is not TerminalStatus.APPROVED or terminal.certificate_der is None:
        return jsonify({"error": {"code": f"terminal_{terminal.status.value}",
                                  "message": f"terminal is {terminal.status.value}"}}), 403
    cert = x509.load_der_x509_certificate(terminal.certificate_der)
    body["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    from server.bundles import enrolment_pin  # the counter's first bundle is at least this one
    body["bundle"] = enrolment_pin(db.session)
    body["receipt_key"] = receipt_public_pem(current_app)  # counters pin it: server answers are signed by it
    body.update(receipt_key_chain(current_app))  # the root's chain to that key and the certificate's CA
    return jsonify(body), 200


@bp.get("/terminals")
@require_role(PersonRole.ADMIN, PersonRole.AUDITOR, PersonRole.TECHNICIAN)
def list_terminals() -> ResponseReturnValue:
    """The terminal registry."""
    query_params()
    return jsonify({"terminals": [_terminal_json(t) for t in list_terminals_of(db.session)]})


def _decide(terminal_id: str, to: TerminalStatus) -> Terminal:
    session = db.write_session()
    terminal = decide_terminal(session, terminal_id, to, g.person)
    session.commit()
    return terminal


@bp.post("/terminals/<terminal_id>/approve")
@require_role(PersonRole.ADMIN)
def approve(terminal_id: str) -> ResponseReturnValue:
    """Approve a pending terminal ``{"fingerprint"}``: its certificate is issued now (admin, audited).

    ``fingerprint``: the key the admin approves, as the counter printed it (SHA-256 of its
    SubjectPublicKeyInfo, 64 hex digits); 400 without it, 409 ``fingerprint_mismatch`` when
    the pending key is another one (nothing is issued).
    """
    body = json_body() if request.get_data(cache=True) else {}
    given = body.get("fingerprint")
    session = db.write_session()
    terminal = decide_terminal(session, terminal_id, TerminalStatus.APPROVED, g.person,
                               key_fingerprint=given if isinstance(given, str) else None)
    session.commit()
    return jsonify(_terminal_json(terminal))


@bp.post("/terminals/<terminal_id>/reject")
@require_role(PersonRole.ADMIN)
def reject(terminal_id: str) -> ResponseReturnValue:
    """Reject a pending enrolment (admin, audited)."""
    return jsonify(_terminal_json(_decide(terminal_id, TerminalStatus.REJECTED)))


@bp.post("/terminals/<terminal_id>/revoke")
@require_role(PersonRole.ADMIN)
def revoke(terminal_id: str) -> ResponseReturnValue:
    """Revoke a terminal key: its uploads are refused from now on (admin, audited)."""
    return jsonify(_terminal_json(_decide(terminal_id, TerminalStatus.REVOKED)))


def _parse_card(item: Any, index: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequest(f"cards[{index}] must be an object", index=index)
    try:
        card_id = item["card_id"]
        uid = bytes.fromhex(item["tag_uid"])
        kid = bytes.fromhex(item["kid"])
        issued_at = require_aware(dt.datetime.fromisoformat(item["issued_at"]))
    except NaiveDatetimeError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"cards[{index}]: card_id, tag_uid (hex), kid (hex), issued_at "
                         f"(ISO 8601 with offset) required ({clipped(str(exc), 200)})", index=index) from exc
    if not isinstance(card_id, str) or not 0 < len(card_id) <= 64 or len(uid) not in (4, 7, 10) \
            or len(kid) != 4:
        raise BadRequest(f"cards[{index}]: card_id 1..64 chars, tag_uid 4/7/10 bytes, kid 4 bytes",
                         index=index)
    return {"card_id": card_id, "tag_uid": uid, "kid": kid, "issued_at": issued_at}


@bp.post("/cards")
@require_role(PersonRole.TECHNICIAN, PersonRole.ADMIN)
def add_cards() -> ResponseReturnValue:
    """Register card issuances ``{"cards": [{card_id, tag_uid, kid, issued_at}]}``; a result per card.

    Insert-or-ignore: the same issuance twice is ``duplicate``; the same card id with
    another UID or kid is ``conflict`` (the first registration is kept).
    """
    body = json_body()
    cards = body.get("cards")
    if not isinstance(cards, list) or not cards:
        raise BadRequest("cards must be a non-empty list", field="cards")
    if len(cards) > MAX_CARDS_PER_REQUEST:
        from server.errors import PayloadTooLarge

        raise PayloadTooLarge(f"at most {MAX_CARDS_PER_REQUEST} cards per request",
                              limit=MAX_CARDS_PER_REQUEST, unit="cards")
    parsed = [_parse_card(item, i) for i, item in enumerate(cards)]
    session = db.write_session()
    now = utcnow()
    rows = [{**c, "technician_id": g.person.id, "created_at": now} for c in parsed]
    inserted = set(session.scalars(insert_or_ignore(session, Card).returning(Card.card_id), rows).all())
    existing = {c.card_id: c for c in session.scalars(
        select(Card).where(Card.card_id.in_([c["card_id"] for c in parsed])))}
    results = []
    for c in parsed:
        row = existing[c["card_id"]]
        if c["card_id"] in inserted:
            outcome = "accepted"
        elif row.tag_uid == c["tag_uid"] and row.kid == c["kid"]:
            outcome = "duplicate"
        else:
            outcome = "conflict"
        results.append({"card_id": c["card_id"], "result": outcome})
    audit(session, g.person, "cards.issue", f"cards:{len(inserted)}",
          card_ids=sorted(inserted), conflicts=[r["card_id"] for r in results if r["result"] == "conflict"])
    session.commit()
    return jsonify({"results": results})


@bp.post("/cards/issuances")
@require_role(PersonRole.TECHNICIAN, PersonRole.ADMIN)
def add_issuance_file() -> ResponseReturnValue:
    """Register a provisioning session's signed issuance file ``{"file": base64 COSE_Sign1}``.

    Verified against the newest stored trust bundle (root ``TRUST_ROOT_CERT``): the
    technician key, its issuer grant and quota. Idempotent: the same file again gives
    ``duplicate`` per card. Answers the session, a result per card id and the card ids
    that become deny-list candidates (abandoned, replaced by a re-issue).
    """
    from server.bundles import load_trust_root, newest_verified_bundle
    from server.registry import register_issuance_file

    body = json_body()
    encoded = body.get("file")
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest("file must be the base64 issuance file", field="file")
    try:
        message = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("file is not base64", field="file") from exc
    root_path = current_app.config.get("TRUST_ROOT_CERT")
    if not root_path:
        raise ConfigurationError("HUMA_TRUST_ROOT_CERT is not configured: cannot verify issuance files")
    session = db.write_session()
    bundle = newest_verified_bundle(session, load_trust_root(root_path))
    issuance_file, results = register_issuance_file(session, message, bundle, g.person.id)
    additions = [c.hex() for c in issuance_file.deny_list_additions()]
    audit(session, g.person, "cards.issuance_file", f"session:{issuance_file.session_id.hex()}",
          technician=issuance_file.technician, technician_kid=issuance_file.technician_kid.hex(),
          card_ids=[r.card_id for r in results if r.result.value == "accepted"],
          conflicts=[r.card_id for r in results if r.result.value == "conflict"], deny_candidates=additions)
    session.commit()
    return jsonify({"session_id": issuance_file.session_id.hex(), "technician": issuance_file.technician,
                    "results": [{"card_id": r.card_id, "result": r.result.value} for r in results],
                    "deny_candidates": additions})


@bp.get("/deny-list/candidates")
@require_role(PersonRole.ADMIN, PersonRole.AUDITOR)
def deny_list() -> ResponseReturnValue:
    """Card ids and chip UIDs (hex) the next trust bundle should deny: confirmed clones/fraud + registry."""
    query_params()
    from server.registry import next_deny_sets

    cards, uids = next_deny_sets(db.session)
    return jsonify({"cards": [c.hex() for c in cards], "uids": [u.hex() for u in uids]})


@bp.get("/cards/<card_id>")
@require_role(PersonRole.ADMIN, PersonRole.AUDITOR, PersonRole.TECHNICIAN)
def get_card(card_id: str) -> ResponseReturnValue:
    """One card's registry entry."""
    storable_id(card_id, "card")
    card = db.session.scalars(select(Card).where(Card.card_id == card_id)).one_or_none()
    if card is None:
        raise NotFound(f"no card {shown(card_id)}")
    return jsonify({"card_id": card.card_id, "tag_uid": card.tag_uid.hex(), "kid": card.kid.hex(),
                    "technician_id": card.technician_id, "issued_at": card.issued_at.isoformat()})
