"""Checks across each household's cards: entitlement per household, claims on a card the household replaced.

A household is the pseudonymous ``household_ref`` of the card's issuer-signed identity record
(``card_profiles.household_ref``, filled by :mod:`server.registry` from the issuance file). A
re-issued card serves the same household, so its entitlement is the household's, not a new one:
the per-card check (:func:`server.reconcile.card_checks.entitlements_exceeded`) sees one package
of one on the lost card and one of one on its replacement, the household took two
(docs/reconciliation.md §Households).

Each check takes a read-only connection and returns observations in a deterministic order,
the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import BigInteger, and_, cast, distinct, func, or_, select
from sqlalchemy.engine import Connection

from server.households import redemption_taken
from server.models import Card
from server.reconcile.models import FindingKind, Severity
from server.reconcile.observations import Observation, ReconcileConfig, distinct_ids
from server.reconcile.scope import Scope, card_in, household_in
from server.reconcile.sql import REDEEMED, benefit_cycles, card_entitlements, card_profiles, journal

__all__ = ["claims_on_replaced_cards", "household_entitlements"]

_cards = Card.__table__


def _in_cycle() -> Any:
    return journal.join(card_profiles, card_profiles.c.card_id == journal.c.card_id).join(
        benefit_cycles,
        and_(journal.c.wall_time >= benefit_cycles.c.starts_at, journal.c.wall_time < benefit_cycles.c.ends_at),
    )


def household_entitlements(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Redemptions of one household on two or more cards above its entitlement, per programme and cycle.

    The household's entitlement in a cycle is the largest any of its cards carries for the
    programme (a re-issue carries the same ``per_cycle``; the cards are not added up). Only
    households whose redemptions in that programme and cycle span ≥ 2 cards are reported: one
    card over its own entitlement is ``entitlement_exceeded``. The finding names the newest card
    (the one the household holds) and lists every card in ``detail``.
    """
    if scope is not None and scope.counts[2] == 0:  # no touched household: nothing to read (or to build)
        return []
    hh = card_profiles.c.household_ref
    totals = (
        select(
            hh.label("household_ref"),
            journal.c.programme,
            benefit_cycles.c.cycle_id,
            cast(func.sum(journal.c.amount), BigInteger).label("total"),
        )
        .select_from(_in_cycle())
        .where(redemption_taken(journal), hh.is_not(None), *household_in(scope, hh))
        .group_by(hh, journal.c.programme, benefit_cycles.c.cycle_id)
        .having(func.count(distinct(journal.c.card_id)) > 1)
        .subquery()
    )
    entitled = (
        select(
            hh.label("household_ref"),
            card_entitlements.c.programme,
            card_entitlements.c.cycle_id,
            func.max(card_entitlements.c.amount).label("entitled"),
        )
        .select_from(card_entitlements.join(card_profiles, card_profiles.c.card_id == card_entitlements.c.card_id))
        .where(hh.is_not(None))
        .group_by(hh, card_entitlements.c.programme, card_entitlements.c.cycle_id)
        .subquery()
    )
    over = conn.execute(
        select(totals, entitled.c.entitled)
        .select_from(
            totals.join(
                entitled,
                and_(
                    entitled.c.household_ref == totals.c.household_ref,
                    entitled.c.programme == totals.c.programme,
                    entitled.c.cycle_id == totals.c.cycle_id,
                ),
            )
        )
        .where(totals.c.total > entitled.c.entitled)
        .order_by(totals.c.household_ref, totals.c.programme, totals.c.cycle_id)
    ).all()
    out = []
    for row in over:
        entries = conn.execute(
            select(journal.c.entry_id, journal.c.card_id, journal.c.amount, journal.c.wall_time)
            .select_from(_in_cycle())
            .where(
                redemption_taken(journal),
                hh == row.household_ref,
                journal.c.programme == row.programme,
                benefit_cycles.c.cycle_id == row.cycle_id,
            )
            .order_by(journal.c.wall_time, journal.c.terminal_id, journal.c.seq)
        ).all()
        per_card: dict[str, int] = defaultdict(int)
        for e in entries:
            per_card[e.card_id] += e.amount
        newest = entries[-1].card_id
        out.append(
            Observation(
                FindingKind.HOUSEHOLD_OVER_ENTITLEMENT,
                Severity.HIGH,
                f"{row.household_ref}|{row.programme}|{row.cycle_id}",
                f"household {row.household_ref}: {row.programme} in cycle {row.cycle_id}: {row.total} redeemed "
                f"of {row.entitled} across {len(per_card)} cards",
                distinct_ids(e.entry_id for e in entries)[: cfg.evidence_limit],
                card_id=newest,
                detail={
                    "household_ref": row.household_ref,
                    "programme": row.programme,
                    "cycle_id": row.cycle_id,
                    "entitled": row.entitled,
                    "total": row.total,
                    "cards": dict(sorted(per_card.items())),
                },
            )
        )
    return out


def claims_on_replaced_cards(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Redemptions on a card at or after a newer card of its household was issued.

    Newer: another ``issued`` card of the same ``household_ref`` with a later ``issued_at``
    (the issuance record's time). A re-issue also revokes the card it names, and a redemption
    after that revocation is already ``revoked_card_used``: only those before the card's
    revocation (or on a card never revoked: a second card issued without naming the first)
    are reported here.
    """
    if scope is not None and scope.counts[2] == 0:  # no touched card has a household
        return []
    mine, other = card_profiles.alias("mine"), card_profiles.alias("other")
    my_card, newer = _cards.alias("my_card"), _cards.alias("newer")
    rows = conn.execute(
        select(
            journal.c.card_id,
            journal.c.entry_id,
            mine.c.household_ref,
            func.min(newer.c.card_id).label("newer_card"),
            func.min(newer.c.issued_at).label("newer_at"),
        )
        .select_from(
            journal.join(mine, mine.c.card_id == journal.c.card_id)
            .join(my_card, my_card.c.card_id == journal.c.card_id)
            .join(other, and_(other.c.household_ref == mine.c.household_ref, other.c.card_id != mine.c.card_id))
            .join(newer, newer.c.card_id == other.c.card_id)
        )
        .where(
            REDEEMED,
            *card_in(scope, journal.c.card_id),
            mine.c.household_ref.is_not(None),
            newer.c.status == "issued",
            newer.c.issued_at > my_card.c.issued_at,
            journal.c.wall_time >= newer.c.issued_at,
            or_(mine.c.revoked_at.is_(None), journal.c.wall_time < mine.c.revoked_at),
        )
        .group_by(journal.c.card_id, journal.c.entry_id, mine.c.household_ref, journal.c.wall_time,
                  journal.c.terminal_id, journal.c.seq)
        .order_by(journal.c.card_id, journal.c.wall_time, journal.c.terminal_id, journal.c.seq)
    ).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[row.card_id].append(row)
    return [
        Observation(
            FindingKind.CLAIM_ON_REPLACED_CARD,
            Severity.HIGH,
            card_id,
            f"card {card_id}: {len(group)} redemption(s) after household {group[0].household_ref} "
            f"got card {group[0].newer_card}",
            distinct_ids(row.entry_id for row in group)[: cfg.evidence_limit],
            card_id=card_id,
            detail={
                "household_ref": group[0].household_ref,
                "newer_card": group[0].newer_card,
                "newer_issued_at": str(group[0].newer_at),
                "count": len(group),
            },
        )
        for card_id, group in groups.items()
    ]
