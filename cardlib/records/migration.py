"""Migrate a format-1 card at its next tap: its slots go behind the password it already has.

docs/security.md §What the NTAG password stops and docs/card-format.md §2.3. Format-1
provisioning set PWD/PACK from the office secret (the key ring's ``format1`` version),
AUTH0 = the dynamic lock page and PROT = 0, so only the configuration pages were guarded and
anyone's phone could rewrite a slot. A counter holding that secret opens the card
(:meth:`cardlib.records.session.CardSession.open_format1`, PWD_AUTH, NTAG213/215/216 datasheet
§8.8, §10.7) and then, each step one WRITE of one configuration page (§8.5.7):

1. CFG0 = ``04 00 00 <slot A's first page>``: AUTH0 moves down to the slots while PROT is
   still 0, so they become write-protected; the identity record before them stays readable;
2. CFG1 = ``NFC_CNT_EN | PROT, 05 00 00``: the slots become read-protected too.

The card stays format 1 (NDEF records from page 4, no public header); after each step it
reads as before to a counter that authenticates, and a tear at any command leaves it either
as it was, half way (step 1 done) or migrated: the next tap by a migrating counter finishes
the job. AUTHLIM stays 0 and CFGLCK is never set, so no tear or later wrong password can lock
the card for good. A configuration page torn mid-WRITE may hold other bytes (the chip
guarantees anti-tearing only for lock and OTP pages, §8.5.2): the next migration rewrites
any CFG0/CFG1 that is not exactly what it wants, unless CFGLCK came out set in the torn byte.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from cardlib.errors import CardlibError
from cardlib.records.errors import RecordError
from cardlib.records.layout import PAGE_SIZE, SlotName
from cardlib.records.session import CardSession, CardState
from cardlib.type2.chip import chip_from_cc2

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATED_ACCESS",
    "Format1Protection",
    "MigrationError",
    "MigrationResult",
    "format1_protection",
    "migrate_format1",
    "wanted_config",
]

#: CFG0 bytes 0-2 as shipped and as format-1 provisioning left them: MIRROR off, STRG_MOD_EN (§8.5.7).
CFG0_DEFAULT = bytes((0x04, 0x00, 0x00))
#: CFG1 bytes 1-3 as shipped (RFUI).
CFG1_DEFAULT_TAIL = bytes((0x05, 0x00, 0x00))
NFC_CNT_EN = 0x10
PROT = 0x80
CFGLCK = 0x40
AUTHLIM_MASK = 0x07
#: ACCESS of a format-1 card as issued (NFC counter on, PROT = 0, AUTHLIM = 0).
FORMAT1_ACCESS = NFC_CNT_EN
#: ACCESS of a migrated card: the slots read- and write-protected.
MIGRATED_ACCESS = NFC_CNT_EN | PROT


class MigrationError(RecordError):
    """The card cannot be migrated: not opened with the office password, or an unknown chip."""


class Format1Protection(enum.Enum):
    """Where a format-1 card stands, from its CFG0/CFG1."""

    ORIGINAL = "original"  #: AUTH0 above the data area, PROT = 0: slots writable by anyone
    HALF_WAY = "half_way"  #: step 1 done (or CFG1 torn): slots write-protected, not yet read-protected
    MIGRATED = "migrated"  #: AUTH0 = slot A, PROT = 1: slots read- and write-protected
    LOCKED = "locked"  #: CFGLCK set (a torn configuration byte): left as it is


@dataclass(frozen=True)
class MigrationResult:
    """What one migration attempt did.

    :ivar before: the protection found.
    :ivar after: the protection left (MIGRATED when every WRITE was acknowledged).
    :ivar writes: configuration WRITEs acknowledged (0, 1 or 2).
    :ivar error: the card-link error that stopped it (the next tap resumes), if any.
    """

    before: Format1Protection
    after: Format1Protection
    writes: int
    error: CardlibError | None = None

    @property
    def changed(self) -> bool:
        """True when this tap wrote the card's configuration (journal it)."""
        return self.writes > 0


def wanted_config(slot_a_page: int) -> tuple[bytes, bytes]:
    """CFG0 and CFG1 of a migrated card whose slot A starts at ``slot_a_page`` (absolute page)."""
    return CFG0_DEFAULT + bytes((slot_a_page,)), bytes((MIGRATED_ACCESS,)) + CFG1_DEFAULT_TAIL


def format1_protection(cfg: bytes, slot_a_page: int) -> Format1Protection:
    """Classify CFG0 ‖ CFG1 (8 bytes) of a format-1 card.

    :param cfg: CFG0 and CFG1 as read after PWD_AUTH.
    :param slot_a_page: the absolute first page of slot A.
    """
    cfg0, cfg1 = wanted_config(slot_a_page)
    if cfg[4] & CFGLCK:
        return Format1Protection.LOCKED
    if cfg[:4] == cfg0 and cfg[4:8] == cfg1:
        return Format1Protection.MIGRATED
    if cfg[:4] == cfg0:
        return Format1Protection.HALF_WAY
    return Format1Protection.ORIGINAL


def migrate_format1(session: CardSession, state: CardState) -> MigrationResult:
    """Finish the migration of a format-1 card the session opened with the office password.

    Reads CFG0/CFG1 (one FAST_READ) and writes only what differs: CFG0 first, then CFG1
    (one WRITE each). A card already migrated costs the one read. Never raises for a
    card-link failure: the result carries it, and the card is usable whatever was written.

    :param session: the tap's session after :meth:`~CardSession.read_state` (opened with
        ``passwords.format1``).
    :param state: the state it read (format 1).
    :returns: the protection before and after.
    :raises MigrationError: the card is format 2, was not opened with the office password, or
        its CC names no NTAG213/215/216.
    """
    if state.layout.version != 1:
        raise MigrationError("only format-1 cards are migrated")
    if session.format1_cc_size is None:
        raise MigrationError("the card was not opened with the format-1 office password")
    chip = chip_from_cc2(session.format1_cc_size)
    if chip.cfg_page is None:
        raise MigrationError(f"CC size {session.format1_cc_size:#04x} names no NTAG213/215/216")
    cfg_page = chip.cfg_page
    slot_a = state.layout.slot_first_page(SlotName.A)
    want0, want1 = wanted_config(slot_a)
    tag = session.tag
    try:
        cfg = bytes(tag.read_pages(cfg_page, 2))
    except CardlibError as exc:
        log.info("format-1 migration: configuration not read: %s", exc)
        return MigrationResult(Format1Protection.ORIGINAL, Format1Protection.ORIGINAL, 0, exc)
    before = format1_protection(cfg, slot_a)
    if before in (Format1Protection.MIGRATED, Format1Protection.LOCKED):
        return MigrationResult(before, before, 0)
    writes = 0
    try:
        if cfg[:4] != want0:
            _write_config(session, cfg_page, want0)
            writes += 1
        _write_config(session, cfg_page + 1, want1)
        writes += 1
    except CardlibError as exc:
        log.info("format-1 migration stopped after %d writes: %s", writes, exc)
        after = Format1Protection.HALF_WAY if writes else before
        return MigrationResult(before, after, writes, exc)
    log.info("format-1 card migrated: slots from page %d behind the password", slot_a)
    return MigrationResult(before, Format1Protection.MIGRATED, writes)


def _write_config(session: CardSession, page: int, data: bytes) -> None:
    """One WRITE of a configuration page (a Type2Tag's user-page guard does not allow them)."""
    assert len(data) == PAGE_SIZE
    channel = getattr(session.tag, "channel", None)
    if channel is not None:
        channel.write4(page, data)
    else:
        session.tag.write_pages(page, data)
