"""Why a counter declined a tap: the stable reason codes journalled in DECLINED entries.

A DECLINED journal entry carries one of these values as its signed claim 20
(:attr:`cardlib.records.journal.Claim.DECLINE_REASON`, text of at most 32 characters,
docs/api.md §Journal entry format). The counter decides them (``terminal.policy``) and
shows each with its own words; the server stores and searches them (``journal_entries.decline_reason``)
and its auditor pages name them in the page's language. Both import this one enum: a code is
written here once. Codes are never renamed or reused: entries signed years ago still carry them.
Pure: no I/O.
"""

from __future__ import annotations

import enum


class DeclineReason(enum.Enum):
    """Why a tap was declined; the value is the stable code journalled in DECLINED entries (claim 20)."""

    CARD_UNREADABLE = "card_unreadable"
    NOT_OUR_CARD = "not_our_card"
    UNKNOWN_ISSUER = "unknown_issuer"
    CARD_DENIED = "card_denied"
    CARD_NOT_YET_VALID = "card_not_yet_valid"
    CARD_EXPIRED = "card_expired"
    CARD_STATE_INVALID = "card_state_invalid"
    CARD_FORKED = "card_forked"
    NOT_IN_PROGRAMME = "not_in_programme"
    PROGRAMME_NOT_AT_COUNTER = "programme_not_at_counter"
    NOTHING_LEFT = "nothing_left"
    NOT_ENOUGH_LEFT = "not_enough_left"
    #: The card still shows units this counter already gave the household this cycle by QR or supervisor
    #: entry (a fallback writes no card, docs/fallback.md): what is left after them is less than asked.
    ALREADY_SERVED_FALLBACK = "already_served_fallback"
    #: A fallback (QR or supervisor entry, docs/fallback.md): this counter already paid the household's card
    #: this cycle by card tap, and those units count toward the step's limit; the rest is given by card.
    ALREADY_SERVED_CARD = "already_served_card"
    OVER_TAP_LIMIT = "over_tap_limit"
    #: The card's units at this counter since the last confirmed upload are at the cap: a sync resets it.
    OVER_CARD_OFFLINE_LIMIT = "over_card_offline_limit"
    #: The card's units at this counter this cycle are at the per-cycle cap (the terminal's or the issuer's
    #: ``offline_cap``): a sync does not reset it, the next cycle or another counter does.
    OVER_CARD_CYCLE_LIMIT = "over_card_cycle_limit"
    OVER_TERMINAL_LIMIT = "over_terminal_limit"
    PIN_REQUIRED = "pin_required"
    PIN_WRONG = "pin_wrong"
    #: A fallback manual entry (docs/fallback.md): the supervisor id is unknown or the password is wrong.
    SUPERVISOR_REFUSED = "supervisor_refused"
    #: A fallback manual entry refused without checking the password: too many wrong ones lately
    #: for this supervisor id or at this counter (back-off and lock-out, docs/fallback.md §Step 2).
    SUPERVISOR_LOCKED = "supervisor_locked"
    #: A fallback step the bundle does not enable for the programme (policy ``fallback.<step>.<programme>``
    #: absent or 0, docs/fallback.md): not "nothing left", the step is off.
    FALLBACK_NOT_ENABLED = "fallback_not_enabled"
    #: A fallback (QR or manual, docs/fallback.md): this counter's fallback allowance for the card this cycle
    #: is used up (by earlier fallbacks, or with the card's own taps here). Not ``nothing_left``: the desk
    #: does not know the card's entitlement; a tap of the card may still serve the household.
    FALLBACK_USED_UP = "fallback_used_up"
    #: A QR fallback scan that is not a household QR at all (Base45, zlib or COSE structure fails):
    #: scan again. A QR that decodes but fails its signature stays ``card_signature_invalid``.
    NOT_A_HOUSEHOLD_QR = "not_a_household_qr"
    #: A fallback (QR or manual) for a programme the bundle protects with ``pin.<programme>`` = 1:
    #: the desk has no card to check a PIN against, so it never serves one (docs/fallback.md).
    PIN_REQUIRED_NO_FALLBACK = "pin_required_no_fallback"
    INVALID_QUANTITY = "invalid_quantity"
    BUNDLE_EXPIRED = "bundle_expired"
    #: `secure` card: no proof of the key the identity names (a copy of the readable bytes).
    CLONE_CHECK_FAILED = "clone_check_failed"
    #: `secure` card: its transaction counter is not above the last one this counter saw (replay, cloned key).
    CARD_COUNTER_REPEATED = "card_counter_repeated"
    #: `secure` card: the PIN is blocked on the card (3 wrong tries); only the district office unblocks it.
    PIN_BLOCKED = "pin_blocked"
    #: NTAG format-2 card: its failed-PIN count (on the card) is at the limit; the district office resets it.
    PIN_LOCKED = "pin_locked"
    #: NTAG card with a PIN record (claim 9 v3): the record is missing or garbled; the district office sets a new PIN.
    PIN_RECORD_INVALID = "pin_record_invalid"
    #: The card's newest state is signed by a terminal key revoked before that state was written.
    REVOKED_KEY = "revoked_key"
    #: The identity record on the chip was issued for another chip (copied from another card).
    STATE_FROM_ANOTHER_CARD = "state_from_another_card"
    #: The identity record does not verify (bad signature or garbled COSE): forged or damaged.
    CARD_SIGNATURE_INVALID = "card_signature_invalid"
    #: The card's state is in a cycle after this counter's (a counter with a clock ahead wrote it).
    FUTURE_CYCLE = "future_cycle"
    #: This counter's clock is far from its trust bundle's time: it writes no card (balance checks go on).
    COUNTER_CLOCK_WRONG = "counter_clock_wrong"
