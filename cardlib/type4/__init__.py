"""NFC Forum Type 4 tags: the NDEF Tag Application over ISO/IEC 7816-4 APDUs.

- :mod:`cardlib.type4.tag` - :class:`Type4Tag`: application/CC/NDEF select,
  NDEF read and update (T4T 2.0 §5.4), chunked by the CC's MLe/MLc and by
  :class:`ReaderLimits`, extended APDUs with a fallback to short ones.
- :mod:`cardlib.type4.cc` - :class:`CapabilityContainer`: the CC file E103h (pure parser).
- :mod:`cardlib.type4.commands` - SELECT / READ BINARY / UPDATE BINARY and
  :class:`ExtendedCommandApdu`.
- :mod:`cardlib.type4.errors` - :class:`Type4Error` and its subclasses.

See docs/type4.md for what is supported, which quirks are tolerated and what is refused.
"""

from cardlib.type4.cc import Access, CapabilityContainer, FileControlTag
from cardlib.type4.commands import ExtendedCommandApdu, NdefAid
from cardlib.type4.errors import (
    BadResponse,
    CapacityExceeded,
    CorruptCc,
    FileNotFound,
    LengthNotAccepted,
    NdefTruncated,
    NlenOutOfRange,
    NoNdefApplication,
    OffsetUnsupported,
    ReadDenied,
    ReadOnly,
    SelectRefused,
    StatusError,
    Type4Error,
    UnsupportedVersion,
    WriteVerifyFailed,
)
from cardlib.type4.tag import DEFAULT_LIMITS, SHORT_ONLY, NdefFile, ReaderLimits, Type4Tag

__all__ = [
    "DEFAULT_LIMITS",
    "SHORT_ONLY",
    "Access",
    "BadResponse",
    "CapabilityContainer",
    "CapacityExceeded",
    "CorruptCc",
    "ExtendedCommandApdu",
    "FileControlTag",
    "FileNotFound",
    "LengthNotAccepted",
    "NdefAid",
    "NdefFile",
    "NdefTruncated",
    "NlenOutOfRange",
    "NoNdefApplication",
    "OffsetUnsupported",
    "ReadDenied",
    "ReadOnly",
    "ReaderLimits",
    "SelectRefused",
    "StatusError",
    "Type4Error",
    "Type4Tag",
    "UnsupportedVersion",
    "WriteVerifyFailed",
]
