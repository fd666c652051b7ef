"""Checks across each card's redemptions: forks, rollbacks, counters, slot gaps, entitlements, revocation, travel.

A `secure` card's entries carry no tag UID and the transaction counter its INTERNAL AUTHENTICATE
signed in the NFC counter claim (docs/secure-card.md §5.1): :func:`secure_card_counters`.

Each check takes a read-only connection and returns :class:`~server.reconcile.observations.Observation`
objects in a deterministic order (the SQL's ORDER BY); :func:`server.reconcile.engine.observe` runs them.
The card's slot states and NTAG counter are docs/design.md §Tap sequence.
"""

from __future__ import annotations

import math
import typing
from collections import defaultdict
from typing import Any

from sqlalchemy import BigInteger, Float, Table, and_, bindparam, cast, distinct, exists, func, or_, select, union
from sqlalchemy.engine import Connection

from cardlib.records.journal import EntryKind
from server.households import redemption_taken
from server.models import CardBlock, Person
from server.reconcile.models import FindingKind, Severity
from server.reconcile.observations import KM_PER_DEG_LAT, REDEMPTION_KINDS, Observation, ReconcileConfig, distinct_ids
from server.reconcile.scope import Scope
from server.reconcile.sql import (
    REDEEMED,
    benefit_cycles,
    built_once,
    card_entitlements,
    card_profiles,
    epoch_s,
    journal,
    journal_scan,
    terminal_sites,
)

__all__ = [
    "blocked_cards_used",
    "card_forks",
    "card_order",
    "entitlements_exceeded",
    "impossible_travel",
    "revoked_cards_used",
    "secure_card_counters",
]

#: Entries a tap opens with: one INTERNAL AUTHENTICATE each, so one counter value each (docs/secure-card.md §5.1).
#: COMMIT, UNCERTAIN, FINISHED and VOIDED repeat their PENDING's counter.
_TAP_OPENING_KINDS = (int(EntryKind.PENDING), int(EntryKind.BALANCE), int(EntryKind.DECLINED))


def _scan(scope: Scope | None) -> Any:
    """:data:`~server.reconcile.sql.journal_scan` for a full run; for an incremental one the touched cards' entries.

    Those are ``scope.entries`` (:class:`~server.reconcile.scope.Scope`): copied from the journal once per
    run and read by every card check, so no card check filters them by card again.
    """
    return journal_scan if scope is None else scope.entries


def _redeemed(table: Any) -> Any:
    """:data:`~server.reconcile.sql.REDEEMED` over ``table`` (an alias of the journal)."""
    return and_(table.c.kind.in_(REDEMPTION_KINDS), table.c.card_id.is_not(None))


def card_forks(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """One previous state with ≥ 2 successors, or one slot seq with ≥ 2 states (clone or replay)."""
    def build() -> Any:
        js = _scan(scope)  # whole cards: the touched ones in an incremental run (server.reconcile.scope)
        by_prev = (
            select(js.c.card_id, js.c.state_hash_prev)
            .where(_redeemed(js))
            .group_by(js.c.card_id, js.c.state_hash_prev)
            .having(func.count(distinct(js.c.state_hash_new)) > 1)
            .subquery()
        )
        by_seq = (
            select(js.c.card_id, js.c.slot_seq_after)
            .where(_redeemed(js))
            .group_by(js.c.card_id, js.c.slot_seq_after)
            .having(func.count(distinct(js.c.state_hash_new)) > 1)
            .subquery()
        )
        columns = (
            journal.c.card_id,
            journal.c.entry_id,
            journal.c.terminal_id,
            journal.c.seq,
            journal.c.wall_time,
            journal.c.slot_seq_before,
            journal.c.slot_seq_after,
            journal.c.state_hash_prev,
        )
        forked = union(
            select(*columns)
            .select_from(
                journal.join(
                    by_prev,
                    and_(by_prev.c.card_id == journal.c.card_id,
                         by_prev.c.state_hash_prev == journal.c.state_hash_prev),
                )
            )
            .where(REDEEMED),
            select(*columns)
            .select_from(
                journal.join(
                    by_seq,
                    and_(by_seq.c.card_id == journal.c.card_id, by_seq.c.slot_seq_after == journal.c.slot_seq_after),
                )
            )
            .where(REDEEMED),
        ).subquery()
        return select(forked).order_by(forked.c.card_id, forked.c.slot_seq_before, forked.c.wall_time,
                                       forked.c.terminal_id)

    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(built_once(("card_forks", scope is None), build)):
        groups[row.card_id].append(row)
    out = []
    for card_id, group in groups.items():
        points = sorted({row.slot_seq_before for row in group if row.slot_seq_before is not None})
        out.append(
            Observation(
                FindingKind.CARD_FORK,
                Severity.CRITICAL,
                card_id,
                f"card {card_id}: slot state forked at seq {', '.join(map(str, points))} "
                f"({len(group)} redemptions at {len({row.terminal_id for row in group})} terminals) — clone or replay",
                distinct_ids(row.entry_id for row in group)[: cfg.evidence_limit],
                card_id=card_id,
                detail={"fork_seqs": points, "terminals": sorted({row.terminal_id for row in group}),
                        "redemptions": len(group)},
            )
        )
    return out


def _chip_window(js: Any, order_by: tuple[Any, ...], columns: tuple[Any, ...], lagged: dict[str, Any],
                 where: tuple[Any, ...]) -> Any:
    """Subquery of one chip's taps in ``order_by`` order: ``columns`` and, per ``lagged`` label, ``LAG(column)``.

    The window is ``PARTITION BY card_id, tag_uid``: a clone carries the card's signed identity, so
    both chips share the card id (keying by card id also keeps the window shard-local on Citus).
    ``js`` is the entries read (:func:`_scan`), ``where`` the rows' conditions.
    """
    by: dict[str, Any] = {"partition_by": (js.c.card_id, js.c.tag_uid), "order_by": order_by}
    return (
        select(*columns, *(func.lag(column).over(**by).label(label) for label, column in lagged.items()))
        .where(*where)
        .subquery()
    )


def card_order(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Rollback (by NTAG counter), counter backwards (by time) and slot-seq gaps."""
    def build() -> tuple[Any, Any, Any]:
        js = _scan(scope)  # whole cards: the touched ones in an incremental run (server.reconcile.scope)
        # Rollback: the chip's own counter orders its sessions; the slot seq must not go back.
        window = _chip_window(
            js,
            (js.c.ntag_counter, js.c.wall_time, js.c.terminal_id, js.c.seq),
            (js.c.card_id, js.c.entry_id, js.c.wall_time, js.c.ntag_counter, js.c.slot_seq_before),
            {"prev_after": js.c.slot_seq_after, "prev_wall": js.c.wall_time, "prev_ctr": js.c.ntag_counter,
             "prev_entry_id": js.c.entry_id},
            (_redeemed(js), js.c.ntag_counter.is_not(None)),
        )
        rollback = (
            select(window)
            .where(
                window.c.slot_seq_before < window.c.prev_after,
                window.c.wall_time > window.c.prev_wall,
                window.c.ntag_counter > window.c.prev_ctr,
            )
            .order_by(window.c.card_id, window.c.ntag_counter)
        )
        # Counter backwards: by wall time, a genuine UID's counter never decreases.
        window = _chip_window(
            js,
            (js.c.wall_time, js.c.terminal_id, js.c.seq),
            (js.c.card_id, js.c.tag_uid, js.c.entry_id, js.c.terminal_id, js.c.ntag_counter, js.c.wall_time,
             js.c.seq, js.c.slot_seq_before),
            {"prev_ctr": js.c.ntag_counter, "prev_entry_id": js.c.entry_id, "prev_terminal": js.c.terminal_id,
             "prev_after": js.c.slot_seq_after},
            (js.c.card_id.is_not(None), js.c.tag_uid.is_not(None), js.c.ntag_counter.is_not(None)),
        )
        backwards = (
            select(window)
            .where(window.c.ntag_counter < window.c.prev_ctr)
            # drops of one chip in the window's (time) order: the first drop is the summary
            .order_by(window.c.card_id, window.c.tag_uid, window.c.wall_time, window.c.terminal_id, window.c.seq)
        )
        # Slot-seq gap: consecutive known states of a card must join up.
        by_seq: dict[str, Any] = {
            "partition_by": js.c.card_id,
            "order_by": (js.c.slot_seq_before, js.c.slot_seq_after, js.c.wall_time),
        }
        window = (
            select(
                js.c.card_id,
                js.c.entry_id,
                js.c.slot_seq_before,
                func.lag(js.c.slot_seq_after).over(**by_seq).label("prev_after"),
                func.lag(js.c.entry_id).over(**by_seq).label("prev_entry_id"),
            )
            .where(_redeemed(js), js.c.slot_seq_before.is_not(None))
            .subquery()
        )
        gaps = (
            select(window).where(window.c.slot_seq_before > window.c.prev_after).order_by(window.c.card_id)
        )
        return rollback, backwards, gaps

    rollback, backwards, gaps = built_once(("card_order", scope is None), build)
    out: list[Observation] = []
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(rollback):
        groups[row.card_id].append(row)
    for card_id, group in groups.items():
        out.append(
            Observation(
                FindingKind.CARD_ROLLBACK,
                Severity.HIGH,
                card_id,
                f"card {card_id}: same chip (counter rising) but slot seq went back "
                f"from {group[0].prev_after} to {group[0].slot_seq_before} — restored from an old dump",
                distinct_ids(entry_id for row in group for entry_id in (row.prev_entry_id, row.entry_id))[
                    : cfg.evidence_limit
                ],
                card_id=card_id,
                detail={
                    "steps": [
                        {"from_seq": row.prev_after, "to_seq": row.slot_seq_before, "ntag_counter": row.ntag_counter}
                        for row in group
                    ]
                },
            )
        )

    groups = defaultdict(list)
    for row in conn.execute(backwards):
        groups[f"{row.card_id}|{row.tag_uid.hex()}"].append(row)
    for key, group in groups.items():
        out.append(
            Observation(
                FindingKind.COUNTER_BACKWARDS,
                Severity.HIGH,
                key,
                f"card {group[0].card_id} UID {group[0].tag_uid.hex()}: NFC counter fell from {group[0].prev_ctr} to "
                f"{group[0].ntag_counter} ({group[0].prev_terminal} → {group[0].terminal_id}) — a second chip",
                distinct_ids(entry_id for row in group for entry_id in (row.prev_entry_id, row.entry_id))[
                    : cfg.evidence_limit
                ],
                card_id=group[0].card_id,
                detail={"tag_uid": group[0].tag_uid.hex(), "drops": len(group),
                        "chain_ordered": any(_chain_ordered(row) for row in group)},
            )
        )

    for row in conn.execute(gaps):
        out.append(
            Observation(
                FindingKind.CARD_CHAIN_GAP,
                Severity.MEDIUM,
                f"{row.card_id}|{row.prev_after}|{row.slot_seq_before}",
                f"card {row.card_id}: slot seq {row.prev_after} → {row.slot_seq_before}: "
                f"{row.slot_seq_before - row.prev_after} redemption(s) without a journal entry",
                distinct_ids([row.prev_entry_id, row.entry_id]),
                card_id=row.card_id,
                detail={"from_seq": row.prev_after, "to_seq": row.slot_seq_before},
            )
        )
    return out


def _chain_ordered(row: Any) -> bool:
    """Whether the card's own chain, not only the counters' clocks, puts this drop's two taps in that order.

    The later tap (by wall time) read a state at least as new as the one the earlier tap wrote, so it
    came after it whatever the clocks say: a lower NFC counter there is a second chip. A drop between
    taps the chain does not order (the earlier one wrote nothing, or the later one read an older state)
    may be a counter whose clock runs ahead (red team r6): still a finding, but no proof that denies
    the card without an auditor (:data:`server.reconcile.denylist.PROOF_KINDS`).
    """
    return row.prev_after is not None and row.slot_seq_before is not None and row.slot_seq_before >= row.prev_after


def entitlements_exceeded(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Running total per card, programme and cycle against the entitlement (remaining never negative).

    One statement: a ``GROUP BY card_id, programme, cycle_id`` sums the redemptions and
    keeps the groups whose total exceeds the entitlement (``LEFT JOIN card_entitlements``,
    missing = 0) of cards that have entitlements, and only the redemptions of those cards
    (``card_id IN (that aggregate)``) go through the running-sum window (``SUM(amount)
    OVER (... ORDER BY wall_time, terminal_id, seq)``) that picks the evidence. An honest
    journal costs one aggregate pass where the window over every redemption cost a sorted
    window pass (issue 8); whole cards are kept, so every (card, programme, cycle)
    partition and its running sum are the same as over the whole journal.
    """
    js = _scan(scope)  # whole cards: the touched ones in an incremental run (server.reconcile.scope)
    part = (journal.c.card_id, journal.c.programme, benefit_cycles.c.cycle_id)
    entitled = func.coalesce(card_entitlements.c.amount, 0)
    in_cycle = journal.join(
        benefit_cycles,
        and_(journal.c.wall_time >= benefit_cycles.c.starts_at, journal.c.wall_time < benefit_cycles.c.ends_at),
    )
    def build() -> Any:
        totals = (
            select(
                js.c.card_id,
                js.c.programme,
                benefit_cycles.c.cycle_id,
                func.sum(js.c.amount).label("total"),
            )
            .select_from(
                js.join(
                    benefit_cycles,
                    and_(
                        js.c.wall_time >= benefit_cycles.c.starts_at,
                        js.c.wall_time < benefit_cycles.c.ends_at,
                    ),
                )
            )
            .where(redemption_taken(js), js.c.card_id.is_not(None))
            .group_by(js.c.card_id, js.c.programme, benefit_cycles.c.cycle_id)
            .subquery()
        )
        has_entitlements: Any
        if scope is None:
            has_entitlements = totals.c.card_id.in_(select(card_entitlements.c.card_id).distinct())
        else:  # the few touched cards: each looked up by the primary key's prefix (PostgreSQL read the table whole)
            held = card_entitlements.alias("held")
            has_entitlements = exists().where(held.c.card_id == totals.c.card_id)
        over = (
            select(totals.c.card_id)
            .select_from(
                totals.outerjoin(
                    card_entitlements,
                    and_(
                        card_entitlements.c.card_id == totals.c.card_id,
                        card_entitlements.c.programme == totals.c.programme,
                        card_entitlements.c.cycle_id == totals.c.cycle_id,
                    ),
                )
            )
            .where(totals.c.total > entitled, has_entitlements)
        )
        return over

    over = built_once(("entitlements_over", scope is None), build)
    over_cards: Any = over
    if scope is not None:  # the few cards over, as values: PostgreSQL then reads them by index, not the journal whole
        over_cards = sorted(set(conn.execute(over).scalars()))
        if not over_cards:
            return []
    window = (
        select(
            journal.c.card_id,
            journal.c.programme,
            benefit_cycles.c.cycle_id,
            journal.c.entry_id,
            journal.c.amount,
            entitled.label("entitled"),
            journal.c.wall_time,
            journal.c.terminal_id,
            journal.c.seq,
            # PostgreSQL's SUM(bigint) is numeric: cast back so both databases return int.
            cast(
                func.sum(journal.c.amount).over(
                    partition_by=part, order_by=(journal.c.wall_time, journal.c.terminal_id, journal.c.seq)
                ),
                BigInteger,
            ).label("running"),
            cast(func.sum(journal.c.amount).over(partition_by=part), BigInteger).label("total"),
        )
        .select_from(
            in_cycle.outerjoin(
                card_entitlements,
                and_(
                    card_entitlements.c.card_id == journal.c.card_id,
                    card_entitlements.c.programme == journal.c.programme,
                    card_entitlements.c.cycle_id == benefit_cycles.c.cycle_id,
                ),
            )
        )
        .where(redemption_taken(journal), journal.c.card_id.in_(over_cards))
        .subquery()
    )  # ``over`` only keeps cards with entitlements
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in conn.execute(
        select(window)
        .where(window.c.total > window.c.entitled)
        .order_by(
            window.c.card_id,
            window.c.programme,
            window.c.cycle_id,
            window.c.running,
            window.c.wall_time,
            window.c.terminal_id,
            window.c.seq,
        )
    ):  # ties: the window's order
        groups[(row.card_id, row.programme, row.cycle_id)].append(row)
    out = []
    for (card_id, programme, cycle_id), group in groups.items():
        first_over = next(row for row in group if row.running > row.entitled)
        out.append(
            Observation(
                FindingKind.ENTITLEMENT_EXCEEDED,
                Severity.HIGH,
                f"{card_id}|{programme}|{cycle_id}",
                f"card {card_id}: {programme} in cycle {cycle_id}: {group[0].total} redeemed of {group[0].entitled} "
                f"(remaining {group[0].entitled - group[0].total})",
                [row.entry_id for row in group][: cfg.evidence_limit],
                card_id=card_id,
                detail={
                    "programme": programme,
                    "cycle_id": cycle_id,
                    "entitled": group[0].entitled,
                    "total": group[0].total,
                    "first_over_entry_id": first_over.entry_id.hex(),
                },
            )
        )
    return out


def revoked_cards_used(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Redemptions at or after a card's revocation.

    One join of the journal with ``card_profiles``. The extra ``card_id IN (revoked
    cards)`` changes no result (the join already needs ``revoked_at``) but makes SQLite
    start from the few revoked cards and read their entries through
    ``ix_journal_card_time``, where it walked every entry in card order looking up each
    card's profile (1.6 s → 0.01 s at 1M entries; issue 8).
    """
    def build() -> Any:
        revoked = select(card_profiles.c.card_id).where(card_profiles.c.revoked_at.is_not(None))
        return (
            select(journal.c.card_id, journal.c.entry_id, card_profiles.c.revoked_at)
            .select_from(journal.join(card_profiles, card_profiles.c.card_id == journal.c.card_id))
            .where(
                REDEEMED,
                card_profiles.c.revoked_at.is_not(None),
                journal.c.wall_time >= card_profiles.c.revoked_at,
                journal.c.card_id.in_(revoked),
            )
            .order_by(journal.c.card_id, journal.c.wall_time, journal.c.terminal_id, journal.c.seq)
        )

    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(built_once(("revoked_cards_used",), build)):
        groups[row.card_id].append(row)
    return [
        Observation(
            FindingKind.REVOKED_CARD_USED,
            Severity.CRITICAL,
            card_id,
            f"card {card_id}: {len(group)} redemptions after its revocation",
            [row.entry_id for row in group][: cfg.evidence_limit],
            card_id=card_id,
            detail={"count": len(group), "revoked_at": str(group[0].revoked_at)},
        )
        for card_id, group in groups.items()
    ]


#: ``card_blocks``: the office's blocks of cards reported lost (server.card_blocks); ``people``: who placed them.
_blocks = typing.cast(Table, CardBlock.__table__)
_people = typing.cast(Table, Person.__table__)


def blocked_cards_used(conn: Connection, cfg: ReconcileConfig) -> list[Observation]:
    """Redemptions by a card while the office's block of it stood: served by a counter before it fetched the bundle.

    A redemption (:func:`server.households.redemption_taken`: COMMIT, FINISHED, FALLBACK, a torn write
    settled as taken) counts when it is dated more than ``cfg.skew_threshold_s`` after the block's
    ``blocked_at`` and, for a lifted block, as much before its ``lifted_at``: the counter's clock and the
    server's may differ by that much, so a tap near either edge is given the benefit of the doubt.
    One statement starting from ``card_blocks`` (a few rows), reading each blocked card's entries through
    ``ix_journal_card_time``. Runs whole every run: a block changes without a new entry.

    :returns: one ``blocked_card_used`` observation (medium) per card id, in card id order; evidence the
        entry ids in time order (at most ``cfg.evidence_limit``); detail ``count``, ``terminals``, and the
        first block it fell in: ``reason``, ``blocked_by`` (username), ``blocked_at``, ``lifted_at``.
    """
    def build() -> Any:
        slack = bindparam("blocked_skew_s", type_=Float())
        return (
            select(journal.c.card_id, journal.c.entry_id, journal.c.terminal_id, _blocks.c.reason,
                   _blocks.c.blocked_at, _blocks.c.lifted_at, _people.c.username)
            .select_from(_blocks.join(journal, journal.c.card_id == _blocks.c.card_id)
                         .join(_people, _people.c.id == _blocks.c.blocked_by))
            .where(
                redemption_taken(journal),
                epoch_s(journal.c.wall_time) > epoch_s(_blocks.c.blocked_at) + slack,
                or_(_blocks.c.lifted_at.is_(None), epoch_s(journal.c.wall_time) < epoch_s(_blocks.c.lifted_at) - slack),
            )
            .order_by(journal.c.card_id, journal.c.wall_time, journal.c.terminal_id, journal.c.seq, _blocks.c.id)
        )

    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(built_once(("blocked_cards_used",), build), {"blocked_skew_s": cfg.skew_threshold_s}):
        groups[row.card_id].append(row)
    out = []
    for card_id, group in groups.items():
        ids = distinct_ids(row.entry_id for row in group)
        first = group[0]
        out.append(Observation(
            FindingKind.BLOCKED_CARD_USED,
            Severity.MEDIUM,
            card_id,
            f"card {card_id}: {len(ids)} redemption(s) while blocked at the office ({first.reason})",
            ids[: cfg.evidence_limit],
            card_id=card_id,
            detail={"count": len(ids), "terminals": sorted({row.terminal_id for row in group}),
                    "reason": first.reason, "blocked_by": first.username, "blocked_at": str(first.blocked_at),
                    "lifted_at": None if first.lifted_at is None else str(first.lifted_at)},
        ))
    return out


def impossible_travel(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Consecutive taps of one card at terminals too far apart for the time between them.

    One window pass over the card's taps at sited terminals (``PARTITION BY card_id ORDER
    BY wall_time, terminal_id, seq``) carries only ``LAG`` of the terminal, the raw wall
    time and the entry id; both terminals' coordinates come from joining
    ``terminal_sites`` on them afterwards (its primary key, so the same values the
    window's ``lat``/``LAG(lat)`` gave) and the seconds are computed outside the window,
    on the rows it returns. Fewer window columns and no ``julianday()`` inside the window:
    each one was paid for every tap (issue 8).
    """
    def build() -> Any:
        js = _scan(scope)  # whole cards: the touched ones in an incremental run (server.reconcile.scope)
        by: dict[str, Any] = {
            "partition_by": js.c.card_id,
            "order_by": (js.c.wall_time, js.c.terminal_id, js.c.seq),
        }
        window = (
            select(
                js.c.card_id,
                js.c.entry_id,
                js.c.terminal_id,
                js.c.wall_time,
                js.c.seq,
                func.lag(js.c.terminal_id).over(**by).label("p_terminal"),
                func.lag(js.c.wall_time).over(**by).label("p_wall"),
                func.lag(js.c.entry_id).over(**by).label("p_entry_id"),
            )
            .select_from(js.join(terminal_sites, terminal_sites.c.terminal_id == js.c.terminal_id))
            .where(
                js.c.card_id.is_not(None),
                terminal_sites.c.lat.is_not(None),
                terminal_sites.c.lon.is_not(None),
            )
            .subquery()
        )
        site, previous_site = terminal_sites.alias("c_site"), terminal_sites.alias("p_site")
        at_s = epoch_s(window.c.wall_time)
        p_at_s = epoch_s(window.c.p_wall)
        north_km = (site.c.lat - previous_site.c.lat) * KM_PER_DEG_LAT
        east_km = (site.c.lon - previous_site.c.lon) * cfg.km_per_deg_lon
        km_squared = east_km * east_km + north_km * north_km
        reach = (at_s - p_at_s) * (cfg.max_speed_kmh / 3600.0)
        return (
            select(
                window.c.card_id,
                window.c.entry_id,
                window.c.terminal_id,
                window.c.p_terminal,
                window.c.p_entry_id,
                at_s.label("at_s"),
                p_at_s.label("p_at_s"),
                km_squared.label("d2"),
            )
            .select_from(
                window.join(site, site.c.terminal_id == window.c.terminal_id).join(
                    previous_site, previous_site.c.terminal_id == window.c.p_terminal
                )
            )
            .where(
                window.c.terminal_id != window.c.p_terminal, km_squared > cfg.min_travel_km**2,
                km_squared > reach * reach,
            )
            # ties on the seconds in the window's order
            .order_by(window.c.card_id, at_s, window.c.wall_time, window.c.terminal_id, window.c.seq)
        )

    rows = conn.execute(built_once(("impossible_travel", scope is None, cfg), build)).all()
    out = []
    for row in rows:
        km = math.sqrt(row.d2)
        minutes = (row.at_s - row.p_at_s) / 60.0
        out.append(
            Observation(
                FindingKind.IMPOSSIBLE_TRAVEL,
                Severity.HIGH,
                f"{row.card_id}|{row.p_entry_id.hex()}|{row.entry_id.hex()}",
                f"card {row.card_id}: {row.p_terminal} → {row.terminal_id}, {km:.0f} km in {minutes:.0f} min",
                [row.p_entry_id, row.entry_id],
                card_id=row.card_id,
                terminal_id=row.terminal_id,
                detail={
                    "km": round(km, 1),
                    "minutes": round(minutes, 1),
                    "from_terminal": row.p_terminal,
                    "to_terminal": row.terminal_id,
                },
            )
        )
    return out


def secure_card_counters(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """A `secure` card's signed counter seen in two taps, at one terminal or across terminals.

    Every INTERNAL AUTHENTICATE moves the counter before the card signs (docs/secure-card.md
    §5.1), so two taps journalled with one counter are a replayed answer or a second device
    holding the card's key. Secure entries are those without a tag UID that carry a counter;
    only the entry a tap opens with counts (PENDING, BALANCE, DECLINED). Gaps are normal (the
    station's read-back, declined cards, other readers) and are not findings.
    """
    def build() -> Any:
        js = _scan(scope)  # whole cards: the touched ones in an incremental run (server.reconcile.scope)
        repeated = (
            select(js.c.card_id, js.c.ntag_counter)
            .where(
                js.c.card_id.is_not(None),
                js.c.tag_uid.is_(None),
                js.c.ntag_counter.is_not(None),
                js.c.kind.in_(_TAP_OPENING_KINDS),
            )
            .group_by(js.c.card_id, js.c.ntag_counter)
            .having(func.count() > 1)
            .subquery()
        )
        return (
            select(journal.c.card_id, journal.c.ntag_counter, journal.c.entry_id, journal.c.terminal_id)
            .select_from(
                journal.join(
                    repeated,
                    and_(repeated.c.card_id == journal.c.card_id, repeated.c.ntag_counter == journal.c.ntag_counter),
                )
            )
            .where(journal.c.tag_uid.is_(None), journal.c.kind.in_(_TAP_OPENING_KINDS))
            .order_by(journal.c.card_id, journal.c.ntag_counter, journal.c.wall_time, journal.c.terminal_id,
                      journal.c.seq)
        )

    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(built_once(("secure_card_counters", scope is None), build)):
        groups[row.card_id].append(row)
    out = []
    for card_id, group in groups.items():
        counters = sorted({row.ntag_counter for row in group})
        terminals = sorted({row.terminal_id for row in group})
        out.append(
            Observation(
                FindingKind.CARD_COUNTER_REPEATED,
                Severity.CRITICAL,
                card_id,
                f"card {card_id}: card counter {', '.join(map(str, counters[:5]))} signed in {len(group)} taps "
                f"at {len(terminals)} terminal(s) — a replayed answer or a cloned card key",
                distinct_ids(row.entry_id for row in group)[: cfg.evidence_limit],
                card_id=card_id,
                detail={"counters": counters, "terminals": terminals},
            )
        )
    return out
