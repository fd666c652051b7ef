"""Auditor pages for grievances (issue 18, docs/grievances.md), on the ``/audit`` blueprint.

- ``GET /audit/grievances?status=&q=``: complaints, newest first, filtered by status and
  searched by receipt code, card id, household reference or the counter that took them.
- ``GET /audit/grievances/<id>``: one complaint with the redemptions its receipt code names,
  the card's other taps (a link to the card history), its history from the audit log, and
  a decision form (a move :data:`server.grievances.TRANSITIONS` allows, with a reason).
- ``POST /audit/grievances/<id>/status``: the decision (CSRF-checked by the blueprint,
  audited in the same transaction by :func:`server.grievances.change_status`).

Imported by :mod:`server.audit.views` so the routes are on its blueprint.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import g, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import or_, select

from server.audit.receipts import normalise_code
from server.audit.views import _reason, bp, render
from server.errors import BadRequest, NotFound
from server.extensions import db
from server.grievances import (
    TRANSITIONS,
    Grievance,
    GrievanceError,
    GrievanceStatus,
    change_status,
    receipt_entries,
)
from server.http import int_param, query_params
from server.models import AuditLog, Person

#: Complaints per page.
GRIEVANCES_PAGE = 100
_STATUSES = [s.value for s in GrievanceStatus]


def _grievance_id(text: str) -> int:
    """A grievance id from the path.

    :raises NotFound: not a positive integer that fits BIGINT.
    """
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise NotFound(f"no grievance {text[:20]!r}")
    return int(text)


@bp.get("/grievances")
def grievances() -> ResponseReturnValue:
    """Complaints, newest first, :data:`GRIEVANCES_PAGE` per page.

    ``?status=open|investigating|resolved|all`` (default ``all``), ``?q=`` (a receipt code in any
    case with or without the dash, a card id, a household reference or a counter id), ``?page=``.

    :raises BadRequest: an unknown status or query parameter.
    """
    query_params("status", "q", "page")
    status = request.args.get("status") or "all"
    if status != "all" and status not in _STATUSES:
        raise BadRequest(f"status must be one of {[*_STATUSES, 'all']}", field="status")
    q = (request.args.get("q") or "").strip()[:64]
    page = max(int_param("page", 1), 1)
    stmt = select(Grievance)
    if status != "all":
        stmt = stmt.where(Grievance.status == status)
    if q:
        code = normalise_code(q)
        matches = [Grievance.card_id == q.lower(), Grievance.household_ref == q.lower(),
                   Grievance.source_terminal == q]
        if code is not None:
            matches.append(Grievance.receipt_code == code)
        stmt = stmt.where(or_(*matches))
    rows = db.session.scalars(stmt.order_by(Grievance.id.desc()).offset((page - 1) * GRIEVANCES_PAGE)
                              .limit(GRIEVANCES_PAGE + 1)).all()
    return render("grievances.html", grievances=rows[:GRIEVANCES_PAGE], status=status, statuses=_STATUSES, q=q,
                  page=page, more=len(rows) > GRIEVANCES_PAGE)


def _history(grievance_id: int) -> list[dict[str, Any]]:
    """The complaint's audit-log rows, oldest first, with who and the recorded detail."""
    rows = db.session.execute(
        select(AuditLog, Person.username).outerjoin(Person, Person.id == AuditLog.person_id)
        .where(AuditLog.target == f"grievance:{grievance_id}").order_by(AuditLog.id)).all()
    out = []
    for row, username in rows:
        detail = json.loads(row.detail or "{}")
        out.append({"at": row.at, "action": row.action, "who": username,
                    "before": detail.get("before"), "after": detail.get("after"), "reason": detail.get("reason"),
                    "terminal_id": detail.get("terminal_id")})
    return out


@bp.get("/grievances/<grievance_id>")
def grievance(grievance_id: str) -> ResponseReturnValue:
    """One complaint: what it links to, the redemptions its receipt code names, its history, the decision form.

    :raises NotFound: no such complaint.
    """
    query_params()
    found = db.session.get(Grievance, _grievance_id(grievance_id))
    if found is None:
        raise NotFound(f"no grievance {grievance_id}")
    entries: list[dict[str, Any]] = []
    if found.receipt_code:
        session = db.write_session()  # indexes receipt codes of journal rows not indexed yet
        entries = [{**e, "wall_time": dt.datetime.fromisoformat(e["wall_time"])}  # shown in WIB
                   for e in receipt_entries(session, found.receipt_code)]
        session.commit()
    recorder = db.session.get(Person, found.created_by) if found.created_by else None
    decider = db.session.get(Person, found.decided_by) if found.decided_by else None
    moves = sorted((s.value for s in TRANSITIONS[GrievanceStatus(found.status)]), key=_STATUSES.index)
    return render("grievance.html", gr=found, entries=entries, history=_history(found.id), recorder=recorder,
                  decider=decider, moves=moves)


@bp.post("/grievances/<grievance_id>/status")
def grievance_status(grievance_id: str) -> ResponseReturnValue:
    """Move a complaint with a reason (audited), then show it again.

    :raises BadRequest: an unknown status, a blank, too long or NUL-bearing reason, a move not allowed.
    :raises NotFound: no such complaint.
    """
    gid = _grievance_id(grievance_id)
    try:
        status = GrievanceStatus(request.form.get("status", ""))
    except ValueError as exc:
        raise BadRequest(f"status must be one of {_STATUSES}", field="status") from exc
    session = db.write_session()
    try:
        change_status(session, gid, g.auditor, status, _reason(request.form.get("reason", "")))
    except LookupError as exc:
        raise NotFound(str(exc)) from exc
    except GrievanceError as exc:
        raise BadRequest(str(exc), field=exc.field) from exc
    session.commit()
    return redirect(url_for("audit.grievance", grievance_id=gid))
