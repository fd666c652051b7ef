"""Card states written by a revoked (or compromised) terminal key (issue 20; docs/reconciliation.md §Revoked keys).

Counters keep serving a card whose newest state a terminal wrote before its key was revoked
(docs/security.md "Revocation that does not exclude"), under the tightest limits. These two
checks show the auditor, per card, what that rule let through and what it must not have:

- ``revoked_key_state``: the key wrote a card state at or after its revocation instant ``E``
  (``terminal_sites.compromised_from``, else ``terminals.decided_at`` of a revoked terminal):
  its entry's signed wall time is ``>= E``, or the state is *backdated*: its predecessor on the
  card (the redemption whose ``state_hash_new`` is its ``state_hash_prev``) was written at or
  after ``E``, so it was written later than its signed time says.
- ``revoked_state_built_on``: a redemption at another terminal at or after ``E`` read a state
  the key wrote (its ``state_hash_prev`` is that state's ``state_hash_new``): the card left the
  revoked key behind there. Low severity when the state was written before ``E`` (the rule as
  designed), high when it was written at or after ``E`` (that counter should have declined it).

Both start from the few suspect terminals (like ``revoked_terminal_used``) and look a card's
entries up through ``ix_journal_card_time``; they depend on the revocation instants, which change
without a new entry, so an incremental run re-examines them whole (their kinds are global).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, union
from sqlalchemy.engine import Connection

from server.models import TerminalStatus
from server.reconcile.models import FindingKind, Severity
from server.reconcile.observations import REDEMPTION_KINDS, Observation, ReconcileConfig, distinct_ids
from server.reconcile.sql import built_once, journal, terminal_sites, terminals

__all__ = ["revoked_key_states", "revoked_states_built_on"]


def _suspects() -> Any:
    """Subquery ``(terminal_id, revoked_from)``: terminals with a revocation or compromise instant."""
    revoked_at = case((terminals.c.status == TerminalStatus.REVOKED.value, terminals.c.decided_at), else_=None)
    revoked_from = func.coalesce(terminal_sites.c.compromised_from, revoked_at)
    return (
        select(terminals.c.terminal_id, revoked_from.label("revoked_from"))
        .select_from(terminals.outerjoin(terminal_sites, terminal_sites.c.terminal_id == terminals.c.terminal_id))
        .where(revoked_from.is_not(None))
        .subquery("suspects")
    )


def _suspect_ids() -> Any:
    """Revoked or compromised terminals, for ``terminal_id IN``: the database starts from them, not the journal."""
    return union(select(terminals.c.terminal_id).where(terminals.c.status == TerminalStatus.REVOKED.value),
                 select(terminal_sites.c.terminal_id).where(terminal_sites.c.compromised_from.is_not(None)))


def _written(w: Any) -> Any:
    """A redemption entry that wrote a card state."""
    return and_(w.c.kind.in_(REDEMPTION_KINDS), w.c.card_id.is_not(None), w.c.state_hash_new.is_not(None))


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def revoked_key_states(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Card states a revoked key wrote at or after its revocation instant (signed then, or backdated).

    One observation per (card, terminal): evidence the states' entries and, for a backdated
    one, the predecessor entry that proves it; ``detail.backdated`` counts the backdated states.
    """
    def build() -> Any:
        w, p = journal.alias("w"), journal.alias("p")
        s = _suspects()
        pred = and_(p.c.card_id == w.c.card_id, p.c.state_hash_new == w.c.state_hash_prev,
                    p.c.kind.in_(REDEMPTION_KINDS), p.c.wall_time >= s.c.revoked_from)
        return (
            select(w.c.card_id, w.c.terminal_id, w.c.seq, w.c.entry_id, w.c.wall_time, s.c.revoked_from,
                   p.c.entry_id.label("pred_id"), p.c.wall_time.label("pred_time"))
            .select_from(w.join(s, s.c.terminal_id == w.c.terminal_id).outerjoin(p, pred))
            .where(_written(w), or_(w.c.wall_time >= s.c.revoked_from, p.c.id.is_not(None)),
                   w.c.terminal_id.in_(_suspect_ids()))
            .order_by(w.c.card_id, w.c.terminal_id, w.c.seq, p.c.id)
        )

    rows = conn.execute(built_once(("revoked_key_states",), build)).all()
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.card_id, row.terminal_id)].append(row)
    out = []
    for (card_id, terminal_id), group in groups.items():
        backdated = {row.entry_id for row in group if row.wall_time < row.revoked_from}
        states = distinct_ids(row.entry_id for row in group)
        out.append(Observation(
            FindingKind.REVOKED_KEY_STATE,
            Severity.CRITICAL,
            f"{card_id}|{terminal_id}",
            f"card {card_id}: {len(states)} state(s) written by terminal {terminal_id}'s key at or after its revocation"
            + (f" ({len(backdated)} backdated)" if backdated else ""),
            distinct_ids([*states, *(row.pred_id for row in group)])[: cfg.evidence_limit],
            card_id=card_id,
            terminal_id=terminal_id,
            detail={"count": len(states), "backdated": len(backdated), "first_seq": group[0].seq,
                    "revoked_from": _iso(group[0].revoked_from)},
        ))
    return out


def revoked_states_built_on(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Redemptions at other terminals, at or after the revocation instant, that read a state of a revoked key.

    One observation per state read (card, writing entry): evidence the writing entry then the
    reading ones; severity high when that state was itself written at or after the instant
    (by its signed time or backdated, as :func:`revoked_key_states` decides), else low.
    """
    def build() -> Any:
        w, r, p = journal.alias("w"), journal.alias("r"), journal.alias("p")
        s = _suspects()
        after = or_(
            w.c.wall_time >= s.c.revoked_from,
            exists().where(p.c.card_id == w.c.card_id, p.c.state_hash_new == w.c.state_hash_prev,
                           p.c.kind.in_(REDEMPTION_KINDS), p.c.wall_time >= s.c.revoked_from),
        )
        read = and_(r.c.card_id == w.c.card_id, r.c.state_hash_prev == w.c.state_hash_new,
                    r.c.kind.in_(REDEMPTION_KINDS), r.c.terminal_id != w.c.terminal_id,
                    r.c.wall_time >= s.c.revoked_from)
        return (
            select(w.c.card_id, w.c.terminal_id, w.c.seq, w.c.entry_id, s.c.revoked_from, after.label("after"),
                   r.c.entry_id.label("reader_id"), r.c.terminal_id.label("reader"))
            .select_from(w.join(s, s.c.terminal_id == w.c.terminal_id).join(r, read))
            .where(_written(w), w.c.terminal_id.in_(_suspect_ids()))
            .order_by(w.c.card_id, w.c.terminal_id, w.c.seq, r.c.wall_time, r.c.terminal_id, r.c.seq)
        )

    rows = conn.execute(built_once(("revoked_states_built_on",), build)).all()
    groups: dict[bytes, list[Any]] = defaultdict(list)
    for row in rows:
        groups[row.entry_id].append(row)
    out = []
    for entry_id, group in groups.items():
        first = group[0]
        late = bool(first.after)
        readers = sorted({row.reader for row in group})
        out.append(Observation(
            FindingKind.REVOKED_STATE_BUILT_ON,
            Severity.HIGH if late else Severity.LOW,
            f"{first.card_id}|{entry_id.hex()}",
            f"card {first.card_id}: a state by revoked terminal {first.terminal_id} "
            f"({'written after' if late else 'written before'} its revocation) served at {', '.join(readers)}",
            distinct_ids([entry_id, *(row.reader_id for row in group)])[: cfg.evidence_limit],
            card_id=first.card_id,
            terminal_id=first.terminal_id,
            detail={"seq": first.seq, "readers": readers, "state_after_revocation": late,
                    "revoked_from": _iso(first.revoked_from)},
        ))
    return out
