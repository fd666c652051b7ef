"""Auditor blueprint ``/audit``: findings queue, card/terminal history, region totals, exports.

Server-rendered HTML, no JavaScript. Login uses the people/roles of
:mod:`server.auth` through :func:`server.logins.password_login` (throttled, lock-out,
failures audited): the bearer token it issues is kept in an ``HttpOnly;
SameSite=Strict`` cookie, ``Secure`` when the request is https (behind a trusted
proxy, see :mod:`server.web`), or sent as ``Authorization: Bearer`` by scripts. Auditors,
managers and admins log in (:data:`UI_ROLES`); ``/audit/`` sends each to its role's home
(:func:`home_url`), and a page of another role is a 403 inside the page frame. The login
form carries a double-submit CSRF token (a random value in an ``HttpOnly; SameSite=Strict``
cookie and in the form); every other
state-changing form carries one derived from the session token (HMAC-SHA256). Every
decision is written to the audit log in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from http import HTTPStatus
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, redirect, request, stream_with_context, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy import BigInteger, and_, case, cast, func, or_, select
from werkzeug.exceptions import HTTPException

from cardlib.records.journal import EntryKind
from server.audit import exports
from server.audit.entries import decline_reason, decode_entry, fallback_of
from server.audit.i18n import DEFAULT_LANGUAGE, LANGUAGES, environments, translations
from server.audit.messages import translate_message
from server.audit.models import ReceiptCode
from server.audit.receipts import index_receipts, normalise_code
from server.auth import audit, person_from_token
from server.card_blocks import blocks_of
from server.errors import (
    AuthenticationFailed,
    Forbidden,
    LoginLocked,
    LoginThrottled,
    NotFound,
    ServerBusy,
    ServerError,
)
from server.extensions import db
from server.households import redemption_taken
from server.http import error_response, int_param, query_params, register_html_error_page
from server.logins import LoginPolicy, password_login
from server.models import Card, JournalConflict, JournalEntryRow, Person, PersonRole, RejectedEntry, Terminal
from server.pin_resets import card_pin_resets
from server.reconcile.errors import FindingNotFound, InvalidDecision
from server.reconcile.findings import decide_finding, evidence_entries
from server.reconcile.models import (
    BenefitCycle,
    CardEntitlement,
    CardProfile,
    Finding,
    FindingKind,
    FindingStatus,
    TerminalSite,
)
from server.reconcile.observations import REDEMPTION_KINDS
from server.registry import late_days
from server.types import require_aware

bp = Blueprint("audit", __name__, url_prefix="/audit")

COOKIE = "huma_audit"
LANG_COOKIE = "huma_lang"
#: Double-submit CSRF cookie of the login form (there is no session yet to derive a token from).
LOGIN_CSRF_COOKIE = "huma_login_csrf"
#: Seconds a login form's CSRF cookie lives (a form left open longer is shown again with a fresh one).
LOGIN_CSRF_TTL = 3600
_LOGIN_CSRF = re.compile(r"[0-9a-f]{64}")
_EXT = "huma_audit_jinja"
#: Terminal history page size, entries.
PAGE = 200
#: Card history: most taps shown.
CARD_TAPS = 2000
#: Findings queue page size (pages follow with ``?page=``; there is no cap on the queue).
FINDINGS_PAGE = 100
#: Most findings one bulk decision may change (a page and a half; a form, not a batch job).
BULK_MAX = 500
#: Roles that may log in here: auditors get the findings, managers and admins the programme dashboard.
UI_ROLES = (PersonRole.AUDITOR, PersonRole.MANAGER, PersonRole.ADMIN)
#: Endpoints (blueprint ``dashboard``) every role of :data:`UI_ROLES` may use; the rest need an auditor.
SHARED_BLUEPRINTS = ("dashboard",)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    app = state.app
    app.extensions[_EXT] = environments()
    register_html_error_page(app, "/audit/", _http_error_page)
    from server.audit.openapi import merge_into
    from server.blueprints.openapi import SPEC

    merge_into(SPEC)  # the served /openapi.json describes every route


# ----------------------------------------------------------------------------- helpers


def _lang() -> str:
    lang = request.args.get("lang") or request.cookies.get(LANG_COOKIE) or DEFAULT_LANGUAGE
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def _token() -> str | None:
    header = request.headers.get("Authorization")
    if header and header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.cookies.get(COOKIE)


def _csrf(token: str) -> str:
    return hmac.new(token.encode(), b"huma-betang/audit/csrf", hashlib.sha256).hexdigest()


def render(template: str, *, http_status: HTTPStatus = HTTPStatus.OK, **context: Any) -> Response:
    """Render an auditor page in the request's language.

    :param http_status: the response status. Keyword-only and typed apart from the
        template context, so a context variable called ``status`` (the findings
        filter) can never become the HTTP status line (``HTTP/1.1 0 open``).
    :raises ValueError: ``http_status`` is not an HTTP status code (RFC 9110 §15).
    """
    http_status = HTTPStatus(http_status)
    lang = _lang()
    env = current_app.extensions[_EXT][lang]
    token = _token()
    html = env.get_template(template).render(
        url_for=url_for, lang=lang, languages=LANGUAGES, person=g.get("person"), PersonRole=PersonRole,
        csrf=_csrf(token) if token else "", request=request, FindingStatus=FindingStatus, **context)
    resp = Response(html, status=int(http_status), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                               "script-src 'none'; base-uri 'none'; form-action 'self'")
    resp.headers["X-Frame-Options"] = "DENY"
    if request.args.get("lang") in LANGUAGES:
        resp.set_cookie(LANG_COOKIE, lang, samesite="Strict", max_age=365 * 86400, secure=request.is_secure)
    return resp


@bp.before_request
def _require_auditor() -> ResponseReturnValue | None:
    return require_login(auditor_only=request.endpoint not in ("audit.logout", "audit.index"))


def require_login(auditor_only: bool) -> ResponseReturnValue | None:
    """Authenticate a page request (cookie or bearer token) and check its CSRF token on POST.

    Sets ``g.person`` (and ``g.auditor`` for an auditor). Used by this blueprint and by
    :mod:`server.dashboard.views`, which shares the session cookie (path ``/audit``).

    :param auditor_only: the page needs the auditor role (else any of :data:`UI_ROLES`).
    :returns: a redirect to the login form when not logged in, else ``None``.
    :raises Forbidden: another role, or a POST without the right CSRF token.
    """
    if "\x00" in request.path or any("\x00" in v for v in request.args.values()):
        from server.errors import BadRequest

        raise BadRequest("NUL characters are not allowed")  # PostgreSQL text cannot hold them
    if request.endpoint in ("audit.login_form", "audit.login_submit"):
        return None
    token = _token()
    try:
        person = person_from_token(db.session, f"Bearer {token}" if token else None)
    except AuthenticationFailed:
        if request.path.startswith(("/audit/export", "/audit/programme/export")) and \
                request.headers.get("Authorization"):
            raise
        back = request.full_path if request.query_string else request.path  # full_path ends in a bare "?"
        return redirect(url_for("audit.login_form", next=back))
    needed = (PersonRole.AUDITOR,) if auditor_only else UI_ROLES
    if person.role in UI_ROLES:
        g.person = person  # also on a 403: the error page keeps its menu
    if person.role not in needed:
        raise Forbidden(f"role {person.role.value} may not use this page", needed=[r.value for r in needed])
    if person.role is PersonRole.AUDITOR:
        g.auditor = person
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not token or not hmac.compare_digest(sent, _csrf(token)):
            raise Forbidden("missing or wrong CSRF token", reason="csrf")
    return None


@bp.errorhandler(ServerError)
def _server_error(exc: ServerError) -> ResponseReturnValue:
    if request.headers.get("Authorization"):  # scripts get the API's JSON error body
        return error_response(int(exc.status), exc.code, str(exc), **exc.detail)
    message = str(exc)
    translated = translate_message(message, translations(_lang()).gettext)
    return render("error.html", http_status=exc.status, message=translated or message,
                  translated=translated is not None, code=int(exc.status), field=exc.detail.get("field"))


def _http_error_page(exc: HTTPException) -> Response:
    """The error page for an HTTP error no view raised under /audit/ (an unknown address: 404)."""
    code = exc.code or 500
    return render("error.html", http_status=HTTPStatus(code), message=exc.description or exc.name,
                  translated=False, code=code, field=None)


E = TypeVar("E", bound=enum.Enum)


def _choice(cls: type[E], value: str, name: str) -> E:
    """``cls(value)``.

    :raises BadRequest: not one of the enum's values.
    """
    try:
        return cls(value)
    except ValueError as exc:
        from server.errors import BadRequest

        raise BadRequest(f"{name} must be one of {[m.value for m in cls]}", field=name) from exc


def _finding_id(text: str) -> int:
    """A finding id from the path (a positive integer that fits BIGINT).

    :raises FindingNotFound: anything else.
    """
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise FindingNotFound(f"no finding {text!r}")
    return int(text)


def _path_id(value: str, what: str) -> str:
    """A card or terminal id from the path; longer than any stored id (64 characters) is unknown.

    :raises NotFound: over 64 characters.
    """
    if len(value) > 64:
        raise NotFound(f"no {what} {value[:64]!r}…")
    return value


def _aware(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return require_aware(dt.datetime.fromisoformat(text))
    except ValueError as exc:
        from server.errors import BadRequest

        raise BadRequest(f"not an ISO 8601 instant with offset: {text!r}") from exc


# ----------------------------------------------------------------------------- login


def _login_page(http_status: HTTPStatus, next_url: str, error: str | None, **context: Any) -> Response:
    """The login form with its double-submit CSRF token (the browser's cookie value, else a new one).

    Keeping a valid cookie's value lets several open tabs each post their form.
    """
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if _LOGIN_CSRF.fullmatch(token) is None:
        token = secrets.token_hex(32)
    resp = render("login.html", http_status=http_status, next=next_url, error=error, login_csrf=token, **context)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                    max_age=LOGIN_CSRF_TTL, path=url_for("audit.login_form"))
    return resp


@bp.get("/login")
def login_form() -> ResponseReturnValue:
    """The login form."""
    query_params("next")
    return _login_page(HTTPStatus.OK, request.args.get("next", ""), None)


@bp.post("/login")
def login_submit() -> ResponseReturnValue:
    """Password login (throttled, see :mod:`server.logins`); sets the session cookie for an auditor.

    A post without the CSRF token of this browser's login cookie (a form on another site
    logging the browser into the attacker's account) is refused with 403 before any
    password is looked at.
    """
    username = request.form.get("username", "")[:64]
    password = request.form.get("password", "")
    next_url = request.form.get("next", "")
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if _LOGIN_CSRF.fullmatch(cookie_token) is None or not hmac.compare_digest(request.form.get("csrf", ""),
                                                                              cookie_token):
        return _login_page(HTTPStatus.FORBIDDEN, next_url, "csrf")
    if "\x00" in username:  # PostgreSQL text cannot hold NUL: no such user
        return _login_page(HTTPStatus.UNAUTHORIZED, "", "credentials")
    ttl = dt.timedelta(seconds=int(current_app.config["TOKEN_TTL"]))
    try:
        token, _person, expires = password_login(
            db.write_session, username, password, address=request.remote_addr, ttl=ttl,
            policy=LoginPolicy.from_config(current_app.config), roles=UI_ROLES, via="audit-ui")
    except AuthenticationFailed:
        return _login_page(HTTPStatus.UNAUTHORIZED, next_url, "credentials")
    except Forbidden:
        return _login_page(HTTPStatus.FORBIDDEN, next_url, "role")
    except (LoginThrottled, ServerBusy) as exc:
        error = "locked" if isinstance(exc, LoginLocked) else "throttled" if isinstance(exc, LoginThrottled) else "busy"
        http_status = HTTPStatus.SERVICE_UNAVAILABLE if isinstance(exc, ServerBusy) else HTTPStatus.TOO_MANY_REQUESTS
        resp = _login_page(http_status, next_url, error, retry_after=exc.retry_after)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    target = next_url
    start = home_url(_person)
    if not target.startswith("/audit/") or target.startswith("//"):
        target = start
    elif _person.role is not PersonRole.AUDITOR and not target.startswith("/audit/programme"):
        target = start  # a manager or admin has no auditor page to go back to
    done = redirect(target)
    done.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                    expires=expires, path="/audit")
    done.delete_cookie(LOGIN_CSRF_COOKIE, path=url_for("audit.login_form"))
    return done


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session (the token is deleted) and clear the cookie."""
    from sqlalchemy import delete

    from server.auth import token_digest
    from server.models import ApiToken

    session = db.write_session()
    token = _token()
    if token:
        session.execute(delete(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
    audit(session, g.person, "logout", f"person:{g.person.id}", via="audit-ui")
    session.commit()
    resp = redirect(url_for("audit.login_form"))
    resp.delete_cookie(COOKIE, path="/audit")
    return resp


# ----------------------------------------------------------------------------- findings


def home_url(person: Person) -> str:
    """The start page of ``person``'s role: the findings queue for an auditor, else the programme dashboard."""
    return url_for("audit.findings") if person.role is PersonRole.AUDITOR else url_for("dashboard.overview")


@bp.get("/")
def index() -> ResponseReturnValue:
    """Start page (docs/operations.md gives this URL): each role's own home, :func:`home_url`."""
    query_params()
    return redirect(home_url(g.person))


#: Most cards of one household, or of one receipt code, listed as links by a search.
LOOKUP_MAX = 20


def _household(text: str) -> str | None:
    """The household reference ``text`` names (16 hex digits, or an ``HB-`` label that fits one household)."""
    from cardlib.records.household_label import HouseholdIdError
    from server.household_ids import resolve_household

    try:
        return resolve_household(db.session, text)
    except (HouseholdIdError, ServerError):  # neither form, or a label that fits none or several
        return None


def _receipt_entries(text: str) -> list[Any]:
    """``(card_id, terminal_id, seq)`` of the journal entries whose receipt code is ``text``, if it is one."""
    code = normalise_code(text)
    if code is None:
        return []
    session = db.write_session()
    index_receipts(session)
    session.commit()
    j = JournalEntryRow
    return list(db.session.execute(
        select(j.card_id, j.terminal_id, j.seq).join(ReceiptCode, ReceiptCode.journal_id == j.id)
        .where(ReceiptCode.code == code).order_by(j.id).limit(LOOKUP_MAX)).all())


def lookup(text: str) -> dict[str, Any]:
    """What a search text names: the pages it leads to and the household it means.

    :param text: a card id, terminal id, chip UID (4, 7 or 10 bytes in hex), household reference
        (16 hex digits or ``HB-`` label) or receipt code (``XXXX-XXXX``), already trimmed.
    :returns: ``{"household": ref of a household with a registered card, or None, "code": receipt
        code or None, "uid": UID hex or None,
        "receipts": [(card_id, terminal_id, seq)], "cards": [card ids with a page], "terminals":
        [terminal ids with a page]}``, each list at most :data:`LOOKUP_MAX` long, in a stable order.
    """
    from server.audit.decline_views import parse_uid

    household = _household(text)
    if household is not None and db.session.scalar(
            select(CardProfile.card_id).where(CardProfile.household_ref == household).limit(1)) is None:
        household = None  # a well-formed reference no registered card serves: no page to link
    receipts = _receipt_entries(text)
    uid = parse_uid(text)
    cards: list[str] = []
    if db.session.get(CardProfile, text) is not None or db.session.scalar(
            select(func.count()).select_from(Card).where(Card.card_id == text)):
        cards.append(text)
    if uid is not None:  # the card issued on this chip (a copy carries the same UID)
        cards += db.session.scalars(select(Card.card_id).where(Card.tag_uid == uid)
                                    .order_by(Card.card_id).limit(LOOKUP_MAX))
    if household is not None:
        cards += db.session.scalars(select(CardProfile.card_id).where(CardProfile.household_ref == household)
                                    .order_by(CardProfile.card_id).limit(LOOKUP_MAX))
    cards += [r.card_id for r in receipts if r.card_id]
    terminals = [text] if db.session.get(TerminalSite, text) is not None or db.session.scalar(
        select(func.count()).select_from(Terminal).where(Terminal.terminal_id == text)) else []
    terminals += [r.terminal_id for r in receipts]
    return {"household": household, "code": normalise_code(text), "uid": uid.hex() if uid else None,
            "receipts": receipts,
            "cards": list(dict.fromkeys(cards))[:LOOKUP_MAX], "terminals": list(dict.fromkeys(terminals))[:LOOKUP_MAX]}


def _search(stmt: Any, text: str, found: dict[str, Any]) -> Any:
    """``stmt`` (over findings) narrowed to a card id, a household or a receipt code.

    A card id or terminal id matches exactly; a household (reference or printed label) matches
    the findings of every card the household holds; a chip UID the findings of the card issued
    on it; a receipt code (``XXXX-XXXX``) the findings of the card and terminal of the entries
    with that code.

    :param found: :func:`lookup` of ``text``.
    """
    matches = [Finding.card_id == text, Finding.terminal_id == text]
    if found["household"] is not None:
        matches.append(Finding.card_id.in_(select(CardProfile.card_id)
                                           .where(CardProfile.household_ref == found["household"])))
    if found.get("uid"):
        matches.append(Finding.card_id.in_(select(Card.card_id).where(Card.tag_uid == bytes.fromhex(found["uid"]))))
    if normalise_code(text) is not None:
        j = JournalEntryRow
        hits = select(j.card_id).join(ReceiptCode, ReceiptCode.journal_id == j.id).where(
            ReceiptCode.code == normalise_code(text))
        matches.append(Finding.card_id.in_(hits))
    return stmt.where(or_(*matches))


@bp.get("/findings")
def findings() -> ResponseReturnValue:
    """The findings queue, most urgent first, :data:`FINDINGS_PAGE` per page.

    ``?status=open|confirmed|dismissed|all``, ``?kind=``, ``?q=`` (card id, terminal id, chip
    UID, household reference or ``HB-`` label, or receipt code: the page also links the card,
    terminal and household pages it names and a UID's declined taps, :func:`lookup`),
    ``?page=`` (1-based).
    """
    query_params("status", "kind", "q", "page")
    status = request.args.get("status", FindingStatus.OPEN.value)
    kind = request.args.get("kind") or None
    q = (request.args.get("q") or "").strip()[:64]
    page = max(int_param("page", 1), 1)
    stmt = select(Finding)
    if status != "all":
        stmt = stmt.where(Finding.status == _choice(FindingStatus, status, "status"))
    if kind:
        stmt = stmt.where(Finding.kind == _choice(FindingKind, kind, "kind"))
    found = lookup(q) if q else None
    if found is not None:
        stmt = _search(stmt, q, found)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.session.scalars(stmt.order_by(exports.SEVERITY_ORDER, Finding.id)
                              .offset((page - 1) * FINDINGS_PAGE).limit(FINDINGS_PAGE)).all()
    counts: dict[FindingStatus, int] = dict(
        db.session.execute(select(Finding.status, func.count()).group_by(Finding.status)).tuples().all())
    pages = max((total + FINDINGS_PAGE - 1) // FINDINGS_PAGE, 1)
    return render("findings.html", findings=rows, status=status, kind=kind, kinds=list(FindingKind), q=q,
                  found=found, page=page, pages=pages, total=total, bulk_max=BULK_MAX,
                  counts={s.value: counts.get(s, 0) for s in FindingStatus})


@bp.post("/findings/decisions")
def bulk_decision() -> ResponseReturnValue:
    """One decision with one reason for several findings (``finding_id`` repeated), each audited.

    All or nothing: one transaction; an unknown id or a bad reason changes none.

    :raises InvalidDecision: no finding selected, more than :data:`BULK_MAX`, a blank or bad reason.
    :raises FindingNotFound: an id that is not a finding.
    """
    ids = sorted({_finding_id(v) for v in request.form.getlist("finding_id")})
    if not ids:
        raise InvalidDecision("select at least one finding", field="finding_id")
    if len(ids) > BULK_MAX:
        raise InvalidDecision(f"{len(ids)} findings selected; at most {BULK_MAX} at once", field="finding_id")
    status = _choice(FindingStatus, request.form.get("status", ""), "status")
    reason = _reason(request.form.get("reason", ""))
    session = db.write_session()
    for finding_id in ids:
        decide_finding(session, finding_id, g.auditor, status, reason)
    session.commit()
    back = request.form.get("back", "")
    if not back.startswith("/audit/findings") or back.startswith("//"):
        back = url_for("audit.findings")
    return redirect(back)


@bp.get("/findings/<finding_id>")
def finding(finding_id: str) -> ResponseReturnValue:
    """One finding with its evidence entries and decision form."""
    query_params()
    f = db.session.get(Finding, _finding_id(finding_id))
    if f is None:
        raise FindingNotFound(f"no finding {finding_id}")
    decider = db.session.get(Person, f.decided_by) if f.decided_by else None
    return render("finding.html", f=f, entries=evidence_entries(db.session, f), decider=decider,
                  EntryKind=EntryKind, set_aside=_set_aside(f), decline=decline_reason)


def _set_aside(f: Finding) -> list[dict[str, Any]]:
    """The evidence that never entered the journal: a conflict's newcomer, rejected entries.

    Each with its decoded claims (unverified, :func:`server.audit.entries.decode_entry`)
    and, for a conflict, the stored entry it collides with.
    """
    import json

    shas = [bytes.fromhex(h) for h in json.loads(f.evidence) if len(h) == 64]
    if not shas:
        return []
    out: list[dict[str, Any]] = []
    for c in db.session.scalars(select(JournalConflict).where(JournalConflict.entry_hash.in_(shas))):
        kept = db.session.scalars(select(JournalEntryRow).where(
            JournalEntryRow.entry_hash == c.existing_entry_hash)).one_or_none()
        out.append({"what": "conflict", "sha256": c.entry_hash.hex(), "received_at": c.received_at,
                    "entry": decode_entry(c.raw), "kept": decode_entry(kept.raw) if kept else None,
                    "kept_hash": c.existing_entry_hash.hex(), "reason": None})
    for r in db.session.scalars(select(RejectedEntry).where(RejectedEntry.raw_sha256.in_(shas))):
        out.append({"what": "rejected", "sha256": r.raw_sha256.hex(), "received_at": r.received_at,
                    "entry": decode_entry(r.raw), "kept": None, "kept_hash": None, "reason": r.reason})
    return out


#: Longest decision reason kept (characters): a sentence or a short paragraph, stored and audited.
REASON_MAX = 2000


def _reason(text: str) -> str:
    """The form's reason, refused when no database should hold it (as the JSON API refuses U+0000).

    :raises InvalidDecision: a NUL character (PostgreSQL text cannot store it: it was a 500) or
        more than :data:`REASON_MAX` characters after trimming.
    """
    if "\x00" in text:
        raise InvalidDecision("the reason contains a NUL character (U+0000)", field="reason")
    if len(text.strip()) > REASON_MAX:
        raise InvalidDecision(f"the reason has {len(text.strip())} characters; at most {REASON_MAX}",
                              field="reason")
    return text


@bp.post("/findings/<finding_id>/decision")
def decision(finding_id: str) -> ResponseReturnValue:
    """Confirm or dismiss with a reason (logged)."""
    session = db.write_session()
    decide_finding(session, _finding_id(finding_id), g.auditor,
                   _choice(FindingStatus, request.form.get("status", ""), "status"),
                   _reason(request.form.get("reason", "")))
    session.commit()
    return redirect(url_for("audit.finding", finding_id=_finding_id(finding_id)))


# ----------------------------------------------------------------------------- histories


def _taps(card_id: str) -> list[Any]:
    """Every entry of a card with the remaining entitlement after each redemption (SQL window SUM).

    Entries without a card id whose tag UID is the UID the card was issued on belong to the card's
    history too: a counter that could not read the identity (a clone failing PWD_AUTH or PACK,
    ``clone_check_failed``) journals only the UID the reader gave (issue 20). They are found through
    ``ix_journal_card_time``'s NULL range, not a scan of the journal.
    """
    j, bc, ce, ts = JournalEntryRow, BenefitCycle, CardEntitlement, TerminalSite
    uids = list(db.session.scalars(select(Card.tag_uid).where(Card.card_id == card_id)))
    mine = j.card_id == card_id
    if uids:
        mine = or_(mine, and_(j.card_id.is_(None), j.tag_uid.in_(uids)))
    redeemed = redemption_taken()
    spent = func.sum(case((redeemed, j.amount), else_=0)).over(
        partition_by=(j.programme, bc.cycle_id), order_by=(j.wall_time, j.terminal_id, j.seq))
    stmt = (select(j.entry_id, j.terminal_id, j.seq, j.kind, j.wall_time, j.programme, j.amount, j.raw,
                   j.slot_seq_before, j.slot_seq_after, j.ntag_counter, j.tag_uid, ts.region, bc.cycle_id,
                   ce.amount.label("entitled"), cast(spent, BigInteger).label("spent"))
            .select_from(j.__table__
                         .outerjoin(ts.__table__, ts.terminal_id == j.terminal_id)
                         .outerjoin(bc.__table__, and_(j.wall_time >= bc.starts_at, j.wall_time < bc.ends_at))
                         .outerjoin(ce.__table__, and_(ce.card_id == j.card_id, ce.programme == j.programme,
                                                       ce.cycle_id == bc.cycle_id)))
            .where(mine)
            .order_by(j.wall_time, j.terminal_id, j.seq).limit(CARD_TAPS))
    return list(db.session.execute(stmt).all())


def shown_cycle(cycle_ids: list[str], now: dt.datetime) -> str | None:
    """The cycle a card page shows the entitlement of: the running one, else the latest begun, else the first.

    :param cycle_ids: the card's entitlement cycles (``"20261"``: year and half).
    :param now: an aware instant.
    :returns: one of ``cycle_ids``, or None when it is empty.
    """
    from cardlib.records.claims import cycle_of

    if not cycle_ids:
        return None
    running = str(cycle_of(now))
    begun = [c for c in cycle_ids if c <= running]
    return max(begun) if begun else min(cycle_ids)


def _reissues(card_id: str) -> tuple[str | None, list[str], set[str]]:
    """The card a re-issued card replaces and the cards that replaced this one (signed issuance files).

    :returns: ``(replaced card id or None, replacing card ids, those of them the server has a record of)``.
    """
    replaces = db.session.scalar(select(Card.reissue_of).where(Card.card_id == card_id))
    replaced_by = list(db.session.scalars(select(Card.card_id).where(Card.reissue_of == card_id)
                                          .order_by(Card.issued_at, Card.card_id)))
    named = [c for c in (replaces, *replaced_by) if c]
    known = set(db.session.scalars(select(Card.card_id).where(Card.card_id.in_(named)))) if named else set()
    if named:
        known |= set(db.session.scalars(select(CardProfile.card_id).where(CardProfile.card_id.in_(named))))
    return replaces, replaced_by, known


@bp.get("/cards/<card_id>")
def card_page(card_id: str) -> ResponseReturnValue:
    """Card history: every tap, every terminal, remaining entitlement over time, its findings.

    :raises NotFound: nothing at all is known of ``card_id`` (no registry row, profile,
        entitlement, tap or finding): 404, not an empty page.
    """
    query_params()
    _path_id(card_id, "card")
    profile = db.session.get(CardProfile, card_id)
    entitlements = db.session.scalars(select(CardEntitlement).where(CardEntitlement.card_id == card_id)
                                      .order_by(CardEntitlement.cycle_id, CardEntitlement.programme)).all()
    card_findings = db.session.scalars(select(Finding).where(Finding.card_id == card_id)
                                       .order_by(Finding.id)).all()
    taps = _taps(card_id)
    issuance = db.session.scalars(select(Card).where(Card.card_id == card_id)).one_or_none()
    registered = issuance is not None
    pin_resets = card_pin_resets(db.session, card_id)
    if not (profile or entitlements or card_findings or taps or registered or pin_resets):
        raise NotFound(f"no card {card_id!r}")
    cycle = shown_cycle(sorted({e.cycle_id for e in entitlements}), dt.datetime.now(dt.UTC))
    replaces, replaced_by, known = _reissues(card_id)
    # the station's issued_at beside the file's arrival; a late one (backdated?) flagged (docs/security.md)
    late = None if issuance is None else late_days(issuance.issued_at, issuance.created_at,
                                                   float(current_app.config["ISSUANCE_LATE_AFTER"]))
    return render("card.html", card_id=card_id, profile=profile, taps=taps, entitlements=entitlements,
                  issuance=issuance, late_days=late,
                  pin_resets=pin_resets, shown_cycle=cycle, replaces=replaces, replaced_by=replaced_by,
                  known_cards=known, block=blocks_of(db.session, [card_id]).get(card_id),
                  findings=card_findings, EntryKind=EntryKind, redemption_kinds=REDEMPTION_KINDS,
                  decline=decline_reason, fallback=fallback_of)


@bp.get("/terminals/<terminal_id>")
def terminal_page(terminal_id: str) -> ResponseReturnValue:
    """Terminal history in seq order, :data:`PAGE` entries per page (``?after=<seq>``).

    :raises NotFound: not enrolled and nothing stored for ``terminal_id``.
    :raises BadRequest: ``after`` not a non-negative integer, or an unknown parameter.
    """
    query_params("after")
    _path_id(terminal_id, "terminal")
    after = int_param("after", 0)
    j = JournalEntryRow
    entries = db.session.execute(
        select(j.entry_id, j.seq, j.boot_id, j.kind, j.wall_time, j.received_at, j.card_id, j.tag_uid, j.programme,
               j.amount, j.clock_synced, j.raw)
        .where(j.terminal_id == terminal_id, j.seq > after).order_by(j.seq).limit(PAGE)).all()
    info = db.session.scalars(select(Terminal).where(Terminal.terminal_id == terminal_id)).one_or_none()
    site = db.session.get(TerminalSite, terminal_id)
    stats = db.session.execute(select(func.count(), func.min(j.seq), func.max(j.seq))
                               .where(j.terminal_id == terminal_id)).one()
    t_findings = db.session.scalars(select(Finding).where(Finding.terminal_id == terminal_id)
                                    .order_by(Finding.id)).all()
    if info is None and site is None and not stats[0] and not t_findings:
        raise NotFound(f"no terminal {terminal_id!r}")
    # An entry without a card id (a copy failing the copy check) names the card issued on its chip UID.
    unnamed = {bytes(e.tag_uid) for e in entries if not e.card_id and e.tag_uid}
    by_uid = dict(db.session.execute(select(Card.tag_uid, Card.card_id).where(Card.tag_uid.in_(unnamed))
                                     .order_by(Card.issued_at)).tuples().all()) if unnamed else {}
    return render("terminal.html", terminal_id=terminal_id, info=info, site=site, entries=entries, stats=stats,
                  findings=t_findings, next_after=entries[-1].seq if len(entries) == PAGE else None,
                  EntryKind=EntryKind, decline=decline_reason, fallback=fallback_of,
                  by_uid={bytes(k): v for k, v in by_uid.items()})


def region_totals() -> list[Any]:
    """Per region, cycle and programme: redemptions, distinct cards, total amount (one GROUP BY)."""
    j, ts, bc = JournalEntryRow, TerminalSite, BenefitCycle
    stmt = (select(ts.region, bc.cycle_id, j.programme,
                   func.count().label("redemptions"), func.count(func.distinct(j.card_id)).label("cards"),
                   cast(func.sum(j.amount), BigInteger).label("total"))
            .select_from(j.__table__.outerjoin(ts.__table__, ts.terminal_id == j.terminal_id)
                         .join(bc.__table__, and_(j.wall_time >= bc.starts_at, j.wall_time < bc.ends_at)))
            .where(redemption_taken())
            .group_by(ts.region, bc.cycle_id, j.programme)
            .order_by(bc.cycle_id, ts.region, j.programme))
    return list(db.session.execute(stmt).all())


@bp.get("/regions")
def regions() -> ResponseReturnValue:
    """Per-region totals per cycle."""
    query_params()
    return render("regions.html", rows=region_totals())


# ----------------------------------------------------------------------------- exports


def _stream(chunks: Any, fmt: str, name: str) -> Response:
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    resp = Response(stream_with_context(chunks), mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return resp


@bp.get("/export/findings.<fmt>")
def export_findings(fmt: str) -> ResponseReturnValue:
    """Findings as CSV or JSON (``?status=`` to filter)."""
    query_params("status")
    if fmt not in ("csv", "json"):
        raise FindingNotFound(f"no export format {fmt!r}")
    status = request.args.get("status")
    audit(db.write_session(), g.auditor, "export.findings", f"findings:{fmt}", status=status)
    db.session.commit()
    return _stream(exports.findings_export(db.session, fmt, _choice(FindingStatus, status, "status")
                                           if status else None), fmt,
                   "findings")


@bp.get("/export/journal.<fmt>")
def export_journal(fmt: str) -> ResponseReturnValue:
    """The raw journal (signed bytes base64) as CSV or JSON; ``?terminal_id=&card_id=&since=&until=``."""
    query_params("terminal_id", "card_id", "since", "until")
    if fmt not in ("csv", "json"):
        raise FindingNotFound(f"no export format {fmt!r}")
    filters = {"terminal_id": request.args.get("terminal_id") or None,
               "card_id": request.args.get("card_id") or None,
               "since": _aware(request.args.get("since")), "until": _aware(request.args.get("until"))}
    audit(db.write_session(), g.auditor, "export.journal", f"journal:{fmt}",
          **{k: v for k, v in filters.items() if v is not None})
    db.session.commit()
    from server.receipts import receipt_signer

    signer = receipt_signer(current_app) if fmt == "json" else None  # signs the header (filters, keys)
    return _stream(exports.journal_export(db.session, fmt, signer=signer, **filters), fmt, "journal")


@bp.get("/exports")
def exports_page() -> ResponseReturnValue:
    """Links and filters for the exports."""
    query_params()
    return render("exports.html")



from server.audit import block_views as _block_views  # noqa: E402, F401 - block/unblock a card, on bp
from server.audit import decline_views as _decline_views  # noqa: E402, F401 - copy attempts, households, terminals
from server.audit import grievance_views as _grievance_views  # noqa: E402, F401 - the grievance pages, on bp
from server.audit import settlement_views as _settlement_views  # noqa: E402, F401 - settled torn writes, on bp
