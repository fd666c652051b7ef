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

**The PIN record** (identity claim 9 version 3, docs/card-format.md §3.2, issue 18). A card
issued with a v3 claim keeps its PIN verifier out of the signed, locked identity, on the last
two pages of user memory (NTAG215: 128-129, NTAG216: 224-225; private, AUTH0 = 11, never
locked), 8 bytes::

    e, e XOR FF, tag (6)      tag = HMAC-SHA256(pin key, "huma-betang/ntag-pin-record/v1" ‖ card_id ‖ UID ‖ e
                                                ‖ scrypt(PIN, "HB3pin" ‖ card_id ‖ UID, N, r, p)[:32])[:6]

``e`` is the PIN epoch (1 at issuance, + 1 at every office reset, 1..255); the pin key is
:meth:`cardlib.records.access.CardPasswordKeys.pin_key` (the provincial ring, its own label).
The tag is both the verifier and its MAC: without the ring nobody can compute a tag for a PIN
of their choice, nor test a PIN against a dumped tag offline. Anything that is not ``e, ~e``
with ``e`` in 1..255 (never written, torn, garbage) is :class:`PinRecordInvalid`: PIN
programmes decline ``pin_record_invalid`` until an office writes a new PIN
(:func:`set_pin`). The count page stays where it was (right after slot B).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cardlib.records.claims import CARD_ID_BYTES, UID_BYTES, PinMismatch, PinVerifier, check_pin_digits
from cardlib.records.counter_mirror import mirror_position
from cardlib.records.errors import LayoutError, RecordError
from cardlib.records.layout import FIRST_DATA_PAGE, PAGE_SIZE, PRIVATE_FIRST_PAGE, CardLayout, private_layout
from cardlib.records.session import NTAG215_DATA_PAGES, TagMemory

__all__ = [
    "DEFAULT_MAX_FAILURES",
    "MAX_EPOCH",
    "MAX_FAILURES_POLICY",
    "PIN_RECORD_BYTES",
    "PIN_RECORD_PAGES",
    "UNREADABLE",
    "PinLocked",
    "PinRecord",
    "PinRecordInvalid",
    "PinRefused",
    "check_pin",
    "decode_failures",
    "decode_record",
    "encode_failures",
    "make_record",
    "max_failures",
    "pin_record_fits",
    "pin_record_page",
    "pin_tag",
    "read_failures",
    "read_record",
    "reset_attempts",
    "set_pin",
]

#: Wrong PINs in a row after which PIN-protected programmes decline ``pin_locked``.
DEFAULT_MAX_FAILURES = 3
#: Bundle policy that sets the limit (docs/api.md bundle ``policies``), 1..254.
MAX_FAILURES_POLICY = "pin.max_failures"
#: What an unparseable page counts as: above any limit (fail closed).
UNREADABLE = 0xFF
_MAX_COUNT = 0xFE
#: The PIN record: 2 pages, ``e ~e`` and a 6-byte tag, on the last two pages of user memory.
PIN_RECORD_PAGES = 2
PIN_RECORD_BYTES = PIN_RECORD_PAGES * PAGE_SIZE
PIN_TAG_BYTES = 6
#: Epochs 1..255: a card reset 254 times at an office is re-issued.
MAX_EPOCH = 0xFF
_TAG_CONTEXT = b"huma-betang/ntag-pin-record/v1"
#: Count page and record read with one FAST_READ when they are at most this many pages apart.
_ONE_READ_SPAN = 16


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


class PinRecordInvalid(RecordError):
    """The card's PIN record is missing or garbled (never written, torn, overwritten): the PIN
    cannot be checked; PIN programmes decline ``pin_record_invalid`` until an office sets a PIN."""


@dataclass(frozen=True)
class PinRecord:
    """A version-3 PIN record as on the card.

    :ivar epoch: 1..255, + 1 at every office PIN change.
    :ivar tag: 6 bytes (:func:`pin_tag`).
    :raises ValueError: epoch or tag out of range.
    """

    epoch: int
    tag: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.epoch <= MAX_EPOCH or len(self.tag) != PIN_TAG_BYTES:
            raise ValueError(f"PIN record epoch {self.epoch} / tag of {len(self.tag)} bytes out of range")

    def encode(self) -> bytes:
        """The 8 bytes of the record's two pages."""
        return bytes((self.epoch, self.epoch ^ 0xFF)) + bytes(self.tag)


def decode_record(raw: bytes) -> PinRecord | None:
    """The record in 8 bytes, or None for anything :meth:`PinRecord.encode` does not write."""
    raw = bytes(raw[:PIN_RECORD_BYTES])
    if len(raw) < PIN_RECORD_BYTES or raw[0] == 0 or raw[1] != raw[0] ^ 0xFF:
        return None
    return PinRecord(raw[0], raw[2:])


def pin_tag(pin_key: bytes, verifier: PinVerifier, pin: str, card_id: bytes, uid: bytes, epoch: int) -> bytes:
    """The record tag of a PIN (one scrypt under the claim's cost, then one HMAC): 6 bytes.

    :param pin_key: the card's 32-byte PIN key (:meth:`CardPasswordKeys.pin_key`).
    :param verifier: the identity's version-3 claim (scrypt cost).
    :raises ClaimsError: the PIN is not 6 digits.
    :raises ValueError: not a version-3 claim, or a card id/UID of the wrong length.
    """
    if not verifier.on_card:
        raise ValueError("PIN records go with a version-3 PIN claim")
    if len(card_id) != CARD_ID_BYTES or len(uid) != UID_BYTES:
        raise ValueError("card id is 8 bytes, UID 7 bytes")
    digest = verifier.digest(pin, card_id, uid)
    msg = _TAG_CONTEXT + bytes(card_id) + bytes(uid) + bytes((epoch,)) + digest
    return hmac.new(pin_key, msg, hashlib.sha256).digest()[:PIN_TAG_BYTES]


def make_record(pin_key: bytes, verifier: PinVerifier, pin: str, card_id: bytes, uid: bytes,
                epoch: int) -> PinRecord:
    """A PIN record for ``pin`` at ``epoch`` (issuance: 1; office reset: the card's epoch + 1).

    :raises ClaimsError: the PIN is not 6 digits. :raises ValueError: epoch out of 1..255.
    """
    return PinRecord(epoch, pin_tag(pin_key, verifier, pin, card_id, uid, epoch))


def pin_record_page(tag: Any) -> int:
    """First page of the PIN record: the last two pages of the chip's user memory.

    :param tag: a :class:`cardlib.type2.tag.Type2Tag` (its chip is known from the head read, no command).
    :raises LayoutError: a chip whose user memory is unknown.
    """
    identify = getattr(tag, "identify", None)
    chip = identify() if identify is not None else None
    if chip is None or len(chip.user_pages) < PIN_RECORD_PAGES:
        raise LayoutError("the chip's user memory is unknown: no PIN record page")
    return int(chip.user_pages.stop) - PIN_RECORD_PAGES


def pin_record_fits(layout: CardLayout, user_pages: range, data_area_bytes: int) -> bool:
    """True when a format-2 layout leaves the PIN record's pages free: after the count page,
    after the CC's data area (so after the NFC counter mirror) and inside user memory.

    :param user_pages: the chip's user-memory pages (``ChipInfo.user_pages``).
    :param data_area_bytes: the CC's data area (496 on an NTAG215).
    """
    if layout.version != 2 or len(user_pages) < PIN_RECORD_PAGES:
        return False
    first = user_pages.stop - PIN_RECORD_PAGES
    mirror_page, _ = mirror_position(NTAG215_DATA_PAGES)
    return (first > layout.pin_failures_page and first >= FIRST_DATA_PAGE + data_area_bytes // PAGE_SIZE
            and first > mirror_page + 1)


def read_record(tag: TagMemory, record_page: int | None = None) -> PinRecord | None:
    """Read the PIN record (one READ); None when it is missing or garbled.

    :param record_page: :func:`pin_record_page` (None: computed from ``tag``).
    :raises CardlibError: (tag/transport subclasses) the card link failed or the chip NAKed.
    """
    page = pin_record_page(tag) if record_page is None else record_page
    return decode_record(tag.read_pages(page, PIN_RECORD_PAGES))


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


def _read_count_and_record(tag: TagMemory, count_page: int, record_page: int) -> tuple[int, PinRecord | None]:
    """The count and the record: one FAST_READ when they are close (NTAG215: pages E..129), else two."""
    if 0 < record_page - count_page < _ONE_READ_SPAN:
        raw = tag.read_pages(count_page, record_page + PIN_RECORD_PAGES - count_page)
        return decode_failures(raw[:PAGE_SIZE]), decode_record(raw[-PIN_RECORD_BYTES:])
    return (decode_failures(tag.read_pages(count_page, 1)[:PAGE_SIZE]),
            decode_record(tag.read_pages(record_page, PIN_RECORD_PAGES)))


def check_pin(tag: TagMemory, layout: CardLayout, verifier: PinVerifier, pin: str, card_id: bytes,
              uid: bytes, *, limit: int = DEFAULT_MAX_FAILURES, pin_key: bytes | None = None,
              record_page: int | None = None) -> None:
    """Spend a try on the card, check the PIN, give the try back only when it is right.

    Commands: READ (the count; for a version-3 claim one FAST_READ of the count page through the
    PIN record), WRITE (count + 1), then after a right PIN WRITE (0). The PIN is compared only
    after the first WRITE returned; one check costs the verifier's work (about 60 ms for the
    scrypt parameters issued today, docs/security.md).

    :param verifier: the identity's PIN claim (version 3: the card's PIN record is the verifier).
    :param pin: the 6 digits entered at the counter.
    :param limit: wrong PINs in a row that lock the card (:func:`max_failures`).
    :param pin_key: version 3: the card's PIN key (:meth:`CardPasswordKeys.pin_key`).
    :param record_page: version 3: :func:`pin_record_page` (None: computed from ``tag``).
    :raises ClaimsError: the entry is not 6 digits (no try spent).
    :raises PinLocked: the count is at the limit (nothing written, PIN not checked).
    :raises PinRecordInvalid: version 3: the record is missing or garbled (nothing written).
    :raises PinRefused: the PIN is wrong (or, version 3, the record's tag was not made with the
        ring: indistinguishable); the card holds the new count.
    :raises LayoutError: a format-1 layout.
    :raises ValueError: a version-3 claim without ``pin_key``.
    :raises CardlibError: (tag/transport subclasses) the card link failed: the PIN was not
        checked, and the try may or may not be spent.
    """
    check_pin_digits(pin)
    page = _page(tag, layout)
    record: PinRecord | None = None
    if verifier.on_card:
        if pin_key is None:
            raise ValueError("a version-3 PIN needs the card's PIN key")
        failures, record = _read_count_and_record(
            tag, page, pin_record_page(tag) if record_page is None else record_page)
    else:
        failures = decode_failures(tag.read_pages(page, 1)[:PAGE_SIZE])
    if failures >= limit:
        raise PinLocked(failures, limit)
    if verifier.on_card and record is None:
        raise PinRecordInvalid("the card's PIN record is missing or garbled")
    tag.write_pages(page, encode_failures(failures + 1))
    try:
        if record is not None:
            assert pin_key is not None
            if not hmac.compare_digest(pin_tag(pin_key, verifier, pin, card_id, uid, record.epoch), record.tag):
                raise PinMismatch("PIN does not match the card's PIN record")
        else:
            verifier.check(pin, card_id, uid)
    except PinMismatch:
        raise PinRefused(failures + 1, limit) from None
    tag.write_pages(page, encode_failures(0))


def set_pin(tag: TagMemory, layout: CardLayout, verifier: PinVerifier, new_pin: str, card_id: bytes, uid: bytes,
            pin_key: bytes, epoch: int, *, record_page: int | None = None) -> PinRecord:
    """The office path for a version-3 card: write a new PIN record at ``epoch``, the count 0, read both back.

    Commands: WRITE, WRITE (the record), WRITE (count 0), one FAST_READ back (NTAG215). A card
    pulled away in between is left with a garbled record or count (fail closed): run it again.

    :param new_pin: 6 digits. :param epoch: the card's epoch + 1 (1..255).
    :raises ClaimsError: ``new_pin`` is not 6 digits (nothing written).
    :raises ValueError: not a version-3 claim, or epoch out of range (nothing written).
    :raises LayoutError: a format-1 layout, or the pages do not read back as written.
    :raises CardlibError: (tag/transport subclasses) the card link failed or the chip NAKed.
    """
    record = make_record(pin_key, verifier, new_pin, card_id, uid, epoch)
    page = _page(tag, layout)
    rpage = pin_record_page(tag) if record_page is None else record_page
    tag.write_pages(rpage, record.encode())
    tag.write_pages(page, encode_failures(0))
    failures, back = _read_count_and_record(tag, page, rpage)
    if failures != 0 or back != record:
        raise LayoutError(f"PIN record (page {rpage}) or count (page {page}) does not read back as written")
    return record


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
