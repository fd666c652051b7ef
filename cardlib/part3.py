"""PC/SC Part 3 v2.02 §3.2.2.1.8 transparent session: data object tags (Tables 3-16..3-22).

Shared by the host channel (:class:`cardlib.type2.channel.Part3Channel`) and the reader
emulator (:mod:`simulator.reader`); objects are BER-TLV (:mod:`cardlib.ber`).
"""

from __future__ import annotations

import enum

__all__ = ["Part3Object"]


class Part3Object(enum.IntEnum):
    """Data object tags of Manage Session (``FF C2 00 00``) and Transparent Exchange (``FF C2 00 01``)."""

    START_SESSION = 0x81
    END_SESSION = 0x82
    RF_OFF = 0x83
    RF_ON = 0x84
    TRANSCEIVE_FLAGS = 0x90
    VALID_BITS = 0x92
    TRANSCEIVE = 0x95
    RESPONSE_STATUS = 0x96
    ICC_RESPONSE = 0x97
    GENERIC_ERROR = 0xC0
    TIMER = 0x5F46
