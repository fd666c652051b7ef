"""One tap of a `secure` card (docs/secure-card.md §7), side by side with the NTAG tap.

The same steps as :mod:`terminal.tap` with the card's own guarantees in place of the
NTAG's two slots:

1. SELECT our application (a Type 4 card without it is not ours), GET DATA identity,
   verify its signature (issuer key, the key-bound AAD of docs/card-format.md §5.1); a card
   the station never locked (life cycle not operational: it still takes a new PIN or key from anybody)
   is declined ``card_state_invalid``;
2. GET DATA state and INTERNAL AUTHENTICATE with a fresh nonce: the card proves the key
   the identity names over its counter, seq and state hash. A copy without the private
   key is declined offline (``clone_check_failed``); a counter not above the last one this
   terminal journalled for the card is declined (``card_counter_repeated``). Only then the deny
   list and validity: the identity is public, so a ``card_denied`` names only a card that proved its
   key, never a replayed copy (red team round 7; an honest tap sends the same APDUs); a state signed by a
   terminal key revoked after it wrote it is served at the stale floor, one signed at or after
   the revocation is declined ``revoked_key`` (:mod:`terminal.revocation`, as on NTAG);
3. an unfinished write for the card in the journal? → decide it from the state the card
   holds (UPDATE STATE is atomic on the card: old or new) and journal FINISHED / VOIDED;
4. EXTERNAL AUTHENTICATE when the tap may write: the terminal proves the card's terminal key
   (derived from the card-access key ring, docs/secure-card.md §5.5), with the PIN in the same
   APDU when the programme needs it (blocked → ``pin_blocked``); the card takes VERIFY and UPDATE
   STATE from nobody else. Then the same policy, caps and lock as NTAG; PENDING journalled and
   fsynced → UPDATE STATE (the card takes its stored seq + 1 only) → INTERNAL AUTHENTICATE, the card signing
   that it holds the new state (an unsigned read-back can be faked by a relay) → COMMIT; a tear or no signed
   confirmation → UNCERTAIN, resolved on the next presentation.

The card's transaction counter goes into every entry of the tap (the journal's NFC counter
claim; secure entries carry no tag UID, the UID of a Type 4 card may be random) and into
the signed state (slot claim 7). At most 7 APDUs for a redemption with PIN (§7).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable

from cardlib.errors import CardlibError
from cardlib.keys.signer import Signer
from cardlib.records import errors as rec
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import BundleKey, TrustBundle
from cardlib.records.claims import Unit
from cardlib.records.household_label import household_label
from cardlib.records.journal import NTAG_COUNTER_MAX, EntryKind
from cardlib.records.receipt import receipt_code
from cardlib.records.secure import (
    SecureCardRecords,
    SecurePendingWrite,
    SecureRecovery,
    check_secure_identity,
    decide_secure_recovery,
    verify_secure_identity_signature,
    verify_secure_state,
)
from cardlib.records.session import CardTrust, VerifiedIdentity
from cardlib.secure import (
    CloneSuspected,
    CounterNotIncreasing,
    LifeCycle,
    PinBlocked,
    PinNotSet,
    PinRequired,
    PinWrong,
    SecureCardSession,
    SecureProtocolError,
    StateMismatch,
    TerminalAuthFailed,
    check_record_seq,
    terminal_card_key,
)
from cardlib.secure.protocol import check_pin_format
from cardlib.transport import Connection
from cardlib.transport.errors import ReaderGone, ServiceUnavailable, SessionLost, TransportError
from firmware_config.models import CounterMode
from terminal.journal_store import CardWrite, JournalStore, StoredEntry, write_of
from terminal.outcome import Receipt, TapOutcome, TapStatus
from terminal.policy import (
    Decision,
    DeclineReason,
    DenyList,
    Exposure,
    OfflineLimits,
    PinStatus,
    ProgrammeRules,
    Request,
    card_facts,
    decide,
    decline_reason_of,
)
from terminal.revocation import RevocationGrace, revoked_writer

log = logging.getLogger(__name__)

__all__ = ["SecureTap", "is_secure_atr"]

#: PC/SC Part 3 §3.1.3.2.3.2 ATR of a contactless *storage* card (NTAG21x, Type 2): 3B 8F 80 01 80 4F 0C RID.
_STORAGE_ATR_PREFIX = bytes.fromhex("3B8F8001804F0C")
#: PC/SC Part 3 §3.1.3.2.3.1: an ISO/IEC 14443-4 card's ATR starts 3B 8n 80 01.
_ISO_DEP_TD = bytes.fromhex("8001")


def is_secure_atr(atr: bytes) -> bool:
    """Whether a PC/SC ATR is an ISO/IEC 14443-4 card (the `secure` profile's Type 4), not a Type 2 storage card.

    PC/SC Part 3 §3.1.3.2.3: a storage card's ATR carries the ``80 4F 0C`` application identifier
    (RID, standard, card name); an ISO-DEP card's carries its ATS historical bytes. An empty ATR
    (a stack without one) is taken as a Type 2 tag, the NTAG profile.
    """
    if len(atr) < 5 or atr[0] != 0x3B or atr[1] & 0xF0 != 0x80 or atr[2:4] != _ISO_DEP_TD:
        return False
    return not atr.startswith(_STORAGE_ATR_PREFIX)


#: Secure-card errors and their decline reasons, before the shared card record ones
#: (:data:`terminal.policy.RECORD_DECLINES`, the NTAG path's too).
_SECURE_DECLINES: tuple[tuple[type[Exception], DeclineReason], ...] = (
    (CounterNotIncreasing, DeclineReason.CARD_COUNTER_REPEATED),
    (CloneSuspected, DeclineReason.CLONE_CHECK_FAILED),
    (StateMismatch, DeclineReason.CLONE_CHECK_FAILED),
)
_LINK_ERRORS = (SessionLost, ReaderGone, ServiceUnavailable)


def _reason(exc: Exception) -> DeclineReason:
    return decline_reason_of(exc, _SECURE_DECLINES)


class SecureTap:
    """The secure-card flow of a :class:`terminal.tap.TapProcessor` (shares its journal, lock and key).

    :param terminal_number: the uint32 slot terminal id (the key's kid, big-endian).
    :param lock: the processor's lock (exposure read → decision → PENDING, journal order).
    :param card_keys: the card-access key ring (the card-password keys, docs/secure-card.md §5.5); without
        it (or without the card's version) the terminal cannot prove itself and declines every write.
    """

    def __init__(self, *, journal: JournalStore, signer: Signer, terminal_number: int, mode: CounterMode,
                 limits: OfflineLimits, terminal_id: str, lock: threading.Lock,
                 card_keys: CardPasswordKeys | None = None) -> None:
        self._card_keys = card_keys
        self.journal = journal
        self._signer = signer
        self._tnum = terminal_number
        self._mode = mode
        self._limits = limits
        self._terminal_id = terminal_id
        self._lock = lock

    def tap(self, conn: Connection, reader: str, programme: str, qty: int, pin: str | None, *,
            bundle: CardTrust, bundle_age_days: float, now: float,
            programmes: dict[str, tuple[int, ProgrammeRules]], deny: DenyList,
            limits: OfflineLimits | None = None, exposure: Callable[[str], Exposure] | None = None,
            bundle_expired: bool = False, clock_wrong: bool = False) -> TapOutcome:
        """Run one secure tap on *conn* (already under the tap's deadlines).

        :param bundle: the trust bundle in force (keys and deny list).
        :param bundle_age_days: days since the bundle was last confirmed current.
        :param now: POSIX seconds.
        :param programmes: the bundle's programmes by name (``terminal.tap.bundle_programmes``).
        :param deny: the bundle's deny list; a secure card is checked by card id only (no UID).
        :param limits: the caps in force (bundle policy tightened by the profile); None: the profile's.
        :param exposure: the card's and terminal's exposure from the journal, by card id (hex);
            None: since the last confirmed upload only.
        :param bundle_expired, clock_wrong: as :func:`terminal.policy.decide` takes them.
        :raises SessionLost, ReaderGone, ServiceUnavailable: before anything was journalled for the card.
        """
        mode = self._mode
        session = SecureCardSession(conn)

        def declined(reason: DeclineReason, card_hex: str | None = None, counter: int | None = None,
                     records: SecureCardRecords | VerifiedIdentity | None = None,
                     household: str | None = None) -> TapOutcome:
            with self._lock:
                e = self.journal.append(EntryKind.DECLINED, CardWrite(
                    card_id=card_hex or "", programme=programme, decline_reason=reason.value, ntag_counter=counter))
            return TapOutcome(TapStatus.DECLINED, reader, mode, programme, reason=reason,
                              household_ref=household or _household(records), card_id=card_hex, journal_seq=e.seq)

        try:
            session.select()
        except _LINK_ERRORS:
            raise
        except SecureProtocolError as exc:
            log.info("ISO-DEP card without our application (SW %04X)", exc.sw)
            return declined(DeclineReason.NOT_OUR_CARD)
        try:
            # The record is public (any phone reads it): the deny list and validity wait for the key's proof below.
            identity = verify_secure_identity_signature(session.read_identity(), bundle)
        except _LINK_ERRORS:
            raise
        except CardlibError as exc:
            log.info("secure card declined before policy: %s", type(exc).__name__)
            return declined(_reason(exc))
        card_id = identity.claims.card_id
        card_hex = card_id.hex()
        if session.info is None or session.info.life_cycle is not LifeCycle.OPERATIONAL:
            # Never locked (docs/secure-card.md §6.3: pulled from the station before LOCK): such a card still
            # takes PUT DATA PIN and GENERATE KEY from anybody, so its PIN and key prove nothing (red team r4).
            log.warning("secure card %s… is not operational (life cycle %s): back to the office", card_hex[:4],
                        session.info.life_cycle if session.info is not None else None)
            return declined(DeclineReason.CARD_STATE_INVALID, card_hex, records=identity)
        key = identity.claims.card_public_key
        assert key is not None  # verify_secure_identity_signature refuses an identity without one
        last_counter = self.journal.last_card_counter(card_hex)
        try:
            verified = session.verify_card(key, card_id, last_counter=last_counter, select=False)
        except _LINK_ERRORS:
            raise
        except CardlibError as exc:
            reason = _reason(exc)
            log.warning("secure card %s… declined: %s", card_hex[:4], reason.value)
            return declined(reason, card_hex, records=identity)
        counter = verified.counter
        try:
            # Only now, the card having proved the key its identity names: a card_denied (and the household shown)
            # names a card that was presented, never a copy of its public record (red team round 7).
            check_secure_identity(identity, bundle, int(now))
        except CardlibError as exc:
            log.info("secure card %s… declined before policy: %s", card_hex[:4], type(exc).__name__)
            if isinstance(exc, rec.DeniedCard):  # carries the verified identity (as on NTAG)
                return declined(_reason(exc), exc.card_id.hex(), counter, household=household_label(exc.household_ref))
            return declined(_reason(exc), card_hex, counter, identity)
        if counter > NTAG_COUNTER_MAX:
            # The journal claim holds 24 bits (16.7 million authentications); such a card is re-issued.
            return declined(DeclineReason.CARD_STATE_INVALID, card_hex, records=identity)
        # As on NTAG (docs/security.md "Revocation that does not exclude"): a state signed by a
        # terminal key revoked after it wrote it is served at the floor; one signed later is revoked_key.
        revoked: BundleKey | None = None
        try:
            grace = RevocationGrace(bundle) if isinstance(bundle, TrustBundle) else bundle
            card = verify_secure_state(verified.state.state, identity, grace)
            check_record_seq(verified, card.claims.seq)
            if isinstance(bundle, TrustBundle):
                revoked = revoked_writer(bundle, card.state.kid, card.claims.time)
        except CardlibError as exc:
            reason = DeclineReason.CARD_STATE_INVALID if isinstance(exc, StateMismatch) else _reason(exc)
            return declined(reason, card_hex, counter, identity)
        if revoked is not None:
            log.info("secure card %s…: state signed by key %s before its revocation; served at the floor",
                     card_hex[:4], revoked.kid.hex())

        with self._lock:
            open_write = self.journal.open_write(card_hex)
        if open_write is not None:
            return self._recover(card, open_write, reader, programme, counter)

        last = self.journal.last_committed_slot_seq(card_hex)
        if last is not None and card.claims.seq < last:
            return declined(DeclineReason.CARD_FORKED, card_hex, counter, card)

        entry = programmes.get(programme)
        unit = entry[1].unit if entry else None
        writes = entry is not None and mode is not CounterMode.BALANCE_CHECK
        pin_status = PinStatus.NOT_ENTERED
        pin_tries_left: int | None = None  # the card's 63 Cx after a wrong PIN (docs/secure-card.md §5.3)
        if writes and entry is not None:
            # The card takes VERIFY and UPDATE STATE only after this proof (docs/secure-card.md §5.5).
            ask = pin if pin is not None and entry[1].pin_required else None
            if ask is not None and not _pin_format_ok(ask):
                ask, pin_status = None, PinStatus.WRONG  # nothing sent: no try spent
            version = session.info.terminal_key_version if session.info is not None else None
            access = self._card_keys.keys.get(version) if self._card_keys is not None and version else None
            if access is None:
                log.warning("secure card %s…: card-access key version %s not held: cannot write", card_hex[:4], version)
                return declined(DeclineReason.NOT_OUR_CARD, card_hex, counter, card)
            try:
                session.external_authenticate(terminal_card_key(access, card_id), card_id, pin=ask)
                if ask is not None:
                    pin_status = PinStatus.OK
            except _LINK_ERRORS:
                raise
            except TerminalAuthFailed:
                log.warning("secure card %s… refused this terminal's proof", card_hex[:4])
                return declined(DeclineReason.NOT_OUR_CARD, card_hex, counter, card)
            except PinBlocked:
                return dataclasses.replace(declined(DeclineReason.PIN_BLOCKED, card_hex, counter, card),
                                           pin_tries_left=0)
            except PinWrong as exc:
                pin_status, pin_tries_left = PinStatus.WRONG, exc.tries_left
            except PinNotSet:
                pin_status = PinStatus.WRONG
            except CardlibError as exc:
                return declined(_reason(exc), card_hex, counter, card)
        facts = card_facts(card.identity.claims, card.claims.cycle, card.claims.remaining, b"", programmes, programme)
        with self._lock:
            exposed = (exposure(card_hex) if exposure is not None else
                       Exposure(card=self.journal.exposure(card_hex), terminal=self.journal.exposure()))
            decision = decide(
                card=facts, request=Request(mode, programme, qty, pin_status),
                programmes={k: v[1] for k, v in programmes.items()}, counter_modes=frozenset({mode}),
                deny=deny, limits=limits or self._limits, exposure=exposed, bundle_age_days=bundle_age_days,
                now=now, bundle_expired=bundle_expired, clock_wrong=clock_wrong, at_floor=revoked is not None,
            )
            if decision.writes_card:
                assert entry is not None
                pending_entry, pending = self._journal_pending(card, decision, entry[0], counter, now)
        if not decision.accepted:
            assert decision.reason is not None
            out = declined(decision.reason, card_hex, counter, card)
            return dataclasses.replace(out, unit=unit, entitled=decision.entitled,
                                       remaining=decision.remaining_before,
                                       pin_tries_left=pin_tries_left if decision.reason is DeclineReason.PIN_WRONG
                                       else None)
        if not decision.writes_card:
            with self._lock:
                e = self.journal.append(EntryKind.BALANCE, CardWrite(
                    card_id=card_hex, programme=programme, slot_seq_before=card.claims.seq, ntag_counter=counter))
            return TapOutcome(TapStatus.BALANCE, reader, mode, programme, household_ref=_household(card),
                              unit=unit, entitled=decision.entitled, remaining=decision.remaining_after,
                              card_id=card_hex, journal_seq=e.seq)
        return self._redeem(session, card, decision, pending_entry, pending, reader)

    # ------------------------------------------------------------------ writing

    def _journal_pending(self, card: SecureCardRecords, d: Decision, pid: int, counter: int,
                         now: float) -> tuple[StoredEntry, SecurePendingWrite]:
        """Sign the next state and journal it PENDING (fsynced); the caller holds the lock."""
        box: list[SecurePendingWrite] = []

        def build(seq: int) -> tuple[CardWrite, bytes]:
            p = card.prepare_redemption(signer=self._signer, cycle=d.cycle, amounts={pid: d.amount},
                                        terminal_id=self._tnum, terminal_seq=seq, now=int(now), card_counter=counter)
            box.append(p)
            return CardWrite(
                card_id=card.card_id.hex(), programme=d.programme, unit=d.unit, amount=d.amount,
                slot_seq_before=card.claims.seq, slot_seq_after=p.seq,
                state_hash_prev=hashlib.sha256(card.state.message).digest(),
                state_hash_new=hashlib.sha256(p.cose).digest(), ntag_counter=counter,
            ), p.to_cbor()

        pending_entry = self.journal.append(EntryKind.PENDING, build)
        return pending_entry, box[0]

    def _redeem(self, session: SecureCardSession, card: SecureCardRecords, d: Decision,
                pending_entry: StoredEntry, pending: SecurePendingWrite, reader: str) -> TapOutcome:
        """UPDATE STATE, read back, journal COMMIT / VOIDED / UNCERTAIN."""
        card_hex = card.card_id.hex()
        w = write_of(pending_entry)
        uncertain = TapOutcome(TapStatus.UNCERTAIN, reader, d.mode, d.programme, final=False,
                               household_ref=_household(card), unit=d.unit, entitled=d.entitled,
                               remaining=d.remaining_before, card_id=card_hex)
        key = card.identity.claims.card_public_key
        assert key is not None  # verify_secure_identity_signature refuses an identity without one
        try:
            session.update_state(pending.seq, pending.cose)
        except TransportError as exc:
            with self._lock:
                e = self.journal.append(EntryKind.UNCERTAIN, w)
            log.warning("redemption on secure card %s… uncertain (%s); resolve on next tap", card_hex[:4], exc)
            return dataclasses.replace(uncertain, journal_seq=e.seq, detail=str(exc))
        except CardlibError as exc:  # the card refused the update (rollback rule, PIN): nothing changed
            with self._lock:
                e = self.journal.append(EntryKind.VOIDED, w)
            if isinstance(exc, PinRequired):  # the card itself demands a PIN for every update
                return dataclasses.replace(uncertain, status=TapStatus.DECLINED, final=True, journal_seq=e.seq,
                                           reason=DeclineReason.PIN_REQUIRED, detail=str(exc))
            return dataclasses.replace(uncertain, status=TapStatus.RETRY, final=True, journal_seq=e.seq,
                                       detail=str(exc))
        try:
            # The card signs that it holds the new state (an unsigned read-back can be faked by a relay
            # that swallowed the update: red team round 4); only then COMMIT and the goods.
            session.confirm_state(pending.seq, pending.cose, key, card.card_id, counter=w.ntag_counter or 0)
        except (TransportError, CardlibError) as exc:  # old or new on the card: the next tap reads it, signed
            with self._lock:
                e = self.journal.append(EntryKind.UNCERTAIN, w)
            log.warning("redemption on secure card %s… not confirmed by the card (%s); resolve on next tap",
                        card_hex[:4], exc)
            return dataclasses.replace(uncertain, journal_seq=e.seq, detail=str(exc))
        with self._lock:
            commit = self.journal.append(EntryKind.COMMIT, w)
        receipt = self._receipt(commit, card, d.programme, d, d.amount, d.remaining_after)
        return dataclasses.replace(uncertain, status=TapStatus.ACCEPTED, final=True, amount=d.amount,
                                   remaining=d.remaining_after, journal_seq=commit.seq, receipt=receipt)

    def _recover(self, card: SecureCardRecords, open_write: StoredEntry, reader: str, programme: str,
                 counter: int) -> TapOutcome:
        """Decide a journalled unfinished write from the state the card holds now."""
        if open_write.pending is None:
            raise rec.RecordError(f"journal entry {open_write.seq} has no pending card state")
        pending = SecurePendingWrite.from_cbor(open_write.pending)
        if hashlib.sha256(pending.cose).digest() != open_write.entry.state_hash_new:
            raise rec.RecordError(f"pending state of entry {open_write.seq} does not match its signed hash")
        decision, note = decide_secure_recovery(card, pending)
        w = write_of(open_write)
        e = open_write.entry
        programme = e.programme or programme
        uncertain = TapOutcome(TapStatus.UNCERTAIN, reader, self._mode, programme, final=False,
                               household_ref=_household(card), unit=open_write.unit, card_id=e.card_id, detail=note)
        if decision is SecureRecovery.FINISHED:
            with self._lock:
                fin = self.journal.append(EntryKind.FINISHED, w)
            pid = next(iter(pending.amounts))
            remaining = card.claims.remaining.get(pid, 0) if card.claims.seq == pending.seq else 0
            entitled = card.identity.claims.programmes[pid].per_cycle
            amount = e.amount or 0
            receipt = Receipt(self._terminal_id, fin.seq, _household(card) or "", programme,
                              open_write.unit or Unit.PACKAGE, entitled, amount, remaining,
                              receipt_code(fin.signed.entry_hash), fin.entry.wall_ms / 1000)
            return dataclasses.replace(uncertain, status=TapStatus.RECOVERED, final=True, amount=amount,
                                       entitled=entitled, remaining=remaining, journal_seq=fin.seq, receipt=receipt)
        if decision is SecureRecovery.VOIDED:
            with self._lock:
                v = self.journal.append(EntryKind.VOIDED, w)
            return dataclasses.replace(uncertain, status=TapStatus.VOIDED, final=True, journal_seq=v.seq)
        with self._lock:
            u = self.journal.append(EntryKind.UNCERTAIN, w, note="deferred")
        return dataclasses.replace(uncertain, journal_seq=u.seq)

    def _receipt(self, entry: StoredEntry, card: SecureCardRecords, programme: str, d: Decision,
                 received: int, remaining: int) -> Receipt:
        return Receipt(self._terminal_id, entry.seq, _household(card) or "", programme, d.unit or Unit.PACKAGE,
                       d.entitled, received, remaining, receipt_code(entry.signed.entry_hash),
                       entry.entry.wall_ms / 1000)


def _pin_format_ok(pin: str) -> bool:
    try:
        check_pin_format(pin)
    except ValueError:
        return False
    return True


def _household(records: SecureCardRecords | VerifiedIdentity | None) -> str | None:
    """The printed household reference: ``HB-`` + first 8 hex digits (as on the NTAG path)."""
    if records is None:
        return None
    identity = records.identity if isinstance(records, SecureCardRecords) else records
    return household_label(identity.claims.household_ref)
