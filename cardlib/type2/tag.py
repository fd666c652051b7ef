"""An NFC Forum Type 2 tag (NTAG213/215/216) over a :class:`Type2Channel`.

Memory access follows NFC Forum T2T 1.0 and the NTAG213/215/216 datasheet:
every read is bounded by the chip's real size (GET_VERSION; ATR/CC as a
fallback) and by the smaller of CC and chip (field cases T2-5, T2-6); the NDEF
message is read in the fewest commands the reader allows (FAST_READ ranges
sized to its frame, else 16-byte READs); header, lock and configuration pages
are written only through the explicit personalisation methods.

Older chips (NTAG203, MIFARE Ultralight) know neither GET_VERSION nor FAST_READ:
a chip that refuses GET_VERSION (NAK or no answer) is not an NTAG21x, so it is
identified as unknown and read with READ, bounded by its CC; a FAST_READ
refused later (NAK or no answer) switches the session to READ.

One instance per card session: nothing is cached across sessions (PC-3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cardlib.transport.errors import TagLost, TagMute
from cardlib.type2.cc import CC_PAGE, CapabilityContainer, DataArea, check_data_area
from cardlib.type2.channel import T2Command, Type2Channel
from cardlib.type2.chip import (
    FIRST_USER_PAGE,
    PAGE_SIZE,
    READ_PAGES,
    STANDARD_CC2,
    STATIC_LOCK_PAGE,
    ChipInfo,
    ChipType,
    chip_from_cc2,
    chip_from_name,
    chip_from_version,
    ultralight_family_atr,
    unknown_chip,
)
from cardlib.type2.errors import (
    AddressOutOfRange,
    BadResponse,
    CapacityExceeded,
    IssuedCard,
    MisIssued,
    Nak,
    NoNdef,
    NotBlank,
    PwdAuthFailed,
    ReadOnly,
    TagError,
    UnsupportedChip,
    WriteVerifyFailed,
)
from cardlib.type2.originality import verify_originality
from cardlib.type2.tlv import ReservedArea, TlvType, Truncated, capacity, place, tlv_header, walk

logger = logging.getLogger(__name__)

#: Smallest Type 2 tag (MIFARE Ultralight): the bound while nothing better is known.
MIN_T2_PAGES = 16
#: READ_CNT counter address of the NFC counter (datasheet §10.6).
NFC_COUNTER_ADDRESS = 0x02
READ_SIG_ADDRESS = 0x00
COUNTER_LENGTH = 3
SIGNATURE_LENGTH = 32
PWD_LENGTH = 4
PACK_LENGTH = 2
#: An NTAG21x UID (datasheet §8.5.1): 7 bytes.
UID_LENGTH = 7
#: Pages the first read of a tap covers: UID (0-1), lock bytes (2), CC (3) and the public
#: pages of a card with private pages (4-10, docs/card-format.md §2.2), all readable without PWD_AUTH.
HEAD_PAGES = 11
#: Page 2 bytes 2-3 are the static lock bytes (datasheet §8.5.2).
_STATIC_LOCK_SLICE = slice(2 * PAGE_SIZE + 2, 2 * PAGE_SIZE + 4)
#: Bits of static lock byte 0 that lock user pages 4-7 (L-4..L-7); byte 1 locks pages 8-15.
_STATIC_LOCK0_USER_BITS = 0xF0


@dataclass(frozen=True)
class NdefArea:
    """The NDEF message and where it lies (NFC Forum T2T 1.0 §2.3, §6.4).

    :ivar message: NDEF message bytes (possibly empty).
    :ivar tlv_offset: memory byte offset of the NDEF TLV's ``03``.
    :ivar value_offset: memory byte offset of the message's first byte.
    :ivar length_form: 1 or 3 (bytes of the TLV length field).
    :ivar data_area: CC cross-checked with the chip (size, read-only, mis-issued flags).
    :ivar reserved: reserved areas from Lock/Memory Control TLVs.
    :ivar capacity: largest message a rewrite at *tlv_offset* can hold, in bytes.
    """

    message: bytes
    tlv_offset: int
    value_offset: int
    length_form: int
    data_area: DataArea
    reserved: tuple[ReservedArea, ...]
    capacity: int

    @property
    def data_area_size(self) -> int:
        """Usable data area in bytes (the smaller of CC and chip)."""
        return self.data_area.size


@dataclass(frozen=True)
class LockBits:
    """Lock bytes as read: static (page 2 bytes 2-3) and dynamic (3 bytes, NTAG21x datasheet §8.5.2-3)."""

    static: bytes
    dynamic: bytes

    @property
    def any_user_lock(self) -> bool:
        """True when any lock bit for user pages is set."""
        return bool(self.static[0] & _STATIC_LOCK0_USER_BITS or self.static[1] or any(self.dynamic[:2]))


def _pages_for(offset_start: int, offset_end: int) -> range:
    """Pages covering memory bytes ``[offset_start, offset_end)``."""
    return range(offset_start // PAGE_SIZE, (offset_end + PAGE_SIZE - 1) // PAGE_SIZE)


class Type2Tag:
    """One Type 2 tag in the field, reached through *channel*.

    :param channel: raw-command channel (PC/SC pass-through kinds or nfcpy).
    :param atr: the PC/SC ATR, used to identify the chip family when GET_VERSION is unavailable.
    """

    def __init__(self, channel: Type2Channel, atr: bytes = b"") -> None:
        self.channel = channel
        self.atr = atr
        self._chip: ChipInfo | None = None
        self._uid: bytes | None = None
        self._page_limit: int | None = None
        self._prefetch: tuple[int, bytes] | None = None
        self._head = b""
        self._fast_read = True
        #: True when :attr:`uid` came from the reader (GET DATA / activation), before any page read.
        self.uid_from_reader = False

    # ------------------------------------------------------------------ identity

    def get_version(self) -> bytes:
        """GET_VERSION (``60``): 8 bytes vendor/product/storage (datasheet §10.1).

        :raises UnsupportedCommand: no pass-through on this reader.
        :raises Nak, cardlib.transport.TagMute: the chip does not know the command.
        :raises BadResponse: the answer is not 8 bytes.
        """
        version = self.channel.transceive(bytes((T2Command.GET_VERSION,)))
        chip_from_version(version)  # length check
        return version

    def identify(self) -> ChipInfo:
        """Identify the chip: GET_VERSION, else the ATR family plus the factory CC2 (read from page 3).

        :returns: the chip and its memory map; :attr:`ChipType.UNKNOWN` when neither source tells.
        """
        if self._chip is not None:
            return self._chip
        chip: ChipInfo | None = None
        refused = False
        if self.channel.supports_raw:
            try:
                chip = chip_from_version(self.channel.transceive(bytes((T2Command.GET_VERSION,))))
            except TagMute as exc:
                logger.debug("GET_VERSION unanswered (%s): an older chip, falling back to the CC", exc)
                refused = True
                self.channel.reactivate()
            except (Nak, BadResponse) as exc:
                logger.debug("GET_VERSION refused (%s): an older chip, falling back to the CC", exc)
                refused = True
        if chip is None:
            # Pages 2-5 (lock bytes, CC, first data bytes): kept for the read_ndef that usually follows.
            head = self._read_raw_pages(STATIC_LOCK_PAGE, READ_PAGES, MIN_T2_PAGES)
            self._prefetch = (STATIC_LOCK_PAGE, head)
            # Every NTAG21x answers GET_VERSION (datasheet §10.1): one that refused it is an older chip
            # (NTAG203 NAKs it, an Ultralight is silent) whose size only its CC tells; CC2 12h would
            # otherwise be taken for an NTAG213 and read with FAST_READ, which these chips lack.
            chip = unknown_chip(source="cc") if refused else self._fallback_chip(head[PAGE_SIZE : 2 * PAGE_SIZE])
        self._set_chip(chip)
        return chip

    def _fallback_chip(self, cc_bytes: bytes) -> ChipInfo:
        if self.atr and not ultralight_family_atr(self.atr):
            return unknown_chip(source="atr")
        return chip_from_cc2(cc_bytes[2], source="atr+cc" if self.atr else "cc")

    def _set_chip(self, chip: ChipInfo) -> None:
        self._chip = chip
        self._page_limit = chip.total_pages if chip.chip is not ChipType.UNKNOWN else None

    @property
    def chip(self) -> ChipInfo:
        """The identified chip (identifies on first use)."""
        return self.identify()

    @property
    def uid(self) -> bytes:
        """The 7-byte UID: the reader's anticollision answer when it gives one (GET DATA, no card
        command), else pages 0-1 (BCC bytes skipped; datasheet §8.5.1), read with the head."""
        if self._uid is None:
            uid = self.channel.reader_uid()
            if uid is not None and len(uid) == UID_LENGTH:
                self._uid = uid
                self.uid_from_reader = True
            else:
                self._head = self.read_head(HEAD_PAGES)  # kept for the session's first read_head
        assert self._uid is not None
        return self._uid

    def read_first(self, first: int, count: int) -> bytes:
        """The tap's first read of a chip not read yet: pages ``first .. first+count-1``, the first
        frame one FAST_READ that includes the CC (page 3) and identifies the chip from its CC2
        (datasheet §8.5.6), so no GET_VERSION is sent (docs/card-format.md §7).

        :param first: 0..3 (the CC must be in the first frame).
        :param count: pages; beyond the reader's frame the rest is read with :meth:`read_pages`.
        :returns: ``count * 4`` bytes.
        :raises AddressOutOfRange: ``first`` after the CC page.
        :raises Nak, cardlib.transport.TagMute: the chip refused the first FAST_READ (not an
            NTAG215/216, or a range past its end); a NAK re-selected it, silence did not.
        :raises cardlib.transport.TransportError: from the channel.
        """
        if not 0 <= first <= CC_PAGE:
            raise AddressOutOfRange(f"read_first starts at page 0..{CC_PAGE}, not {first}")
        if self._chip is not None or not self.channel.supports_raw:
            return self.read_pages(first, count)
        frame = min(count, self.channel.caps.max_pages)
        data = self.channel.transceive(bytes((T2Command.FAST_READ, first, first + frame - 1)))
        if len(data) != frame * PAGE_SIZE:
            raise BadResponse(f"FAST_READ {first}..{first + frame - 1} answered {len(data)} bytes")
        chip = chip_from_cc2(data[(CC_PAGE - first) * PAGE_SIZE + 2], source="cc")
        if chip.chip is not ChipType.UNKNOWN:  # else identified properly (GET_VERSION) by the next read
            self._set_chip(chip)
        if frame == count:
            return data
        return data + self.read_pages(first + frame, count - frame)

    def read_head(self, count: int) -> bytes:
        """Read pages ``0 .. count-1`` in one command, without GET_VERSION: UID, lock bytes, CC, data.

        The UID comes from pages 0-1 (datasheet §8.5.1) and, unless the chip is identified already,
        the chip type from the factory CC2 (datasheet §8.5.6), so a tap spends no command on
        GET_VERSION or a separate UID read (docs/card-format.md §7).

        :param count: pages to read, 4..16 (the bound of an unidentified Type 2 tag).
        :returns: ``count * 4`` bytes.
        :raises AddressOutOfRange: ``count`` outside 4..16.
        :raises Nak, cardlib.transport.TransportError: from the channel.
        """
        if not 4 <= count <= MIN_T2_PAGES:
            raise AddressOutOfRange(f"read_head reads 4..{MIN_T2_PAGES} pages, not {count}")
        if len(self._head) >= count * PAGE_SIZE:
            # The head the uid property just read, used once (any write forgets it).
            head, self._head = self._head, b""
            return head[: count * PAGE_SIZE]
        if self._chip is None and self.channel.supports_raw:
            try:
                head = self.channel.transceive(bytes((T2Command.FAST_READ, 0, count - 1)))
            except (Nak, TagMute) as exc:
                logger.debug("FAST_READ of the head refused (%s): identifying the chip", exc)
                if isinstance(exc, TagMute):
                    self.channel.reactivate()
                head = self.read_pages(0, count)
            else:
                if len(head) != count * PAGE_SIZE:
                    raise BadResponse(f"FAST_READ 0..{count - 1} answered {len(head)} bytes")
                # FAST_READ answered, so an NTAG21x: its factory CC2 tells 213/215/216. Anything
                # else is identified properly (GET_VERSION) on the next read.
                chip = chip_from_cc2(head[CC_PAGE * PAGE_SIZE + 2], source="cc")
                if chip.chip is not ChipType.UNKNOWN:
                    self._set_chip(chip)
        else:
            head = self.read_pages(0, count)
        self._uid = head[0:3] + head[4:8]
        return head

    # ------------------------------------------------------------------ pages

    def _limit(self) -> int:
        if self._page_limit is not None:
            return self._page_limit
        return MIN_T2_PAGES

    def read_pages(self, first: int, count: int) -> bytes:
        """Read *count* pages from *first* in the fewest commands (FAST_READ sized to the frame, else READ).

        :returns: ``count * 4`` bytes.
        :raises AddressOutOfRange: the range passes the chip's last page (never sent, T2-6).
        :raises Nak, cardlib.transport.TransportError: from the channel.
        """
        if self._chip is None:
            self.identify()
        return self._read_raw_pages(first, count, self._limit())

    def _read_raw_pages(self, first: int, count: int, limit: int) -> bytes:
        if count < 1 or first < 0 or first + count > limit:
            raise AddressOutOfRange(f"pages {first}..{first + count - 1} outside 0..{limit - 1}")
        out = bytearray()
        page = first
        end = first + count
        while page < end:
            if self._use_fast_read():
                last = min(end, page + self.channel.caps.max_pages) - 1
                try:
                    data = self.channel.transceive(bytes((T2Command.FAST_READ, page, last)))
                except (Nak, TagMute) as exc:
                    # A chip without FAST_READ (a NAK re-selected it; silence leaves it IDLE): READ from now on.
                    logger.debug("FAST_READ %d..%d refused (%s): using READ for this session", page, last, exc)
                    if isinstance(exc, TagMute):
                        self.channel.reactivate()
                    self._fast_read = False
                    continue
                if len(data) != (last - page + 1) * PAGE_SIZE:
                    raise BadResponse(f"FAST_READ {page}..{last} answered {len(data)} bytes")
                out += data
                page = last + 1
            else:
                # A READ near the end wraps to page 0 (T2-6): keep only bytes of pages < end.
                data = self.channel.read16(page)
                take = min(READ_PAGES, end - page)
                out += data[: take * PAGE_SIZE]
                page += take
        return bytes(out)

    def _use_fast_read(self) -> bool:
        chip = self._chip
        return self._fast_read and self.channel.supports_raw and chip is not None and chip.chip is not ChipType.UNKNOWN

    def _check_writable_page(self, page: int) -> None:
        chip = self.identify()
        self._prefetch = None
        self._head = b""
        if chip.chip is ChipType.UNKNOWN:
            if page < FIRST_USER_PAGE:
                raise AddressOutOfRange(f"page {page} is a header/CC page")
            return
        if page not in chip.user_pages:
            raise AddressOutOfRange(
                f"page {page} is outside user memory {chip.user_pages.start}..{chip.user_pages.stop - 1}; "
                "header, lock and config pages are written only by the personalisation methods"
            )

    def write_page(self, page: int, data: bytes) -> None:
        """WRITE 4 bytes to one user page (datasheet §10.4).

        :raises AddressOutOfRange: *page* is not a user page (pages 0-3, lock and config pages are refused).
        :raises Nak: the chip refused (locked or password-protected page).
        """
        if len(data) != PAGE_SIZE:
            raise ValueError("a page is 4 bytes")
        self._check_writable_page(page)
        self.channel.write4(page, bytes(data))

    def write_pages(self, first: int, data: bytes, verify: bool = False) -> None:
        """Write 4-byte aligned *data* to user pages from *first*, one WRITE per page.

        :param verify: read the pages back and compare (raises :class:`WriteVerifyFailed`).
        :raises ValueError: *data* is not a multiple of 4 bytes.
        """
        if len(data) % PAGE_SIZE:
            raise ValueError("data must be a multiple of 4 bytes")
        pages = len(data) // PAGE_SIZE
        for i in range(pages):
            self._check_writable_page(first + i)
        for i in range(pages):
            self.channel.write4(first + i, bytes(data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]))
        if verify and pages:
            back = self.read_pages(first, pages)
            if back != bytes(data):
                raise WriteVerifyFailed(f"pages {first}..{first + pages - 1} read back differently")

    # ------------------------------------------------------------------ CC and NDEF

    def read_cc(self) -> CapabilityContainer:
        """Read and parse page 3 (T2T 1.0 §2.2).

        :raises NotFormatted, CorruptCc: see :meth:`CapabilityContainer.parse`.
        """
        return CapabilityContainer.parse(self.read_pages(CC_PAGE, 1))

    def read_ndef(self) -> NdefArea:
        """Read the NDEF message: CC + TLV walk + message in the fewest commands.

        With FAST_READ: pages 2.. in frame-sized ranges (a full NTAG215 message
        takes GET_VERSION + 2 FAST_READs on an ACR122U); without: 16-byte READs.

        :raises NotFormatted, CorruptCc: page 3 is not an NDEF CC.
        :raises CorruptTlv: the TLV area is damaged (offset and reason given; T2-1).
        :raises NoNdef: no NDEF TLV before the Terminator.
        :raises cardlib.transport.TransportError, Nak: from the channel.
        """
        area, _image = self._read_ndef_image()
        return area

    def _read_ndef_image(self) -> tuple[NdefArea, bytearray]:
        chip = self.identify()
        limit = self._limit()
        chunk = self.channel.caps.max_pages if self._use_fast_read() else READ_PAGES
        start = STATIC_LOCK_PAGE
        have = min(limit, start + chunk)
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None and prefetch[0] == start and len(prefetch[1]) == (have - start) * PAGE_SIZE:
            first = prefetch[1]
        else:
            first = self._read_raw_pages(start, have - start, limit)
        image = bytearray(start * PAGE_SIZE) + first
        cc = CapabilityContainer.parse(bytes(image[CC_PAGE * PAGE_SIZE : (CC_PAGE + 1) * PAGE_SIZE]))
        static = bytes(image[_STATIC_LOCK_SLICE])
        lock_set = bool(static[0] & _STATIC_LOCK0_USER_BITS or static[1])
        chip_size = chip.user_size if chip.chip is not ChipType.UNKNOWN else None
        data_area = check_data_area(cc, chip_size, lock_set)
        end = data_area.end
        if chip.chip is ChipType.UNKNOWN:
            # Nothing but the CC bounds an unknown chip; READ wrap bytes stay unparsed.
            limit = (end + PAGE_SIZE - 1) // PAGE_SIZE
            self._page_limit = limit
        end_page = min(limit, (end + PAGE_SIZE - 1) // PAGE_SIZE)
        while True:
            try:
                found = walk(bytes(image), end)
                break
            except Truncated as need:
                want = max((need.needed + PAGE_SIZE - 1) // PAGE_SIZE, have + chunk)
                upto = min(end_page, want)
                if upto <= have:
                    raise TagError(f"TLV walk needs byte {need.needed} beyond page {end_page}") from need
                image += self._read_raw_pages(have, upto - have, limit)
                have = upto
        if found is None:
            raise NoNdef("no NDEF TLV in the data area")
        area = NdefArea(
            message=found.message,
            tlv_offset=found.tlv.offset,
            value_offset=found.tlv.value_offset,
            length_form=found.tlv.length_form,
            data_area=data_area,
            reserved=found.reserved,
            capacity=capacity(found.tlv.offset, end, found.reserved),
        )
        return area, image

    def write_ndef(self, message: bytes, verify: bool = True) -> NdefArea:
        """Replace the NDEF message in place of the current NDEF TLV (T2T 1.0 §6.4.2).

        Tear-aware order: the TLV header pages are first written with length 0
        (an empty message, never a corrupt TLV), then the message and
        Terminator, then the header with the real length. Pages whose content
        does not change are not rewritten.

        :param message: encoded NDEF message.
        :param verify: read the message back and compare.
        :returns: the new :class:`NdefArea`.
        :raises ReadOnly: CC3 forbids writing.
        :raises CapacityExceeded: the message (with TLV header and Terminator) does not fit.
        :raises NoNdef: the tag has no NDEF TLV (format it first).
        :raises WriteVerifyFailed: read-back differs.
        """
        area, image = self._read_ndef_image()
        if area.data_area.read_only:
            raise ReadOnly("the capability container marks the tag read-only")
        if len(message) > area.capacity:
            raise CapacityExceeded(f"message of {len(message)} bytes exceeds the capacity of {area.capacity} bytes")
        end = area.data_area.end
        header = tlv_header(TlvType.NDEF, len(message))
        zero_header = header[:1] + bytes(len(header) - 1) if len(header) == 2 else header[:2] + bytes(2)
        new = bytearray(image) + bytearray(max(0, end - len(image)))
        original = bytes(image)
        header_end = place(new, area.tlv_offset, header, end, area.reserved)
        body = bytes(message)
        body_end = place(new, header_end, body, end, area.reserved)
        if body_end < end:
            body_end = place(new, body_end, bytes((TlvType.TERMINATOR,)), end, area.reserved)
        # Pages not yet read but touched: fetch them so reserved/trailing bytes are preserved.
        touched = _pages_for(area.tlv_offset, body_end)
        if touched.stop * PAGE_SIZE > len(original):
            first_missing = len(original) // PAGE_SIZE
            extra = self._read_raw_pages(first_missing, touched.stop - first_missing, self._limit())
            original = original + extra
            for i, b in enumerate(extra):
                pos = first_missing * PAGE_SIZE + i
                if any(pos in r for r in area.reserved) or pos >= body_end:
                    new[pos] = b
        zeroed = bytearray(new)
        place(zeroed, area.tlv_offset, zero_header, end, area.reserved)
        header_pages = _pages_for(area.tlv_offset, header_end)
        body_pages = range(header_pages.stop, touched.stop)
        current = bytearray(original)

        def put(page: int, source: bytearray) -> None:
            chunk = bytes(source[page * PAGE_SIZE : (page + 1) * PAGE_SIZE])
            if bytes(current[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]) == chunk:
                return
            self.write_page(page, chunk)
            current[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = chunk

        for page in header_pages:
            put(page, zeroed)
        for page in body_pages:
            put(page, new)
        for page in header_pages:
            put(page, new)
        result = NdefArea(bytes(message), area.tlv_offset, header_end, len(header) - 1, area.data_area,
                          area.reserved, area.capacity)
        if verify:
            back = self.read_ndef()
            if back.message != bytes(message):
                raise WriteVerifyFailed("NDEF message read back differs from what was written")
        return result

    def format(self, chip_type: ChipType | None = None) -> NdefArea:
        """Write a clean CC (factory size for the chip) and an empty NDEF TLV ``03 00 FE`` on a blank tag.

        A factory NTAG21x already carries the CC; then only page 4 is written.

        :param chip_type: the chip, when the reader cannot identify it (no GET_VERSION
            and a blank CC); ignored when GET_VERSION identified the chip.
        :raises UnsupportedChip: the chip is unknown (cannot size the CC).
        :raises NotBlank: page 3 holds a different CC (OTP bits cannot be cleared).
        :raises IssuedCard: static lock bits set, or AUTH0 protects pages (an issued card).
        """
        chip = self.identify()
        if chip.chip is ChipType.UNKNOWN and chip_type is not None:
            chip = chip_from_name(chip_type.value, source="operator")
            self._set_chip(chip)
        if chip.chip not in STANDARD_CC2:
            raise UnsupportedChip(f"cannot format a {chip.chip.value} tag")
        self._refuse_issued(chip.cfg_page)
        want = CapabilityContainer.build(STANDARD_CC2[chip.chip] * 8)
        self._prefetch = None
        self._head = b""
        page3 = self.read_pages(CC_PAGE, 1)
        if page3 != want.raw:
            if any(page3):
                raise NotBlank(f"page 3 holds {page3.hex()}, not the clean CC {want.raw.hex()}")
            self.channel.write4(CC_PAGE, want.raw)
        self.write_page(FIRST_USER_PAGE, bytes((TlvType.NDEF, 0x00, TlvType.TERMINATOR, 0x00)))
        return self.read_ndef()

    def _refuse_issued(self, cfg_page: int | None) -> None:
        """Refuse to format a locked or password-protected tag, before any write.

        Static lock bytes (page 2 bytes 2-3, datasheet §8.5.2) must be zero and AUTH0
        (CFG0 byte 3, §8.5.7) at or above CFG0: an issued card protects its data pages with
        a password (docs/card-format.md), and a WRITE there is NAKed, which a reader without
        pass-through reports only as its generic failure word (ACR122U ``63 00``).

        :param cfg_page: the chip's CFG0 page, None when unknown (only the lock bytes are checked).
        :raises IssuedCard: locked, protected, or CFG0 unreadable (PROT = 1 NAKs reads from AUTH0).
        """
        locked = "the card is locked/password-protected (issued card): refusing to format"
        lock = self.read_pages(2, 1)[2:4]
        if any(lock):
            raise IssuedCard(f"{locked} (static lock bytes {lock.hex()})")
        if cfg_page is None:
            return
        try:
            auth0 = self.read_pages(cfg_page, 1)[3]
        except (Nak, TagLost) as exc:
            raise IssuedCard(f"{locked} (its configuration pages are read-protected)") from exc
        if auth0 < cfg_page:
            raise IssuedCard(f"{locked} (AUTH0 = page {auth0})")

    # ------------------------------------------------------------------ NTAG21x specials

    def read_counter(self) -> int:
        """READ_CNT ``39 02``: the 24-bit NFC counter, sent LSB first (datasheet §10.6).

        :raises Nak: counter disabled or password-protected.
        :raises UnsupportedCommand: no pass-through.
        """
        data = self.channel.transceive(bytes((T2Command.READ_CNT, NFC_COUNTER_ADDRESS)))
        if len(data) != COUNTER_LENGTH:
            raise BadResponse(f"READ_CNT answered {len(data)} bytes")
        return int.from_bytes(data, "little")

    def read_signature(self) -> bytes:
        """READ_SIG ``3C 00``: the 32-byte originality signature (datasheet §10.7)."""
        data = self.channel.transceive(bytes((T2Command.READ_SIG, READ_SIG_ADDRESS)))
        if len(data) != SIGNATURE_LENGTH:
            raise BadResponse(f"READ_SIG answered {len(data)} bytes")
        return data

    def verify_originality(self) -> None:
        """Read the signature and verify it for this UID with NXP's key.

        :raises OriginalityError: the signature does not verify.
        """
        verify_originality(self.uid, self.read_signature())

    def pwd_auth(self, pwd: bytes, expected_pack: bytes | None = None) -> bytes:
        """PWD_AUTH ``1B <pwd>``: authenticate; returns the 2-byte PACK (datasheet §10.7).

        :param pwd: the 4-byte password (sent in clear over RF).
        :param expected_pack: when given, the PACK must match (detects a fake tag accepting any password).
        :raises PwdAuthFailed: NAK (the channel re-selects the tag) or PACK mismatch.
        """
        if len(pwd) != PWD_LENGTH:
            raise ValueError("PWD is 4 bytes")
        try:
            pack = self.channel.transceive(bytes((T2Command.PWD_AUTH,)) + bytes(pwd))
        except Nak as exc:
            raise PwdAuthFailed(f"PWD_AUTH refused (NAK 0x{exc.code:X})") from exc
        if len(pack) != PACK_LENGTH:
            raise BadResponse(f"PWD_AUTH answered {len(pack)} bytes")
        if expected_pack is not None and pack != expected_pack:
            raise PwdAuthFailed("PACK does not match the expected value")
        return pack

    def read_lock_bits(self) -> LockBits:
        """Static lock bytes (page 2) and dynamic lock bytes (datasheet §8.5.2-3)."""
        chip = self.identify()
        static = self.read_pages(STATIC_LOCK_PAGE, 1)[2:4]
        dynamic = b""
        if chip.dynamic_lock_page is not None:
            dynamic = self.read_pages(chip.dynamic_lock_page, 1)[:3]
        return LockBits(static, dynamic)

    def set_lock_bits(self, static: bytes = b"\x00\x00", dynamic: bytes = b"\x00\x00\x00", *,
                      irreversible: bool = False) -> LockBits:
        """OR lock bits into the static and dynamic lock bytes. **One-time programmable.**

        :param static: 2 bytes ORed into page 2 bytes 2-3.
        :param dynamic: 3 bytes ORed into the dynamic lock bytes.
        :param irreversible: must be True: locking can never be undone.
        :returns: the lock bits read back.
        :raises ValueError: *irreversible* is not True or lengths are wrong.
        """
        if not irreversible:
            raise ValueError("lock bits are one-time programmable: pass irreversible=True")
        self._prefetch = None
        self._head = b""
        if len(static) != 2 or len(dynamic) != 3:
            raise ValueError("static is 2 bytes, dynamic 3 bytes")
        chip = self.identify()
        if any(static):
            page2 = self.read_pages(STATIC_LOCK_PAGE, 1)
            self.channel.write4(STATIC_LOCK_PAGE, page2[:2] + static)
        if any(dynamic):
            if chip.dynamic_lock_page is None:
                raise AddressOutOfRange("this chip has no known dynamic lock page")
            page = self.read_pages(chip.dynamic_lock_page, 1)
            self.channel.write4(chip.dynamic_lock_page, bytes(dynamic) + page[3:4])
        return self.read_lock_bits()


def raise_for_issuance(area: DataArea) -> None:
    """Raise :class:`MisIssued` when the CC disagrees with the chip or CC3 alone makes it read-only (T2-2, T2-5)."""
    if area.mis_issued or area.issuance_errors:
        raise MisIssued("; ".join(area.issuance_errors))


__all__ = ["LockBits", "NdefArea", "Type2Tag", "raise_for_issuance"]
