"""Turn one `secure` card (our application in initialisation state) into a beneficiary card.

Steps (docs/secure-card.md §6, docs/card-format.md §5.1):

1. **check**: SELECT our application and GET DATA card info: life cycle ``03`` and no card id
   is *blank*; ``03`` with a card id is *ours, unfinished* (finished under that card id);
   ``07`` is an issued card (refused);
2. **write**: GENERATE KEY on the card (the private key never leaves it); the issuer signs
   an identity naming the compressed public key (claim 10), with no chip UID and no PIN
   verifier, bound to card id || SHA-256(card key); the station signs the genesis state;
   PUT DATA card id, PIN-reset key, PIN, options, NDEF view, identity, the card's terminal key
   (derived from the context's card-password key: the ring's current version, :func:`secure_station_context`);
   genesis UPDATE STATE;
3. **lock**: LOCK (life cycle ``07``; no way back);
4. **verify**: the card as a counter sees it: identity read back and verified with the
   station's trust bundle, INTERNAL AUTHENTICATE under the certified key over the genesis
   state, EXTERNAL AUTHENTICATE with the terminal key (the card takes counters' proofs),
   operational, PIN set.

A card interrupted before LOCK is simply personalised again (GENERATE KEY replaces the key,
so an identity signed for the earlier key names a private key that no longer exists).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardlib import ndef as ndef_codec
from cardlib.errors import CardlibError
from cardlib.provision.card import StationContext, Step
from cardlib.provision.errors import (
    AlreadyIssued,
    ChipNotBlank,
    ChipRejected,
    IssuanceInterrupted,
    ReadBackMismatch,
    StationInputError,
    WrongChip,
)
from cardlib.provision.households import Household
from cardlib.provision.session import SessionGrant, check_quota
from cardlib.provision.state import BatchState, CardRecord, Event
from cardlib.records.access import CardPasswordKeys
from cardlib.records.claims import IdentityClaims, state_hash
from cardlib.records.errors import RecordError
from cardlib.records.secure import NO_UID, issue_secure_records, verify_secure_identity, verify_secure_state
from cardlib.secure import LifeCycle, SecureCardSession, SecureProtocolError, compress_point, terminal_card_key
from cardlib.secure.protocol import Flag
from cardlib.transport.errors import SessionLost

if TYPE_CHECKING:
    from cardlib.provision.batch import CardOutcome

__all__ = [
    "DEFAULT_NDEF_URL",
    "SecureCardState",
    "SecureCheck",
    "SecureIssuedCard",
    "check_secure_card",
    "personalise_secure",
    "pin_reset_point",
    "provision_secure_card",
    "public_ndef_message",
    "secure_station_context",
]

_log = logging.getLogger(__name__)

#: Where a holder checks a balance; the NDEF view carries nothing personal (docs/secure-card.md §8).
DEFAULT_NDEF_URL = "https://huma.example.id/saldo"


class SecureCardState(str, enum.Enum):
    BLANK = "blank"
    OURS_UNFINISHED = "ours, unfinished"
    OURS_COMPLETE = "ours, locked"


@dataclass(frozen=True)
class SecureCheck:
    """Outcome of step 1. :ivar existing_card_id: the card id PUT DATA stored, if any."""

    state: SecureCardState
    existing_card_id: bytes | None = None


@dataclass(frozen=True)
class SecureIssuedCard:
    """A finished secure card.

    :ivar card_id: 8 bytes. :ivar uid: :data:`~cardlib.records.secure.NO_UID` (no chip UID).
    :ivar identity_hash: 8-byte state_hash of the identity. :ivar issuer_kid: its signer.
    :ivar identity_cose: the identity's exact bytes. :ivar card_public_key: compressed P-256 (33).
    :ivar genesis_cose: the genesis state's exact bytes (for the issuance file).
    """

    card_id: bytes
    identity_hash: bytes
    issuer_kid: bytes
    identity_cose: bytes
    card_public_key: bytes
    uid: bytes = NO_UID
    genesis_cose: bytes = b""


def public_ndef_message(url: str = DEFAULT_NDEF_URL) -> bytes:
    """The public NDEF view (docs/secure-card.md §8): a URI record and a Text record, nothing personal."""
    import ndef

    return ndef_codec.encode_message([
        ndef.UriRecord(url),
        ndef.TextRecord("Kartu Huma Betang - cek saldo di kantor kecamatan", "id"),
    ])


def pin_reset_point(ctx: StationContext, pin_reset_key: ec.EllipticCurvePublicKey | None) -> bytes:
    """The P-256 key the card stores for issuer-signed PIN resets (docs/secure-card.md §5.4, §6.2), 65 bytes.

    :param pin_reset_key: the district office's reset key; None takes the issuer key when it is P-256.
    :raises StationInputError: no reset key and the issuer key is not P-256 (e.g. Ed25519).
    """
    key = pin_reset_key
    if key is None:
        issuer_public = ctx.issuer.public_key
        if not isinstance(issuer_public, ec.EllipticCurvePublicKey):
            raise StationInputError("the issuer key is not P-256: give the PIN-reset key (--pin-reset-key)")
        key = issuer_public
    if not isinstance(key.curve, ec.SECP256R1):
        raise StationInputError("the PIN-reset key must be a P-256 key")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def secure_station_context(ctx: StationContext, ring: CardPasswordKeys | None) -> StationContext:
    """The station context for secure cards: the card-access key is the key ring's current version.

    Counters prove themselves to a secure card with a key derived from the card-password key ring they
    hold (docs/secure-card.md §5.5), so the card gets its terminal key from the ring's current
    version, whatever NTAG card format the station writes.

    :param ring: the ``--card-keys`` key ring, or None.
    :raises StationInputError: no key ring: a secure card made without it could never be written by a counter.
    """
    if ring is None:
        raise StationInputError("secure cards need the card-password key ring counters hold: --card-keys FILE "
                                "(docs/secure-card.md §5.5)")
    return dataclasses.replace(ctx, password_secret=ring.keys[ring.current], password_key_version=ring.current)


def check_secure_card(session: SecureCardSession) -> SecureCheck:
    """Step 1: SELECT and GET DATA card info (docs/secure-card.md §3, §4).

    :raises WrongChip: the card has no secure application.
    :raises ChipNotBlank: an issued (locked) card.
    """
    try:
        session.select()
    except SecureProtocolError as exc:
        raise WrongChip(f"card has no secure application (SW {exc.sw:04X})", NO_UID) from exc
    info = session.card_info()
    if info.life_cycle is LifeCycle.OPERATIONAL:
        raise AlreadyIssued(f"card {info.card_id.hex()} is already issued (locked)", NO_UID)
    if info.flags & Flag.CARD_ID_PRESENT:
        return SecureCheck(SecureCardState.OURS_UNFINISHED, info.card_id)
    return SecureCheck(SecureCardState.BLANK)


def personalise_secure(
    session: SecureCardSession,
    ctx: StationContext,
    household: Household,
    card_id: bytes,
    *,
    pin: str,
    pin_reset_key: bytes,
    pin_required: bool = False,
    ndef_message: bytes | None = None,
    remaining: Mapping[int, int] | None = None,
    now: int | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> SecureIssuedCard:
    """Steps 2-4 on a card that passed :func:`check_secure_card`. Journal the card id *before* calling.

    :param card_id: 8 bytes (a resumed card: the card id journalled for it).
    :param pin: the beneficiary's PIN, 4..8 digits, typed at the station or read by the CLI from --pin-file.
    :param pin_reset_key: 65-byte P-256 point of the issuer's PIN-reset key (:func:`pin_reset_point`).
    :param pin_required: the card refuses UPDATE STATE without a verified PIN (every redemption asks).
    :param ndef_message: the public NDEF view (default :func:`public_ndef_message`).
    :param remaining: a re-issued card's remaining entitlement (default: full per-cycle amounts).
    :param now: POSIX seconds UTC (default: now).
    :raises IssuanceInterrupted: the card left the field; journal it as interrupted.
    :raises ReadBackMismatch: the card does not verify as issued.
    :raises ChipNotBlank: the card refused a personalisation command.
    :raises ValueError: a PIN that is not 4..8 digits (nothing sent).
    """
    now = int(dt.datetime.now(dt.UTC).timestamp()) if now is None else now
    step = Step.WRITE

    def enter(s: Step) -> None:
        nonlocal step
        step = s
        if on_step is not None:
            on_step(s)

    try:
        enter(Step.WRITE)
        session.select()
        point = session.generate_key()
        key = compress_point(point)
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        claims = IdentityClaims(
            card_id=card_id, household_ref=household.household_ref, region=household.region,
            programmes={pid: ctx.profile.programmes[pid] for pid in household.programmes},
            valid_from=today, valid_to=today + dt.timedelta(days=ctx.profile.valid_days),
            offline_cap={pid: ctx.profile.offline_cap[pid] for pid in household.programmes},
            uid=NO_UID, pin=None, card_public_key=key,
        )
        identity_cose, genesis_cose = issue_secure_records(
            claims, ctx.issuer, ctx.station, cycle=ctx.profile.cycle_at(now), now=now, station_id=ctx.terminal_id,
            remaining=remaining)
        terminal_key = (ctx.password_key_version, terminal_card_key(ctx.password_secret, card_id))
        session.personalise(card_id=card_id, issuer_key=pin_reset_key, pin=pin, pin_required=pin_required,
                            ndef_message=ndef_message or public_ndef_message(), identity=identity_cose,
                            genesis_state=genesis_cose, terminal_key=terminal_key, lock=False)
        enter(Step.LOCK)
        session.lock()
        enter(Step.VERIFY)
        return _verify(session, ctx, card_id, identity_cose, genesis_cose, now, terminal_key[1])
    except SessionLost as exc:
        raise IssuanceInterrupted(NO_UID, card_id, step.value) from exc
    except SecureProtocolError as exc:
        raise ChipNotBlank(f"card refused a command during '{step.value}': {exc}", NO_UID) from exc


def _verify(session: SecureCardSession, ctx: StationContext, card_id: bytes, identity_cose: bytes,
            genesis_cose: bytes, now: int, terminal_key: bytes) -> SecureIssuedCard:
    """Step 4: what a counter will do (SELECT, identity, state, INTERNAL and EXTERNAL AUTHENTICATE), plus card info.

    :raises ReadBackMismatch: any difference.
    """
    info_fci = session.select()
    read = session.read_identity()
    if read != identity_cose:
        raise ReadBackMismatch(f"card {card_id.hex()}: identity read back differs")
    try:
        identity = verify_secure_identity(read, ctx.trust, now)
        key = identity.claims.card_public_key
        assert key is not None
        verified = session.verify_card(key, card_id, select=False)
        state = verify_secure_state(verified.state.state, identity, ctx.trust)
        if info_fci.terminal_key_version != ctx.password_key_version:
            raise ReadBackMismatch(f"card {card_id.hex()} names card-access key version "
                                   f"{info_fci.terminal_key_version}, not {ctx.password_key_version}")
        session.external_authenticate(terminal_key, card_id)
    except (RecordError, CardlibError) as exc:
        if isinstance(exc, SessionLost):
            raise
        raise ReadBackMismatch(f"card {card_id.hex()} does not verify after issuance: {exc}") from exc
    if verified.state.state != genesis_cose or state.claims.seq != 0 or verified.state.seq != 0:
        raise ReadBackMismatch(f"card {card_id.hex()}: genesis state read back differs")
    info = session.card_info()
    if info.life_cycle is not LifeCycle.OPERATIONAL or not info.flags & Flag.PIN_SET or info.card_id != card_id:
        raise ReadBackMismatch(f"card {card_id.hex()}: life cycle {info.life_cycle.name}, flags {int(info.flags):02X}")
    _log.info("issued secure card %s", card_id.hex())
    return SecureIssuedCard(card_id, state_hash(identity_cose), identity.cose.kid, identity_cose, key,
                            genesis_cose=genesis_cose)


def provision_secure_card(
    session: SecureCardSession,
    ctx: StationContext,
    household: Household,
    state: BatchState,
    *,
    pin: str,
    pin_reset_key: bytes,
    pin_required: bool = False,
    grant: SessionGrant | None = None,
    reissue_of: bytes | None = None,
    remaining: Mapping[int, int] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> CardOutcome:
    """Check one secure card and make it this household's card, journalling every card id (as for NTAG).

    A card left unfinished (life cycle ``03`` with a card id) is finished under the card id
    the batch journal holds for it. Records carry :data:`~cardlib.records.secure.NO_UID`.

    :returns: ISSUED with the card, or REJECTED (nothing written; present another card).
    :raises IssuanceInterrupted: the card left the field after writing began (journalled).
    :raises QuotaExceeded: the grant allows no more card ids.
    """
    from cardlib.provision.batch import CARD_ID_BYTES, CardOutcome

    ref = household.ref_hex
    try:
        check = check_secure_card(session)
    except ChipRejected as exc:
        state.rejected(household.line, ref, NO_UID, str(exc))
        return CardOutcome(household, NO_UID, Event.REJECTED, detail=str(exc))
    except SessionLost as exc:
        raise IssuanceInterrupted(b"", b"", Step.CHECK.value) from exc
    rec: CardRecord | None = None
    if check.existing_card_id is not None:
        rec = next((r for r in state.unfinished() if r.card_id == check.existing_card_id.hex()), None)
        if rec is None:
            why = f"card carries unfinished card id {check.existing_card_id.hex()} of another batch"
            state.rejected(household.line, ref, NO_UID, why)
            return CardOutcome(household, NO_UID, Event.REJECTED, detail=why)
        if rec.household_ref != ref:
            household = Household(rec.line, bytes.fromhex(rec.household_ref), rec.region, household.programmes)
    else:
        check_quota(grant, state.used)
        rec = state.started(household.line, ref, os.urandom(CARD_ID_BYTES), NO_UID, household.region,
                            ctx.issuer.kid, reissue_of)
    try:
        card = personalise_secure(session, ctx, household, bytes.fromhex(rec.card_id), pin=pin,
                                  pin_reset_key=pin_reset_key, pin_required=pin_required, remaining=remaining,
                                  on_step=on_step)
    except IssuanceInterrupted as exc:
        state.finish(rec, Event.INTERRUPTED, step=exc.step, detail=str(exc))
        raise
    except ChipRejected as exc:
        state.finish(rec, Event.ABANDONED, detail=str(exc))
        return CardOutcome(household, NO_UID, Event.REJECTED, detail=str(exc))
    state.finish(rec, Event.ISSUED, identity_hash=card.identity_hash, identity=card.identity_cose,
                 genesis=card.genesis_cose)
    return CardOutcome(household, NO_UID, Event.ISSUED, card)
