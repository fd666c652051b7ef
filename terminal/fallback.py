"""The fallback ladder at the counter: serve a household whose card cannot be used (docs/fallback.md).

Step 1, **QR**: the clerk scans the household QR printed on the card body (the scanner types
its text); the counter verifies the issuer's signature, validity and the bundle's deny list
(:func:`cardlib.records.household_qr.verify_household_qr`) and serves under the bundle's QR
limits. Step 2, **manual**: no card and no QR; a supervisor types their id and password on
the counter screen (checked against the scrypt hash in the terminal profile) and the counter
serves under the stricter manual limits. Neither writes a card.

Limits come only from the signed trust bundle's policies: ``fallback.qr.<programme>`` and
``fallback.manual.<programme>`` are the most units one card (so one household) may receive
through that step per cycle at this counter; a programme without the key is never served
that way (cash stays refused unless the bundle says otherwise). A step's limit caps everything
this counter gave the card by fallback this cycle, QR and supervisor entry together
(:meth:`~terminal.journal_store.JournalStore.card_programme_units`), so the steps do not stack:
the most permissive step's limit is the most the desk gives a card. The card's own taps at this
counter this cycle (the same call, read in the same query) count
toward that limit, declined ``already_served_card``: the rest is given by card. On top of that step limit,
a fallback passes the counter's own caps like a card tap (docs/design.md §Caps and offline
limits): the card's per-cycle cap over every kind of redemption at this counter (card taps,
QR and manual together) and the terminal exposure, decided under the journal's
``decision_lock`` that card taps hold too. Those caps age like a card tap's: tightened by
:meth:`~terminal.policy.OfflineLimits.tightened` for the bundle's age (days since it was last
confirmed current), at the stale floor for an expired bundle, which also pays no cash
(``bundle_expired``). A counter clock wrong for its bundle or set back below the counter's
high-water mark of trusted time (:func:`terminal.tap.clock_wrong`, the card taps' check) is
declined ``counter_clock_wrong``. Each attempt is journalled:
a FALLBACK entry (step and approver signed in claims 21 and 22) or a DECLINED entry with the
same two claims; server reconciliation counts FALLBACK entries against the household's
entitlement like any redemption.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from cardlib.records.bundle import TrustBundle
from cardlib.records.claims import Unit, cycle_bounds, cycle_of
from cardlib.records.errors import DeniedCard
from cardlib.records.household_label import household_label
from cardlib.records.household_qr import HouseholdQrError, verify_household_qr
from cardlib.records.journal import EntryKind, JournalEntry
from cardlib.records.receipt import receipt_code
from firmware_config.models import CounterMode
from terminal.errors import InputRefused, TerminalError
from terminal.journal_store import CardWrite, JournalStore
from terminal.outcome import Receipt, TapOutcome, TapStatus
from terminal.policy import SECONDS_PER_DAY, DeclineReason, OfflineLimits
from terminal.tap import Trust, bundle_programmes, clock_wrong, counter_limits

__all__ = [
    "MANUAL",
    "MIN_SUPERVISOR_PASSWORD",
    "QR",
    "FallbackDesk",
    "SupervisorRefused",
    "check_supervisor",
    "fallback_limit",
    "supervisor_hash",
]

log = logging.getLogger(__name__)

QR = "qr"
MANUAL = "manual"
#: scrypt cost for supervisor passwords (RFC 7914 §2: N = 2^15, r = 8, p = 1; ~32 MiB, ~0.1 s).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
MAX_APPROVER_CHARS = 64
#: A clerk or supervisor id (docs/fallback.md): ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a
#: letter or digit, 1..64 characters. No other character is accepted, so an id cannot be a look-alike of
#: another (U+2010 HYPHEN for ``-``, Cyrillic ``а`` for ``a``, zero-width or bidi marks).
APPROVER_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_APPROVER_CHARS - 1}}}", re.ASCII)
#: Supervisor password guessing at the manual desk (docs/fallback.md §Step 2): wrong passwords are
#: counted from the journal's signed DECLINED ``supervisor_refused`` entries of the last window of real
#: time, aged by the entries' monotonic clock in journal order, never by their wall time (so neither a
#: daemon restart nor a clock moved either way forgets or revives anything); while an id or the counter is
#: held back, the desk declines ``supervisor_locked`` without checking the password.
SUPERVISOR_WINDOW_S = 30 * 60
#: Most journal entries read back (newest first) to find the wrong passwords of the window. A window holding
#: more (an honest counter writes far fewer in 30 minutes; a clerk flooding junk scans to push failures out
#: of reach does, red team round 8) holds the manual desk until the flood ages out.
SUPERVISOR_SCAN_ENTRIES = 5000
#: After this many wrong passwords in a row for one id, each next try waits (back-off) ...
SUPERVISOR_BACKOFF_AFTER = 3
#: ... this many seconds after the last wrong one, doubled for each further wrong one.
SUPERVISOR_BACKOFF_S = 30.0
#: Wrong passwords in a row for one id within the window that lock it (until they age out).
SUPERVISOR_LOCK_AFTER = 5
#: Wrong passwords for any ids within the window that lock the manual desk of this counter.
COUNTER_LOCK_AFTER = 15


class SupervisorRefused(TerminalError):
    """The supervisor id is unknown or the password does not match its hash."""


#: Fewest characters of a supervisor password ``huma terminal supervisor-hash`` makes a hash for (NIST SP 800-63B
#: §5.1.1.2): the hash is in the terminal profile, so whoever reads the file guesses offline, without the desk's
#: lock-out (red team round 4).
MIN_SUPERVISOR_PASSWORD = 8


def supervisor_hash(password: str, *, salt: bytes | None = None) -> str:
    """The profile form of a supervisor password: ``scrypt$N$r$p$salt$hash`` (base64, RFC 7914).

    :param password: the supervisor's password (never stored).
    :param salt: 16 random bytes by default.
    """
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_supervisor(supervisors: Mapping[str, str], supervisor: str, password: str) -> None:
    """Check a supervisor's password against the profile's hash (constant-time compare).

    :param supervisors: supervisor id -> :func:`supervisor_hash` string.
    :raises SupervisorRefused: unknown id, malformed hash or wrong password.
    """
    stored = supervisors.get(supervisor)
    if stored is None:
        raise SupervisorRefused("unknown supervisor")
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_SCRYPT_MAXMEM, dklen=32)
    except (ValueError, TypeError) as exc:
        raise SupervisorRefused(f"supervisor {supervisor!r}: malformed password hash in the profile") from exc
    if not hmac.compare_digest(got, base64.b64decode(digest)):
        raise SupervisorRefused("wrong supervisor password")


def fallback_limit(bundle: TrustBundle, step: str, programme: str) -> int:
    """Units of ``programme`` one card may receive through ``step`` per cycle (0: never), from the bundle."""
    return max(0, int(bundle.policies.get(f"fallback.{step}.{programme}", 0)))


def qr_decodes(text: str) -> bool:
    """Whether a scanned text is a household QR's envelope: Base45, then zlib (bounded), then a CBOR item.

    False for a misread or another kind of code (``NOTAQR``); True for a QR whose signature,
    claims or validity may still fail (:func:`cardlib.records.household_qr.verify_household_qr`).
    """
    import zlib

    import cbor2

    from cardlib.records.household_qr import MAX_INFLATED, b45decode

    try:
        inflater = zlib.decompressobj()
        message = inflater.decompress(b45decode(text.strip()), MAX_INFLATED)
        if inflater.unconsumed_tail or not inflater.eof:
            return False
        cbor2.loads(message)
    except (HouseholdQrError, zlib.error, cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        return False
    return True


@dataclass(frozen=True)
class _Ask:
    step: str
    approver: str
    card_id: bytes
    household_ref: str
    programme: str
    quantity: int


class FallbackDesk:
    """Serves fallback redemptions for the counter screen (one at a time, under the journal).

    :param journal: the counter's journal.
    :param bundle_source: the trust in force now (None: none installed yet): a
        :class:`~terminal.tap.Trust` (the caps age with it), or a bare bundle (taken as fresh).
    :param mode: the counter mode (shown with the outcome).
    :param supervisors: supervisor id -> scrypt hash (terminal profile).
    :param clock: POSIX seconds now.
    :param limits: the terminal profile's caps (tightened by the bundle's, as for card taps).
    :param mono: seconds of the monotonic clock the journal stamps its entries with (``mono_ns``:
        :meth:`terminal.clock.Clock.now`, ``time.monotonic``); ages the supervisor failures.
    """

    def __init__(self, journal: JournalStore, bundle_source: Callable[[], Trust | TrustBundle | None],
                 mode: CounterMode,
                 supervisors: Mapping[str, str], clock: Callable[[], float] = time.time,
                 limits: OfflineLimits | None = None, mono: Callable[[], float] | None = None) -> None:
        self._journal = journal
        self._bundle = bundle_source
        self._mode = mode
        self._supervisors = dict(supervisors)
        self._clock = clock
        self._mono = mono or (lambda: time.monotonic())
        self._limits = limits or OfflineLimits()
        self._lock = journal.decision_lock  # the card taps' lock: a tap and a fallback cannot both pass one cap

    def qr(self, text: str, programme: str, quantity: int, clerk: str, *,
           served: Collection[str] | None = None) -> TapOutcome:
        """Step 1: serve on a scanned household QR, approved by the clerk ``clerk`` (their id).

        :param served: the programmes this counter's profile serves (None: every programme of its mode);
            another is declined ``programme_not_at_counter`` (journalled), as a card tap is.
        :raises terminal.errors.InputRefused: ``clerk`` is not an id of :data:`APPROVER_ID` (code ``clerk_id``).
        :raises LookupError: no trust bundle installed yet.
        """
        clerk, trust, now = self._start(clerk, "clerk")
        try:
            qr = verify_household_qr(text, trust.bundle, int(now))
        except DeniedCard as denied:
            # raised only after the QR verified under an issuer key (signature, claims, validity) and carrying
            # its claims: the decline names the card and household, as a deny-listed card's tap does
            return self._decline(QR, clerk, denied.card_id, programme, DeclineReason.CARD_DENIED,
                                 "card on the deny list", household=household_label(denied.household_ref))
        except HouseholdQrError as exc:
            if not qr_decodes(text):  # a misread or a foreign code, not a forgery: the clerk scans again
                return self._decline(QR, clerk, None, programme, DeclineReason.NOT_A_HOUSEHOLD_QR, str(exc))
            return self._decline(QR, clerk, None, programme, DeclineReason.CARD_SIGNATURE_INVALID, str(exc))
        # the printed label (``HB-`` + 8 hex digits), as a card tap shows it, never the full reference
        return self._serve(_Ask(QR, clerk, qr.card_id, household_label(qr.household_ref), programme, quantity),
                           trust, now, served)

    def manual(self, card_id_hex: str, programme: str, quantity: int, supervisor: str, password: str, *,
               served: Collection[str] | None = None) -> TapOutcome:
        """Step 2: serve a card id read from the household's papers, on a supervisor's password.

        :param served: as for :meth:`qr`.
        :raises terminal.errors.InputRefused: ``supervisor`` is not an id of :data:`APPROVER_ID` (``supervisor_id``),
            or the card id not 16 hex digits (``card_id``).
        :raises LookupError: no trust bundle installed yet.
        """
        supervisor, trust, now = self._start(supervisor, "supervisor")
        try:
            card_id = bytes.fromhex(card_id_hex.strip())
            if len(card_id) != 8:
                raise ValueError("8 bytes")
        except ValueError:
            raise InputRefused("card_id", "the card id is 16 hex digits") from None
        held = self._supervisor_held(supervisor)
        if held is not None:
            log.warning("manual entry for supervisor %r not checked: %s", supervisor, held)
            return self._decline(MANUAL, supervisor, card_id, programme, DeclineReason.SUPERVISOR_LOCKED, held)
        try:
            check_supervisor(self._supervisors, supervisor, password)
        except SupervisorRefused as exc:
            log.warning("manual entry refused for supervisor %r: %s", supervisor, exc)
            return self._decline(MANUAL, supervisor, card_id, programme, DeclineReason.SUPERVISOR_REFUSED, str(exc))
        if card_id in trust.bundle.deny_cards:
            return self._decline(MANUAL, supervisor, card_id, programme, DeclineReason.CARD_DENIED,
                                 "card on the deny list")
        return self._serve(_Ask(MANUAL, supervisor, card_id, "", programme, quantity), trust, now, served)

    # ------------------------------------------------------------------ internals

    def _start(self, approver: str, what: str) -> tuple[str, Trust, float]:
        """What both steps establish first, in this order: the approver's id (:func:`_approver`), the
        trust in force (:meth:`_need_trust`), then the time now (POSIX seconds).

        :raises ValueError: ``approver`` is not an id of :data:`APPROVER_ID` (``what`` names the role).
        :raises LookupError: no trust bundle installed yet.
        """
        approver = _approver(approver, what)
        trust = self._need_trust()
        return approver, trust, self._clock()

    def _need_trust(self) -> Trust:
        got = self._bundle()
        if got is None:
            raise LookupError("no trust bundle installed: no fallback without the issuer's keys and limits")
        trust = got if isinstance(got, Trust) else Trust(got, self._clock())
        return trust.raised(self._journal.wall_mark())  # trusted time never below what the journal saw

    def _supervisor_held(self, supervisor: str) -> str | None:
        """Why ``supervisor``'s password is not checked now (back-off or lock-out), or None.

        Reads the manual step's DECLINED and FALLBACK entries of the last :data:`SUPERVISOR_WINDOW_S`
        of real time (:meth:`_recent_manual`: aged by the monotonic clock, so moving the wall clock
        forward or back neither forgets nor revives a failure). Wrong passwords of the id count back
        to its last accepted password (an entry approved by it that is not a refusal).
        """
        refused, locked = DeclineReason.SUPERVISOR_REFUSED.value, DeclineReason.SUPERVISOR_LOCKED.value
        mine: list[float] = []  # ages (s) of the id's wrong passwords in a row, newest first
        in_a_row, overall = True, 0
        recent, whole = self._recent_manual()
        window = f"in the last {SUPERVISOR_WINDOW_S // 60} min"
        if not whole:  # failures may hide behind the entries not read: never check a password blind
            return f"more than {SUPERVISOR_SCAN_ENTRIES} journal entries {window}: manual entry held"
        for e, age in recent:
            wrong = e.kind is EntryKind.DECLINED and e.decline_reason == refused
            overall += wrong
            if in_a_row and e.approved_by == supervisor:
                if wrong:
                    mine.append(age)
                elif not (e.kind is EntryKind.DECLINED and e.decline_reason == locked):
                    in_a_row = False  # the password was accepted then
        if overall >= COUNTER_LOCK_AFTER:
            return f"{overall} wrong supervisor passwords at this counter {window}: manual entry locked"
        if len(mine) >= SUPERVISOR_LOCK_AFTER:
            return f"{len(mine)} wrong passwords for {supervisor!r} {window}: locked"
        if len(mine) >= SUPERVISOR_BACKOFF_AFTER:
            wait = SUPERVISOR_BACKOFF_S * 2 ** (len(mine) - SUPERVISOR_BACKOFF_AFTER)
            left = wait - mine[0]
            if left > 0:
                return f"{len(mine)} wrong passwords for {supervisor!r} {window}: next try in {left:.0f} s"
        return None

    def _recent_manual(self) -> tuple[list[tuple[JournalEntry, float]], bool]:
        """The manual step's DECLINED and FALLBACK entries younger than :data:`SUPERVISOR_WINDOW_S`, newest first,
        and whether they are all of them (False: the window holds more than :data:`SUPERVISOR_SCAN_ENTRIES`
        entries, and older ones of it were not read).

        Each with a lower bound of its real age in seconds, from the journal's monotonic stamps
        (``mono_ns``, comparable within one boot only) read in journal order, newest first: within
        the current boot, now minus the entry's stamp; for an earlier boot, the age of the newer
        boot's first entry read plus the entry's distance to its own boot's last entry. The time a
        counter was off is not counted (unknown without trusting the wall clock), so failures just
        before a restart count up to one window of running time after it. Wall times and the time
        mark are not read: a clock moved forward cannot age a failure out. At most
        :data:`SUPERVISOR_SCAN_ENTRIES` entries are read; stopping there is not reaching the window's end.
        """
        out: list[tuple[JournalEntry, float]] = []
        boot, ref_ns, offset = self._journal.boot_id, int(self._mono() * 1e9), 0.0
        newest_age = 0.0  # age of the oldest entry read so far (the newest boot's first entry, when crossing)
        hi, read = self._journal.head[0], 0
        while hi > 0 and read < SUPERVISOR_SCAN_ENTRIES:
            lo = max(0, hi - 500)
            page = [s for s in self._journal.entries(after_seq=lo, limit=hi - lo) if s.seq <= hi]
            if not page:
                break
            for stored in reversed(page):
                e = stored.entry
                read += 1
                if e.boot_id != boot:  # the last entry of an earlier boot: it is older than all read so far
                    boot, ref_ns, offset = e.boot_id, e.mono_ns, newest_age
                age = offset + max(0, ref_ns - e.mono_ns) / 1e9
                newest_age = max(newest_age, age)
                if age >= SUPERVISOR_WINDOW_S:
                    return out, True
                if e.fallback == MANUAL and e.kind in (EntryKind.DECLINED, EntryKind.FALLBACK):
                    out.append((e, age))
            hi = page[0].seq - 1
        return out, not (hi > 0 and read >= SUPERVISOR_SCAN_ENTRIES)

    def _serve(self, ask: _Ask, trust: Trust, now: float, here: Collection[str] | None) -> TapOutcome:
        bundle = trust.bundle

        def refuse(reason: DeclineReason, detail: str) -> TapOutcome:
            # a QR verified: its decline names the household as a served one does (a supervisor entry knows none)
            return self._decline(ask.step, ask.approver, ask.card_id, ask.programme, reason, detail,
                                 household=ask.household_ref)

        programmes = bundle_programmes(bundle)
        if ask.programme not in programmes:
            return refuse(DeclineReason.PROGRAMME_NOT_AT_COUNTER, "programme not in the bundle")
        rules = programmes[ask.programme][1]
        if rules.mode is not self._mode or (here is not None and ask.programme not in here):
            # as decide(): a counter serves only its mode's programmes that its profile lists
            return refuse(DeclineReason.PROGRAMME_NOT_AT_COUNTER,
                          f"programme {ask.programme!r} is not served at this {self._mode.value} counter")
        if rules.pin_required:  # no card at the desk, so no PIN to check: never served this way
            return refuse(DeclineReason.PIN_REQUIRED_NO_FALLBACK,
                          f"bundle policy pin.{ask.programme}=1: the card PIN is required, no fallback")
        if ask.quantity < 1:
            return refuse(DeclineReason.INVALID_QUANTITY, "quantity below 1")
        unit = rules.unit
        if clock_wrong(bundle, now, counter_limits(self._limits, bundle).stale_days, trust.mark):  # as a card tap
            return refuse(DeclineReason.COUNTER_CLOCK_WRONG, "the counter's clock is wrong for its bundle")
        if trust.expired and unit is Unit.RUPIAH:  # as decide(): no cash on an expired bundle
            return refuse(DeclineReason.BUNDLE_EXPIRED, "trust bundle expired: no cash until the counter syncs")
        limit = fallback_limit(bundle, ask.step, ask.programme)
        if limit == 0:  # the step is off for this programme, not used up
            return refuse(DeclineReason.FALLBACK_NOT_ENABLED,
                          f"bundle policy fallback.{ask.step}.{ask.programme} is absent or 0")
        start, end = (t.timestamp() for t in cycle_bounds(cycle_of(dt.datetime.fromtimestamp(now, dt.UTC))))
        card = ask.card_id.hex()
        with self._lock:
            # The step's limit caps all this counter gave the card by fallback this cycle, QR and supervisor
            # entry together (steps do not stack: QR 1 then manual 1 is not 2), read through the card index.
            # The card's own taps here this cycle count toward the step's limit too (the reverse of a card
            # tap after a fallback, decide()'s already_served_fallback): a household paid by card is not
            # paid again by QR or supervisor entry; one entitled to more gets the rest by card.
            units = self._journal.card_programme_units(card, start, end)
            served = units.fallback.get(ask.programme, 0)
            by_card = units.card.get(ask.programme, 0)
            step_left = max(0, limit - served)
            left = max(0, step_left - by_card)
            if ask.quantity > left:
                if ask.quantity <= step_left:  # the fallbacks alone would leave enough: the card taps took the rest
                    reason = DeclineReason.ALREADY_SERVED_CARD
                else:
                    reason = DeclineReason.FALLBACK_USED_UP if left == 0 else DeclineReason.NOT_ENOUGH_LEFT
                return self._decline(ask.step, ask.approver, ask.card_id, ask.programme, reason,
                                     f"{ask.step} limit {limit} per cycle, {served} already served by fallback"
                                     f" (QR and supervisor entry) and {by_card} by card at this counter",
                                     household=ask.household_ref, entitled=limit, remaining=left)
            over = self._over_caps(card, unit, ask.quantity, trust, now, start, end)
            if over is not None:
                return self._decline(ask.step, ask.approver, ask.card_id, ask.programme, over[0], over[1],
                                     household=ask.household_ref, entitled=limit, remaining=left)
            stored = self._journal.append(EntryKind.FALLBACK, CardWrite(
                card_id=card, programme=ask.programme, amount=ask.quantity, unit=unit,
                fallback=ask.step, approved_by=ask.approver))
        log.info("fallback %s: %s %s of %s approved by %r (entry %d)", ask.step, ask.quantity, unit.name.lower(),
                 ask.programme, ask.approver, stored.seq)
        remaining = left - ask.quantity
        receipt = Receipt(self._journal.terminal_id, stored.seq, ask.household_ref, ask.programme, unit, limit,
                          ask.quantity, remaining, receipt_code(stored.signed.entry_hash), stored.entry.wall_ms / 1000)
        return TapOutcome(TapStatus.ACCEPTED, reader=f"fallback:{ask.step}", mode=self._mode, programme=ask.programme,
                          household_ref=ask.household_ref or None, unit=unit, amount=ask.quantity, entitled=limit,
                          remaining=remaining, receipt=receipt, card_id=card, journal_seq=stored.seq,
                          detail=f"{ask.step} fallback approved by {ask.approver}")

    def _over_caps(self, card: str, unit: Unit, quantity: int, trust: Trust, now: float,
                   start: float, end: float) -> tuple[DeclineReason, str] | None:
        """The counter cap ``quantity`` more units would pass, or None (caller holds the decision lock).

        The caps of :func:`terminal.policy.decide`, in its order, tightened for the bundle's age as
        a card tap's are: the per-tap cap, then over every redemption kind this journal holds
        (:meth:`JournalStore.exposure`) the card's units since the last confirmed upload, the
        card's units this cycle and the terminal's since the last confirmed upload.
        """
        base = counter_limits(self._limits, trust.bundle)
        limits = base.tightened(base.effective_age(trust.age_days(now), at_floor=trust.expired))
        open_since = now - limits.stale_days * SECONDS_PER_DAY
        tap_cap = limits.per_tap.get(unit)
        if tap_cap is not None and quantity > tap_cap:
            return DeclineReason.OVER_TAP_LIMIT, f"per-tap cap {tap_cap}"
        since_sync = limits.per_card_since_sync.get(unit)
        if since_sync is not None:
            had = self._journal.exposure(card, open_since=open_since).get(unit, 0)
            if had + quantity > since_sync:
                return (DeclineReason.OVER_CARD_OFFLINE_LIMIT,
                        f"card cap {since_sync} since the last upload, {had} already served")
        cycle_cap = limits.per_card_cycle.get(unit)
        if cycle_cap is not None:
            had = self._journal.card_cycle_exposure(card, start, end, open_since=open_since).get(unit, 0)
            if had + quantity > cycle_cap:
                return DeclineReason.OVER_CARD_CYCLE_LIMIT, f"card cap {cycle_cap} per cycle, {had} already served"
        term_cap = limits.terminal_exposure.get(unit)
        if term_cap is not None:
            out = self._journal.exposure(open_since=open_since).get(unit, 0)
            if out + quantity > term_cap:
                return DeclineReason.OVER_TERMINAL_LIMIT, f"terminal exposure {term_cap}, {out} out unconfirmed"
        return None

    def _decline(self, step: str, approver: str, card_id: bytes | None, programme: str, reason: DeclineReason,
                 detail: str, *, household: str = "", entitled: int = 0, remaining: int = 0) -> TapOutcome:
        stored = self._journal.append(EntryKind.DECLINED, CardWrite(
            card_id=card_id.hex() if card_id else None, programme=programme[:32] or None,
            decline_reason=reason.value, fallback=step, approved_by=approver))
        return TapOutcome(TapStatus.DECLINED, reader=f"fallback:{step}", mode=self._mode, programme=programme,
                          reason=reason, household_ref=household or None, entitled=entitled, remaining=remaining,
                          card_id=card_id.hex() if card_id else None, journal_seq=stored.seq, detail=detail)


def _approver(name: str, what: str) -> str:
    """``name`` without surrounding white space, if it is an id of :data:`APPROVER_ID`.

    :raises terminal.errors.InputRefused: any other text, code ``clerk_id`` or ``supervisor_id`` (the screen answers
        400; nothing is journalled).
    """
    name = name.strip()
    if APPROVER_ID.fullmatch(name) is None:
        raise InputRefused(f"{what}_id", f"the {what} id is 1..{MAX_APPROVER_CHARS} of the ASCII letters, digits, "
                           "'.', '_' and '-', starting with a letter or digit")
    return name
