"""Card registry from the provisioning station's signed issuance files, and its deny-list share.

A provisioning session ends with an issuance file (:func:`cardlib.provision.session.sign_issuance_file`):
a COSE_Sign1 by the technician's key over every card id the session used, each
``issued`` or ``abandoned``, with the card a re-issue replaces and, optionally, the
issuer's session grant (quota). The server

1. verifies it against the newest stored trust bundle, itself verified under the
   configured root (``TRUST_ROOT_CERT``): technician key listed with role TECHNICIAN,
   grant signed by an ISSUER key and not exceeded
   (:func:`cardlib.provision.session.verify_issuance_file`);
2. stores one :class:`server.models.Card` row per card id, insert-or-ignore: the same
   file twice gives ``duplicate`` results, another chip/issuer/status for a known card
   id gives ``conflict`` (the first report is kept);
3. verifies each issued card's identity record carried in the file (the card's exact
   issuer-signed COSE_Sign1, external_aad = identity context ‖ UID, docs/card-format.md
   §5) and fills the audit registry from its claims: ``card_profiles`` (region),
   ``benefit_cycles`` and ``card_entitlements`` (per_cycle for every cycle of the card's
   validity, programme code from the bundle's programme list); a re-issue revokes the
   card it replaces and an abandoned card id is revoked from its record's time
   (``card_profiles.revoked_at``), so ``revoked_card_used`` fires on their redemptions;
   a carried genesis state must verify under a terminal key of the bundle, be that card's, and name
   its signer's own terminal id (:func:`verify_issuance_genesis`, docs/card-format.md §4);
4. offers abandoned card ids and the cards that re-issued ones replace as deny-list
   candidates for the next bundle (:func:`registry_deny_candidates`), next to the
   auditors' confirmed clones (:func:`server.reconcile.denylist.deny_list_candidates`);
   :func:`next_deny_sets` merges both through :func:`server.reconcile.denylist.deny_sets`.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cardlib.provision.errors import QuotaExceeded, SessionError
from cardlib.provision.session import Issuance, IssuanceFile, IssuanceStatus, verify_issuance_file
from cardlib.records.bundle import KeyRole, SortedIdSet, TrustBundle
from cardlib.records.claims import IdentityClaims, SlotClaims, cycle_bounds, cycle_of, state_hash, terminal_id_of
from cardlib.records.cose import verify1
from cardlib.records.errors import RecordError
from cardlib.records.secure import secure_slot_aad, verify_identity_record
from cardlib.records.session import slot_aad
from server.errors import InvalidIssuanceFile
from server.models import Card
from server.reconcile.denylist import DenyCandidate, deny_list_candidates, deny_sets
from server.reconcile.models import BenefitCycle, CardEntitlement, CardProfile
from server.types import UTC
from server.upload import insert_or_ignore

__all__ = ["ISSUANCE_LATE_AFTER_S", "CardResult", "RegistryOutcome", "cycle_rows", "ensure_cycles", "late_days",
           "next_deny_sets", "register_issuance_file", "registry_deny_candidates", "verify_issuance_genesis",
           "verify_issuance_identity"]

log = logging.getLogger(__name__)

#: NTAG21x UID length; the bundle's UID deny list carries 7-byte UIDs (cardlib/records/bundle.py).
_UID_LENGTH = 7
#: Most cycles one card gets entitlement rows for (20 years of half-year cycles); a longer
#: validity is cut there (logged): profiles issue for ~2 years (cardlib/provision/profile.py).
MAX_ENTITLEMENT_CYCLES = 40
#: Default ``ISSUANCE_LATE_AFTER`` (server setting, seconds): an issuance that reached the server this long
#: after its ``issued_at`` (the station's signed clock) is flagged "late" beside its arrival time (a backdated
#: issuance looks so, docs/security.md); 7 days, the default life of a session grant (``huma provision grant``).
ISSUANCE_LATE_AFTER_S = 7 * 86400
REPLACED_REASON = "replaced by re-issued card {card_id}"
ABANDONED_REASON = "abandoned during issuance"


class RegistryOutcome(str, enum.Enum):
    """What happened to one card id of an issuance file."""

    ACCEPTED = "accepted"  #: new in the registry
    DUPLICATE = "duplicate"  #: already registered with the same chip, issuer key and status
    CONFLICT = "conflict"  #: the card id is registered with another chip, key or status (first kept)


@dataclass(frozen=True)
class CardResult:
    """:ivar card_id: 16 hex digits. :ivar result: see :class:`RegistryOutcome`."""

    card_id: str
    result: RegistryOutcome


def late_days(issued_at: dt.datetime, received_at: dt.datetime, late_after_s: float) -> int | None:
    """Whole days an issuance reached the server after its ``issued_at``, when that is beyond the bound.

    :param issued_at: the issuance record's time (aware; the station's signed word, ``cards.issued_at``).
    :param received_at: when the server stored the file (aware, ``cards.created_at``).
    :param late_after_s: the bound, seconds (setting ``ISSUANCE_LATE_AFTER``, default
        :data:`ISSUANCE_LATE_AFTER_S`).
    :returns: ``(received_at - issued_at)`` in whole days when it exceeds ``late_after_s``, else None.
    """
    delay = received_at - issued_at
    return delay.days if delay.total_seconds() > late_after_s else None


def cycle_rows(cycles: Iterable[int]) -> list[dict[str, object]]:
    """``benefit_cycles`` rows for cycle ids (docs/card-format.md §conventions).

    :param cycles: ids as :func:`cardlib.records.claims.cycle_of` gives them (e.g. 20261).
    :returns: ``{"cycle_id": "20261", "starts_at", "ends_at"}`` per distinct id, sorted;
        bounds are :func:`cardlib.records.claims.cycle_bounds` (WIB midnight) in UTC.
    :raises ValueError: not a cycle id.
    """
    out = []
    for c in sorted(set(cycles)):
        start, end = cycle_bounds(c)
        out.append({"cycle_id": str(c), "starts_at": start.astimezone(UTC), "ends_at": end.astimezone(UTC)})
    return out


def ensure_cycles(session: Session, cycles: Iterable[int]) -> int:
    """Insert-or-ignore the ``benefit_cycles`` rows of ``cycles`` (caller commits).

    :returns: rows inserted (0 when all existed).
    :raises ValueError: not a cycle id.
    """
    rows = cycle_rows(cycles)
    if not rows:
        return 0
    return len(session.scalars(insert_or_ignore(session, BenefitCycle).returning(BenefitCycle.cycle_id), rows).all())


def cycles_between(start: dt.datetime, end: dt.datetime) -> list[int]:
    """Cycle ids from the one containing ``start`` to the one containing ``end``, inclusive.

    :param start: aware datetime. :param end: aware datetime, not before ``start``.
    """
    out, c = [], cycle_of(start)
    last = cycle_of(end)
    while c <= last:
        out.append(c)
        c = cycle_of(cycle_bounds(c)[1])
    return out


def verify_issuance_identity(issuance: Issuance, bundle: TrustBundle) -> IdentityClaims:
    """Verify the identity record an issuance record carries and that it is that card's.

    The same verification a counter does on the card (docs/card-format.md §5):
    COSE_Sign1 under an ISSUER key of the bundle (:func:`cardlib.records.cose.verify1`,
    revoked issuer keys refused) with external_aad = identity context ‖ the record's UID, or for a
    `secure` card's record (it names a card key) card id ‖ SHA-256(card key) (docs/card-format.md §5.1,
    :func:`cardlib.records.secure.verify_identity_record`), strict claims decoding; then the
    claims' card id and UID, the signer kid and the record's ``identity_hash`` (8-byte
    state hash, when given) must match the issuance record.

    :raises RecordError: bad signature, unknown/revoked issuer key, malformed claims.
    :raises ValueError: no identity carried, or a genuine identity of another card, chip, key or hash.
    """
    if issuance.identity is None:
        raise ValueError(f"issuance record of card {issuance.card_id.hex()} carries no identity")
    verified, claims = verify_identity_record(issuance.identity, bundle.resolver(KeyRole.ISSUER), issuance.uid)
    if claims.card_id != issuance.card_id or claims.uid != issuance.uid:
        raise ValueError(f"identity is card {claims.card_id.hex()} on chip {claims.uid.hex()}, the record says "
                         f"{issuance.card_id.hex()} on {issuance.uid.hex()}")
    if issuance.issuer_kid and verified.kid != issuance.issuer_kid:
        raise ValueError(f"identity signed by {verified.kid.hex()}, "
                         f"the record names issuer {issuance.issuer_kid.hex()}")
    if issuance.identity_hash and state_hash(issuance.identity) != issuance.identity_hash:
        raise ValueError("identity_hash is not the hash of the identity record")
    return claims


def verify_issuance_genesis(issuance: Issuance, identity: IdentityClaims, bundle: TrustBundle) -> SlotClaims:
    """Verify the genesis state an issued card's record carries, and that it names the key that signed it.

    As a counter verifies a card's state (docs/card-format.md §4): COSE_Sign1 under a TERMINAL key of the
    bundle (the station's; revoked keys refused) with the card's slot external_aad (identity context ‖ UID
    ‖ identity hash, or for a `secure` card the key binding ‖ identity hash, §5.1), strict claims decoding;
    then seq 0, ``prev_hash`` the identity's hash and ``terminal_id`` the signing key's kid read big-endian
    (:func:`cardlib.records.claims.terminal_id_of`): a station cannot make its cards claim another station
    or counter wrote them.

    :param issuance: the record (``genesis`` and ``identity`` set). :param identity: its verified identity
        (:func:`verify_issuance_identity`).
    :returns: the genesis claims.
    :raises RecordError: bad signature, unknown/revoked/other-role key, malformed claims.
    :raises ValueError: no genesis carried; not seq 0, not linked to this identity, or another terminal id.
    """
    if issuance.genesis is None or issuance.identity is None:
        raise ValueError(f"issuance record of card {issuance.card_id.hex()} carries no genesis state")
    id_hash = state_hash(issuance.identity)
    aad = (secure_slot_aad(identity.card_id, identity.card_public_key, id_hash)
           if identity.card_public_key is not None else slot_aad(identity.uid, id_hash))
    verified = verify1(issuance.genesis, bundle.resolver(KeyRole.TERMINAL), aad)
    claims = SlotClaims.from_cbor(verified.payload)
    if claims.seq != 0 or claims.prev_hash != id_hash:
        raise ValueError(f"not the card's genesis state (seq {claims.seq}, prev_hash {claims.prev_hash.hex()})")
    if claims.terminal_id != terminal_id_of(verified.kid):
        raise ValueError(f"genesis state claims terminal id {claims.terminal_id}, signed by station key "
                         f"{verified.kid.hex()} (terminal id {terminal_id_of(verified.kid)})")
    return claims


def register_issuance_file(session: Session, message: bytes, bundle: TrustBundle,
                           technician_person_id: int) -> tuple[IssuanceFile, list[CardResult]]:
    """Verify an issuance file and store its card ids (insert-or-ignore; caller commits).

    Issued cards whose record carries the identity (:attr:`Issuance.identity`) also get
    their audit rows (:func:`_audit_rows`); records without one (older stations) only
    the registry row. A replaced or abandoned card id gets ``card_profiles.revoked_at``.

    :param message: the file's COSE_Sign1 bytes.
    :param bundle: the verified trust bundle in force (technician and issuer keys, programmes).
    :param technician_person_id: the logged-in person uploading it (kept on new rows).
    :returns: the verified file and a result per card id, in file order.
    :raises InvalidIssuanceFile: ``reason`` ``signature`` (bad or unknown/revoked
        technician key, grant for someone else, malformed), ``quota`` (more card ids
        than the grant allows), ``identity`` (a carried identity record does not
        verify under the bundle's issuer keys or belongs to another card/chip) or ``reissue``
        (a re-issue names a card of another household) or ``genesis`` (a carried genesis state does not
        verify under the bundle's terminal keys, is not the card's, or claims another terminal id than its
        signer's: :func:`verify_issuance_genesis`); nothing is stored then.
    """
    try:
        f = verify_issuance_file(message, bundle.resolver(KeyRole.TECHNICIAN), bundle.resolver(KeyRole.ISSUER))
    except QuotaExceeded as exc:
        raise InvalidIssuanceFile(str(exc), reason="quota") from exc
    except SessionError as exc:
        raise InvalidIssuanceFile(str(exc), reason="signature") from exc
    identities: dict[str, IdentityClaims] = {}
    for i in f.issuances:
        if i.identity is None or i.status is not IssuanceStatus.ISSUED:
            continue
        try:
            identities[i.card_id.hex()] = verify_issuance_identity(i, bundle)
        except (RecordError, ValueError) as exc:
            raise InvalidIssuanceFile(f"card {i.card_id.hex()}: identity record: {exc}", reason="identity",
                                      card_id=i.card_id.hex()) from exc
        if i.genesis is None:
            continue  # a station before the genesis was carried: not checked
        try:
            verify_issuance_genesis(i, identities[i.card_id.hex()], bundle)
        except (RecordError, ValueError) as exc:
            raise InvalidIssuanceFile(f"card {i.card_id.hex()}: genesis state: {exc}", reason="genesis",
                                      card_id=i.card_id.hex()) from exc
    _check_reissue_households(session, f.issuances, identities)
    now = dt.datetime.now(UTC)
    rows = [{
        "card_id": i.card_id.hex(), "tag_uid": i.uid, "kid": i.issuer_kid, "technician_id": technician_person_id,
        "issued_at": dt.datetime.fromtimestamp(i.time, UTC), "created_at": now, "status": i.status.value,
        "reissue_of": i.reissue_of.hex() if i.reissue_of else None, "session_id": f.session_id,
    } for i in f.issuances]
    results: list[CardResult] = []
    if not rows:
        return f, results
    inserted = set(session.scalars(insert_or_ignore(session, Card).returning(Card.card_id), rows).all())
    card_ids = [str(r["card_id"]) for r in rows]
    known = {c.card_id: c for c in session.scalars(select(Card).where(Card.card_id.in_(card_ids)))}
    for card_id, r in zip(card_ids, rows, strict=True):
        row = known[card_id]
        if card_id in inserted:
            outcome = RegistryOutcome.ACCEPTED
        elif ((row.tag_uid, row.kid, row.status, row.reissue_of)
              == (r["tag_uid"], r["kid"], r["status"], r["reissue_of"])):
            outcome = RegistryOutcome.DUPLICATE
        else:
            outcome = RegistryOutcome.CONFLICT
        results.append(CardResult(card_id, outcome))
    kept = {r.card_id for r in results if r.result is not RegistryOutcome.CONFLICT}
    _audit_rows(session, bundle, {c: claims for c, claims in identities.items() if c in kept})
    _revocations(session, [i for i in f.issuances if i.card_id.hex() in kept])
    return f, results


def _check_reissue_households(session: Session, issuances: Sequence[Issuance],
                              identities: dict[str, IdentityClaims]) -> None:
    """Refuse a re-issue that replaces a card of another household (red team r6).

    A re-issue revokes the card it names and puts its id and chip UID on the deny lists
    (:func:`_revocations`, :func:`registry_deny_candidates`), so naming a stranger's card would
    shut that household out and turn its honest taps into ``revoked_card_used``. The new card's
    household is its verified identity's (else the record's signed ``household_ref``); the
    replaced card's is the one the server knows from that card's verified identity
    (``card_profiles.household_ref``, or an identity in this same file). A replaced card the
    server has no household for (issued by an older station) is not checked.

    :raises InvalidIssuanceFile: ``reason`` ``reissue``, naming the record's card id.
    """
    wanted = {i.reissue_of.hex() for i in issuances if i.reissue_of and i.status is IssuanceStatus.ISSUED}
    if not wanted:
        return
    known = {c: h for c, h in session.execute(
        select(CardProfile.card_id, CardProfile.household_ref).where(CardProfile.card_id.in_(sorted(wanted))))
        .tuples() if h is not None}
    known.update({c: claims.household_ref.hex() for c, claims in identities.items() if c in wanted})
    for i in issuances:
        if not i.reissue_of or i.status is not IssuanceStatus.ISSUED:
            continue
        claims = identities.get(i.card_id.hex())
        mine = (claims.household_ref if claims is not None else i.household_ref).hex()
        theirs = known.get(i.reissue_of.hex())
        if theirs is not None and theirs != mine:
            raise InvalidIssuanceFile(
                f"card {i.card_id.hex()} re-issues card {i.reissue_of.hex()}, which serves another household "
                f"({theirs}, not {mine})", reason="reissue", card_id=i.card_id.hex())


def _audit_rows(session: Session, bundle: TrustBundle, identities: dict[str, IdentityClaims]) -> None:
    """``card_profiles``, ``benefit_cycles`` and ``card_entitlements`` from verified identity claims.

    One entitlement row per programme and cycle of the card's validity
    (``valid_from`` 00:00 UTC .. ``valid_to`` 23:59:59 UTC, at most
    :data:`MAX_ENTITLEMENT_CYCLES`), amount = the identity's ``per_cycle`` in its unit (at most the bundle's).
    The journal names programmes by the bundle's code (``Programme.name``), so a programme
    id the bundle does not list gets no row (logged): its redemptions cannot be matched.
    The amount is at most the bundle's ``per_cycle`` for the programme (logged when the identity
    claims more): the province's programme list, not the station's profile, bounds an entitlement.
    Insert-or-ignore: a card's first verified identity is kept.
    """
    if not identities:
        return
    names = {p.id: p.name for p in bundle.programmes}
    # The province's figure (the bundle's signed programme list) bounds what a card is entitled to: an
    # identity above it (a station profile edited, red team r6) is measured against the province's figure,
    # so its redemptions beyond that are entitlement_exceeded instead of no finding at all.
    ceiling = {p.id: p.per_cycle for p in bundle.programmes}
    profiles, entitlements, cycles = [], [], set()
    for card_id, claims in identities.items():
        profiles.append({"card_id": card_id, "region": claims.region, "revoked_at": None, "revoke_reason": None,
                         "household_ref": claims.household_ref.hex()})
        start = dt.datetime.combine(claims.valid_from, dt.time(), UTC)
        end = dt.datetime.combine(claims.valid_to, dt.time(23, 59, 59), UTC)
        card_cycles = cycles_between(start, end)
        if len(card_cycles) > MAX_ENTITLEMENT_CYCLES:
            log.warning("card %s valid for %d cycles: entitlements stored for the first %d", card_id,
                        len(card_cycles), MAX_ENTITLEMENT_CYCLES)
            card_cycles = card_cycles[:MAX_ENTITLEMENT_CYCLES]
        cycles.update(card_cycles)
        for pid, programme in claims.programmes.items():
            if pid not in names:
                log.warning("card %s: programme id %d is not in trust bundle v%d: no entitlement row",
                            card_id, pid, bundle.version)
                continue
            amount = min(programme.per_cycle, ceiling[pid])
            if amount < programme.per_cycle:
                log.warning("card %s: programme %s entitles %d a cycle, the trust bundle's programme %d: "
                            "entitlement stored as %d", card_id, names[pid], programme.per_cycle, ceiling[pid], amount)
            entitlements += [{"card_id": card_id, "programme": names[pid], "cycle_id": str(c),
                              "amount": amount, "programme_id": pid,
                              "unit": programme.unit.name.lower()} for c in card_cycles]
    ensure_cycles(session, cycles)
    session.execute(insert_or_ignore(session, CardProfile), profiles)
    for i in range(0, len(entitlements), 500):
        session.execute(insert_or_ignore(session, CardEntitlement), entitlements[i:i + 500])


def _revocations(session: Session, issuances: Sequence[Issuance]) -> None:
    """Revoke (``card_profiles.revoked_at``) the cards re-issues replace and abandoned card ids.

    From the issuance record's time: a redemption with such a card after it is
    ``revoked_card_used``. An earlier revocation (an auditor's) is kept.
    """
    revoke: dict[str, tuple[dt.datetime, str]] = {}
    for i in issuances:
        when = dt.datetime.fromtimestamp(i.time, UTC)
        if i.status is IssuanceStatus.ABANDONED:
            revoke.setdefault(i.card_id.hex(), (when, ABANDONED_REASON))
        elif i.reissue_of:
            revoke.setdefault(i.reissue_of.hex(), (when, REPLACED_REASON.format(card_id=i.card_id.hex())))
    if not revoke:
        return
    session.execute(insert_or_ignore(session, CardProfile),
                    [{"card_id": c, "region": None, "revoked_at": None, "revoke_reason": None} for c in revoke])
    for card_id, (when, reason) in sorted(revoke.items()):
        session.execute(update(CardProfile).where(CardProfile.card_id == card_id, CardProfile.revoked_at.is_(None))
                        .values(revoked_at=when, revoke_reason=reason))


def registry_deny_candidates(session: Session) -> list[DenyCandidate]:
    """Card ids the registry says must never be honoured again, as deny-list candidates.

    - ``abandoned`` card ids (written partly, never finished): the card id only; the
      chip may come back and be finished under it, or be wiped and issued anew.
    - cards replaced by a re-issue (lost or stolen): the card id and its chip UID.

    :returns: sorted by card id; ``finding_ids`` empty (the evidence is the issuance file).
    """
    replaced = select(Card.reissue_of).where(Card.reissue_of.is_not(None),
                                             Card.status == IssuanceStatus.ISSUED.value)
    abandoned = {c for (c,) in session.execute(
        select(Card.card_id).where(Card.status == IssuanceStatus.ABANDONED.value))}
    lost = {c for (c,) in session.execute(replaced)}
    # .tuples().all(): dict() of a Result takes its keys() for a mapping's and fails
    uids: dict[str, bytes] = dict(session.execute(
        select(Card.card_id, Card.tag_uid).where(Card.card_id.in_(replaced))).tuples().all())
    return [DenyCandidate(c, (uids[c],) if c in lost and c in uids else (), ())
            for c in sorted(abandoned | lost)]


def next_deny_sets(session: Session, extra: Sequence[DenyCandidate] = ()) -> tuple[SortedIdSet, SortedIdSet]:
    """The deny lists for the next bundle: confirmed clones/fraud (reconciliation) + the registry's + office blocks.

    :returns: ``(deny_cards, deny_uids)`` as :func:`server.reconcile.denylist.deny_sets` builds them.
    :raises ValueError: a candidate card id that is not 16 hex digits.
    """
    from server.card_blocks import block_candidates  # cards reported lost at the office

    return deny_sets([*deny_list_candidates(session), *registry_deny_candidates(session), *block_candidates(session),
                      *extra])
