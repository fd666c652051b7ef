"""The office PIN reset (fallback step 3, docs/fallback.md §Step 3): unlock a card, never re-issue one.

A technician at the district office checks the holder's papers, puts the card on the
station's reader and runs ``huma provision pin-reset``. What the reset can change depends on
where the card keeps its PIN:

- **NTAG format 2, PIN claim version 3** (cards issued from issue 18 on, docs/card-format.md
  §3.2): the PIN is a keyed PIN record on the private pages, outside the signed identity. The
  reset writes a record for the new PIN at the card's epoch + 1 and the count 0
  (:func:`cardlib.records.pin.set_pin`, read back), with the card's PIN key from the
  provincial ring: a forgotten PIN gets a new one, no re-issue. Without a new PIN it only
  clears the count (a holder locked out by wrong tries who remembers the PIN).
- **NTAG format 2, PIN claim version 2** (cards issued before): the verifier is a claim of the
  issuer-signed identity record, whose pages are locked for good at issuance (static lock
  bits over pages 3-15, dynamic lock granules below slot A, NTAG213/215/216 datasheet §8.5),
  and every slot binds the identity's hash. The reset sets the failed-PIN count to 0
  (:func:`cardlib.records.pin.reset_attempts`) and **keeps the PIN**; asked for a new PIN it
  refuses before writing. A holder who forgot that PIN needs a re-issue
  (``huma provision card --reissue-of``).
- **NTAG format 1**: no count is kept (no private page); nothing to reset, refused.
- **Secure cards** (docs/secure-card.md §5.4): the PIN lives in the card's applet, which
  accepts a new PIN and a fresh try counter in RESET RETRY COUNTER signed by the card's
  PIN-reset key (the issuer key when it is P-256), with an issuer counter above the last
  one the card accepted (no replay).

Before anything is written the card is read and verified like at a counter: the identity
under the station's trust bundle (issuer key, deny list, validity), and for a secure card
its on-card key answers a fresh challenge (a clone is not reset). Then ``before_write`` gets
the :class:`PinResetIntent` (the CLI journals it durably as ``pin_reset_started``); if it
raises, nothing is written to the card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cardlib.keys.signer import Signer
from cardlib.provision.errors import ProvisionError, StationInputError
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import TrustBundle
from cardlib.records.claims import check_pin_digits
from cardlib.records.errors import RecordError
from cardlib.records.pin import MAX_EPOCH, read_failures, read_record, reset_attempts, set_pin
from cardlib.records.secure import NO_UID, verify_secure_identity
from cardlib.records.session import CardSession
from cardlib.secure.protocol import PIN_TRIES, check_pin_format, pin_reset_message
from cardlib.secure.session import SecureCardSession
from cardlib.type2.tag import Type2Tag

__all__ = ["PinResetIntent", "PinResetRefused", "PinResetResult", "reset_ntag_pin", "reset_secure_pin",
           "signed_pin_reset"]

_log = logging.getLogger(__name__)
#: ES256 signature ``r || s`` as :meth:`Signer.sign` returns it, bytes per coordinate.
_P256_COORD = 32


class PinResetRefused(ProvisionError):
    """The card on the reader cannot be reset here (not ours, does not verify, format 1, no PIN)."""


@dataclass(frozen=True)
class PinResetResult:
    """What the reset did.

    :ivar card_id: 8 bytes. :ivar uid: 7 bytes (:data:`NO_UID` for a secure card).
    :ivar household_ref: 8 bytes, from the verified identity.
    :ivar card_profile: ``"ntag"`` or ``"secure"``.
    :ivar failures_before: wrong PINs counted before the reset (NTAG: the page's count,
        255 for a damaged page; secure: :data:`PIN_TRIES` minus the tries left).
    :ivar pin_changed: True when the card now takes a new PIN (secure cards, NTAG cards with a PIN record).
    :ivar pin_epoch: NTAG card with a PIN record: its epoch after the reset; None otherwise.
    :ivar epoch_before: NTAG card with a PIN record: the epoch found on it (None: garbled or no record).
    """

    card_id: bytes
    uid: bytes
    household_ref: bytes
    card_profile: str
    failures_before: int
    pin_changed: bool
    pin_epoch: int | None = None
    epoch_before: int | None = None


@dataclass(frozen=True)
class PinResetIntent:
    """What a reset is about to write, given to ``before_write`` after the card verified, before any write.

    :ivar card_id: 8 bytes. :ivar uid: 7 bytes (:data:`NO_UID` for a secure card).
    :ivar household_ref: 8 bytes. :ivar card_profile: ``"ntag"`` or ``"secure"``.
    :ivar pin_changed: a new PIN is about to be set (else the count only).
    :ivar pin_epoch: NTAG PIN record: the epoch about to be written (count only: the card's); else None.
    :ivar epoch_before: NTAG PIN record: the epoch found on the card (None: garbled or none).
    """

    card_id: bytes
    uid: bytes
    household_ref: bytes
    card_profile: str
    pin_changed: bool
    pin_epoch: int | None = None
    epoch_before: int | None = None


def _no_journal(_intent: PinResetIntent) -> None:
    return None


def reset_ntag_pin(tag: Type2Tag, trust: TrustBundle, passwords: CardPasswordKeys, now: int,
                   new_pin: Callable[[], str] | None = None, *, require_new_pin: bool = False,
                   min_epoch: int | Callable[[bytes], int] = 0,
                   before_write: Callable[[PinResetIntent], None] = _no_journal) -> PinResetResult:
    """Verify a format-2 NTAG card, then give it a new PIN (PIN record) or clear its failed-PIN count.

    Commands: PWD_AUTH and the reads of :meth:`CardSession.read_state`, one READ of the count;
    then either WRITE (count 0) and its read-back, or, for a new PIN, a READ of the PIN record,
    WRITE, WRITE (record), WRITE (count 0) and one FAST_READ back.

    :param passwords: the provincial card-password key ring (every version cards may carry).
    :param now: POSIX seconds UTC (identity validity).
    :param new_pin: asked only once the card verified and keeps a PIN record (a version-3 claim):
        returns the new 6-digit PIN. None: clear the count only, the PIN stays.
    :param require_new_pin: refuse (nothing written) a card whose PIN cannot change (version 2).
    :param min_epoch: the new epoch is at least this, or a function of the card id giving it (the
        CLI: 1 + the last epoch the station journalled for the card), so a garbled or rolled-back
        record never brings an epoch back.
    :param before_write: called once the card verified and the new PIN is known, before the first
        chip write (the CLI journals the intent durably); what it raises propagates, nothing written.
    :raises PinResetRefused: the card does not verify under ``trust``, is format 1, has no PIN,
        cannot take a new PIN though one was required, or its PIN epoch is used up (255).
    :raises ClaimsError: the new PIN is not 6 digits (nothing written).
    :raises LayoutError: the count or record does not read back as written.
    :raises CardlibError: (tag/transport subclasses) the card link failed.
    """
    session = CardSession(tag, trust, passwords=passwords)
    try:
        state = session.read_state(now)
    except RecordError as exc:
        raise PinResetRefused(f"card {tag.uid.hex().upper()} does not verify as one of ours: {exc}") from exc
    claims = state.identity.claims
    if state.layout.version != 2:
        raise PinResetRefused(f"card {claims.card_id.hex()} is format 1: it keeps no failed-PIN count to reset "
                              "(a forgotten PIN needs a re-issue)")
    if claims.pin is None:
        raise PinResetRefused(f"card {claims.card_id.hex()} has no PIN")
    if not claims.pin.on_card and require_new_pin:
        raise PinResetRefused(f"card {claims.card_id.hex()} keeps its PIN in its signed identity (PIN version "
                              f"{claims.pin.version}): it cannot take a new one (a forgotten PIN needs a re-issue; "
                              "without a new PIN the failed-PIN count is cleared)")
    before = read_failures(tag, state.layout)
    if claims.pin.on_card and new_pin is not None:
        assert session.public is not None  # format 2
        old = read_record(tag)
        floor = min_epoch(claims.card_id) if callable(min_epoch) else min_epoch
        epoch = max((old.epoch if old is not None else 0) + 1, floor)
        if epoch > MAX_EPOCH:
            raise PinResetRefused(f"card {claims.card_id.hex()}: PIN epoch {MAX_EPOCH} used up (re-issue the card)")
        pin = new_pin()
        check_pin_digits(pin)  # a mistyped PIN is refused before the intent is journalled
        before_write(PinResetIntent(claims.card_id, tag.uid, claims.household_ref, "ntag", True, epoch,
                                    old.epoch if old is not None else None))
        record = set_pin(tag, state.layout, claims.pin, pin, claims.card_id, tag.uid,
                         passwords.pin_key(session.public.key_version, tag.uid), epoch)
        _log.info("card %s: new PIN, epoch %s -> %d, %d failed tries cleared", claims.card_id.hex(),
                  old.epoch if old is not None else "garbled", record.epoch, before)
        return PinResetResult(claims.card_id, tag.uid, claims.household_ref, "ntag", before, True, record.epoch,
                              old.epoch if old is not None else None)
    epoch_now = None
    if claims.pin.on_card:
        rec = read_record(tag)
        epoch_now = rec.epoch if rec is not None else None
    before_write(PinResetIntent(claims.card_id, tag.uid, claims.household_ref, "ntag", False, epoch_now, epoch_now))
    reset_attempts(tag, state.layout)
    _log.info("card %s: failed-PIN count %d reset to 0", claims.card_id.hex(), before)
    return PinResetResult(claims.card_id, tag.uid, claims.household_ref, "ntag", before, False, epoch_now, epoch_now)


def signed_pin_reset(signer: Signer, card_id: bytes, pin: str, issuer_counter: int) -> bytes:
    """RESET RETRY COUNTER data signed by a :class:`Signer` (file or PKCS#11), docs/secure-card.md §5.4.

    Like :func:`cardlib.secure.protocol.sign_pin_reset`, for a key that is not in memory.

    :param signer: the card's PIN-reset key, ES256 (P-256).
    :param card_id: 8 bytes. :param pin: the new PIN, 4..8 digits.
    :param issuer_counter: above the card's last accepted counter, uint32.
    :returns: ``issuer counter (4) || len (1) || PIN || DER signature``.
    :raises StationInputError: the signer is not a P-256 key.
    :raises ValueError: malformed argument.
    """
    from cardlib.records.cose import Algorithm

    if signer.alg is not Algorithm.ES256:
        raise StationInputError("the PIN-reset key must be a P-256 key (the issuer key is not: "
                                "give --pin-reset-signer)")
    raw = signer.sign(pin_reset_message(card_id, pin, issuer_counter))
    der = encode_dss_signature(int.from_bytes(raw[:_P256_COORD], "big"), int.from_bytes(raw[_P256_COORD:], "big"))
    digits = check_pin_format(pin)
    return issuer_counter.to_bytes(4, "big") + bytes((len(digits),)) + digits + der


def reset_secure_pin(session: SecureCardSession, trust: TrustBundle, signer: Signer, new_pin: str,
                     now: int, *, before_write: Callable[[PinResetIntent], None] = _no_journal) -> PinResetResult:
    """Set a new PIN on a secure card and give it its tries back, with the issuer-signed reset.

    APDUs: SELECT, GET DATA identity, GET DATA state, INTERNAL AUTHENTICATE, GET DATA card
    info, RESET RETRY COUNTER, GET DATA card info (check).

    :param signer: the card's PIN-reset key (P-256; the issuer key unless the card was issued
        with ``--pin-reset-key``).
    :param new_pin: 4..8 digits.
    :param before_write: called once the card verified, before RESET RETRY COUNTER (the CLI
        journals the intent durably); what it raises propagates, nothing sent.
    :raises PinResetRefused: the identity or the card key does not verify, or the card refused
        the signed reset (another PIN-reset key).
    :raises StationInputError: ``signer`` is not P-256.
    :raises ValueError: ``new_pin`` is not 4..8 digits (nothing sent).
    :raises CardlibError: (transport subclasses) the card link failed.
    """
    from cardlib.secure.errors import SecureCardError

    check_pin_format(new_pin)
    try:
        session.select()
        identity = verify_secure_identity(session.read_identity(), trust, now)
        card_id = identity.claims.card_id
        key = identity.claims.card_public_key
        assert key is not None  # verify_secure_identity refuses an identity without one
        session.verify_card(key, card_id, select=False)
        info = session.card_info()
    except (RecordError, SecureCardError) as exc:
        raise PinResetRefused(f"secure card does not verify as one of ours: {exc}") from exc
    if info.card_id != card_id:
        raise PinResetRefused(f"card says it is {info.card_id.hex()}, its identity says {card_id.hex()}")
    data = signed_pin_reset(signer, card_id, new_pin, info.issuer_counter + 1)
    before_write(PinResetIntent(card_id, NO_UID, identity.claims.household_ref, "secure", True))
    try:
        session.reset_pin(data)
    except SecureCardError as exc:
        raise PinResetRefused(f"card {card_id.hex()} refused the signed PIN reset ({exc}): "
                              "is this the card's PIN-reset key?") from exc
    after = session.card_info()
    if after.issuer_counter != info.issuer_counter + 1:
        raise PinResetRefused(f"card {card_id.hex()}: issuer counter {after.issuer_counter} after the reset")
    _log.info("secure card %s: PIN reset (%d tries were left)", card_id.hex(), info.pin_tries)
    spent = max(0, PIN_TRIES - info.pin_tries)
    return PinResetResult(card_id, NO_UID, identity.claims.household_ref, "secure", spent, True)
