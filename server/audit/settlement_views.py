"""Auditor page for settled torn writes (docs/reconciliation.md §Settling torn writes), on the ``/audit`` blueprint.

- ``GET /audit/settlements?terminal_id=&card_id=&after=``: what reconciliation decided about each
  torn card write (taken or not taken), with the terminal, card, household, when, the deciding
  entry and the run; :data:`SETTLEMENTS_PAGE` a page, in decision order. Linked from the card
  and terminal pages with their filter set.

Imported by :mod:`server.audit.views` so the route is on its blueprint.
"""

from __future__ import annotations

from flask.typing import ResponseReturnValue

from server.audit.settled_writes import settled_writes
from server.audit.views import bp, render
from server.blueprints.settlements import id_filter
from server.extensions import db
from server.http import int_param, query_params

#: Settlements per page.
SETTLEMENTS_PAGE = 100


@bp.get("/settlements")
def settlements() -> ResponseReturnValue:
    """Settled torn writes, :data:`SETTLEMENTS_PAGE` a page (``?after=<id>``), filtered by terminal and/or card.

    :raises BadRequest: a malformed filter or ``after``, or an unknown query parameter.
    """
    query_params("terminal_id", "card_id", "after")
    terminal_id, card_id = id_filter("terminal_id"), id_filter("card_id")
    after = int_param("after", 0)
    rows = settled_writes(db.session, terminal_id=terminal_id, card_id=card_id, after=after,
                          limit=SETTLEMENTS_PAGE)
    return render("settlements.html", rows=rows, terminal_id=terminal_id or "", card_id=card_id or "",
                  after=after, next_after=rows[-1].id if len(rows) == SETTLEMENTS_PAGE else None)
