"""Records of the `secure` card profile: what binds them to the card, verification, the next state.

Spec: docs/card-format.md §5.1 and docs/secure-card.md §4-§5. A `secure` card holds the
same two records as an NTAG card — the issuer-signed identity (docs/card-format.md §3)
and one terminal-signed state (§4) — but a Type 4 / JavaCard card often presents a
random UID on every activation, so the records are bound to the card's **key** instead
of its UID:

- identity ``external_aad`` = ``"huma-betang/card/v1/secure/identity" || card id (8) ||
  SHA-256(card_public_key (33))``;
- state ``external_aad`` = ``"huma-betang/card/v1/secure/slot" || card id (8) ||
  SHA-256(card_public_key (33)) || identity hash (8)``.

The identity of a secure card must carry ``card_public_key`` (claim 10); its ``uid``
claim is :data:`NO_UID` (seven zero bytes, no chip) and it carries no PIN verifier
(claim 9): the PIN lives on the card (VERIFY, docs/secure-card.md §5.3). The separate
contexts keep the profiles apart: a secure identity copied to an NTAG chip does not
verify there (the NTAG path binds the chip UID), so a key-bound card cannot be
downgraded to the profile that only detects clones.

Pure: no I/O. :class:`cardlib.secure.SecureCardSession` carries the bytes.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2

from cardlib.keys.signer import Signer, sign1_with
from cardlib.records.bundle import KeyRole
from cardlib.records.claims import IdentityClaims, IdentityKey, SlotClaims, state_hash
from cardlib.records.cose import KeyResolver, VerifiedSign1, verify1
from cardlib.records.errors import (
    AlgorithmNotAllowed,
    ClaimsError,
    CorruptSlot,
    CoseError,
    Expired,
    NotYetValid,
    NoValidState,
    RedemptionRefused,
    RevokedKid,
    UnknownKid,
)
from cardlib.records.session import CardTrust, VerifiedIdentity, identity_aad

__all__ = [
    "NO_UID",
    "SECURE_IDENTITY_AAD_CONTEXT",
    "SECURE_SLOT_AAD_CONTEXT",
    "SecureCardRecords",
    "SecurePendingWrite",
    "SecureRecovery",
    "card_binding",
    "check_secure_identity",
    "decide_secure_recovery",
    "identity_aad_of",
    "issue_secure_records",
    "secure_identity_aad",
    "secure_slot_aad",
    "verify_identity_record",
    "verify_secure_identity",
    "verify_secure_identity_signature",
    "verify_secure_state",
]

#: external_aad contexts of the secure profile (docs/card-format.md §5.1); the version is in the string.
SECURE_IDENTITY_AAD_CONTEXT = b"huma-betang/card/v1/secure/identity"
SECURE_SLOT_AAD_CONTEXT = b"huma-betang/card/v1/secure/slot"
#: The ``uid`` claim of a secure identity: no chip UID (a Type 4 card's UID may be random).
NO_UID = bytes(7)


def card_binding(card_id: bytes, card_public_key: bytes) -> bytes:
    """What binds a secure card's records: card id (8) || SHA-256(compressed card key, 33) — 40 bytes."""
    return bytes(card_id) + hashlib.sha256(bytes(card_public_key)).digest()


def secure_identity_aad(card_id: bytes, card_public_key: bytes) -> bytes:
    """external_aad of a secure card's identity record (docs/card-format.md §5.1)."""
    return SECURE_IDENTITY_AAD_CONTEXT + card_binding(card_id, card_public_key)


def secure_slot_aad(card_id: bytes, card_public_key: bytes, identity_hash: bytes) -> bytes:
    """external_aad of a secure card's state record: binding || identity hash (8 B, one issuance)."""
    return SECURE_SLOT_AAD_CONTEXT + card_binding(card_id, card_public_key) + bytes(identity_hash)


def identity_aad_of(claims: IdentityClaims) -> bytes:
    """The external_aad an identity with these claims is signed with: key-bound when it names a card key."""
    if claims.card_public_key is not None:
        return secure_identity_aad(claims.card_id, claims.card_public_key)
    return identity_aad(claims.uid)


def _peek_binding(cose: bytes) -> tuple[bytes, bytes] | None:
    """(card id, card_public_key) of an identity record before its signature is checked, else None."""
    try:
        body = cbor2.loads(cose)
        payload = body.value[2] if isinstance(body, cbor2.CBORTag) else body[2]
        claims = cbor2.loads(payload)
        card_id, key = claims.get(int(IdentityKey.CARD_ID)), claims.get(int(IdentityKey.CARD_PUBLIC_KEY))
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, KeyError, EOFError):
        return None
    if isinstance(card_id, bytes) and isinstance(key, bytes):
        return card_id, key
    return None


def verify_identity_record(cose: bytes, issuers: KeyResolver, uid: bytes) -> tuple[VerifiedSign1, IdentityClaims]:
    """Verify an identity record of either profile (server side: issuance files, audits).

    A record naming a card key is checked with the key-bound AAD, any other with the chip
    UID's (docs/card-format.md §5, §5.1); the AAD is read from the payload the signature
    then covers, so nothing unsigned decides.

    :param uid: the chip UID the record is said to be for (:data:`NO_UID` for secure cards).
    :raises CoseError: bad signature, unknown or revoked issuer key, malformed COSE.
    :raises ClaimsError: malformed claims.
    """
    peek = _peek_binding(cose)
    aad = secure_identity_aad(*peek) if peek is not None else identity_aad(uid)
    verified = verify1(cose, issuers, aad)
    return verified, IdentityClaims.from_cbor(verified.payload)


def verify_secure_identity(cose: bytes, trust: CardTrust, now: int) -> VerifiedIdentity:
    """Verify the identity record a secure card returned (GET DATA identity, docs/secure-card.md §4).

    Order as for NTAG (docs/card-format.md §5): signature under an issuer key with the
    key-bound AAD, strict claims, a card key present, deny list (card id only), validity:
    :func:`verify_secure_identity_signature` then :func:`check_secure_identity`. A counter calls the two
    apart, with the card's proof of its key between them (``terminal.secure_tap``): the record is public,
    so only a card that proved the key may be declined ``card_denied`` in its name (red team round 7).

    :param cose: the record's exact bytes.
    :param now: POSIX seconds (UTC).
    :raises BadSignature | MalformedCose | UnknownKid | RevokedKid | AlgorithmNotAllowed: signature.
    :raises ClaimsError: malformed claims, or no ``card_public_key`` (not a secure identity).
    :raises DeniedCard: the card id is on the deny list (carrying the verified identity, ``uid`` :data:`NO_UID`).
    :raises Expired | NotYetValid: outside the validity window.
    """
    identity = verify_secure_identity_signature(cose, trust)
    check_secure_identity(identity, trust, now)
    return identity


def verify_secure_identity_signature(cose: bytes, trust: CardTrust) -> VerifiedIdentity:
    """The first half of :func:`verify_secure_identity`: signature under an issuer key with the key-bound
    AAD, strict claims, a card key present. Says nothing about the deny list or validity.

    :param cose: the record's exact bytes.
    :raises BadSignature | MalformedCose | UnknownKid | RevokedKid | AlgorithmNotAllowed: signature.
    :raises ClaimsError: malformed claims, or no ``card_public_key`` (not a secure identity).
    """
    peek = _peek_binding(cose)
    if peek is None:
        raise ClaimsError("identity names no card key: not a secure card's record")
    verified = verify1(cose, trust.resolver(KeyRole.ISSUER), secure_identity_aad(*peek))
    claims = IdentityClaims.from_cbor(verified.payload)
    if claims.card_public_key is None:  # the peek read the same bytes; kept for the type checker
        raise ClaimsError("identity names no card key")
    return VerifiedIdentity(verified, claims)


def check_secure_identity(identity: VerifiedIdentity, trust: CardTrust, now: int) -> None:
    """The second half of :func:`verify_secure_identity`: the deny list (card id only), then validity.

    :param identity: from :func:`verify_secure_identity_signature`.
    :param now: POSIX seconds (UTC).
    :raises DeniedCard: the card id is on the deny list (carrying the verified identity, ``uid`` :data:`NO_UID`).
    :raises Expired | NotYetValid: outside the validity window.
    """
    claims = identity.claims
    trust.check_card(claims, identity.cose.kid, NO_UID)  # after the signature: the DeniedCard carries verified claims
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if today < claims.valid_from:
        raise NotYetValid(f"card valid from {claims.valid_from.isoformat()}")
    if today > claims.valid_to:
        raise Expired(f"card expired on {claims.valid_to.isoformat()}")


@dataclass(frozen=True)
class SecureCardRecords:
    """A secure card's verified identity and the state it holds.

    :ivar identity: the issuer-verified identity (names the card key).
    :ivar state: the verified state record (exact bytes in ``state.message``).
    :ivar claims: its claims.
    """

    identity: VerifiedIdentity
    state: VerifiedSign1
    claims: SlotClaims

    @property
    def card_id(self) -> bytes:
        return self.identity.claims.card_id

    @property
    def card_public_key(self) -> bytes:
        """The identity's compressed P-256 card key (33 B)."""
        key = self.identity.claims.card_public_key
        assert key is not None  # verify_secure_identity refuses an identity without one
        return key

    @property
    def state_hash(self) -> bytes:
        """8-byte :func:`state_hash` of the state record (the next state's ``prev_hash``)."""
        return state_hash(self.state.message)

    def remaining_in(self, cycle: int) -> dict[int, int]:
        """Amounts left per programme in *cycle* (programme unit); a later cycle starts full.

        :raises RedemptionRefused: *cycle* is earlier than the card's.
        """
        if cycle < self.claims.cycle:
            raise RedemptionRefused(f"card is already in cycle {self.claims.cycle}, terminal asked for {cycle}")
        if cycle > self.claims.cycle:
            return {pid: p.per_cycle for pid, p in self.identity.claims.programmes.items()}
        return dict(self.claims.remaining)

    def prepare_redemption(self, *, signer: Signer, cycle: int, amounts: Mapping[int, int], terminal_id: int,
                           terminal_seq: int, now: int, card_counter: int) -> SecurePendingWrite:
        """Build and sign the next state (seq + 1), docs/card-format.md §6 for the secure profile.

        :param amounts: programme id -> amount (programme unit, ≥ 1).
        :param terminal_id: uint32 slot terminal id; :param terminal_seq: journal seq of the PENDING entry.
        :param now: POSIX seconds UTC.
        :param card_counter: the transaction counter the card signed in this tap (slot claim 7, ≤ 2^24-1).
        :raises RedemptionRefused: unknown programme, amount < 1 or above what is left, earlier cycle.
        :raises ClaimsError: the counter does not fit claim 7.
        """
        remaining = self.remaining_in(cycle)
        if not amounts:
            raise RedemptionRefused("nothing to redeem")
        for pid, amount in amounts.items():
            if pid not in remaining:
                raise RedemptionRefused(f"card is not in programme {pid}")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1 or amount > remaining[pid]:
                raise RedemptionRefused(f"programme {pid}: {amount!r} asked, {remaining[pid]} left")
            remaining[pid] -= amount
        claims = SlotClaims(seq=self.claims.seq + 1, cycle=cycle, remaining=remaining, terminal_id=terminal_id,
                            terminal_seq=terminal_seq, time=now, nfc_counter=card_counter, prev_hash=self.state_hash)
        cose = sign1_with(signer, claims.to_cbor(),
                          secure_slot_aad(self.card_id, self.card_public_key, self.identity.hash))
        return SecurePendingWrite(self.card_id, claims.seq, cose, self.state_hash, dict(amounts), cycle)


def verify_secure_state(record: bytes, identity: VerifiedIdentity, trust: CardTrust) -> SecureCardRecords:
    """Verify the state record a secure card holds (GET DATA state, docs/secure-card.md §4).

    :param record: the exact stored bytes.
    :param identity: the card's verified identity (from :func:`verify_secure_identity`).
    :raises UnknownKid | RevokedKid | AlgorithmNotAllowed: signed by a key this terminal cannot accept.
    :raises NoValidState: torn, garbled, forged, or amounts above the entitlement.
    """
    key = identity.claims.card_public_key
    if key is None:
        raise ClaimsError("identity names no card key")
    try:
        verified = verify1(record, trust.resolver(KeyRole.TERMINAL),
                           secure_slot_aad(identity.claims.card_id, key, identity.hash))
        claims = SlotClaims.from_cbor(verified.payload)
    except (UnknownKid, RevokedKid, AlgorithmNotAllowed):
        raise  # as on NTAG: never fall back to treating a newer state as damaged
    except (ClaimsError, CoseError) as exc:
        raise NoValidState((CorruptSlot("card", f"does not verify: {exc}", exc),)) from exc
    programmes = identity.claims.programmes
    for pid, amount in claims.remaining.items():
        if pid not in programmes or amount > programmes[pid].per_cycle:
            raise NoValidState((CorruptSlot("card", f"remaining {amount} for programme {pid} above the entitlement"),))
    if claims.seq == 0 and claims.prev_hash != identity.hash:
        raise NoValidState((CorruptSlot("card", "issuance state does not chain to the identity record"),))
    return SecureCardRecords(identity, verified, claims)


@dataclass(frozen=True)
class SecurePendingWrite:
    """What the counter journals before UPDATE STATE (enough to decide the outcome on the next tap).

    :ivar card_id: 8 bytes. :ivar seq: the new state's seq. :ivar cose: its exact bytes.
    :ivar base_hash: 8-byte hash of the state it follows. :ivar amounts: programme id -> amount.
    :ivar cycle: cycle id of the redemption.
    """

    card_id: bytes
    seq: int
    cose: bytes
    base_hash: bytes
    amounts: Mapping[int, int]
    cycle: int

    @property
    def new_hash(self) -> bytes:
        """8-byte hash of the new state."""
        return state_hash(self.cose)

    def to_cbor(self) -> bytes:
        """The blob kept with the PENDING journal entry.

        The NTAG write's fields in the same places (``[uid, card_id, slot, seq, cose, base_hash,
        amounts, cycle, ...]``), with ``"secure"`` for the UID and ``"card"`` for the slot, so the
        journal audit finds the record bytes where it finds an NTAG write's.
        """
        return cbor2.dumps(["secure", self.card_id, "card", self.seq, self.cose, self.base_hash, dict(self.amounts),
                            self.cycle])

    @classmethod
    def from_cbor(cls, blob: bytes) -> SecurePendingWrite:
        """Decode :meth:`to_cbor`.

        :raises ClaimsError: not a secure pending write.
        """
        try:
            tag, card_id, _slot, seq, cose, base, amounts, cycle = cbor2.loads(blob)
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
            raise ClaimsError(f"not a secure pending write: {exc}") from exc
        if tag != "secure":
            raise ClaimsError("not a secure pending write")
        return cls(card_id, seq, cose, base, amounts, cycle)


class SecureRecovery(enum.Enum):
    """What the card's state says about a journalled UNCERTAIN write (docs/card-format.md §6)."""

    FINISHED = "finished"
    VOIDED = "voided"
    DEFERRED = "deferred"


def decide_secure_recovery(card: SecureCardRecords, pending: SecurePendingWrite) -> tuple[SecureRecovery, str]:
    """Decide an UNCERTAIN write from the state the card holds now.

    UPDATE STATE is one card transaction (docs/secure-card.md §5.2), so a torn update
    left either the old state (VOIDED) or the new one (FINISHED); a card that moved two
    or more states on elsewhere is DEFERRED to the server's chain.

    :returns: the decision and a short note for the journal.
    """
    cur = card.claims
    if card.state.message == pending.cose:
        return SecureRecovery.FINISHED, f"state {pending.seq} is on the card"
    if cur.seq <= pending.seq:
        note = f"card at seq {cur.seq}; state {pending.seq} never landed"
        if cur.seq != pending.seq - 1 or card.state_hash != pending.base_hash:
            note += " (card is not at the base state)"
        return SecureRecovery.VOIDED, note
    if cur.seq == pending.seq + 1:
        if cur.prev_hash == pending.new_hash:
            return SecureRecovery.FINISHED, f"seq {cur.seq} chains to state {pending.seq}"
        return SecureRecovery.VOIDED, f"seq {cur.seq} chains to another state {pending.seq}"
    return SecureRecovery.DEFERRED, f"card moved on to seq {cur.seq}; server reconciliation decides"


def issue_secure_records(identity: IdentityClaims, issuer: Signer, station: Signer, *, cycle: int, now: int,
                         station_id: int, remaining: Mapping[int, int] | None = None) -> tuple[bytes, bytes]:
    """Sign a secure card's identity and its genesis state (seq 0), docs/card-format.md §5.1.

    :param identity: claims naming the card key (``card_public_key``), ``uid`` :data:`NO_UID`, no PIN verifier.
    :param issuer: signs the identity; :param station: the station's terminal key, signs the genesis state.
    :param cycle: first entitlement cycle id; :param now: POSIX seconds UTC.
    :param station_id: the genesis state's ``terminal_id`` (uint32).
    :param remaining: a re-issued card's remaining entitlement (default: the full per-cycle amounts).
    :returns: ``(identity COSE bytes, genesis COSE bytes)``.
    :raises ClaimsError: no card key, a chip UID, or a PIN verifier in the claims.
    """
    if identity.card_public_key is None or identity.uid != NO_UID or identity.pin is not None:
        raise ClaimsError("a secure identity names the card key, has no chip UID and no PIN verifier")
    identity_cose = sign1_with(issuer, identity.to_cbor(), identity_aad_of(identity))
    id_hash = state_hash(identity_cose)
    amounts = dict(remaining) if remaining is not None else {
        pid: p.per_cycle for pid, p in identity.programmes.items()}
    genesis = SlotClaims(seq=0, cycle=cycle, remaining=amounts, terminal_id=station_id, terminal_seq=0, time=now,
                         nfc_counter=0, prev_hash=id_hash)
    genesis_cose = sign1_with(station, genesis.to_cbor(),
                              secure_slot_aad(identity.card_id, identity.card_public_key, id_hash))
    return identity_cose, genesis_cose
