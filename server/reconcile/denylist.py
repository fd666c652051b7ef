"""Deny-list candidates from confirmed findings, and the deny lists of the next trust bundle.

:func:`server.registry.next_deny_sets` adds the card registry's own candidates (abandoned and
replaced cards) and :func:`server.bundles.publish_next_bundle` signs the result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.records.bundle import CARD_ID_LENGTH, UID_LENGTH, SortedIdSet
from server.models import Card
from server.reconcile.models import FindingKind, FindingStatus
from server.reconcile.sql import findings, journal

__all__ = ["DENY_KINDS", "DenyCandidate", "deny_list_candidates", "deny_sets"]


#: Finding kinds that make a card a deny-list candidate once an auditor confirms them.
DENY_KINDS = frozenset(
    {
        FindingKind.CARD_FORK,
        FindingKind.CARD_ROLLBACK,
        FindingKind.COUNTER_BACKWARDS,
        FindingKind.IMPOSSIBLE_TRAVEL,
        FindingKind.REVOKED_CARD_USED,
        FindingKind.ENTITLEMENT_EXCEEDED,
    }
)


@dataclass(frozen=True)
class DenyCandidate:
    """A card an auditor confirmed as cloned/abused: goes on the next bundle's deny list.

    :ivar tag_uids: chip UIDs seen with the card (7 bytes on NTAG).
    :ivar finding_ids: the confirmed findings that put it here.
    """

    card_id: str
    tag_uids: tuple[bytes, ...]
    finding_ids: tuple[int, ...]


def deny_list_candidates(session: Session) -> list[DenyCandidate]:
    """Cards with a *confirmed* clone/fraud finding, for the next trust bundle's deny list.

    The chip UIDs come from the card registry and from every journal entry of the
    card (a clone may carry the genuine UID; both lists are needed: docs/design.md §Deny lists).
    """
    rows = session.execute(
        select(findings.c.card_id, findings.c.id)
        .where(
            findings.c.status == FindingStatus.CONFIRMED.value,
            findings.c.kind.in_([k.value for k in DENY_KINDS]),
            findings.c.card_id.is_not(None),
        )
        .order_by(findings.c.card_id, findings.c.id)
    ).all()
    confirmed: dict[str, list[int]] = defaultdict(list)
    for card_id, finding_id in rows:
        confirmed[card_id].append(finding_id)
    if not confirmed:
        return []
    uids: dict[str, set[bytes]] = defaultdict(set)
    ids = sorted(confirmed)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for card_id, uid in session.execute(
            select(journal.c.card_id, journal.c.tag_uid)
            .where(journal.c.card_id.in_(chunk), journal.c.tag_uid.is_not(None))
            .distinct()
        ):
            uids[card_id].add(uid)
        for card_id, uid in session.execute(select(Card.card_id, Card.tag_uid).where(Card.card_id.in_(chunk))):
            uids[card_id].add(uid)
    return [DenyCandidate(c, tuple(sorted(uids[c])), tuple(confirmed[c])) for c in ids]


def deny_sets(candidates: Iterable[DenyCandidate]) -> tuple[SortedIdSet, SortedIdSet]:
    """The deny lists of the next trust bundle (cardlib/records/bundle.py claims 6 and 7).

    Card ids in the journal are the hex of the 8-byte card id (docs/design.md §What is on the card); UIDs are
    kept when 7 bytes (NTAG21x), the width the bundle carries.

    :returns: (deny_cards, deny_uids), sorted and unique.
    :raises ValueError: a card id that is not 16 hex digits.
    """
    cards: set[bytes] = set()
    uids: set[bytes] = set()
    for c in candidates:
        raw = bytes.fromhex(c.card_id)
        if len(raw) != CARD_ID_LENGTH:
            raise ValueError(f"card id {c.card_id!r} is not {CARD_ID_LENGTH} bytes of hex")
        cards.add(raw)
        uids.update(u for u in c.tag_uids if len(u) == UID_LENGTH and any(u))  # zeros: a secure card, no UID
    return SortedIdSet.from_ids(cards, CARD_ID_LENGTH), SortedIdSet.from_ids(uids, UID_LENGTH)
