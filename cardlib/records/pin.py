"""The failed-PIN count a format-2 card carries, and the PIN check that spends a try before it looks.

Spec: docs/card-format.md §2.2 (the PIN page) and docs/security.md §A PIN that resists a phone.
A format-2 card keeps one page right after slot B, inside the private area (AUTH0 = 11,
PROT = 1, NTAG213/215/216 datasheet §8.8), that counts the wrong PINs entered since the last
right one. It is no part of a signed record, so a counter updates it with one WRITE (§10.4),
and it travels with the card: every counter sees the same count.

Page bytes: ``n, n XOR FF, n, n XOR FF`` with ``n`` = failures (0..254). Any other content (a
page never written, a torn WRITE) reads as :data:`UNREADABLE`, which is at or above every
limit: the card is locked until an office writes 0 again (:func:`reset_attempts`).

The counter spends a try *before* it looks at the PIN: WRITE ``n + 1`` first, check the PIN
only when that WRITE was acknowledged, and WRITE 0 after a right PIN. A card pulled away or a
lost ACK never returns an answer without the try being counted (a tear never gives a try back).

Format-1 cards have no private page: a phone could rewrite any count, so none is kept on them
(docs/security.md says what remains for them).
"""

from __future__ import annotations

from collections.abc import Mapping

from cardlib.records.claims import PinMismatch, PinVerifier, check_pin_digits
from cardlib.records.errors import LayoutError, RecordError
from cardlib.records.layout import PAGE_SIZE, PRIVATE_FIRST_PAGE, CardLayout, private_layout
from cardlib.records.session import TagMemory

__all__ = [
    "DEFAULT_MAX_FAILURES",
    "MAX_FAILURES_POLICY",
    "UNREADABLE",
    "PinLocked",
    "PinRefused",
    "check_pin",
    "decode_failures",
    "encode_failures",
    "max_failures",
    "read_failures",
    "reset_attempts",
]

#: Wrong PINs in a row after which PIN-protected programmes decline ``pin_locked``.
DEFAULT_MAX_FAILURES = 3
#: Bundle policy that sets the limit (docs/api.md bundle ``policies``), 1..254.
MAX_FAILURES_POLICY = "pin.max_failures"
#: What an unparseable page counts as: above any limit (fail closed).
UNREADABLE = 0xFF
_MAX_COUNT = 0xFE


class PinLocked(RecordError):
    """The card's failed-PIN count is at the limit: only an office reset unlocks it.

    :ivar failures: the count read from the card (:data:`UNREADABLE` for a damaged page).
    :ivar limit: the limit in force.
    """

    def __init__(self, failures: int, limit: int) -> None:
        super().__init__(f"PIN locked: {failures} failed tries, limit {limit}")
        self.failures = failures
        self.limit = limit


class PinRefused(PinMismatch):
    """A wrong PIN, already counted on the card.

    :ivar failures: the count now on the card (this try included).
    :ivar limit: the limit in force.
    """

    def __init__(self, failures: int, limit: int) -> None:
        super().__init__(f"PIN does not match ({failures} of {limit} tries spent)")
        self.failures = failures
        self.limit = limit


def max_failures(policies: Mapping[str, int]) -> int:
    """The limit from a trust bundle's policies (``pin.max_failures``), else 3; clamped to 1..254."""
    value = policies.get(MAX_FAILURES_POLICY, DEFAULT_MAX_FAILURES)
    return min(max(int(value), 1), _MAX_COUNT)


def encode_failures(n: int) -> bytes:
    """The 4 page bytes for ``n`` failures (0..254).

    :raises ValueError: ``n`` out of range.
    """
    if not 0 <= n <= _MAX_COUNT:
        raise ValueError(f"failure count {n} outside 0..{_MAX_COUNT}")
    return bytes((n, n ^ 0xFF, n, n ^ 0xFF))


def decode_failures(page: bytes) -> int:
    """The failures a page holds; :data:`UNREADABLE` for anything :func:`encode_failures` does not write."""
    n = page[0]
    if len(page) < PAGE_SIZE or n > _MAX_COUNT or bytes(page[:PAGE_SIZE]) != encode_failures(n):
        return UNREADABLE
    return n


def _page(tag: TagMemory, layout: CardLayout | None) -> int:
    if layout is None:
        layout = private_layout(tag.read_pages(PRIVATE_FIRST_PAGE, 1))
    return layout.pin_failures_page


def read_failures(tag: TagMemory, layout: CardLayout | None = None) -> int:
    """Read the card's failed-PIN count (one READ).

    The card must have accepted PWD_AUTH in this presentation (a :class:`CardSession` that read it).

    :param layout: the card's layout; None reads the private header page first.
    :raises LayoutError: a format-1 layout (no private page).
    :raises CardlibError: (tag/transport subclasses) the card link failed or the chip NAKed.
    """
    page = _page(tag, layout)
    return decode_failures(tag.read_pages(page, 1)[:PAGE_SIZE])


def check_pin(tag: TagMemory, layout: CardLayout, verifier: PinVerifier, pin: str, card_id: bytes,
              uid: bytes, *, limit: int = DEFAULT_MAX_FAILURES) -> None:
    """Spend a try on the card, check the PIN, give the try back only when it is right.

    Commands: READ (the count), WRITE (count + 1), then after a right PIN WRITE (0). The PIN is
    compared only after the first WRITE returned; one check costs the verifier's work
    (about 60 ms for the version-2 parameters issued today, docs/security.md).

    :param verifier: the identity's PIN verifier.
    :param pin: the 6 digits entered at the counter.
    :param limit: wrong PINs in a row that lock the card (:func:`max_failures`).
    :raises ClaimsError: the entry is not 6 digits (no try spent).
    :raises PinLocked: the count is at the limit (nothing written, PIN not checked).
    :raises PinRefused: the PIN is wrong; the card holds the new count.
    :raises LayoutError: a format-1 layout.
    :raises CardlibError: (tag/transport subclasses) the card link failed: the PIN was not
        checked, and the try may or may not be spent.
    """
    check_pin_digits(pin)
    page = _page(tag, layout)
    failures = decode_failures(tag.read_pages(page, 1)[:PAGE_SIZE])
    if failures >= limit:
        raise PinLocked(failures, limit)
    tag.write_pages(page, encode_failures(failures + 1))
    try:
        verifier.check(pin, card_id, uid)
    except PinMismatch:
        raise PinRefused(failures + 1, limit) from None
    tag.write_pages(page, encode_failures(0))


def reset_attempts(tag: TagMemory, layout: CardLayout | None = None) -> None:
    """The office path: set the card's failed-PIN count to 0 (one WRITE, read back).

    For ``huma provision pin-reset``: call it on a card this presentation has opened with
    PWD_AUTH (e.g. after :meth:`CardSession.read_state` with the card-password keys), once the
    holder has proved who they are.

    :param layout: the card's layout (``state.layout``); None reads the private header page first.
    :raises LayoutError: a format-1 layout (nothing to reset), or the page read back differs.
    :raises CardlibError: (tag/transport subclasses) the card link failed or the chip NAKed.
    """
    page = _page(tag, layout)
    tag.write_pages(page, encode_failures(0))
    if decode_failures(tag.read_pages(page, 1)[:PAGE_SIZE]) != 0:
        raise LayoutError(f"PIN page {page} does not read back as 0 failures")
