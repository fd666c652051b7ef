"""One tap, exactly as docs/design.md §Tap sequence describes it.

1. read and verify the card (identity, deny list, validity, both slots) — :class:`CardSession`;
2. an unfinished write for this card in the journal? → recover it first
   (FINISHED or VOIDED journalled; never charge twice, never lose a redemption);
3. decide (:func:`terminal.policy.decide`);
4. PENDING journalled and fsynced → write the older slot → read back → COMMIT
   journalled → only then success feedback and the receipt;
5. torn or failed write → UNCERTAIN journalled; the next presentation resolves it.

A balance check journals BALANCE and writes no slot; a decline journals
DECLINED with its reason code as a signed claim and writes nothing. A format-1 card
opened with the office secret is migrated (:mod:`cardlib.records.migration`) on a balance
check, after an acknowledged slot write, or when recovery settles a write; the entry then
carries `card_migrated` (docs/security.md, format-1 cards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cbor2

from cardlib.errors import CardlibError
from cardlib.keys.signer import Signer
from cardlib.records import errors as rec
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import TrustBundle
from cardlib.records.claims import IdentityClaims, PinMismatch, Unit, cycle_bounds, terminal_id_of
from cardlib.records.household_label import household_label
from cardlib.records.journal import EntryKind
from cardlib.records.layout import RecordImage, SlotName
from cardlib.records.migration import MigrationError, migrate_format1
from cardlib.records.pin import PinLocked, PinRecordInvalid, PinRefused, check_pin, max_failures, read_failures
from cardlib.records.receipt import receipt_code
from cardlib.records.session import (
    CardSession,
    CardState,
    PendingWrite,
    RecoveryDecision,
    WriteOutcome,
)
from cardlib.transport import Connection
from cardlib.transport.errors import ReaderGone, ServiceUnavailable, SessionLost
from cardlib.type2.channel import ReaderCapabilities
from cardlib.type2.tag import Type2Tag
from firmware_config.models import CounterMode, ReaderBinding
from terminal.connection import Deadline, DeadlineConnection, type2_channel
from terminal.journal_store import CardWrite, JournalStore, StoredEntry, write_of
from terminal.outcome import Balance, Receipt, TapOutcome, TapStatus
from terminal.policy import (
    SECONDS_PER_DAY,
    CardFacts,
    Decision,
    DeclineReason,
    Exposure,
    OfflineLimits,
    PinStatus,
    ProgrammeRules,
    Request,
    card_facts,
    cycle_at,
    decide,
    decline_reason_of,
)
from terminal.revocation import RevocationGrace, revoked_signer
from terminal.secure_tap import SecureTap, is_secure_atr
from terminal.supervisor import ReaderSelector

log = logging.getLogger(__name__)

#: The journal's local note on a ``card_denied`` decline of a format-1 card read without the office password.
UNPROVEN_DENIAL_NOTE = "identity presented, possession not proven (format 1, no card password)"


def terminal_number(kid: bytes) -> int:
    """The uint32 terminal id written into card slots: the terminal key's 4-byte kid, big-endian.

    The slot format has a uint32 terminal id (docs/card-format.md §4 and
    §conventions); kid = SHA-256(SPKI)[:4], so the server maps it back to the
    terminal through its enrolled keys and no separate number is needed.

    :raises ValueError: ``kid`` is not 4 bytes.
    """
    return terminal_id_of(kid)


@dataclass
class Trust:
    """The trust bundle in force and when it was last confirmed current (POSIX seconds).

    :ivar expired: past the bundle's time in force or its key revoked (:mod:`terminal.trust`):
        cash payouts stop, other redemptions run at the stale floor, balance checks go on.
    :ivar mark: the counter's never-lowered high-water mark of trusted time, POSIX seconds
        (:meth:`terminal.trust.TrustStore.current`, raised by :meth:`raised`); 0: none.
    :ivar journal_ignored_upto: a journal newest wall time at or below this, POSIX seconds, raises
        no mark: it ran ahead of the server's signed time (:meth:`terminal.trust.TrustStore.set_server_time`).
    """

    bundle: TrustBundle
    checked_at: float
    expired: bool = False
    mark: float = 0.0
    journal_ignored_upto: float = 0.0

    def trusted_time(self, now: float) -> float:
        """The later of the clock ``now`` and :attr:`mark` (POSIX seconds): a clock set back makes nothing younger."""
        return max(now, self.mark)

    def age_days(self, now: float) -> float:
        """Days since the bundle was last confirmed current, counted from :meth:`trusted_time`."""
        return max(0.0, (self.trusted_time(now) - self.checked_at) / SECONDS_PER_DAY)

    def raised(self, mark: float) -> Trust:
        """This trust with :attr:`mark` raised to ``mark`` (POSIX seconds, e.g. the journal's newest wall
        time) and :attr:`expired` set when the raised mark is past the bundle's time in force.

        A ``mark`` after :func:`plausible_until` is ignored: only a clock already wrong for the
        bundle wrote it, and a never-lowered mark that far ahead would stop the counter until then. Nor
        is one at or below :attr:`journal_ignored_upto` (written by a clock ahead of the server's time).
        """
        if mark <= self.mark or mark <= self.journal_ignored_upto or mark > plausible_until(self.bundle):
            return self
        return dataclasses.replace(self, mark=mark, expired=self.expired or mark > self.bundle.in_force_until)


def bundle_programmes(bundle: TrustBundle) -> dict[str, tuple[int, ProgrammeRules]]:
    """Programme name -> (card programme id, policy view) from a trust bundle.

    PIN requirement: bundle policy ``pin.<name>`` = 1. Cycles are province-wide
    (:func:`terminal.policy.cycle_at`); a bundle's legacy ``cycle_days`` is ignored.
    A bundle spells units as :class:`~cardlib.records.claims.Unit` names in lower case
    (``"package"``, ``"rupiah"``, ``"visit"``).

    :raises KeyError: a programme's unit is not one of them.
    """
    out = {}
    for p in bundle.programmes:
        out[p.name] = (p.id, ProgrammeRules(
            code=p.name, unit=Unit[p.unit.upper()],
            pin_required=bool(bundle.policies.get(f"pin.{p.name}", 0)), per_cycle=p.per_cycle,
        ))
    return out


class BundleDenyList:
    """The bundle's deny list as :class:`terminal.policy.DenyList`-like (bisection over sorted ids)."""

    def __init__(self, bundle: TrustBundle) -> None:
        self._b = bundle

    def denies(self, card_id: bytes, uid: bytes) -> bool:
        return card_id in self._b.deny_cards or uid in self._b.deny_uids


def _pending_blob(p: PendingWrite) -> bytes:
    return cbor2.dumps([p.uid, p.card_id, p.slot.value, p.seq, p.cose, p.base_hash,
                        dict(p.amounts), p.cycle, p.first_page, p.slot_len, p.old_region])


def _pending_from(stored: StoredEntry) -> PendingWrite:
    """Rebuild the PendingWrite kept with a PENDING entry; its bytes must hash to the signed claim."""
    if stored.pending is None:
        raise rec.RecordError(f"journal entry {stored.seq} has no pending card state")
    uid, card_id, slot, seq, cose, base, amounts, cycle, first, slot_len, old = cbor2.loads(stored.pending)
    if hashlib.sha256(cose).digest() != stored.entry.state_hash_new:
        raise rec.RecordError(f"pending state of entry {stored.seq} does not match its signed hash")
    return PendingWrite(uid=uid, card_id=card_id, slot=SlotName(slot), seq=seq, cose=cose, base_hash=base,
                        amounts=amounts, cycle=cycle, first_page=first, slot_len=slot_len, old_region=old)


def counter_limits(profile: OfflineLimits, bundle: TrustBundle) -> OfflineLimits:
    """The caps in force: the bundle's ``policies`` tightened by the terminal profile (min of both).

    A profile can only tighten the bundle's policy (docs/readers.md ``[policy]``); caps
    apply to packages, visits and rupiah alike (docs/design.md §Caps and offline limits).
    """
    return OfflineLimits.from_policies(bundle.policies).tightest(profile)


#: How far before its bundle's ``issued_at`` a counter's clock may be (seconds).
CLOCK_BEHIND_S = SECONDS_PER_DAY
#: How far below the counter's high-water mark of trusted time (:attr:`Trust.mark`) its clock may
#: be (seconds): an NTP step back or a slow RTC after a restart, not a ``date -s`` back.
CLOCK_BACK_TOLERANCE_S = 600


def plausible_until(bundle: TrustBundle) -> float:
    """The latest clock reading, POSIX seconds, that may raise a counter's time mark under ``bundle``:
    the end of its time in force plus its stale age (``max_days_offline``, default 30 days)."""
    return bundle.in_force_until + OfflineLimits.from_policies(bundle.policies).stale_days * SECONDS_PER_DAY


def clock_wrong(bundle: TrustBundle, now: float, stale_days: float, mark: float = 0.0) -> bool:
    """Whether the counter's clock is too far from its bundle's time to sign card states.

    The one check card taps (NTAG and secure) and the fallback desk make. Wrong when ``now`` is:

    - more than :data:`CLOCK_BEHIND_S` before the bundle's ``issued_at`` (the server signed it
      later than the counter believes it is);
    - more than :data:`CLOCK_BACK_TOLERANCE_S` below ``mark``, the latest time the counter has
      already seen (a clock set back: per-cycle windows and the bundle's age would restart);
    - more than ``stale_days`` after the end of the bundle's time in force (a counter this far
      past its bundle serves at the floor anyway);
    - past the bundle's time in force and in a later cycle than its ``issued_at``: a clock
      ahead writing a future cycle would lock cards out at every correct counter
      (``future_cycle``); an offline counter whose bundle is still in force serves the new cycle.

    Balance checks go on.

    :param now: the counter's clock, POSIX seconds.
    :param stale_days: the age, days, at which the caps reach their floor.
    :param mark: the counter's high-water mark of trusted time, POSIX seconds (0: none).
    """
    return (now < bundle.issued_at - CLOCK_BEHIND_S
            or now < mark - CLOCK_BACK_TOLERANCE_S
            or now > bundle.in_force_until + stale_days * SECONDS_PER_DAY
            or (now > bundle.in_force_until and cycle_at(now) > cycle_at(bundle.issued_at)))


def _identity_claims(image: RecordImage | None) -> IdentityClaims | None:
    """The claims of the card's identity record as read, without checking its signature (None: unreadable)."""
    if image is None:
        return None
    try:
        body = cbor2.loads(image.identity)
        payload = body.value[2] if isinstance(body, cbor2.CBORTag) else body[2]
        return IdentityClaims.from_cbor(payload)
    except (CardlibError, cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            EOFError):
        return None


def unverified_card_id(image: RecordImage | None) -> str:
    """The card id an identity record claims, unverified (hex, or "" when unreadable): evidence for a decline."""
    claims = _identity_claims(image)
    return claims.card_id.hex() if claims is not None else ""


@dataclass
class CounterConfig:
    """What the tap needs from the terminal profile.

    :ivar per_call_s, tap_budget_s: deadlines on card commands / the whole tap, seconds.
    """

    terminal_id: str
    mode: CounterMode
    limits: OfflineLimits
    caps: Mapping[str, ReaderCapabilities] = field(default_factory=dict)
    per_call_s: float = 1.0
    tap_budget_s: float = 5.0
    #: Card-password keys (cardlib.records.access) from their encrypted key file; None: format-2 cards decline.
    card_passwords: CardPasswordKeys | None = None


class TapProcessor:
    """Runs taps for every reader (thread-safe: one lock serialises decisions and journal order).

    :param trust: returns the trust in force (the sync loop replaces the bundle).
    :param request: returns ``(programme name, quantity, PIN or None)`` from the counter screen.
    :param publish: receives every outcome (the counter screen).
    :param feedback: called with ``(connection, binding, outcome)`` after the outcome is
        final and journalled; must not raise (see :mod:`terminal.feedback`).
    """

    def __init__(
        self,
        config: CounterConfig,
        journal: JournalStore,
        signer: Signer,
        trust: Callable[[], Trust],
        request: Callable[[], tuple[str, int, str | None]],
        publish: Callable[[TapOutcome], object] = lambda o: None,
        feedback: Callable[[Connection, ReaderSelector, TapOutcome], object] = lambda c, b, o: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = config
        self.journal = journal
        self._signer = signer
        self._trust = trust
        self._request = request
        self._publish = publish
        self._feedback = feedback
        self._now = clock
        self._tnum = terminal_number(signer.kid)
        self._lock = journal.decision_lock  # shared with the fallback desk (one cap, one lock)
        self.tap_seconds: list[float] = []  #: software+link time per tap (bench)
        self._secure = SecureTap(journal=journal, signer=signer, terminal_number=self._tnum, mode=config.mode,
                                 limits=config.limits, terminal_id=config.terminal_id, lock=self._lock,
                                 card_keys=config.card_passwords)

    # ------------------------------------------------------------------ entry point

    def __call__(self, conn: Connection, binding: ReaderSelector) -> TapOutcome:
        """Handle one presentation on ``conn``; always publishes an outcome.

        :raises ReaderGone, ServiceUnavailable: for the supervisor (after publishing RETRY).
        """
        start = time.perf_counter()
        reader = conn.reader_name
        caps = self.cfg.caps.get(binding.profile.name if isinstance(binding, ReaderBinding) else "")
        dconn = DeadlineConnection(conn, Deadline(self.cfg.tap_budget_s), self.cfg.per_call_s)
        tag = Type2Tag(type2_channel(dconn, caps), conn.atr)  # the stack's own frames (nfcpy) or a PC/SC pass-through
        programme, qty, pin = self._request()
        try:
            secure = is_secure_atr(conn.atr)  # a Type 4 card: the secure profile (docs/secure-card.md §7)
            outcome = (self._secure_tap(dconn, reader, programme, qty, pin) if secure
                       else self._tap(tag, reader, programme, qty, pin))
        except (SessionLost, ReaderGone, ServiceUnavailable) as exc:
            outcome = TapOutcome(TapStatus.RETRY, reader, self.cfg.mode, programme, detail=str(exc))
            self._publish(outcome)
            raise
        self.tap_seconds.append(time.perf_counter() - start)
        with contextlib.suppress(CardlibError):
            if not secure:  # a Type 4 card's UID may be random: nothing to remember
                outcome = dataclasses.replace(outcome, tag_uid=bytes(tag.uid))  # read at the start of the tap
        self._publish(outcome)
        self._feedback(conn, binding, outcome)
        return outcome

    # ------------------------------------------------------------------ the protocol

    def _secure_tap(self, conn: Connection, reader: str, programme: str, qty: int, pin: str | None) -> TapOutcome:
        """A `secure` card: :class:`terminal.secure_tap.SecureTap` with this processor's trust, clock and lock."""
        trust = self._trust().raised(self.journal.wall_mark())
        now = self._now()
        limits = counter_limits(self.cfg.limits, trust.bundle)
        return self._secure.tap(conn, reader, programme, qty, pin, bundle=trust.bundle,
                                bundle_age_days=trust.age_days(now), now=now,
                                programmes=bundle_programmes(trust.bundle), deny=BundleDenyList(trust.bundle),
                                limits=limits, exposure=lambda card: self.exposure(card, now, limits),
                                bundle_expired=trust.expired,
                                clock_wrong=clock_wrong(trust.bundle, now, limits.stale_days, trust.mark))

    def _tap(self, tag: Type2Tag, reader: str, programme: str, qty: int, pin: str | None) -> TapOutcome:
        trust = self._trust().raised(self.journal.wall_mark())
        now = self._now()
        session = CardSession(tag, RevocationGrace(trust.bundle), passwords=self.cfg.card_passwords)
        mode = self.cfg.mode

        def declined(reason: DeclineReason, state: CardState | None = None, uid: bytes | None = None,
                     card: str | None = None, note: str | None = None, household: str | None = None) -> TapOutcome:
            # The card id goes into the signed DECLINED entry whenever it could be read
            # (unverified when the card failed verification): the auditor sees a blocked card's tries.
            card = state.identity.claims.card_id.hex() if state else (card or None)
            with self._lock:
                e = self.journal.append(EntryKind.DECLINED, CardWrite(
                    card_id=card or "", tag_uid=uid, programme=programme, decline_reason=reason.value), note=note)
            return TapOutcome(TapStatus.DECLINED, reader, mode, programme, reason=reason,
                              household_ref=_household(state) or household, card_id=card, journal_seq=e.seq)

        uid = bytes(tag.uid)
        image: RecordImage | None = None
        try:
            image = session.read_image()
            state = session.verify_image(image, int(now))
            revoked = revoked_signer(trust.bundle, state)
        except (SessionLost, ReaderGone, ServiceUnavailable):
            raise
        except CardlibError as exc:
            reason = decline_reason_of(exc)
            log.info("card declined before policy: %s (%s)", reason.value, type(exc).__name__)
            if isinstance(exc, rec.DeniedCard):  # raised once the identity verified for this UID, carrying it:
                # the clerk sees whose card is blocked; any other refusal may be a forgery and names no household.
                # A format-2 card answered PWD_AUTH with its PACK before its identity was read; a format-1 card
                # read without the office password proved nothing (docs/security.md, red team round 7).
                note = None if session.possession_proven else UNPROVEN_DENIAL_NOTE
                return declined(reason, uid=uid, card=exc.card_id.hex(), household=household_label(exc.household_ref),
                                note=note)
            return declined(reason, uid=uid, card=unverified_card_id(image))
        card_hex = state.identity.claims.card_id.hex()
        if revoked is not None:
            log.info("card %s…: state signed by key %s before its revocation; served at the floor",
                     card_hex[:4], revoked.kid.hex())

        with self._lock:
            open_write = self.journal.open_write(card_hex)
        if open_write is not None:
            try:
                return self._recover(session, state, open_write, reader, programme, now)
            except (SessionLost, ReaderGone, ServiceUnavailable):
                raise
            except CardlibError as exc:
                reason = decline_reason_of(exc)
                log.info("card %s… declined in recovery: %s", card_hex[:4], reason.value)
                return declined(reason, state, uid)

        last = self.journal.last_committed_slot_seq(card_hex)
        if last is not None and state.current.claims.seq < last:
            # docs/design.md §Caps and offline limits: a card older than what this terminal wrote = replay or clone.
            return declined(DeclineReason.CARD_FORKED, state, uid)

        progs = bundle_programmes(trust.bundle)
        entry = progs.get(programme)
        slot = state.current.claims
        facts = card_facts(state.identity.claims, slot.cycle, slot.remaining, state.uid, progs, programme)
        try:
            pin_status, pin_note, pin_tries_left = self._pin(
                tag, state, pin, entry[1] if entry else None, trust.bundle,
                session.public.key_version if session.public else None)
        except (SessionLost, ReaderGone, ServiceUnavailable):
            raise
        except CardlibError as exc:  # the PIN page NAKed or garbled: the PIN was not checked
            return declined(decline_reason_of(exc), state, uid, note="pin page unreadable")
        unit = entry[1].unit if entry else None
        # The NFC counter goes into the signed slot (the chip mirror of a format-2 card, else
        # READ_CNT); read it before taking the lock so no card command ever runs while
        # another reader waits for a decision.
        counter = session.nfc_counter() if entry is not None and mode is not CounterMode.BALANCE_CHECK else None
        # One lock from reading the exposure to journalling PENDING: two readers cannot both
        # decide against the same figures and together pass an offline limit.
        limits = counter_limits(self.cfg.limits, trust.bundle)
        with self._lock:
            exposure = self.exposure(card_hex, now, limits)
            decision = decide(
                card=facts, request=Request(mode, programme, qty, pin_status),
                programmes={k: v[1] for k, v in progs.items()},
                counter_modes=frozenset({mode}), deny=BundleDenyList(trust.bundle), limits=limits,
                exposure=exposure, bundle_age_days=trust.age_days(now), bundle_expired=trust.expired, now=now,
                at_floor=revoked is not None, clock_wrong=clock_wrong(trust.bundle, now, limits.stale_days, trust.mark),
            )
            if decision.writes_card:
                assert entry is not None and counter is not None
                pending_entry, pending = self._journal_pending(session, state, decision, entry[0], counter, now)
        if not decision.accepted:
            assert decision.reason is not None
            out = declined(decision.reason, state, uid, note=pin_note)
            counted = decision.reason in (DeclineReason.PIN_WRONG, DeclineReason.PIN_LOCKED)  # the screen says it
            return dataclasses.replace(out, unit=unit, entitled=decision.entitled, remaining=decision.remaining_before,
                                       pin_tries_left=pin_tries_left if counted else None)
        if not decision.writes_card:
            # A balance check writes no balance, but protecting the card is a configuration
            # write the holder benefits from (docs/security.md §format-1 migration).
            migrated = self._migrate(session, state)
            with self._lock:
                e = self.journal.append(EntryKind.BALANCE, CardWrite(
                    card_id=card_hex, tag_uid=uid, programme=programme,
                    slot_seq_before=state.current.claims.seq, card_migrated=migrated))
            return TapOutcome(TapStatus.BALANCE, reader, mode, programme, household_ref=_household(state),
                              unit=unit, entitled=decision.entitled, remaining=decision.remaining_after,
                              card_id=card_hex, journal_seq=e.seq, balances=_balances(facts, progs, now))
        return self._redeem(session, state, decision, pending_entry, pending, reader)

    def _pin(self, tag: Type2Tag, state: CardState, pin: str | None, rules: ProgrammeRules | None,
             bundle: TrustBundle, key_version: int | None = None) -> tuple[PinStatus, str | None, int | None]:
        """The PIN check before deciding (docs/security.md §A PIN that resists a phone).

        A format-2 card counts wrong PINs on its private page (:mod:`cardlib.records.pin`): for a
        programme that needs the PIN, and never on a balance check, the try is spent on the card
        before the PIN is looked at; at the bundle's ``pin.max_failures`` the card is LOCKED and
        the PIN is not checked. A format-1 card has no private page and checks as before. A
        version-3 PIN claim is checked against the card's keyed PIN record (the PIN key from the
        card-password ring, ``key_version`` from the card's public header); a missing or garbled
        record is RECORD_INVALID (declined ``pin_record_invalid``, no try spent).

        :returns: the status for :func:`terminal.policy.decide`, a journal note (failures/limit) and
            the wrong PINs the card still takes before it locks (``limit`` minus the count on the card;
            0 when LOCKED), None when no count was read (format 1, no try spent, not 6 digits).
        :raises CardlibError: the card link failed or the chip refused the PIN page.
        """
        claims = state.identity.claims
        needed = rules is not None and rules.pin_required
        if needed and claims.pin is None:
            return PinStatus.OK, None, None  # a card issued without PIN cannot be asked for one
        if claims.pin is None or state.layout.version == 1:
            if pin is None:
                return PinStatus.NOT_ENTERED, None, None
            try:
                if claims.pin is not None:
                    claims.pin.check(pin, claims.card_id, state.uid)
            except (PinMismatch, rec.ClaimsError):
                return PinStatus.WRONG, None, None  # no count on a format-1 card
            return PinStatus.OK, None, None
        if not needed or self.cfg.mode is CounterMode.BALANCE_CHECK:
            return PinStatus.NOT_ENTERED, None, None  # the PIN decides nothing here: no try spent
        limit = max_failures(bundle.policies)
        pin_key = None
        if claims.pin.on_card:
            if key_version is None or self.cfg.card_passwords is None:
                return PinStatus.RECORD_INVALID, "no pin key", None
            pin_key = self.cfg.card_passwords.pin_key(key_version, state.uid)
        try:
            if pin is None:
                failures = read_failures(tag, state.layout)
                return (PinStatus.LOCKED, None, 0) if failures >= limit else (PinStatus.NOT_ENTERED, None, None)
            check_pin(tag, state.layout, claims.pin, pin, claims.card_id, state.uid, limit=limit, pin_key=pin_key)
        except PinRecordInvalid:
            return PinStatus.RECORD_INVALID, "pin record missing or garbled", None
        except PinLocked as exc:
            return PinStatus.LOCKED, f"pin failures {exc.failures}/{limit}", 0
        except PinRefused as exc:
            log.info("card %s…: wrong PIN, %d of %d tries spent", claims.card_id.hex()[:4], exc.failures, limit)
            return PinStatus.WRONG, f"pin failures {exc.failures}/{limit}", max(limit - exc.failures, 0)
        except rec.ClaimsError:
            return PinStatus.WRONG, "pin entry not 6 digits", None  # no try spent, no count read
        return PinStatus.OK, None, None

    def exposure(self, card_hex: str, now: float, limits: OfflineLimits) -> Exposure:
        """What this terminal handed out, from its journal: since the last confirmed upload and this cycle,
        and this cycle's fallback payouts to the card (not on the card).

        Open (torn, unsettled) writes older than the caps' stale age stop counting: server
        reconciliation settles them (:meth:`terminal.journal_store.JournalStore.aged_open_writes`).

        :param card_hex: the card id (hex).
        :param now: POSIX seconds.
        :param limits: the caps in force (their ``stale_days``).
        """
        open_since = now - limits.stale_days * SECONDS_PER_DAY
        start, end = cycle_bounds(cycle_at(now))
        return Exposure(
            card=self.journal.exposure(card_hex, open_since=open_since),
            terminal=self.journal.exposure(open_since=open_since),
            card_cycle=self.journal.card_cycle_exposure(card_hex, start.timestamp(), end.timestamp(),
                                                        open_since=open_since),
            fallback=self.journal.card_fallback_units(card_hex, start.timestamp(), end.timestamp()),
        )

    def _journal_pending(self, session: CardSession, state: CardState, d: Decision, pid: int,
                         counter: int, now: float) -> tuple[StoredEntry, PendingWrite]:
        """Sign the next card state and journal it PENDING (fsynced); the caller holds the lock.

        :param pid: the card's programme id for ``d.programme``.
        :param counter: the NFC counter read in this tap (NTAG21x READ_CNT).
        """
        card_hex = state.identity.claims.card_id.hex()
        box: list[PendingWrite] = []

        def build(seq: int) -> tuple[CardWrite, bytes]:
            p = session.prepare_redemption(
                state, signer=self._signer, cycle=d.cycle, amounts={pid: d.amount},
                terminal_id=self._tnum, terminal_seq=seq, now=int(now), nfc_counter=counter)
            box.append(p)
            return CardWrite(
                card_id=card_hex, tag_uid=state.uid, programme=d.programme,
                unit=d.unit, amount=d.amount,
                slot_seq_before=state.current.claims.seq, slot_seq_after=p.seq,
                state_hash_prev=hashlib.sha256(state.current.cose.message).digest(),
                state_hash_new=hashlib.sha256(p.cose).digest(), ntag_counter=counter,
            ), _pending_blob(p)

        pending_entry = self.journal.append(EntryKind.PENDING, build)  # fsynced before any write
        return pending_entry, box[0]

    def _redeem(self, session: CardSession, state: CardState, d: Decision, pending_entry: StoredEntry,
                pending: PendingWrite, reader: str) -> TapOutcome:
        """Write the PENDING state to the card, read it back, journal COMMIT / VOIDED / UNCERTAIN."""
        card_hex = state.identity.claims.card_id.hex()
        result = session.commit(pending)
        w = write_of(pending_entry)
        # Until the read-back says otherwise the write is uncertain; the other outcomes refine this one.
        uncertain = TapOutcome(TapStatus.UNCERTAIN, reader, d.mode, d.programme, final=False,
                               household_ref=_household(state), unit=d.unit, entitled=d.entitled,
                               remaining=d.remaining_before, card_id=card_hex)
        if result.outcome is WriteOutcome.COMMITTED:
            # The format-1 migration runs after the slot write was acknowledged and before
            # COMMIT is journalled: a tear during it cannot cost the redemption (already on the
            # card; the migration never raises for a lost card), and COMMIT carries the claim.
            w = dataclasses.replace(w, card_migrated=self._migrate(session, state))
            with self._lock:
                commit = self.journal.append(EntryKind.COMMIT, w)
            receipt = self._receipt(commit, state, d.programme, d.unit, d.entitled, d.amount, d.remaining_after)
            return dataclasses.replace(uncertain, status=TapStatus.ACCEPTED, final=True, amount=d.amount,
                                       remaining=d.remaining_after, journal_seq=commit.seq, receipt=receipt)
        if result.outcome is WriteOutcome.NOT_WRITTEN:
            with self._lock:
                e = self.journal.append(EntryKind.VOIDED, w)
            return dataclasses.replace(uncertain, status=TapStatus.RETRY, final=True, journal_seq=e.seq,
                                       detail=str(result.error))
        with self._lock:
            e = self.journal.append(EntryKind.UNCERTAIN, w)
        log.warning("redemption on card %s… uncertain (%s); resolve on next tap", card_hex[:4], result.error)
        return dataclasses.replace(uncertain, journal_seq=e.seq)

    def _migrate(self, session: CardSession, state: CardState) -> bool | None:
        """Protect a format-1 card's slots when this counter holds the office secret (issue 20).

        :func:`cardlib.records.migration.migrate_format1`, at most once per tap: only for a
        format-1 card the session opened with ``card_passwords.format1`` (docs/card-format.md
        §2.3). A card-link failure is logged and left for the next tap, which resumes.

        :returns: ``True`` when this tap wrote the configuration (the journal's ``card_migrated``
            claim), else ``None`` (claim absent).
        """
        keys = self.cfg.card_passwords
        if (state.layout.version != 1 or keys is None or keys.format1 is None
                or session.format1_cc_size is None):
            return None
        try:
            result = migrate_format1(session, state)
        except MigrationError as exc:
            log.warning("card %s…: format-1 migration skipped: %s", state.identity.claims.card_id.hex()[:4], exc)
            return None
        return True if result.changed else None

    def _recover(self, session: CardSession, state: CardState, open_write: StoredEntry, reader: str,
                 programme: str, now: float) -> TapOutcome:
        pending = _pending_from(open_write)
        result = session.recover(pending, int(now))
        w = write_of(open_write)
        e = open_write.entry
        unit = open_write.unit
        programme = e.programme or programme
        # DEFERRED (the card moved on elsewhere; the server's per-card chain decides) keeps it UNCERTAIN.
        uncertain = TapOutcome(TapStatus.UNCERTAIN, reader, self.cfg.mode, programme, final=False,
                               household_ref=_household(state), unit=unit, card_id=e.card_id, detail=result.note)
        if result.decision in (RecoveryDecision.FINISHED, RecoveryDecision.VOIDED):
            w = dataclasses.replace(w, card_migrated=self._migrate(session, state))  # the card is settled
        if result.decision is RecoveryDecision.FINISHED:
            with self._lock:
                fin = self.journal.append(EntryKind.FINISHED, w)
            pid = next(iter(pending.amounts))
            now_on_card = result.state.current.claims
            remaining = now_on_card.remaining.get(pid, 0) if now_on_card.seq == pending.seq else 0
            entitled = state.identity.claims.programmes[pid].per_cycle
            amount = e.amount or 0
            receipt = self._receipt(fin, state, programme, unit, entitled, amount, remaining)
            return dataclasses.replace(uncertain, status=TapStatus.RECOVERED, final=True, amount=amount,
                                       entitled=entitled, remaining=remaining, journal_seq=fin.seq, receipt=receipt)
        if result.decision is RecoveryDecision.VOIDED:
            with self._lock:
                v = self.journal.append(EntryKind.VOIDED, w)
            # Nothing was charged: show what the card holds now, read in this recovery (not 0).
            pid = next(iter(pending.amounts))
            entitled = state.identity.claims.programmes[pid].per_cycle
            now_on_card = result.state.current.claims
            remaining = now_on_card.remaining.get(pid, 0) if now_on_card.cycle == cycle_at(now) else entitled
            return dataclasses.replace(uncertain, status=TapStatus.VOIDED, final=True, journal_seq=v.seq,
                                       entitled=entitled, remaining=remaining)
        with self._lock:
            u = self.journal.append(EntryKind.UNCERTAIN, w, note="deferred")
        return dataclasses.replace(uncertain, journal_seq=u.seq)

    def _receipt(self, entry: StoredEntry, state: CardState, programme: str, unit: Unit | None,
                 entitled: int, received: int, remaining: int) -> Receipt:
        return Receipt(self.cfg.terminal_id, entry.seq, _household(state) or "", programme,
                       unit or Unit.PACKAGE, entitled, received, remaining,
                       receipt_code(entry.signed.entry_hash), entry.entry.wall_ms / 1000)


def _household(state: CardState | None) -> str | None:
    """The printed household reference: ``HB-`` + first 8 hex digits of the pseudonymous ref."""
    return None if state is None else household_label(state.identity.claims.household_ref)


def _balances(facts: CardFacts, progs: Mapping[str, tuple[int, ProgrammeRules]], now: float) -> tuple[Balance, ...]:
    """Every bundle programme on the card, in the bundle's order, as the card holds it in the current cycle."""
    cycle = cycle_at(now)
    return tuple(Balance(name, rules.unit, facts.entitlements[name], facts.remaining(rules, cycle))
                 for name, (_pid, rules) in progs.items() if name in facts.entitlements)
