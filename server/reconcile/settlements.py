"""Settling torn card writes from the card's later states (docs/reconciliation.md §Settling torn writes).

A counter whose card write tore journals UNCERTAIN; when the card comes back it settles the
write itself from what the card holds (``cardlib.records.session.CardSession.recover``), unless
the card moved two or more states on elsewhere: then only the card's chain in the uploaded
journals can tell (``deferred``), and until it is told the counter counts the write in its
exposure. This module decides such writes and keeps the decision:

- an *open torn write* is a PENDING entry followed by an UNCERTAIN of the same terminal for the
  same new card state (``state_hash_new``), with no COMMIT, FINISHED or VOIDED of that terminal
  for it after (the terminal did not settle it itself) and no settlement yet;
- it **took effect** (``finished``) when an entry of the card (any terminal) read the torn state as
  the card's state: ``slot_seq_before`` = the write's ``slot_seq_after`` and ``state_hash_prev`` =
  its ``state_hash_new``;
- it **did not** (``voided``) when an entry of the card read another state at that slot seq, or
  a COMMIT/FINISHED of the card wrote another state with that slot seq;
- evidence both ways (a fork: a clone or a restored dump, which ``card_fork`` reports) or none
  leaves it open; the counter then releases it at the caps' stale age, as before.

Each decision is one row of ``write_settlements`` (migration 0016), written once and never
changed. The upload receipt (:func:`cardlib.records.statements.sign_receipt`, claim 6) carries the
settlements of the writes whose PENDING entry the request names, signed by the server receipt
key; that is how the counter learns them (``terminal.sync.SyncClient.settle_open_writes``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from cardlib.records.journal import EntryKind, JournalEntry
from cardlib.records.statements import Settlement, SettlementOutcome
from server.models import Base
from server.reconcile.scope import Scope
from server.reconcile.sql import built_once, journal, journal_scan
from server.types import UTCDateTime

__all__ = ["WriteSettlement", "receipt_settlements", "settle_torn_writes"]

log = logging.getLogger(__name__)

#: Most settlements one receipt carries (a request carries at most 2,000 entries anyway).
MAX_RECEIPT_SETTLEMENTS = 2000


class WriteSettlement(Base):
    """The server's decision on one torn card write, from the card's later states (written once).

    :ivar entry_id: the write's PENDING entry (``journal_entries.entry_id``).
    :ivar outcome: ``finished`` (took effect) or ``voided`` (did not), :class:`SettlementOutcome`.
    :ivar evidence_entry_id: the entry whose claims decided it (read the card's state at the write's slot seq).
    :ivar run_id: the reconciliation run that decided it.
    """

    __tablename__ = "write_settlements"
    __table_args__ = (
        CheckConstraint("outcome IN ('finished', 'voided')", name="ck_write_settlements_outcome"),
        Index("ix_write_settlements_terminal", "terminal_id", "seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entry_id: Mapped[bytes] = mapped_column(LargeBinary(16), ForeignKey("journal_entries.entry_id"), unique=True)
    terminal_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    card_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    evidence_entry_id: Mapped[bytes] = mapped_column(LargeBinary(16), ForeignKey("journal_entries.entry_id"))
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    settled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


_settlements = cast(Table, WriteSettlement.__table__)
_CLOSING = (int(EntryKind.COMMIT), int(EntryKind.FINISHED), int(EntryKind.VOIDED))
_WROTE = (int(EntryKind.COMMIT), int(EntryKind.FINISHED))


def _open_writes(scope: Scope | None) -> Any:
    """The statement :func:`settle_torn_writes` runs (of the scope's cards when ``scope`` is given); built once."""
    return built_once(("settle_torn_writes", scope is None), lambda: _build_open_writes(scope))


def _build_open_writes(scope: Scope | None) -> Any:
    p, c = journal.alias("p"), journal.alias("c")
    e1, e2 = journal.alias("e1"), journal.alias("e2")
    took = (
        select(e1.c.entry_id)
        .where(e1.c.card_id == p.c.card_id, e1.c.slot_seq_before == p.c.slot_seq_after,
               e1.c.state_hash_prev == p.c.state_hash_new)
        .order_by(e1.c.id).limit(1).scalar_subquery()
    )
    not_taken = (
        select(e2.c.entry_id)
        .where(e2.c.card_id == p.c.card_id, or_(
            and_(e2.c.slot_seq_before == p.c.slot_seq_after, e2.c.state_hash_prev != p.c.state_hash_new),
            and_(e2.c.kind.in_(_WROTE), e2.c.slot_seq_after == p.c.slot_seq_after,
                 e2.c.state_hash_new != p.c.state_hash_new),
        ))
        .order_by(e2.c.id).limit(1).scalar_subquery()
    )
    # Driven by the UNCERTAIN entries (rare: a tear or a restart mid-write; a full run reads them in one
    # table scan), grouped per write; every other look-up goes through the card (ix_journal_card_time).
    # A write's new state hash names it (its slot record signs the terminal and its seq), so the PENDING
    # and a closing entry are found by card and hash; their terminal is compared in Python, because a
    # terminal_id condition lets SQLite walk a whole terminal's chain on uq_journal_terminal_seq.
    # An incremental run reads the touched cards' entries from their copy (server.reconcile.scope: every
    # entry of those cards), not through ix_journal_card_time once per touched card.
    scan = journal_scan if scope is None else scope.entries
    torn = (
        select(scan.c.terminal_id, scan.c.card_id, scan.c.state_hash_new, func.max(scan.c.seq).label("last_seq"))
        .where(scan.c.kind == int(EntryKind.UNCERTAIN), scan.c.card_id.is_not(None),
               scan.c.state_hash_new.is_not(None))
        .group_by(scan.c.terminal_id, scan.c.card_id, scan.c.state_hash_new)
        .subquery("torn")
    )
    closed = (
        select(c.c.terminal_id)
        .where(c.c.card_id == p.c.card_id, c.c.state_hash_new == p.c.state_hash_new, c.c.kind.in_(_CLOSING))
        .limit(1).scalar_subquery()
    )
    return (
        select(p.c.entry_id, p.c.terminal_id, p.c.seq, p.c.card_id, torn.c.terminal_id.label("torn_terminal"),
               torn.c.last_seq, closed.label("closed_by"), took.label("took"), not_taken.label("not_taken"))
        .select_from(torn.join(p, and_(p.c.card_id == torn.c.card_id, p.c.state_hash_new == torn.c.state_hash_new,
                                       p.c.kind == int(EntryKind.PENDING))))
        .where(p.c.slot_seq_after.is_not(None), ~exists().where(_settlements.c.entry_id == p.c.entry_id))
        .order_by(p.c.id)
    )


def settle_torn_writes(conn: Connection, run_id: int | None, now: dt.datetime, scope: Scope | None = None) -> int:
    """Decide every open torn write the stored journal can decide and store the decisions.

    One statement finds the open torn writes (of the scope's cards in an incremental run: new
    evidence arrives as an entry of the card, which puts the card in the scope) with, for each,
    the first entry proving it took effect and the first proving it did not; the decided ones are
    inserted. Idempotent: a settled write is not open any more.

    :param run_id: the reconciliation run (``reconcile_runs.id``), kept on each row.
    :param now: aware UTC time stored as ``settled_at``.
    :param scope: an incremental run's touched keys; None reads every card.
    :returns: the number of writes settled now.
    """
    rows = conn.execute(_open_writes(scope)).all()
    decided = []
    for row in rows:
        if row.terminal_id != row.torn_terminal or row.seq >= row.last_seq or row.closed_by == row.terminal_id:
            continue  # not this terminal's PENDING of that UNCERTAIN, or the terminal closed the write itself
        if (row.took is None) == (row.not_taken is None):
            continue  # no evidence yet, or evidence both ways (a fork: card_fork reports it)
        outcome = SettlementOutcome.FINISHED if row.took is not None else SettlementOutcome.VOIDED
        decided.append({"entry_id": row.entry_id, "terminal_id": row.terminal_id, "seq": row.seq,
                        "card_id": row.card_id, "outcome": outcome.value,
                        "evidence_entry_id": row.took if row.took is not None else row.not_taken,
                        "run_id": run_id, "settled_at": now})
    if decided:
        conn.execute(insert(_settlements), decided)
        log.info("reconciliation settled %d torn card writes", len(decided))
    return len(decided)


def receipt_settlements(session: Session, terminal_id: str, entries: Iterable[JournalEntry]) -> list[Settlement]:
    """The settlements of ``terminal_id``'s writes whose PENDING entry is among ``entries``, in seq order.

    What an upload receipt carries (claim 6): a counter asks for a settlement by sending the
    write's PENDING entry again (a duplicate stores nothing), so a receipt answers only for
    entries of its own request and of its own terminal.

    :param entries: the request's verified entries (only PENDING ones are looked up).
    """
    ids: Sequence[bytes] = list(dict.fromkeys(e.entry_id for e in entries if e.kind is EntryKind.PENDING))
    if not ids:
        return []
    out: list[Settlement] = []
    for start in range(0, len(ids), 500):  # bound the IN list
        rows = session.execute(
            select(_settlements.c.entry_id, _settlements.c.seq, _settlements.c.outcome).where(
                _settlements.c.terminal_id == terminal_id, _settlements.c.entry_id.in_(ids[start:start + 500]))
        ).all()
        out += [Settlement(bytes(r.entry_id), int(r.seq), SettlementOutcome(r.outcome)) for r in rows]
    out.sort(key=lambda s: s.seq)
    return out[:MAX_RECEIPT_SETTLEMENTS]
