"""A household as the server knows it: its cards, remaining entitlement this cycle, last taps (no Flask routes).

The household is the pseudonymous ``household_ref`` of its cards' identity records
(``card_profiles.household_ref``, from registered issuance files). Its remaining entitlement
per programme in a cycle is the largest entitlement any of its cards carries for that cycle
minus everything taken (:func:`redemption_taken`) on any of its cards in the cycle's bounds, never
below 0: what a re-issued card may carry (:func:`balance_statement`, docs/keys-and-provisioning.md
"Re-issuing a lost card").

:func:`redemption_taken` is the one definition of "a redemption taken" for every server total:
the household view and statement here, the per-card and per-household entitlement checks
(:mod:`server.reconcile.card_checks`, :mod:`server.reconcile.household_checks`), the auditor's
card page and region totals and the programme dashboard.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FromClause

from cardlib.keys.signer import Signer
from cardlib.records.balance import sign_balance
from cardlib.records.claims import cycle_bounds, cycle_of
from cardlib.records.journal import EntryKind
from server.models import Card, JournalEntryRow
from server.reconcile.models import CardEntitlement, CardProfile
from server.reconcile.observations import REDEMPTION_KINDS
from server.reconcile.settlements import WriteSettlement
from server.registry import ISSUANCE_LATE_AFTER_S, late_days
from server.types import UTC

__all__ = ["HOUSEHOLD_REF", "HouseholdView", "ProgrammeBalance", "balance_statement", "household",
           "redemption_taken", "settled_taken_ids"]

#: A household ref as the API and CLI take it: 16 lower-case hex digits.
HOUSEHOLD_REF = re.compile(r"[0-9a-f]{16}")
#: Seconds a balance statement stays usable by the provisioning station (the re-issue is done the same day).
STATEMENT_VALID_S = 24 * 3600

_journal = cast(Table, JournalEntryRow.__table__)
_settlements = cast(Table, WriteSettlement.__table__)
_WROTE = (int(EntryKind.COMMIT), int(EntryKind.FINISHED))


def settled_taken_ids() -> Any:
    """``SELECT entry_id``: the PENDING entries of torn writes reconciliation settled as taken (``finished``).

    Leaves out a write its own terminal closed later after all (a COMMIT or FINISHED for the
    same card and new state, uploaded after the settlement): that entry is counted itself.
    Not correlated with the outer statement: the database evaluates it once (a few rows).
    """
    p, c = _journal.alias("settled_pending"), _journal.alias("settled_closing")
    closed = exists().where(c.c.card_id == p.c.card_id, c.c.state_hash_new == p.c.state_hash_new,
                            c.c.kind.in_(_WROTE))
    return (select(_settlements.c.entry_id)
            .select_from(_settlements.join(p, p.c.entry_id == _settlements.c.entry_id))
            .where(_settlements.c.outcome == "finished", ~closed)
            .correlate(None))


def redemption_taken(j: FromClause | type[JournalEntryRow] = JournalEntryRow) -> ColumnElement[bool]:
    """SQL condition: this journal entry took a benefit from the card (its ``amount`` of ``programme``).

    A COMMIT, FINISHED or FALLBACK entry (:data:`~server.reconcile.observations.REDEMPTION_KINDS`), or
    the PENDING entry of a torn write that reconciliation settled as taken (``write_settlements``,
    docs/reconciliation.md §Settling torn writes; :func:`settled_taken_ids`).

    :param j: ``journal_entries``: the ORM class, the table or an alias of it (e.g. the reconcile
        checks' ``journal_scan``).
    """
    cols: Any = j if isinstance(j, type) else j.c
    return or_(cols.kind.in_(REDEMPTION_KINDS),
               and_(cols.kind == int(EntryKind.PENDING), cols.entry_id.in_(settled_taken_ids())))


@dataclass(frozen=True)
class ProgrammeBalance:
    """One programme in one cycle: ``entitled`` and ``redeemed`` across the household's cards, in ``unit``."""

    programme_id: int
    programme: str
    unit: str | None
    entitled: int
    redeemed: int

    @property
    def remaining(self) -> int:
        """What the household may still redeem (never below 0)."""
        return max(0, self.entitled - self.redeemed)


@dataclass(frozen=True)
class HouseholdView:
    """What the server knows of one household: ``cards`` (dicts, oldest first), ``balances`` this cycle, taps."""

    household_ref: str
    cycle: int
    cards: list[dict[str, object]]
    balances: list[ProgrammeBalance]
    last_taps: list[dict[str, object]]


def household(session: Session, ref: str, now: dt.datetime, taps: int = 10,
              late_after_s: float = ISSUANCE_LATE_AFTER_S) -> HouseholdView | None:
    """The household ``ref`` at ``now`` (aware), or None when no registered card serves it.

    :param ref: 16 hex digits. :param taps: most recent journal entries returned.
    :param late_after_s: a card's ``received_late`` is true when its issuance file reached the server
        more than this many seconds after its ``issued_at`` (setting ``ISSUANCE_LATE_AFTER``).
    """
    profiles = {p.card_id: p for p in session.scalars(select(CardProfile).where(CardProfile.household_ref == ref))}
    if not profiles:
        return None
    registry = {c.card_id: c for c in session.scalars(select(Card).where(Card.card_id.in_(profiles)))}
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    cards: list[dict[str, object]] = [{
        "card_id": card_id,
        "issued_at": registry[card_id].issued_at.isoformat() if card_id in registry else None,
        "received_at": registry[card_id].created_at.isoformat() if card_id in registry else None,
        "received_late": card_id in registry and late_days(registry[card_id].issued_at, registry[card_id].created_at,
                                                           late_after_s) is not None,
        "status": registry[card_id].status if card_id in registry else None,
        "reissue_of": registry[card_id].reissue_of if card_id in registry else None,
        "revoked_at": p.revoked_at.isoformat() if p.revoked_at else None,
        "revoke_reason": p.revoke_reason,
    } for card_id, p in sorted(profiles.items(), key=lambda kv: (
        registry[kv[0]].issued_at if kv[0] in registry else epoch, kv[0]))]
    cycle = cycle_of(now)
    start, end = (b.astimezone(UTC) for b in cycle_bounds(cycle))
    entitled = session.execute(
        select(CardEntitlement.programme_id, CardEntitlement.programme, func.max(CardEntitlement.unit),
               func.max(CardEntitlement.amount))
        .where(CardEntitlement.card_id.in_(profiles), CardEntitlement.cycle_id == str(cycle),
               CardEntitlement.programme_id.is_not(None))
        .group_by(CardEntitlement.programme_id, CardEntitlement.programme)
        .order_by(CardEntitlement.programme_id)).all()
    redeemed = dict(session.execute(
        select(JournalEntryRow.programme, func.sum(JournalEntryRow.amount))
        .where(JournalEntryRow.card_id.in_(profiles), redemption_taken(),
               JournalEntryRow.wall_time >= start, JournalEntryRow.wall_time < end)
        .group_by(JournalEntryRow.programme)).tuples().all())
    balances = [ProgrammeBalance(int(pid), name, unit, int(amount), int(redeemed.get(name) or 0))
                for pid, name, unit, amount in entitled]
    rows = session.scalars(select(JournalEntryRow).where(JournalEntryRow.card_id.in_(profiles))
                           .order_by(JournalEntryRow.wall_time.desc(), JournalEntryRow.terminal_id,
                                     JournalEntryRow.seq.desc()).limit(taps))
    last: list[dict[str, object]] = [
        {"card_id": r.card_id, "terminal_id": r.terminal_id, "seq": r.seq, "wall_time": r.wall_time.isoformat(),
         "kind": EntryKind(r.kind).name.lower() if r.kind in set(EntryKind) else str(r.kind),
         "programme": r.programme, "amount": r.amount, "decline_reason": r.decline_reason} for r in rows]
    return HouseholdView(ref, cycle, cards, balances, last)


def balance_statement(session: Session, signer: Signer, ref: str, reissue_of: str | None,
                      now: dt.datetime) -> tuple[HouseholdView, bytes]:
    """The signed balance statement a re-issue of ``reissue_of`` for household ``ref`` takes.

    :param signer: the server receipt key (:func:`server.receipts.receipt_signer`).
    :param reissue_of: 16 hex digits, a card of this household; or None (a statement of the balance only).
    :returns: the household and the COSE_Sign1 bytes (:func:`cardlib.records.balance.sign_balance`).
    :raises LookupError: no such household, or ``reissue_of`` is not one of its cards.
    """
    h = household(session, ref, now)
    if h is None:
        raise LookupError(f"no registered card serves household {ref}")
    if reissue_of is not None and reissue_of not in {c["card_id"] for c in h.cards}:
        raise LookupError(f"card {reissue_of} does not serve household {ref}")
    message = sign_balance(signer, bytes.fromhex(ref), h.cycle, {b.programme_id: b.remaining for b in h.balances},
                           now.timestamp(), STATEMENT_VALID_S, bytes.fromhex(reissue_of) if reissue_of else None,
                           [bytes.fromhex(str(c["card_id"])) for c in h.cards])
    return h, message
