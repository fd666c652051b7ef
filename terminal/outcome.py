"""What one tap produced: the outcome shown on the counter screen and the receipt.

Receipts: entitled / received / remaining plus a short verification code
derived from the COMMIT journal entry, so a household (or an auditor) can
match a paper slip to exactly one signed journal entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from terminal.policy import DeclineReason


class TapStatus(enum.Enum):
    """The headline of a tap on the counter screen."""

    ACCEPTED = "accepted"  #: redemption written, read back and journalled COMMIT (final)
    BALANCE = "balance"  #: read-only balance check
    DECLINED = "declined"  #: refused by policy or verification; nothing written
    UNCERTAIN = "uncertain"  #: card left mid-write; hand nothing over, tap the card again
    RECOVERED = "recovered"  #: an earlier uncertain write was found complete (FINISHED)
    VOIDED = "voided"  #: an earlier uncertain write was not applied; nothing was charged
    RETRY = "retry"  #: transient problem (card moved, reader gone); nothing charged, tap again


@dataclass(frozen=True)
class Receipt:
    """A printed or on-screen receipt.

    :ivar terminal_id, seq: the journal entry it proves.
    :ivar entitled, received, remaining: units of ``unit`` in the current cycle.
    :ivar code: :func:`receipt_code` of the entry.
    :ivar wall_time: POSIX seconds.
    """

    terminal_id: str
    seq: int
    household_ref: str
    programme: str
    unit: Unit
    entitled: int
    received: int
    remaining: int
    code: str
    wall_time: float


@dataclass(frozen=True)
class Balance:
    """What a card holds for one programme in the current cycle (units of ``unit``: packages, rupiah, visits)."""

    programme: str
    unit: Unit
    entitled: int
    remaining: int


@dataclass(frozen=True)
class TapOutcome:
    """The result of one presentation, as the screen and tests see it.

    :ivar final: False while the result may still change (UNCERTAIN).
    :ivar amount: units handed over now (0 unless ACCEPTED or RECOVERED).
    :ivar pin_tries_left: wrong PINs the card still takes before it locks, as this tap learnt it:
        on a ``pin_wrong`` decline, a format-2 NTAG card's bundle limit ``pin.max_failures`` minus
        the failed-PIN count now on the card (docs/card-format.md §2.2), a secure card's own
        ``63 Cx`` (docs/secure-card.md §5.3); 0 after the last try and on ``pin_locked`` /
        ``pin_blocked``. None when not known (a format-1 card keeps no count; a PIN of the wrong
        length spends no try; no PIN decline); never on the receipt or in the journal.
    """

    status: TapStatus
    reader: str
    mode: CounterMode
    programme: str
    final: bool = True
    reason: DeclineReason | None = None
    household_ref: str | None = None
    unit: Unit | None = None
    amount: int = 0
    entitled: int = 0
    remaining: int = 0
    receipt: Receipt | None = None
    card_id: str | None = None
    journal_seq: int | None = None
    detail: str = field(default="", compare=False)
    #: The card's 7-byte UID as read in this tap (the supervisor keeps it so a re-attach
    #: with the same card resting is not a new presentation); not shown on screen.
    tag_uid: bytes | None = field(default=None, compare=False)
    #: Every programme on the card the bundle knows, as the card holds it after this tap (balance checks).
    balances: tuple[Balance, ...] = ()
    pin_tries_left: int | None = None
