"""Settled torn writes for auditors: what reconciliation decided about each (no Flask).

A row of ``write_settlements`` (:class:`server.reconcile.settlements.WriteSettlement`,
docs/reconciliation.md §Settling torn writes) with what an auditor needs beside it: the
write's programme, amount and time (its PENDING entry), the card's household, the entry that
decided it and the reconciliation run that did. Read by the auditor page
(``/audit/settlements``) and the API (``GET /api/v1/settlements``), one query for both.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from server.models import JournalEntryRow
from server.reconcile.models import CardProfile, ReconcileRun
from server.reconcile.settlements import WriteSettlement

__all__ = ["MAX_LIMIT", "SettledWrite", "settled_writes"]

#: Most rows one call returns.
MAX_LIMIT = 500

_journal = cast(Table, JournalEntryRow.__table__)
_ws = cast(Table, WriteSettlement.__table__)
_profiles = cast(Table, CardProfile.__table__)
_runs = cast(Table, ReconcileRun.__table__)


@dataclass(frozen=True)
class SettledWrite:
    """One settled torn write.

    :ivar id: the settlement's row id (the page key: ``after``).
    :ivar taken: True when the write took effect (``finished``), False when it did not (``voided``).
    :ivar entry_id: the write's PENDING entry, 32 hex digits; ``seq`` its seq on ``terminal_id``.
    :ivar wall_time: the PENDING entry's time (aware UTC), ``programme`` and ``amount`` its claims.
    :ivar household_ref: the card's household (16 hex digits), or None when no issuance names the card.
    :ivar evidence_terminal_id, evidence_seq: the entry that decided it (it read the card's state).
    :ivar run_id: the reconciliation run that decided it; ``run_started_at`` its start (aware UTC).
    :ivar settled_at: when it was decided (aware UTC).
    """

    id: int
    taken: bool
    terminal_id: str
    seq: int
    card_id: str
    household_ref: str | None
    entry_id: str
    programme: str | None
    amount: int | None
    wall_time: dt.datetime | None
    evidence_terminal_id: str | None
    evidence_seq: int | None
    run_id: int | None
    run_started_at: dt.datetime | None
    settled_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """The API's shape: times as ISO 8601, ``outcome`` ``taken`` or ``not_taken``."""
        return {
            "id": self.id, "outcome": "taken" if self.taken else "not_taken", "terminal_id": self.terminal_id,
            "seq": self.seq, "card_id": self.card_id, "household_ref": self.household_ref,
            "entry_id": self.entry_id, "programme": self.programme, "amount": self.amount,
            "wall_time": self.wall_time.isoformat() if self.wall_time else None,
            "evidence": ({"terminal_id": self.evidence_terminal_id, "seq": self.evidence_seq}
                         if self.evidence_terminal_id is not None else None),
            "run_id": self.run_id,
            "run_started_at": self.run_started_at.isoformat() if self.run_started_at else None,
            "settled_at": self.settled_at.isoformat(),
        }


def settled_writes(session: Session, *, terminal_id: str | None = None, card_id: str | None = None,
                   after: int = 0, limit: int = 100) -> list[SettledWrite]:
    """Settlements in decision order (row id), after row ``after``, at most ``limit``.

    :param terminal_id: only writes of this terminal (the torn write's, not the evidence's).
    :param card_id: only writes to this card.
    :param limit: 1 .. :data:`MAX_LIMIT`.
    :raises ValueError: ``limit`` out of range or ``after`` negative.
    """
    if not 1 <= limit <= MAX_LIMIT or after < 0:
        raise ValueError(f"limit must be 1..{MAX_LIMIT} and after >= 0")
    p, ev = _journal.alias("pending"), _journal.alias("evidence")
    stmt = (
        select(_ws.c.id, _ws.c.outcome, _ws.c.terminal_id, _ws.c.seq, _ws.c.card_id, _ws.c.entry_id,
               _ws.c.run_id, _ws.c.settled_at, _profiles.c.household_ref, p.c.programme, p.c.amount,
               p.c.wall_time, ev.c.terminal_id.label("evidence_terminal_id"), ev.c.seq.label("evidence_seq"),
               _runs.c.started_at.label("run_started_at"))
        .select_from(_ws.outerjoin(p, p.c.entry_id == _ws.c.entry_id)
                     .outerjoin(ev, ev.c.entry_id == _ws.c.evidence_entry_id)
                     .outerjoin(_profiles, _profiles.c.card_id == _ws.c.card_id)
                     .outerjoin(_runs, _runs.c.id == _ws.c.run_id))
        .where(_ws.c.id > after)
        .order_by(_ws.c.id).limit(limit)
    )
    if terminal_id is not None:
        stmt = stmt.where(_ws.c.terminal_id == terminal_id)
    if card_id is not None:
        stmt = stmt.where(_ws.c.card_id == card_id)
    return [SettledWrite(int(r.id), r.outcome == "finished", r.terminal_id, int(r.seq), r.card_id, r.household_ref,
                         bytes(r.entry_id).hex(), r.programme, r.amount, r.wall_time, r.evidence_terminal_id,
                         r.evidence_seq, r.run_id, r.run_started_at, r.settled_at)
            for r in session.execute(stmt)]
