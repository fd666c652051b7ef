"""The tap decision: pure functions from verified card facts, trust data and limits to a verdict.

Nothing here touches a reader, a file or the clock: the caller (:mod:`terminal.tap`)
gathers the inputs — the verified card state from the card session, the deny
list and programmes from the trust bundle, the exposure counters from the
journal, the time — and this module answers *accept with amount X* or
*decline for reason R*. docs/design.md §Tap sequence step 4, §Caps and
offline limits and §Deny lists.

Units: amounts are integers in the programme's unit — visits, food packages,
or rupiah (no sub-rupiah amounts). Times are POSIX seconds (UTC).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cardlib.errors import CardlibError
from cardlib.records import errors as rec
from cardlib.records.claims import IdentityClaims, Unit, cycle_of
from cardlib.records.declines import DeclineReason
from firmware_config.models import CounterMode

SECONDS_PER_DAY = 86_400

#: Each decline reason's words for the clerk (:func:`decline_message`). The reason codes are
#: :class:`cardlib.records.declines.DeclineReason`, shared with the server; their words are the counter's.
_MESSAGES: Mapping[DeclineReason, str] = {
    DeclineReason.CARD_UNREADABLE: "The card could not be read. Ask the person to tap again.",
    DeclineReason.NOT_OUR_CARD: "This is not a Huma Betang card.",
    DeclineReason.UNKNOWN_ISSUER: (
        "This card's issuer is not known to this counter. Hand nothing over. Sync the counter and ask for the "
        "card again; if it is still refused, send the household to the district office."
    ),
    # the bundle's deny list holds replaced (re-issued) and blocked cards alike, without saying which
    # (server.bundles.next_deny_lists): the words cover both, so a household with its new card is not sent away
    DeclineReason.CARD_DENIED: (
        "This card is no longer valid (replaced or blocked). If the household already has a new card, use the new "
        "card; if not, send them to the district office."
    ),
    DeclineReason.CARD_NOT_YET_VALID: (
        "This card is not valid yet: its start date has not come. Hand nothing over; the household comes back "
        "from that date, or asks the district office when the card starts."
    ),
    DeclineReason.CARD_EXPIRED: (
        "This card has expired. Hand nothing over; send the household to the district office for a new card."
    ),
    DeclineReason.CARD_STATE_INVALID: "The balance on the card is damaged. Send the person to the district office.",
    DeclineReason.CARD_FORKED: "The card shows signs of copying. Send the person to the district office.",
    DeclineReason.NOT_IN_PROGRAMME: "This household is not registered for this programme.",
    DeclineReason.PROGRAMME_NOT_AT_COUNTER: "This programme is not served at this counter.",
    DeclineReason.NOTHING_LEFT: "Nothing is left for this period.",
    DeclineReason.NOT_ENOUGH_LEFT: "Not enough is left for this amount.",
    DeclineReason.FALLBACK_USED_UP: (
        "Fallback allowance used up for this period; with the card, a tap can still serve the household."
    ),
    DeclineReason.ALREADY_SERVED_FALLBACK: (
        "This household was already served this period by QR or supervisor entry. "
        "Only the remaining amount can be given."
    ),
    DeclineReason.ALREADY_SERVED_CARD: (
        "This household was already served this period by card at this counter. "
        "What is left can only be given by card."
    ),
    DeclineReason.OVER_TAP_LIMIT: "The amount is above the limit for one tap at this counter.",
    DeclineReason.OVER_CARD_OFFLINE_LIMIT: (
        "This card has reached its offline limit. Try again after the counter syncs."
    ),
    DeclineReason.OVER_CARD_CYCLE_LIMIT: (
        "This card has reached this counter's limit for this period. A sync does not change it."
    ),
    DeclineReason.OVER_TERMINAL_LIMIT: "This counter has reached its offline limit. Sync the counter first.",
    DeclineReason.PIN_REQUIRED: "This programme needs the card PIN.",
    DeclineReason.PIN_WRONG: (
        "Wrong PIN: nothing was given. The person may type it again, but after 3 wrong PINs in a row (the "
        "usual limit) the card locks and only the district office can unlock it."
    ),
    DeclineReason.SUPERVISOR_REFUSED: "Supervisor id or password not accepted. Nothing was given.",
    DeclineReason.SUPERVISOR_LOCKED: (
        "Too many wrong supervisor passwords: manual entry is paused. Wait, or call the district office."
    ),
    DeclineReason.FALLBACK_NOT_ENABLED: "This fallback (QR or supervisor) is not enabled for this programme.",
    DeclineReason.NOT_A_HOUSEHOLD_QR: "This is not a household QR. Scan again.",
    DeclineReason.PIN_REQUIRED_NO_FALLBACK: (
        "This programme needs the card and its PIN: never by QR or supervisor entry. Come back with the card, "
        "or go to the district office."
    ),
    DeclineReason.INVALID_QUANTITY: "Choose a quantity of at least 1.",
    DeclineReason.BUNDLE_EXPIRED: (
        "This counter has not received the office's latest update for too long: no cash until it does. "
        "Connect the counter to the network and press Sync now; if that does not help, call the technician."
    ),
    DeclineReason.CLONE_CHECK_FAILED: "This card failed the copy check. Send the person to the district office.",
    DeclineReason.CARD_COUNTER_REPEATED: (
        "This card repeated an answer it had given before: it may be a copied card. Hand nothing over and "
        "send the household to the district office with the card."
    ),
    DeclineReason.PIN_BLOCKED: "The card PIN is blocked. Send the person to the district office.",
    DeclineReason.PIN_LOCKED: "Too many wrong PINs on this card. Send the person to the district office.",
    DeclineReason.PIN_RECORD_INVALID: (
        "The PIN stored on this card is damaged. Send the person to the district office for a new PIN."
    ),
    DeclineReason.REVOKED_KEY: (
        "The card was last written by a blocked counter. Send the person to the district office."
    ),
    DeclineReason.STATE_FROM_ANOTHER_CARD: (
        "The data on this card belongs to another card. Send the person to the district office."
    ),
    DeclineReason.CARD_SIGNATURE_INVALID: (
        "The card's signature is not valid. Send the person to the district office."
    ),
    DeclineReason.FUTURE_CYCLE: (
        "The card was written by a counter with a wrong date. Send the person to the district office."
    ),
    DeclineReason.COUNTER_CLOCK_WRONG: (
        "This counter's date and time are wrong: only balance checks until it is set and synced."
    ),
}


def decline_message(reason: DeclineReason) -> str:
    """The plain-word explanation of ``reason`` shown to the clerk (an English gettext msgid).

    The counter screen translates it (Bahasa Indonesia by default, terminal/screen/locale).
    """
    return _MESSAGES[reason]


#: Card record errors and their decline reason, checked in order (subclasses first): one
#: reason per cause, shared by the NTAG tap and the secure tap.
RECORD_DECLINES: tuple[tuple[type[Exception], DeclineReason], ...] = (
    (rec.DeniedCard, DeclineReason.CARD_DENIED),
    (rec.Expired, DeclineReason.CARD_EXPIRED),
    (rec.NotYetValid, DeclineReason.CARD_NOT_YET_VALID),
    (rec.ForkDetected, DeclineReason.CARD_FORKED),
    (rec.NoValidState, DeclineReason.CARD_STATE_INVALID),
    (rec.CorruptSlot, DeclineReason.CARD_STATE_INVALID),
    (rec.UnknownKid, DeclineReason.UNKNOWN_ISSUER),
    (rec.RevokedKid, DeclineReason.REVOKED_KEY),
    (rec.UidMismatch, DeclineReason.STATE_FROM_ANOTHER_CARD),
    (rec.WrongCard, DeclineReason.STATE_FROM_ANOTHER_CARD),
    (rec.CoseError, DeclineReason.CARD_SIGNATURE_INVALID),
    (rec.RedemptionRefused, DeclineReason.CARD_STATE_INVALID),
    (rec.CardPasswordRefused, DeclineReason.CLONE_CHECK_FAILED),  # an NTAG that refuses its password: a copy
    (rec.RecordError, DeclineReason.NOT_OUR_CARD),
    (CardlibError, DeclineReason.NOT_OUR_CARD),
)


def decline_reason_of(exc: Exception,
                      extra: tuple[tuple[type[Exception], DeclineReason], ...] = ()) -> DeclineReason:
    """The decline reason for a card error: the first match in ``extra``, then :data:`RECORD_DECLINES`."""
    for kind, reason in (*extra, *RECORD_DECLINES):
        if isinstance(exc, kind):
            return reason
    return DeclineReason.NOT_OUR_CARD


@dataclass(frozen=True)
class ProgrammeRules:
    """What the tap decision needs to know of one programme.

    Built from the bundle's catalogue entry, :class:`cardlib.records.bundle.Programme`.

    :ivar code: short stable id, e.g. ``"pangan"`` (the key in the card's entitlements).
    :ivar unit: what its amounts count; it decides the counter mode that serves it (:attr:`mode`).
    :ivar pin_required: whether a redemption needs the card PIN.
    :ivar per_cycle: the province's figure per cycle in ``unit`` (the bundle's, signed by the bundle key):
        the ceiling of any card's own entitlement (:func:`card_facts`); None: no ceiling known.

    Cycles are not per programme: every programme follows the one province-wide
    half-year calendar, :func:`cycle_at` (docs/card-format.md §conventions).
    """

    code: str
    unit: Unit
    pin_required: bool = False
    per_cycle: int | None = None

    @property
    def mode(self) -> CounterMode:
        """The counter mode that serves this programme (the one handing out its unit)."""
        return CounterMode.paying(self.unit)


def cycle_at(now: float) -> int:
    """The province-wide cycle id (year*10 + half, WIB) containing ``now`` (POSIX seconds).

    See :func:`cardlib.records.claims.cycle_of`.
    """
    return cycle_of(dt.datetime.fromtimestamp(now, dt.UTC))


@dataclass(frozen=True)
class CardFacts:
    """What a verified card says, reduced to what the decision needs.

    Built by the tap from the card session *after* identity and slots verified;
    an unverifiable card never gets here (it is declined with the session's reason).

    :ivar card_id: the issuer's 8-byte card id.
    :ivar uid: the chip UID (7 bytes on NTAG21x).
    :ivar entitlements: units per cycle, by programme code (issuer-signed).
    :ivar valid_from, valid_to: POSIX seconds (issuer-signed).
    :ivar offline_cap: issuer-signed cap on units one terminal may hand this card per cycle
        without an online confirmation, in the programme's unit (None: no issuer cap);
        counted from the terminal's journal over the cycle, not reset by an upload.
    :ivar cycle: the cycle id the current slot's amounts belong to (one for all programmes).
    :ivar spent: units spent in ``cycle`` by programme (from the current slot).
    """

    card_id: bytes
    uid: bytes
    entitlements: Mapping[str, int]
    valid_from: int
    valid_to: int
    cycle: int
    spent: Mapping[str, int]
    offline_cap: int | None = None

    def remaining(self, programme: ProgrammeRules, cycle: int) -> int:
        """Units left for ``programme`` in ``cycle`` (a newer cycle than the slot's resets to the entitlement)."""
        entitled = self.entitlements.get(programme.code, 0)
        if self.cycle != cycle:
            return entitled
        return max(0, entitled - self.spent.get(programme.code, 0))


def card_facts(identity: IdentityClaims, cycle: int, remaining: Mapping[int, int], uid: bytes,
               programmes: Mapping[str, tuple[int, ProgrammeRules]], chosen: str) -> CardFacts:
    """The decision's view of a verified card: its identity claims and current slot (NTAG or secure).

    A card's entitlement per programme is the smaller of its own issuer-signed ``per_cycle`` and the
    province's figure in the bundle (:attr:`ProgrammeRules.per_cycle`): a station profile edited to
    issue 50 packages where the programme gives 10 earns 10 at every counter (red team round 6; the
    server measures redemptions against the same ceiling). What was spent this cycle is measured
    against the card's own figure, as the card's remaining amounts were written.

    :param identity: the verified identity claims. :param cycle: the current slot's cycle id.
    :param remaining: units left on the card by programme id (the current slot).
    :param uid: the chip UID (7 bytes; empty for a secure card).
    :param programmes: programme name -> (card programme id, rules), from the bundle.
    :param chosen: the programme asked for (its card ``offline_cap`` applies).
    """
    by_id = {pid: (name, rules) for name, (pid, rules) in programmes.items()}
    entitlements: dict[str, int] = {}
    spent: dict[str, int] = {}
    for pid, own in identity.programmes.items():
        if pid not in by_id:
            continue
        name, rules = by_id[pid]
        ceiling = rules.per_cycle
        entitlements[name] = own.per_cycle if ceiling is None else min(own.per_cycle, ceiling)
        spent[name] = own.per_cycle - remaining.get(pid, 0)
    chosen_id = programmes[chosen][0] if chosen in programmes else None
    epoch = dt.date(1970, 1, 1)
    return CardFacts(
        card_id=identity.card_id, uid=uid, entitlements=entitlements,
        valid_from=(identity.valid_from - epoch).days * SECONDS_PER_DAY,
        valid_to=(identity.valid_to - epoch).days * SECONDS_PER_DAY + SECONDS_PER_DAY - 1,
        cycle=cycle, spent=spent,
        offline_cap=identity.offline_cap.get(chosen_id) if chosen_id is not None else None,
    )


#: Bundle policy names of the per-unit caps (``<name>.<unit>``, unit in lower case: ``package``,
#: ``rupiah``, ``visit``), e.g. ``cap.per_tap.package = 2``. docs/design.md §Caps and offline limits.
POLICY_PER_TAP = "cap.per_tap"
POLICY_PER_CARD_CYCLE = "cap.per_card_cycle"
POLICY_TERMINAL_EXPOSURE = "cap.terminal_exposure"
#: Legacy bundle policies: ``offline_cap`` (rupiah per card per cycle) and ``max_days_offline``
#: (bundle age, days, at which every cap reaches its floor).
POLICY_LEGACY_CARD_CAP = "offline_cap"
POLICY_STALE_DAYS = "max_days_offline"


def _min_caps(a: Mapping[Unit, int], b: Mapping[Unit, int]) -> dict[Unit, int]:
    """Per unit the smaller of two cap maps (a unit missing from one takes the other's cap)."""
    out = dict(a)
    for unit, value in b.items():
        out[unit] = value if unit not in out else min(out[unit], value)
    return out


@dataclass(frozen=True)
class OfflineLimits:
    """Terminal-side limits from the bundle policy and the profile, per unit (packages, visits, rupiah).

    A missing unit means "no limit of this kind". docs/design.md §Caps and offline limits.

    :ivar per_tap: most units one tap may move.
    :ivar per_card_since_sync: most units one card may take at this terminal
        between two confirmed uploads (kept for profiles that set it).
    :ivar terminal_exposure: most units this terminal may hand out in total
        between two confirmed uploads (signed receipts, :mod:`terminal.sync`).
    :ivar per_card_cycle: most units one card may take at this terminal in one cycle,
        counted from the terminal's own journal (an upload does not reset it).
    :ivar fresh_days: bundle age (days since the last successful bundle check)
        up to which the limits apply in full.
    :ivar stale_days: age at which the limits reach ``stale_floor`` (linear in between).
    :ivar stale_floor: fraction (0 < f <= 1) of each limit kept for very stale
        bundles: service continues at low amounts rather than stopping (docs/design.md §Keys and trust).
    """

    per_tap: Mapping[Unit, int] = field(default_factory=dict)
    per_card_since_sync: Mapping[Unit, int] = field(default_factory=dict)
    terminal_exposure: Mapping[Unit, int] = field(default_factory=dict)
    fresh_days: float = 7.0
    stale_days: float = 30.0
    stale_floor: float = 0.25
    per_card_cycle: Mapping[Unit, int] = field(default_factory=dict)

    @classmethod
    def from_policies(cls, policies: Mapping[str, int]) -> OfflineLimits:
        """The caps a trust bundle's ``policies`` set (see :data:`POLICY_PER_TAP` for the names).

        ``offline_cap`` (legacy) caps rupiah per card per cycle; ``max_days_offline`` sets
        :attr:`stale_days`. Unknown names (``pin.*`` …) are left to their readers.

        :param policies: the bundle's policy map, name -> integer.
        """
        kinds: dict[str, dict[Unit, int]] = {POLICY_PER_TAP: {}, POLICY_PER_CARD_CYCLE: {},
                                             POLICY_TERMINAL_EXPOSURE: {}}
        for name, value in policies.items():
            prefix, _, unit_name = name.rpartition(".")
            if prefix in kinds and unit_name.upper() in Unit.__members__:
                kinds[prefix][Unit[unit_name.upper()]] = int(value)
        if POLICY_LEGACY_CARD_CAP in policies:
            kinds[POLICY_PER_CARD_CYCLE] = _min_caps(kinds[POLICY_PER_CARD_CYCLE],
                                                     {Unit.RUPIAH: int(policies[POLICY_LEGACY_CARD_CAP])})
        stale = float(policies.get(POLICY_STALE_DAYS, cls.stale_days))
        return cls(per_tap=kinds[POLICY_PER_TAP], per_card_cycle=kinds[POLICY_PER_CARD_CYCLE],
                   terminal_exposure=kinds[POLICY_TERMINAL_EXPOSURE],
                   fresh_days=min(cls.fresh_days, stale), stale_days=stale)

    def tightest(self, other: OfflineLimits) -> OfflineLimits:
        """Both sets of limits at once: per cap and unit the smaller, the shorter ageing, the lower floor.

        The bundle's policy and the terminal profile combine this way, so a profile can only
        tighten what the bundle allows (docs/readers.md ``[policy]``).
        """
        return OfflineLimits(
            per_tap=_min_caps(self.per_tap, other.per_tap),
            per_card_since_sync=_min_caps(self.per_card_since_sync, other.per_card_since_sync),
            terminal_exposure=_min_caps(self.terminal_exposure, other.terminal_exposure),
            per_card_cycle=_min_caps(self.per_card_cycle, other.per_card_cycle),
            fresh_days=min(self.fresh_days, other.fresh_days),
            stale_days=min(self.stale_days, other.stale_days),
            stale_floor=min(self.stale_floor, other.stale_floor),
        )

    def factor(self, bundle_age_days: float) -> float:
        """The fraction of each cap in force for a bundle ``bundle_age_days`` old (1 .. ``stale_floor``)."""
        if bundle_age_days <= self.fresh_days:
            return 1.0
        span = max(self.stale_days - self.fresh_days, 1e-9)
        progress = min(1.0, (bundle_age_days - self.fresh_days) / span)
        return 1.0 - progress * (1.0 - self.stale_floor)

    def scale(self, value: int, bundle_age_days: float) -> int:
        """One cap (units) as in force for a bundle that old: never below 1 unit."""
        return max(1, math.floor(value * self.factor(bundle_age_days)))

    def effective_age(self, bundle_age_days: float, *, at_floor: bool = False) -> float:
        """The bundle age, days, the caps are tightened for: ``bundle_age_days``, or at least ``stale_days``
        (the stale floor) when ``at_floor`` (an expired bundle, a state of a since-revoked key).

        Card taps (:func:`decide`) and the fallback desk (:mod:`terminal.fallback`) both use it.
        """
        return max(bundle_age_days, self.stale_days) if at_floor else bundle_age_days

    def tightened(self, bundle_age_days: float) -> OfflineLimits:
        """The limits in force for a bundle ``bundle_age_days`` old.

        Full limits up to ``fresh_days``; then each limit shrinks linearly to
        ``stale_floor`` of itself at ``stale_days`` and stays there, never
        below 1 unit (a stale bundle tightens limits, it does not stop service).
        """
        if bundle_age_days <= self.fresh_days:
            return self

        def scale(limits: Mapping[Unit, int]) -> dict[Unit, int]:
            return {unit: self.scale(value, bundle_age_days) for unit, value in limits.items()}

        return dataclasses.replace(
            self,
            per_tap=scale(self.per_tap),
            per_card_since_sync=scale(self.per_card_since_sync),
            terminal_exposure=scale(self.terminal_exposure),
            per_card_cycle=scale(self.per_card_cycle),
        )


@dataclass(frozen=True)
class Exposure:
    """Units already handed out, from the terminal's journal.

    :ivar card: units for this card at this terminal since the last confirmed upload, by unit.
    :ivar terminal: units at this terminal in total since the last confirmed upload, by unit.
    :ivar card_cycle: units for this card at this terminal in the current cycle, uploaded or not.
    :ivar fallback: units this terminal gave this card's household in the current cycle by QR or
        supervisor entry (FALLBACK entries, uploaded or not), by programme code: the card does not
        show them (a fallback writes no card), so they come off what the card says is left.
    """

    card: Mapping[Unit, int] = field(default_factory=dict)
    terminal: Mapping[Unit, int] = field(default_factory=dict)
    card_cycle: Mapping[Unit, int] = field(default_factory=dict)
    fallback: Mapping[str, int] = field(default_factory=dict)


class PinStatus(enum.Enum):
    """Outcome of the PIN check the tap ran against the card's verifier before deciding."""

    NOT_ENTERED = "not_entered"
    OK = "ok"
    WRONG = "wrong"
    #: the card counts as many wrong PINs as the bundle allows (cardlib.records.pin): not checked.
    LOCKED = "locked"
    #: the card's PIN record (claim 9 v3) is missing or garbled: not checked (cardlib.records.pin).
    RECORD_INVALID = "record_invalid"


@dataclass(frozen=True)
class Request:
    """What the clerk asked for before the tap.

    :ivar mode: the counter mode (BALANCE_CHECK makes any tap read-only).
    :ivar programme: the programme code chosen on the screen.
    :ivar quantity: units to redeem (visits, packages or rupiah).
    :ivar pin: the PIN check result when a PIN was entered on the screen.
    """

    mode: CounterMode
    programme: str
    quantity: int = 1
    pin: PinStatus = PinStatus.NOT_ENTERED


class DenyList(Protocol):
    """The deny list the decision checks: card ids and chip UIDs (the bundle's: :class:`terminal.tap.BundleDenyList`).

    Exact membership (a Bloom false positive would deny an honest household;
    docs/design.md §Deny lists).
    """

    def denies(self, card_id: bytes, uid: bytes) -> bool:
        """Whether the card id (8 bytes) or the chip UID (7 bytes) is on the list."""
        ...


@dataclass(frozen=True)
class Decision:
    """The verdict for one tap.

    :ivar reason: None when accepted.
    :ivar amount: units to redeem now (0 for balance checks and declines).
    :ivar entitled: units per cycle for the programme (issuer-signed).
    :ivar remaining_before, remaining_after: units left in the current cycle.
    :ivar cycle: the cycle number the redemption is booked in.
    :ivar unit: the programme's unit (None when the programme is unknown).
    """

    accepted: bool
    mode: CounterMode
    programme: str
    reason: DeclineReason | None = None
    amount: int = 0
    entitled: int = 0
    remaining_before: int = 0
    remaining_after: int = 0
    cycle: int = 0
    unit: Unit | None = None

    @property
    def writes_card(self) -> bool:
        """True when the tap must update the card (an accepted redemption or visit)."""
        return self.accepted and self.mode is not CounterMode.BALANCE_CHECK


def decline(mode: CounterMode, programme: str, reason: DeclineReason) -> Decision:
    """A declined decision for reasons found before the policy could run (unreadable card, bad signature)."""
    return Decision(accepted=False, mode=mode, programme=programme, reason=reason)


def decide(
    *,
    card: CardFacts,
    request: Request,
    programmes: Mapping[str, ProgrammeRules],
    counter_modes: frozenset[CounterMode],
    deny: DenyList,
    limits: OfflineLimits,
    exposure: Exposure,
    bundle_age_days: float,
    now: float,
    bundle_expired: bool = False,
    at_floor: bool = False,
    clock_wrong: bool = False,
) -> Decision:
    """Decide one tap. Pure: the same inputs always give the same decision.

    Checks, in order (the first failing one is the reason): deny list, validity
    window, programme known and served here, household entitled, PIN, quantity,
    remaining entitlement (the card's, less this counter's fallback payouts of the cycle,
    ``already_served_fallback`` when only those make it short), per-tap limit, per-card limits (since the last confirmed
    upload, and per cycle: the terminal's and the card's issuer-signed ``offline_cap``),
    terminal exposure — every cap tightened for the bundle's age, in every unit.
    A card state in a later cycle than ``now`` is declined (``future_cycle``). A balance check stops after the
    validity and programme checks and never writes.

    :param card: verified card facts (identity + current slot).
    :param request: the clerk's mode, programme, quantity and PIN status.
    :param programmes: programme definitions from the trust bundle, by code.
    :param counter_modes: the modes this counter's profile allows.
    :param deny: the bundle's deny list.
    :param limits: the profile's offline limits (untightened).
    :param exposure: units handed out since the last successful upload.
    :param bundle_age_days: days since the last successful trust-bundle check.
    :param bundle_expired: the trust bundle is past its time in force (docs/security.md,
        "Trust bundle and its keys"): cash payouts are declined, other redemptions get the
        stale floor of their limits, balance checks go on.
    :param at_floor: serve under the stale floor of every cap whatever the bundle's age (a card
        state signed by a since-revoked key before its revocation: docs/security.md
        "Revocation that does not exclude").
    :param clock_wrong: the counter's clock is far from its bundle's time: it writes no card
        (``counter_clock_wrong``); balance checks go on.
    :param now: POSIX seconds (the terminal clock).
    :returns: the decision; never raises for a bad card (that is a decline).
    """
    mode, code = request.mode, request.programme

    def no(reason: DeclineReason) -> Decision:
        return Decision(accepted=False, mode=mode, programme=code, reason=reason)

    if deny.denies(card.card_id, card.uid):
        return no(DeclineReason.CARD_DENIED)
    if now < card.valid_from:
        return no(DeclineReason.CARD_NOT_YET_VALID)
    if now > card.valid_to:
        return no(DeclineReason.CARD_EXPIRED)
    programme = programmes.get(code)
    if programme is None:
        return no(DeclineReason.PROGRAMME_NOT_AT_COUNTER)
    if mode is not CounterMode.BALANCE_CHECK and (
        programme.mode is not mode or mode not in counter_modes
    ):
        return no(DeclineReason.PROGRAMME_NOT_AT_COUNTER)
    if code not in card.entitlements:
        return no(DeclineReason.NOT_IN_PROGRAMME)
    entitled = card.entitlements[code]
    cycle = cycle_at(now)
    if card.cycle > cycle:
        # Written by a counter whose clock was ahead: what is left now is unknown.
        return no(DeclineReason.FUTURE_CYCLE)
    on_card = card.remaining(programme, cycle)
    # What the counter gave by QR or supervisor entry this cycle is not on the card: it is not left either.
    remaining = max(0, on_card - exposure.fallback.get(code, 0))
    balance = Decision(accepted=True, mode=mode, programme=code, unit=programme.unit, entitled=entitled,
                       remaining_before=remaining, remaining_after=remaining, cycle=cycle)
    if mode is CounterMode.BALANCE_CHECK:
        return balance

    def no_b(reason: DeclineReason) -> Decision:
        return dataclasses.replace(balance, accepted=False, reason=reason)

    if clock_wrong:
        return no_b(DeclineReason.COUNTER_CLOCK_WRONG)
    if programme.pin_required:
        if request.pin is PinStatus.LOCKED:
            return no_b(DeclineReason.PIN_LOCKED)
        if request.pin is PinStatus.RECORD_INVALID:
            return no_b(DeclineReason.PIN_RECORD_INVALID)
        if request.pin is PinStatus.NOT_ENTERED:
            return no_b(DeclineReason.PIN_REQUIRED)
        if request.pin is PinStatus.WRONG:
            return no_b(DeclineReason.PIN_WRONG)
    qty = request.quantity
    if qty < 1:
        return no_b(DeclineReason.INVALID_QUANTITY)
    if qty > remaining:
        if qty <= on_card:  # the card alone would do: the fallback payouts took the rest
            return no_b(DeclineReason.ALREADY_SERVED_FALLBACK)
        return no_b(DeclineReason.NOTHING_LEFT if remaining == 0 else DeclineReason.NOT_ENOUGH_LEFT)
    unit = programme.unit
    if bundle_expired and unit is Unit.RUPIAH:
        return no_b(DeclineReason.BUNDLE_EXPIRED)
    age = limits.effective_age(bundle_age_days, at_floor=bundle_expired or at_floor)
    eff = limits.tightened(age)
    if qty > eff.per_tap.get(unit, qty):
        return no_b(DeclineReason.OVER_TAP_LIMIT)
    since_sync = eff.per_card_since_sync.get(unit)
    if since_sync is not None and exposure.card.get(unit, 0) + qty > since_sync:
        return no_b(DeclineReason.OVER_CARD_OFFLINE_LIMIT)
    cycle_limit = eff.per_card_cycle.get(unit)
    if card.offline_cap is not None:
        # The issuer's cap is per cycle and ages with the bundle like the terminal's own caps.
        cap = limits.scale(card.offline_cap, age)
        cycle_limit = cap if cycle_limit is None else min(cycle_limit, cap)
    if cycle_limit is not None and exposure.card_cycle.get(unit, 0) + qty > cycle_limit:
        return no_b(DeclineReason.OVER_CARD_CYCLE_LIMIT)  # not reset by a sync
    term_limit = eff.terminal_exposure.get(unit)
    if term_limit is not None and exposure.terminal.get(unit, 0) + qty > term_limit:
        return no_b(DeclineReason.OVER_TERMINAL_LIMIT)
    return Decision(
        accepted=True,
        mode=mode,
        programme=code,
        amount=qty,
        unit=unit,
        entitled=entitled,
        remaining_before=remaining,
        remaining_after=remaining - qty,
        cycle=cycle,
    )

