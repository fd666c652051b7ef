"""People and authentication: login, logout, people admin, audit log."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from server.auth import audit, check_username, create_person, find_person, person_from_token, require_role, token_digest
from server.errors import BadRequest, Conflict, shown
from server.extensions import db
from server.http import int_param, json_body, query_params
from server.logins import LoginPolicy, password_login
from server.models import ApiToken, AuditLog, Person, PersonRole
from server.people import unlock_login

bp = Blueprint("people", __name__, url_prefix="/api/v1")


def _person_json(p: Person) -> dict[str, Any]:
    return {"id": p.id, "username": p.username, "role": p.role.value, "disabled": p.disabled,
            "created_at": p.created_at.isoformat()}


def _str_field(body: dict[str, Any], name: str, max_len: int = 255) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"{name} must be a non-empty string of at most {max_len} characters",
                         field=name)
    return value


@bp.post("/auth/login")
def login_view() -> ResponseReturnValue:
    """Password login → bearer token; throttled per account and address (server/logins.py)."""
    body = json_body()
    username = _str_field(body, "username", 64)
    password = _str_field(body, "password")
    ttl = dt.timedelta(seconds=int(current_app.config["TOKEN_TTL"]))
    token, person, expires = password_login(db.write_session, username, password, address=request.remote_addr, ttl=ttl,
                                            policy=LoginPolicy.from_config(current_app.config))
    return jsonify({"token": token, "role": person.role.value, "expires_at": expires.isoformat()})


@bp.post("/auth/logout")
def logout_view() -> ResponseReturnValue:
    """Invalidate the bearer token used for this request."""
    session = db.write_session()
    header = request.headers.get("Authorization")
    person = person_from_token(session, header)
    assert header is not None
    session.execute(delete(ApiToken).where(ApiToken.token_sha256 == token_digest(header[7:].strip())))
    audit(session, person, "logout", f"person:{person.id}")
    session.commit()
    return "", 204


@bp.get("/people")
@require_role(PersonRole.ADMIN)
def list_people() -> ResponseReturnValue:
    """All people (admin)."""
    query_params()
    people = db.session.scalars(select(Person).order_by(Person.id)).all()
    return jsonify({"people": [_person_json(p) for p in people]})


@bp.post("/people")
@require_role(PersonRole.ADMIN)
def add_person() -> ResponseReturnValue:
    """Create a person (admin); audited."""
    body = json_body()
    username = check_username(_str_field(body, "username", 64))
    password = _str_field(body, "password")
    try:
        role = PersonRole(_str_field(body, "role", 16))
    except ValueError:
        raise BadRequest("role must be admin, technician, auditor or manager", field="role") from None
    session = db.write_session()
    try:
        person = create_person(session, username, password, role)
        audit(session, g.person, "person.create", f"person:{person.id}", username=person.username,
              role=role.value)
        session.commit()
    except ValueError as exc:
        raise BadRequest(str(exc), field="password") from exc
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"username {shown(username)} exists") from exc
    return jsonify(_person_json(person)), 201


@bp.post("/people/<username>/unlock")
@require_role(PersonRole.ADMIN)
def unlock_person(username: str) -> ResponseReturnValue:
    """Lift an account's login lock-out and back-off (admin); audited."""
    session = db.write_session()
    lifted = unlock_login(session, username, g.person)
    session.commit()
    return jsonify({"username": find_person(session, username).username, "lifted": lifted})


@bp.get("/audit")
@require_role(PersonRole.ADMIN, PersonRole.AUDITOR)
def audit_log() -> ResponseReturnValue:
    """The newest audit rows (``?limit=``, default 100, max 1000)."""
    query_params("limit")
    limit = int_param("limit", 100, minimum=1, maximum=1000)
    rows = db.session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)).all()
    return jsonify({"audit": [
        {"id": r.id, "person_id": r.person_id, "action": r.action, "target": r.target,
         "detail": json.loads(r.detail), "at": r.at.isoformat()} for r in rows]})
