"""NFC Forum Type 2 tags (NTAG213/215/216): raw-command channels, CC, TLVs, NDEF area.

- :mod:`cardlib.type2.channel` - :class:`Type2Channel` ABC and the PC/SC
  pass-through kinds (ACR122U direct transmit, PC/SC Part 3 transparent
  session, plain READ/UPDATE BINARY); :class:`ReaderCapabilities`.
- :mod:`cardlib.type2.tag` - :class:`Type2Tag`: identify, pages, CC, NDEF,
  counter, signature, password, lock bits.
- :mod:`cardlib.type2.tlv`, :mod:`cardlib.type2.cc` - pure parsers.
- :mod:`cardlib.type2.originality` - NXP originality signature check.
- :mod:`cardlib.type2.errors` - :class:`TagError` and its subclasses.
"""

from cardlib.type2.cc import CapabilityContainer, DataArea
from cardlib.type2.channel import (
    ACR122U,
    GENERIC,
    PART3,
    Acr122uChannel,
    Part3Channel,
    PlainChannel,
    ReaderCapabilities,
    Type2Channel,
    channel_for,
)
from cardlib.type2.chip import ChipInfo, ChipType
from cardlib.type2.errors import (
    CapacityExceeded,
    CorruptTlv,
    MisIssued,
    Nak,
    OriginalityError,
    PwdAuthFailed,
    ReadOnly,
    TagError,
    UnsupportedChip,
)
from cardlib.type2.originality import verify_originality
from cardlib.type2.tag import LockBits, NdefArea, Type2Tag

__all__ = [
    "ACR122U",
    "GENERIC",
    "PART3",
    "Acr122uChannel",
    "CapabilityContainer",
    "CapacityExceeded",
    "ChipInfo",
    "ChipType",
    "CorruptTlv",
    "DataArea",
    "LockBits",
    "MisIssued",
    "Nak",
    "NdefArea",
    "OriginalityError",
    "Part3Channel",
    "PlainChannel",
    "PwdAuthFailed",
    "ReadOnly",
    "ReaderCapabilities",
    "TagError",
    "Type2Channel",
    "Type2Tag",
    "UnsupportedChip",
    "channel_for",
    "verify_originality",
]
