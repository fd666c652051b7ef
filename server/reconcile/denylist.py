"""Deny-list candidates from findings, and the deny lists of the next trust bundle.

A card goes on the next bundle's deny list when an auditor *confirmed* a clone/fraud finding
of it, or *provisionally*, with no human decision, when reconciliation holds cryptographic
proof of a second chip or an old dump (:data:`PROOF_KINDS`: two validly signed successors of
one card state, a chip counter going back, one signed card counter in two taps). Counters deny
both alike; an auditor lifts a provisional denial by dismissing the finding, or confirms it
(docs/security.md "Deny lists without waiting for a human").

:func:`server.registry.next_deny_sets` adds the card registry's own candidates (abandoned and
replaced cards) and the office's blocks (:mod:`server.card_blocks`), :func:`lifted_denials` says
which cards of the previous bundle an auditor cleared, and :func:`server.bundles.publish_next_bundle` signs the result.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.records.bundle import CARD_ID_LENGTH, UID_LENGTH, SortedIdSet
from cardlib.records.journal import EntryKind
from server.models import Card
from server.reconcile.models import Finding, FindingKind, FindingStatus
from server.reconcile.sql import journal

__all__ = ["DENY_KINDS", "PROOF_KINDS", "DenyCandidate", "card_uids", "deny_list_candidates", "deny_sets",
           "lifted_denials"]


#: Finding kinds whose evidence is signed proof of a second chip or a restored dump: the card is
#: denied *provisionally* as soon as reconciliation records one (open), before any auditor looks.
PROOF_KINDS = frozenset(
    {
        FindingKind.CARD_FORK,  # two validly signed successors of one card state
        FindingKind.CARD_ROLLBACK,  # the chip's counter rose while its slot went back (old dump)
        FindingKind.COUNTER_BACKWARDS,  # a chip counter lower than one already signed for the UID
        FindingKind.CARD_COUNTER_REPEATED,  # a secure card's signed counter in two taps
    }
)

#: Finding kinds that make a card a deny-list candidate once an auditor confirms them.
DENY_KINDS = PROOF_KINDS | frozenset(
    {
        FindingKind.IMPOSSIBLE_TRAVEL,
        FindingKind.REVOKED_CARD_USED,
        FindingKind.ENTITLEMENT_EXCEEDED,
        FindingKind.BLOCKED_CARD_USED,  # redeemed after it was reported lost: the holder's word or a thief
    }
)


@dataclass(frozen=True)
class DenyCandidate:
    """A card to deny in the next bundle: confirmed by an auditor, or provisional on signed proof.

    :ivar tag_uids: chip UIDs seen with the card (7 bytes on NTAG).
    :ivar finding_ids: the confirmed findings that put it here; for a provisional candidate the
        open :data:`PROOF_KINDS` findings.
    :ivar provisional: no auditor has confirmed it yet (counters deny it all the same).
    """

    card_id: str
    tag_uids: tuple[bytes, ...]
    finding_ids: tuple[int, ...]
    provisional: bool = False


@dataclass(frozen=True)
class _Decisions:
    """Per card: confirmed deny findings, open proof findings (first seen), last auditor dismissal (of any deny
    finding, and of a proof finding: only the latter lifts a provisional denial)."""

    confirmed: dict[str, list[int]]
    open_proof: dict[str, list[tuple[int, dt.datetime]]]
    dismissed_at: dict[str, dt.datetime]
    proof_dismissed_at: dict[str, dt.datetime]


def _decisions(session: Session) -> _Decisions:
    confirmed: dict[str, list[int]] = defaultdict(list)
    open_proof: dict[str, list[tuple[int, dt.datetime]]] = defaultdict(list)
    dismissed_at: dict[str, dt.datetime] = {}
    proof_dismissed_at: dict[str, dt.datetime] = {}
    rows = session.execute(
        select(Finding.card_id, Finding.id, Finding.kind, Finding.status, Finding.first_seen_at,
               Finding.decided_at, Finding.decided_by, Finding.detail)
        .where(Finding.kind.in_(list(DENY_KINDS)), Finding.card_id.is_not(None))
        .order_by(Finding.card_id, Finding.id)
    ).all()
    for card_id, finding_id, kind, status, first_seen, decided_at, decided_by, detail in rows:
        if status is FindingStatus.CONFIRMED:
            confirmed[card_id].append(finding_id)
        elif kind in PROOF_KINDS and status is FindingStatus.OPEN and _is_proof(kind, detail):
            open_proof[card_id].append((finding_id, first_seen))
        elif status is FindingStatus.DISMISSED and decided_by is not None and decided_at is not None:
            dismissed_at[card_id] = max(decided_at, dismissed_at.get(card_id, decided_at))
            if kind in PROOF_KINDS:
                proof_dismissed_at[card_id] = max(decided_at, proof_dismissed_at.get(card_id, decided_at))
    return _Decisions(dict(confirmed), dict(open_proof), dismissed_at, proof_dismissed_at)


def _is_proof(kind: FindingKind, detail: str | None) -> bool:
    """Whether an open finding of a :data:`PROOF_KINDS` kind denies without an auditor.

    ``counter_backwards`` does only when the card's own chain orders the two taps
    (``detail["chain_ordered"]``, :func:`server.reconcile.card_checks.card_order`): a drop ordered by
    the counters' wall times alone is what a counter with its clock set ahead makes of honest
    households (red team r6), so it waits for an auditor like ``impossible_travel``. A finding
    recorded before that key existed counts as before.
    """
    if kind is not FindingKind.COUNTER_BACKWARDS:
        return True
    try:
        parsed = json.loads(detail or "{}")
    except ValueError:
        return True
    return not isinstance(parsed, dict) or bool(parsed.get("chain_ordered", True))


def _provisional(d: _Decisions) -> dict[str, list[int]]:
    """Open proof findings not covered by an auditor's later dismissal of a proof finding of the same card.

    Dismissing a proof finding lifts the card's provisional denial; proof first seen after it denies
    again. Dismissing another kind (``impossible_travel`` with a site entered wrong) does not: nobody
    looked at the proof (red team r6).
    """
    out: dict[str, list[int]] = {}
    for card_id, found in d.open_proof.items():
        if card_id in d.confirmed:
            continue
        lifted = d.proof_dismissed_at.get(card_id)
        ids = [i for i, first_seen in found if lifted is None or first_seen > lifted]
        if ids:
            out[card_id] = ids
    return out


def card_uids(session: Session, ids: list[str]) -> dict[str, set[bytes]]:
    """Chip UIDs denied with each card id: the registry's and those of its served (not refused) journal entries.

    A refused tap (``DECLINED``) journals the card id the record *claims* beside the UID of whatever chip was
    presented, unverified: a household copying its own record onto a UID-changeable chip set to a neighbour's
    UID, then reporting its own card lost or forking it, would otherwise have the neighbour's genuine card
    denied (red team round 7, docs/security.md). So declines add no UID, and a UID the registry gives another
    card is never taken. A clone served with the genuine UID is denied by it (the registry's); the card id
    itself is signed and denied in any case. One rule for finding denials and office blocks.

    :param ids: card ids, 16 lower-case hex digits each.
    :returns: card id -> set of 7-byte UIDs (a card may have none).
    """
    out: dict[str, set[bytes]] = {c: set() for c in ids}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = list(session.execute(select(journal.c.card_id, journal.c.tag_uid).where(
            journal.c.card_id.in_(chunk), journal.c.tag_uid.is_not(None),
            journal.c.kind != int(EntryKind.DECLINED)).distinct()).tuples())
        rows += list(session.execute(select(Card.card_id, Card.tag_uid).where(Card.card_id.in_(chunk))).tuples())
        seen = {bytes(u) for _, u in rows if u is not None}
        owners: dict[bytes, set[str]] = {}
        if seen:
            for uid, owner in session.execute(select(Card.tag_uid, Card.card_id).where(Card.tag_uid.in_(seen))):
                owners.setdefault(bytes(uid), set()).add(owner)
        for card_id, uid in rows:
            if card_id is not None and uid is not None and owners.get(bytes(uid), {card_id}) <= {card_id}:
                out[card_id].add(bytes(uid))
    return out


def deny_list_candidates(session: Session) -> list[DenyCandidate]:
    """Cards with a *confirmed* clone/fraud finding or *provisional* signed proof, for the next deny list.

    The chip UIDs are :func:`card_uids`: the card registry's and those of the card's served journal
    entries (a clone served with the genuine UID is denied by it; a refused tap's unverified UID is not).

    :returns: one candidate per card, in card id order; ``provisional`` when only open
        :data:`PROOF_KINDS` findings put it there.
    """
    d = _decisions(session)
    provisional = _provisional(d)
    chosen = {**provisional, **d.confirmed}
    if not chosen:
        return []
    ids = sorted(chosen)
    uids = card_uids(session, ids)
    return [DenyCandidate(c, tuple(sorted(uids[c])), tuple(chosen[c]), provisional=c not in d.confirmed)
            for c in ids]


def lifted_denials(session: Session, kept_cards: Iterable[bytes],
                   kept_uids: Iterable[bytes]) -> tuple[set[bytes], set[bytes]]:
    """Card ids and UIDs an auditor cleared: what to drop from the previous bundle's deny lists.

    A card is cleared when an auditor dismissed one of its deny findings and the next bundle
    does not deny it for another reason (``kept_cards``: the next deny lists from every source,
    :func:`server.registry.next_deny_sets`). Its UIDs are cleared unless ``kept_uids`` has them.

    :param kept_cards: card ids (8 bytes) the next bundle denies anyway.
    :param kept_uids: chip UIDs (7 bytes) the next bundle denies anyway.
    :returns: (card ids, 8 bytes each; UIDs, 7 bytes each).
    """
    kept = {c.hex() for c in kept_cards}
    kept_u = set(kept_uids)
    cleared = sorted(set(_decisions(session).dismissed_at) - kept)
    if not cleared:
        return set(), set()
    uids = card_uids(session, cleared)
    cards = {bytes.fromhex(c) for c in cleared if len(c) == 2 * CARD_ID_LENGTH}
    return cards, {u for c in cleared for u in uids[c] if u not in kept_u}


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
