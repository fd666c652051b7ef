"""Cards reported lost, stolen or damaged at the office: blocked from the next trust bundle, before any re-issue.

A household reports its card at the district office; whoever finds it could spend the household's
entitlement until a technician re-issues the card, which may take days in a village. A *block*
(:class:`server.models.CardBlock`, migration 0023) records who, when and why; from the next
published bundle counters decline the card ``card_denied`` (docs/security.md §Cards reported lost):

- :func:`block_candidates` puts each blocked card's id and the chip UIDs the server verified for it
  (:func:`server.reconcile.denylist.card_uids`: the registry's and served entries', never a refused tap's) on the
  next bundle's deny lists, through :func:`server.registry.next_deny_sets`;
- :func:`lifted_blocks` says which cards of the previous bundle a lifted block frees: the card is
  dropped unless something else denies it (a finding, a replacement by a re-issue, an abandoned id);
- a later re-issue of a blocked card is registered as before; the replaced card then stays denied as
  every replaced card does (:func:`server.registry.registry_deny_candidates`), whatever the block.

Who may: a technician, an auditor or an admin blocks (a manager reads the dashboard only). Lifting
is refused to a technician when the block was placed by an auditor or admin (the role the blocker had
when placing it, ``blocked_by_role``, migration 0025: a later promotion or demotion changes nothing), or
when an open or confirmed fraud finding (:data:`server.reconcile.denylist.DENY_KINDS`) names the card: that needs
an auditor. Every block and lift is written to the audit log (``cards.block``, ``cards.unblock``).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from cardlib.records.bundle import CARD_ID_LENGTH
from server.auth import audit
from server.errors import BadRequest, Conflict, Forbidden, NotFound
from server.household_ids import resolve_household
from server.households import HOUSEHOLD_REF
from server.models import Card, CardBlock, JournalEntryRow, Person, PersonRole
from server.reconcile.denylist import DENY_KINDS, DenyCandidate, card_uids
from server.reconcile.models import CardProfile, Finding, FindingStatus
from server.types import utcnow

__all__ = ["BLOCKERS", "BlockForbidden", "BlockReason", "BlockView", "CardAlreadyBlocked", "CardNotBlocked",
           "UnknownCard", "block_candidates", "block_card", "blocks_of", "card_of_household",
           "lifted_blocks", "other_denials", "standing_block", "standing_blocks", "unblock_card"]


class BlockReason(str, enum.Enum):
    """Why the office blocked a card (what the household reported)."""

    LOST = "lost"
    STOLEN = "stolen"
    DAMAGED = "damaged"  #: the household holds a broken card: blocked so its pieces are never served


#: Roles that may block a card (and lift a block, within :func:`unblock_card`'s limits).
BLOCKERS = (PersonRole.TECHNICIAN, PersonRole.AUDITOR, PersonRole.ADMIN)
#: Roles whose blocks a technician may not lift, and who may lift a card a fraud finding names.
SUPERVISORS = (PersonRole.AUDITOR, PersonRole.ADMIN)
#: Longest note or lift reason stored (characters).
NOTE_MAX = 500


class UnknownCard(NotFound):
    """No card with this id is known to the server (registry, identity profile or journal)."""

    code = "unknown_card"


class CardAlreadyBlocked(Conflict):
    """The card already has a standing block (one per card)."""

    code = "card_already_blocked"


class CardNotBlocked(Conflict):
    """The card has no standing block to lift."""

    code = "card_not_blocked"


class BlockForbidden(Forbidden):
    """This person's role may not place or lift this block."""

    code = "block_forbidden"


@dataclass(frozen=True)
class BlockView:
    """A block as the pages and the CLI show it: ``blocked_by``/``lifted_by`` are usernames.

    ``blocked_by_role``: the blocker's role when blocking (``technician``, ``auditor``, ``admin``), which decides
    who may lift it.
    """

    card_id: str
    reason: str
    note: str | None
    blocked_by: str
    blocked_at: dt.datetime
    lifted_by: str | None
    lifted_at: dt.datetime | None
    lift_reason: str | None
    blocked_by_role: str = PersonRole.AUDITOR.value


def _check_card_id(card_id: str) -> str:
    if not HOUSEHOLD_REF.fullmatch(card_id):  # a card id is 16 lower-case hex digits as a reference is
        raise BadRequest(f"card id {card_id[:40]!r} is not 16 lower-case hex digits", field="card_id")
    return card_id


def _known(session: Session, card_id: str) -> bool:
    return bool(session.scalar(select(
        exists().where(Card.card_id == card_id) | exists().where(CardProfile.card_id == card_id)
        | exists().where(JournalEntryRow.card_id == card_id))))


def _text(value: str | None, what: str) -> str | None:
    value = (value or "").strip() or None
    if value is not None and len(value) > NOTE_MAX:
        raise BadRequest(f"{what} has {len(value)} characters, at most {NOTE_MAX}", field=what)
    return value


def _check_person(person: Person) -> None:
    if person.disabled:
        raise BlockForbidden(f"{person.username} is disabled")
    if person.role not in BLOCKERS:
        raise BlockForbidden(f"role {person.role.value} may not block or unblock cards",
                             needed=[r.value for r in BLOCKERS])


def card_of_household(session: Session, household: str, card_id: str | None = None) -> str:
    """The card of household ``household`` (16 hex digits or its printed ``HB-`` label) an office command means.

    :param card_id: the card named as well (then it must serve the household); None: the household's one
        card that is neither replaced by a re-issue nor revoked.
    :returns: 16 hex digits.
    :raises NotFound: no registered card serves the household (or a label fits none).
    :raises BadRequest: ``card_id`` serves another household, or the household has several current
        cards (they are listed: name one with its card id).
    """
    ref = resolve_household(session, household)
    profiles = list(session.scalars(select(CardProfile).where(CardProfile.household_ref == ref)
                                    .order_by(CardProfile.card_id)))
    if not profiles:
        raise NotFound(f"no registered card serves household {ref}")
    if card_id is not None:
        if card_id not in {p.card_id for p in profiles}:
            raise BadRequest(f"card {card_id} does not serve household {ref}", field="card_id")
        return card_id
    replaced = set(session.scalars(select(Card.reissue_of).where(Card.reissue_of.is_not(None))))
    current = [p.card_id for p in profiles if p.revoked_at is None and p.card_id not in replaced]
    if len(current) != 1:
        listed = ", ".join(p.card_id for p in profiles)
        raise BadRequest(f"household {ref} has {len(current)} current cards ({listed}): name the card id",
                         field="card_id")
    return current[0]


def standing_block(session: Session, card_id: str) -> CardBlock | None:
    """The card's block not yet lifted, or None."""
    return session.scalars(select(CardBlock).where(CardBlock.card_id == card_id,
                                                   CardBlock.lifted_at.is_(None))).first()


def block_card(session: Session, card_id: str, reason: BlockReason, *, person: Person, note: str | None = None,
               now: dt.datetime | None = None, audit_detail: Mapping[str, Any] | None = None) -> CardBlock:
    """Block a card reported lost, stolen or damaged: the next published bundle denies it (audited; caller commits).

    :param card_id: 16 lower-case hex digits, a card the server knows (issuance file, identity, journal).
    :param person: who records the report (technician, auditor or admin).
    :param note: free text kept with the block (who reported it, where), at most :data:`NOTE_MAX` characters.
    :param now: aware time of the block (default: now).
    :param audit_detail: extra fields of the ``cards.block`` audit row (``via: cli``).
    :raises BadRequest: a malformed card id or an over-long note.
    :raises BlockForbidden: the person's role may not block, or the person is disabled.
    :raises UnknownCard: nothing is known of the card.
    :raises CardAlreadyBlocked: the card already has a standing block.
    """
    _check_card_id(card_id)
    note = _text(note, "note")
    _check_person(person)
    if not _known(session, card_id):
        raise UnknownCard(f"no card {card_id} is known to the server (no issuance file, identity or tap names it)",
                          card_id=card_id)
    standing = standing_block(session, card_id)
    if standing is not None:
        raise CardAlreadyBlocked(f"card {card_id} is already blocked ({standing.reason}) since "
                                 f"{standing.blocked_at.isoformat()}", card_id=card_id)
    block = CardBlock(card_id=card_id, reason=BlockReason(reason).value, note=note, blocked_by=person.id,
                      blocked_by_role=person.role, blocked_at=now or utcnow())
    session.add(block)
    session.flush()
    audit(session, person, "cards.block", f"card:{card_id}", reason=block.reason, note=note, block_id=block.id,
          **(audit_detail or {}))
    return block


def _fraud_findings(session: Session, card_id: str) -> list[Finding]:
    return list(session.scalars(select(Finding).where(
        Finding.card_id == card_id, Finding.kind.in_(list(DENY_KINDS)),
        Finding.status.in_([FindingStatus.OPEN, FindingStatus.CONFIRMED])).order_by(Finding.id)))


def other_denials(session: Session, card_id: str) -> list[str]:
    """What, besides a block, puts the card on the next bundle's deny lists: one phrase per cause.

    Confirmed and provisional findings (:func:`server.reconcile.denylist.deny_list_candidates`) and the
    registry's abandoned and replaced cards (:func:`server.registry.registry_deny_candidates`).
    """
    from server.reconcile.denylist import deny_list_candidates

    out: list[str] = []
    kinds = dict(session.execute(select(Finding.id, Finding.kind).where(Finding.card_id == card_id)).tuples().all())
    for c in deny_list_candidates(session):
        if c.card_id == card_id:
            status = "provisional" if c.provisional else "confirmed"
            out += [f"{kinds[f].value} finding {f} ({status})" for f in c.finding_ids]
    out += [f"replaced by re-issued card {c}" for c in session.scalars(
        select(Card.card_id).where(Card.reissue_of == card_id, Card.status == "issued").order_by(Card.card_id))]
    if session.scalar(select(exists().where(Card.card_id == card_id, Card.status == "abandoned"))):
        out.append("abandoned during issuance")
    return out


def unblock_card(session: Session, card_id: str, *, person: Person, reason: str, now: dt.datetime | None = None,
                 audit_detail: Mapping[str, Any] | None = None) -> list[str]:
    """Lift a card's block (found again, entered by mistake): the next bundle drops it unless something else denies it.

    Audited (``cards.unblock``); the block row is kept with who lifted it, when and why. Caller commits.

    :param reason: why (kept and audited), required, at most :data:`NOTE_MAX` characters.
    :returns: what still denies the card (:func:`other_denials`); empty when the next bundle honours it.
    :raises BadRequest: a malformed card id, or an empty or over-long reason.
    :raises BlockForbidden: the role may not unblock; or a technician lifting a block an auditor or admin
        placed (their role at block time, ``blocked_by_role``, whatever it is now), or a card an open or
        confirmed fraud finding names (the finding ids are given).
    :raises CardNotBlocked: the card has no standing block.
    """
    _check_card_id(card_id)
    why = _text(reason, "reason")
    if why is None:
        raise BadRequest("say why the block is lifted (e.g. found by the household)", field="reason")
    _check_person(person)
    block = standing_block(session, card_id)
    if block is None:
        raise CardNotBlocked(f"card {card_id} has no standing block", card_id=card_id)
    if person.role not in SUPERVISORS:
        if block.blocked_by_role in SUPERVISORS:  # the role at block time, not the placer's current one
            placer = session.get(Person, block.blocked_by)
            raise BlockForbidden(f"card {card_id} was blocked by {block.blocked_by_role.value} "
                                 f"{placer.username if placer is not None else '?'}: an auditor or admin lifts it",
                                 card_id=card_id)
        fraud = _fraud_findings(session, card_id)
        if fraud:
            raise BlockForbidden(f"card {card_id} is named by fraud finding(s) "
                                 f"{', '.join(str(f.id) for f in fraud)}: an auditor or admin lifts its block",
                                 card_id=card_id, findings=[f.id for f in fraud])
    block.lifted_by, block.lifted_at, block.lift_reason = person.id, now or utcnow(), why
    still = other_denials(session, card_id)
    audit(session, person, "cards.unblock", f"card:{card_id}", reason=why, block_id=block.id, still_denied=still,
          **(audit_detail or {}))
    return still



def block_candidates(session: Session) -> list[DenyCandidate]:
    """Cards with a standing block, as deny-list candidates for the next bundle: card id and its chip UIDs.

    :returns: sorted by card id; ``finding_ids`` empty (the evidence is the office's report).
    """
    ids = sorted(set(session.scalars(select(CardBlock.card_id).where(CardBlock.lifted_at.is_(None)))))
    ids = [c for c in ids if len(c) == 2 * CARD_ID_LENGTH]
    if not ids:
        return []
    uids = card_uids(session, ids)
    return [DenyCandidate(c, tuple(sorted(uids[c])), ()) for c in ids]


def lifted_blocks(session: Session, kept_cards: Iterable[bytes],
                  kept_uids: Iterable[bytes]) -> tuple[set[bytes], set[bytes]]:
    """Card ids and UIDs whose block was lifted and that nothing else denies: what to drop from the previous bundle.

    :param kept_cards: card ids (8 bytes) the next bundle denies anyway (every source, blocks included).
    :param kept_uids: chip UIDs (7 bytes) the next bundle denies anyway.
    :returns: (card ids, 8 bytes each; UIDs, 7 bytes each).
    """
    kept = {c.hex() for c in kept_cards}
    kept_u = set(kept_uids)
    later = aliased(CardBlock)
    lifted = set(session.scalars(select(CardBlock.card_id).where(
        CardBlock.lifted_at.is_not(None),
        ~exists().where(later.card_id == CardBlock.card_id, later.lifted_at.is_(None)))))
    cleared = sorted(c for c in lifted - kept if len(c) == 2 * CARD_ID_LENGTH)
    if not cleared:
        return set(), set()
    uids = card_uids(session, cleared)
    return {bytes.fromhex(c) for c in cleared}, {u for c in cleared for u in uids[c] if u not in kept_u}


def _views(session: Session, blocks: Iterable[CardBlock]) -> list[BlockView]:
    rows = list(blocks)
    ids = {i for b in rows for i in (b.blocked_by, b.lifted_by) if i is not None}
    names = dict(session.execute(select(Person.id, Person.username).where(Person.id.in_(ids))).tuples().all()) \
        if ids else {}
    return [BlockView(b.card_id, b.reason, b.note, names.get(b.blocked_by, "?"), b.blocked_at,
                      names.get(b.lifted_by) if b.lifted_by is not None else None, b.lifted_at, b.lift_reason,
                      PersonRole(b.blocked_by_role).value)
            for b in rows]


def blocks_of(session: Session, card_ids: Iterable[str]) -> dict[str, BlockView]:
    """The standing block of each of ``card_ids`` that has one, for the auditor's card and household pages."""
    ids = sorted(set(card_ids))
    if not ids:
        return {}
    rows = session.scalars(select(CardBlock).where(CardBlock.card_id.in_(ids), CardBlock.lifted_at.is_(None)))
    return {v.card_id: v for v in _views(session, rows)}


def standing_blocks(session: Session, *, lifted: bool = False) -> list[BlockView]:
    """Every standing block, oldest first (``lifted``: every block ever placed, lifted ones too)."""
    stmt = select(CardBlock).order_by(CardBlock.blocked_at, CardBlock.id)
    if not lifted:
        stmt = stmt.where(CardBlock.lifted_at.is_(None))
    return _views(session, session.scalars(stmt))
