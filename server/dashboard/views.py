"""Blueprint ``/audit/programme``: the programme dashboard pages, its charts (SVG) and the pending-households CSV.

Under ``/audit`` so it shares the auditor view's session cookie (path ``/audit``),
``no-store`` and login; any role of :data:`server.audit.views.UI_ROLES` may read it.
Query parameters: ``cycle`` (a cycle id, default the running one), ``region`` (a
Kemendagri code prefix: a regency ``62.71`` shows its districts, a district its villages).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue

from server.audit import exports
from server.audit.i18n import cycle_name, translations
from server.audit.views import _lang, render, require_login
from server.audit.views import _server_error as audit_error
from server.auth import audit
from server.dashboard import charts, queries
from server.errors import BadRequest, NotFound, ServerError
from server.extensions import db
from server.http import int_param, query_params
from server.regions import REGENCIES, Level, level_of, parent, regency_of, region_name
from server.types import UTC

bp = Blueprint("dashboard", __name__, url_prefix="/audit/programme")

_REGION = re.compile(r"^62(\.\d{2}(\.\d{2}(\.\d{4})?)?)?$")
#: A benefit cycle id: year and half, ``20261`` (docs/api.md, the OpenAPI ``cycle`` pattern).
_CYCLE = re.compile(r"^[0-9]{4}[12]$")
#: CSV columns of the pending-households export.
#: ``card_ids``: the cards a counter still serves; ``blocked_card_ids``: ``id:denied`` / ``id:revoked``;
#: ``programme``: the ``?programme=`` asked (empty: any programme counts as collected);
#: ``household_label``: ``HB-XXXXXXXX`` as printed on cards and letters (:func:`pending_label`).
PENDING_FIELDS = ("household_ref", "household_label", "region", "regency", "card_ids", "blocked_card_ids", "cycle",
                  "programme")
#: Chart SVGs get their own policy: no script runs, pygal's inline styles apply.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"


@bp.before_request
def _login() -> ResponseReturnValue | None:
    return require_login(auditor_only=False)


@bp.errorhandler(ServerError)
def _server_error(exc: ServerError) -> ResponseReturnValue:
    return audit_error(exc)


def _cycle() -> queries.Cycle:
    """The ``?cycle=`` asked, else the running one.

    :raises BadRequest: not a cycle id (``20261``: year and half).
    :raises NotFound: unknown cycle, or none registered.
    """
    asked = request.args.get("cycle") or None
    if asked is not None and not _CYCLE.match(asked):
        raise BadRequest(f"cycle must be a cycle id like 20261 (year and half), not {asked[:20]!r}", field="cycle")
    try:
        return queries.current_cycle(db.session, asked)
    except queries.CycleNotFound as exc:
        raise NotFound(str(exc)) from exc


def _region() -> str | None:
    """The ``?region=`` code prefix (``62``, ``62.71``, ``62.71.01``), or ``None`` for the province.

    :raises BadRequest: not a Kalimantan Tengah code, or in no regency of it (``62.99``).
    """
    code = (request.args.get("region") or "").strip()
    if not code or code == "62":
        return None
    if not _REGION.match(code) or regency_of(code) not in REGENCIES:
        raise BadRequest(f"region must be a Kemendagri code in province 62 like 62.71, not {code[:20]!r}",
                         field="region")
    return code


def _child_level(region: str | None) -> Level:
    """The level one below ``region``: regencies for the province, districts in a regency..."""
    level = level_of(region) if region else None
    return {None: Level.REGENCY, Level.REGENCY: Level.DISTRICT}.get(level, Level.VILLAGE)


def _gettext() -> Callable[[str], str]:
    return translations(_lang()).gettext


@bp.get("/")
def overview() -> ResponseReturnValue:
    """Progress per region (one level below ``?region=``), per day, throughput and terminal health."""
    query_params("cycle", "region")
    region, cycle = _region(), _cycle()  # parameters checked (400) before the look-up (404)
    level = _child_level(region)
    rows = queries.progress(db.session, cycle, level, within=region)
    total = queries.totals(rows)
    days = queries.per_day(db.session, cycle, within=region)
    running, cumulative = 0, []
    for day, n in days:
        running += n
        cumulative.append((day, n, running))
    health = queries.terminal_health(db.session, within=region)
    stations = queries.stations(db.session) if not region else []  # a station has no region row
    return render("dashboard.html", cycle=cycle, cycles=queries.listed_cycles(db.session, cycle), region=region,
                  region_name=region_name, parent=parent(region) if region else None, level=level,
                  rows=rows, total=total, days=cumulative, amounts=queries.amounts(db.session, cycle, region),
                  throughput=queries.throughput(db.session, cycle, region), health=health, stations=stations,
                  health_counts={s: sum(1 for h in health if h.status == s) for s in ("ok", "stale", "offline",
                                                                                       "never")},
                  bundle_version=queries.newest_bundle_version(db.session), now=dt.datetime.now(UTC))


@bp.get("/charts/<name>.svg")
def chart(name: str) -> ResponseReturnValue:
    """One chart of the overview as SVG (``progress``, ``daily``, ``throughput``), in the page's language.

    :raises NotFound: another name.
    """
    query_params("cycle", "region", "lang")
    region, cycle = _region(), _cycle()  # parameters checked (400) before the look-up (404)
    _ = _gettext()
    where = region_name(region) if region else _("Kalimantan Tengah")
    if name == "progress":
        rows = queries.progress(db.session, cycle, _child_level(region), within=region)
        svg = charts.progress_chart(rows, collected=_("Collected"), pending=_("Not yet collected"),
                                    title=f"{_('Households per region')} · {where}")
    elif name == "daily":
        svg = charts.daily_chart(queries.per_day(db.session, cycle, within=region), daily=_("Households per day"),
                                 title=f"{_('Collection per day (WIB)')} · {cycle_name(cycle.cycle_id, _lang())}")
    elif name == "throughput":
        svg = charts.throughput_chart(queries.throughput(db.session, cycle, region),
                                      title=_("Households per hour, fastest counters"))
    else:
        raise NotFound(f"no chart {name!r}")
    resp = Response(svg, mimetype="image/svg+xml")
    resp.headers["Content-Security-Policy"] = SVG_CSP
    return resp


def _programme(cycle: queries.Cycle, offered: list[str]) -> str | None:
    """The ``?programme=`` asked (``None``: any programme counts as collected).

    :param offered: the cycle's programme codes (:func:`queries.programmes`).
    :raises BadRequest: a code no entitlement of the cycle names.
    """
    code = (request.args.get("programme") or "").strip()
    if not code:
        return None
    if code not in offered:
        raise BadRequest(f"programme must be one of {', '.join(offered) or 'none'} in cycle {cycle.cycle_id}, "
                         f"not {code[:20]!r}", field="programme")
    return code


def pending_label(p: queries.PendingHousehold) -> str:
    """The household label field workers know (``HB-`` + first 8 hex digits, as printed on cards and letters).

    :returns: ``HB-XXXXXXXX``, or ``""`` when the row's key is not a household reference (a card
        registered without one counts as its own household: the key is that card's id).
    """
    from cardlib.records.household_label import household_label
    from server.households import HOUSEHOLD_REF

    key = p.household
    if not HOUSEHOLD_REF.fullmatch(key) or key in p.card_ids or key in p.blocked:
        return ""
    return household_label(bytes.fromhex(key))


@bp.get("/pending")
def pending() -> ResponseReturnValue:
    """Households expected in the cycle that have not collected (``?programme=``: not that programme), in
    ``?region=``, :data:`queries.PAGE` a page; each with the cards to bring and its blocked/revoked ones."""
    query_params("cycle", "region", "page", "programme")
    region, cycle = _region(), _cycle()  # parameters checked (400) before the look-up (404)
    offered = queries.programmes(db.session, cycle)
    programme = _programme(cycle, offered)
    page = max(int_param("page", 1), 1)
    rows = queries.pending(db.session, cycle, region, offset=(page - 1) * queries.PAGE, limit=queries.PAGE + 1,
                           programme=programme)
    shown = rows[:queries.PAGE]
    labels = [pending_label(p) for p in shown]
    shared = {lb for lb in labels if lb and labels.count(lb) > 1}  # two households, one printed label: add the ref
    return render("pending.html", cycle=cycle, region=region, region_name=region_name, programme=programme,
                  programmes=offered, rows=shown, page=page, more=len(rows) > queries.PAGE,
                  first=(page - 1) * queries.PAGE, label=pending_label, shared_labels=shared)


@bp.get("/export/pending.csv")
def export_pending() -> ResponseReturnValue:
    """Every pending household of ``?region=`` (``?programme=``: not collected that programme) as CSV for field
    workers (audited)."""
    query_params("cycle", "region", "programme")
    region, cycle = _region(), _cycle()  # parameters checked (400) before the look-up (404)
    programme = _programme(cycle, queries.programmes(db.session, cycle))
    audit(db.write_session(), g.person, "export.pending", f"pending:{cycle.cycle_id}", region=region,
          **({"programme": programme} if programme else {}))
    db.session.commit()
    records = ({"household_ref": p.household, "household_label": pending_label(p), "region": p.region,
                "regency": region_name(p.region[:5]) if p.region else "", "card_ids": " ".join(p.card_ids),
                "blocked_card_ids": " ".join(f"{c}:{why}" for c, why in sorted(p.blocked.items())),
                "cycle": cycle.cycle_id, "programme": programme or ""}
               for p in queries.iter_pending(db.session, cycle, region, programme))
    resp = Response(stream_with_context(exports.to_csv(records, PENDING_FIELDS)), mimetype="text/csv")
    name = f"belum-ambil-{cycle.cycle_id}-{region or '62'}{'-' + programme if programme else ''}"
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return resp


def chart_url(name: str, **args: Any) -> str:
    """URL of a chart with the page's cycle, region and language."""
    return url_for("dashboard.chart", name=name, **{k: v for k, v in args.items() if v})
