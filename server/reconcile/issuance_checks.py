"""Redemptions on a card id that no issuance names: ``unknown_card``.

The counter cannot tell an issued card id from an invented one at the fallback desk: a supervisor's
manual entry (docs/fallback.md) takes any 16 hex digits "from the household's papers", and the
bundle carries no list of issued cards. Every redemption is a signed entry stored like any other,
but the per-card checks compare a card's redemptions with what its issuance granted, so a card id
that no issuance names (no ``cards`` row from an issuance file, no ``card_profiles`` row of the
audit registry) raised nothing: packages paid to phantom households went unseen (red team r4 #3,
tests/test_redteam_r4_phantom_manual.py).

A card id is *known* when ``cards`` (:mod:`server.registry`, any status: an abandoned id is revoked and
``revoked_card_used`` reports its use) or ``card_profiles`` has it. The finding is per card id;
FALLBACK entries make it ``high`` (nobody presented a card the counter could check), card-written
redemptions alone ``medium`` (an issuer-signed card whose issuance file has not reached the server,
or a forged issuer key). When the card's issuance is stored later, dated no later than the
redemption (the file reached the server late), the finding is no longer observed and the next run
dismisses it as resolved; the registry change alters the reference digest, so that next run is a full
one in both modes (docs/reconciliation.md §Unknown cards). A redemption dated *before* its card's
``issued_at`` stays a finding (summary "dated before its issuance", detail ``before_issuance``): else a
technician in on it issued a card with the invented id afterwards and the finding was withdrawn (red
team r5, tests/test_redteam_r5_unknown_card.py). A card id with a ``card_profiles`` row and no
``cards`` row (an audit registry loaded without issuance files) is known at any time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, cast

from sqlalchemy import Float, Table, bindparam, exists, or_, select
from sqlalchemy.engine import Connection

from cardlib.records.journal import EntryKind
from server.households import redemption_taken
from server.models import Card
from server.reconcile.models import FindingKind, Severity
from server.reconcile.observations import Observation, ReconcileConfig, distinct_ids
from server.reconcile.scope import Scope
from server.reconcile.sql import built_once, card_profiles, epoch_s, journal_scan

__all__ = ["unknown_cards"]

#: ``cards``: one row per card id an issuance file reported (server.registry).
_issued = cast(Table, Card.__table__)


def unknown_cards(conn: Connection, cfg: ReconcileConfig, scope: Scope | None = None) -> list[Observation]:
    """Redemptions (COMMIT, FINISHED, FALLBACK, a torn write settled as taken) on card ids no issuance names.

    One statement: the redemptions of the journal (full run) or of the touched cards' copied entries
    (incremental, :attr:`~server.reconcile.scope.Scope.entries`) with no ``card_profiles`` and no
    ``cards`` row issued no later than the redemption (give or take ``cfg.skew_threshold_s``: the
    station's and the counter's clocks) for their card id, each looked up by its primary/unique key.
    An honest journal returns no row.

    :returns: one ``unknown_card`` observation per card id, in card id order; evidence the entry ids
        in time order (at most ``cfg.evidence_limit``); detail ``count``, ``fallback`` (how many are
        FALLBACK entries), ``amounts`` (total per programme), ``terminals`` and, for a card id issued
        after some of its redemptions, ``before_issuance`` (how many of them).
    """
    if scope is not None and scope.counts[1] == 0:  # no touched card: nothing to read
        return []

    def build() -> Any:
        js = journal_scan if scope is None else scope.entries
        issued = exists().where(_issued.c.card_id == js.c.card_id)
        return (
            select(js.c.card_id, js.c.entry_id, js.c.kind, js.c.terminal_id, js.c.programme, js.c.amount,
                   issued.label("issued"))
            .where(
                redemption_taken(js),
                js.c.card_id.is_not(None),
                # known: issued no later than the redemption (within the clock skew threshold: station and
                # counter clocks differ); or (no issuance file) in the audit registry
                ~exists().where(_issued.c.card_id == js.c.card_id, epoch_s(_issued.c.issued_at)
                                <= epoch_s(js.c.wall_time) + bindparam("issued_skew_s", type_=Float())),
                or_(issued, ~exists().where(card_profiles.c.card_id == js.c.card_id)),
            )
            .order_by(js.c.card_id, js.c.wall_time, js.c.terminal_id, js.c.seq)
        )

    groups: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(built_once(("unknown_cards", scope is None), build),
                            {"issued_skew_s": cfg.skew_threshold_s}):
        groups[row.card_id].append(row)
    out = []
    for card_id, group in groups.items():
        fallback = sum(1 for row in group if row.kind == int(EntryKind.FALLBACK))
        early = sum(1 for row in group if row.issued)
        amounts: dict[str, int] = defaultdict(int)
        for row in group:
            amounts[row.programme or ""] += row.amount or 0
        out.append(
            Observation(
                FindingKind.UNKNOWN_CARD,
                Severity.HIGH if fallback else Severity.MEDIUM,
                card_id,
                f"card {card_id}: {len(group)} redemption(s) dated before its issuance ({fallback} at the "
                f"fallback desk)" if early else
                f"card {card_id}: {len(group)} redemption(s) on a card id no issuance names "
                f"({fallback} at the fallback desk)",
                distinct_ids(row.entry_id for row in group)[: cfg.evidence_limit],
                card_id=card_id,
                detail={
                    "count": len(group),
                    "fallback": fallback,
                    "amounts": dict(sorted(amounts.items())),
                    "terminals": sorted({row.terminal_id for row in group}),
                    **({"before_issuance": early} if early else {}),
                },
            )
        )
    return out

