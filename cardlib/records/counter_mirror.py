"""NFC counter ASCII mirror of a format-2 card: where it sits and how a terminal reads it.

An NTAG21x can overlay its 24-bit NFC counter, as 6 upper-case ASCII hex digits (most
significant first), on the data READ/FAST_READ return from MIRROR_PAGE byte MIRROR_BYTE
(NTAG213/215/216 datasheet §8.7 "NFC counter function" and the ASCII mirror with
MIRROR_CONF = 10b, CFG0 byte 0 and byte 2, §8.5.7). The EEPROM under it is unchanged.

Provisioning places it on the last 6 bytes of the data area a session reads anyway
(the end of the CC's data area: pages 126 byte 2 to 127 on an NTAG215), and only when
those bytes are free: after the image and the page reserved after it (the failed-PIN
count). The counter then arrives with the private area's last FAST_READ, which comes
after the tap's first READ/FAST_READ, so it is the value READ_CNT would return for this
RF session, and READ_CNT is not sent (docs/card-format.md §7). A card without the
mirror shows the EEPROM there (zeros on a blank chip) and the terminal falls back to READ_CNT.
"""

from __future__ import annotations

from cardlib.records.layout import FIRST_DATA_PAGE, PAGE_SIZE, PRIVATE_FIRST_PAGE, CardLayout

#: ASCII hex digits of the 24-bit counter.
MIRROR_LEN = 6
#: CFG0 byte 0: MIRROR_CONF = 10b (NFC counter), bits 7-6; MIRROR_BYTE in bits 5-4; STRG_MOD_EN bit 2.
MIRROR_CONF_COUNTER = 0b10 << 6
MIRROR_BYTE_SHIFT = 4
STRG_MOD_EN = 0x04
_HEX = frozenset(b"0123456789ABCDEF")


def mirror_position(data_pages: int) -> tuple[int, int]:
    """(MIRROR_PAGE, MIRROR_BYTE) for a data area of ``data_pages`` pages from page 4.

    :param data_pages: pages of the data area the session reads (124 on an NTAG215).
    :returns: the page and byte (0-3) where the 6 mirror bytes start; they end on the
        area's last byte.
    """
    end = (FIRST_DATA_PAGE + data_pages) * PAGE_SIZE - MIRROR_LEN
    return end // PAGE_SIZE, end % PAGE_SIZE


def mirror_fits(layout: CardLayout, data_pages: int) -> bool:
    """True when the mirror bytes lie after the image and the page reserved after it (PIN count).

    :param layout: the card's format-2 layout.
    :param data_pages: as for :func:`mirror_position`.
    """
    page, _ = mirror_position(data_pages)
    return layout.end_page + 1 <= page


def cfg0_mirror_bytes(data_pages: int) -> tuple[int, int]:
    """(CFG0 byte 0, CFG0 byte 2) enabling the counter mirror (datasheet §8.5.7).

    :param data_pages: as for :func:`mirror_position`.
    """
    page, byte = mirror_position(data_pages)
    return MIRROR_CONF_COUNTER | byte << MIRROR_BYTE_SHIFT | STRG_MOD_EN, page


def read_mirror(private: bytes, layout: CardLayout, data_pages: int) -> int | None:
    """The NFC counter from the private area's bytes, or None when the card does not mirror it.

    :param private: bytes read from page 11 (``PRIVATE_FIRST_PAGE``) on.
    :param layout: the layout parsed from them.
    :param data_pages: as for :func:`mirror_position`.
    :returns: the 24-bit counter; None when the mirror would overlap the image or the PIN
        page, the read did not reach it, or the bytes are not 6 upper-case hex digits.
    """
    if not mirror_fits(layout, data_pages):
        return None
    page, byte = mirror_position(data_pages)
    offset = (page - PRIVATE_FIRST_PAGE) * PAGE_SIZE + byte
    raw = bytes(private[offset : offset + MIRROR_LEN])
    if len(raw) != MIRROR_LEN or not set(raw) <= _HEX:
        return None
    return int(raw, 16)
