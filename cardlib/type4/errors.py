"""Errors of the Type 4 tag layer (NFC Forum T4T 2.0 / 3.0, ISO/IEC 7816-4).

Every error is a :class:`Type4Error` under cardlib's root
:class:`~cardlib.errors.CardlibError`. Only :class:`NoNdefApplication` means
"this card carries no NDEF": every other answer a tag may give on the way
(a refused length, a missing file the CC names, a length the file cannot
hold) has its own class, so a caller never mistakes a damaged or quirky tag
for an empty one.
"""

from __future__ import annotations

from cardlib.apdu import sw_name
from cardlib.errors import CardlibError


class Type4Error(CardlibError):
    """Root of errors about a Type 4 tag's files, format or answers."""


class StatusError(Type4Error):
    """The tag answered a command with a status word the procedure does not allow.

    :ivar sw: the status word SW1SW2 as a 16-bit int.
    :ivar data: response data that came with it, bytes.
    :ivar command: which step, e.g. ``"READ BINARY offset 2"``.
    """

    def __init__(self, sw: int, command: str, data: bytes = b"", detail: str = "") -> None:
        text = f"{command}: SW={sw_name(sw)}"
        if detail:
            text = f"{text} ({detail})"
        super().__init__(text)
        self.sw = sw
        self.data = data
        self.command = command


class NoNdefApplication(StatusError):
    """Neither NDEF Tag Application AID (D2760000850101, D2760000850100) is on the card (SW 6A82).

    The one error that means "not an NDEF tag" (T4T 2.0 §5.4.2, §5.5).
    """


class FileNotFound(StatusError):
    """SELECT of the CC file or of the NDEF file the CC names answered 6A82 (T4T 2.0 §5.4.3, §5.4.5).

    The NDEF application is there, so the tag is damaged or mis-personalised, not blank.

    :ivar file_id: the 2-byte file identifier that was not found.
    """

    def __init__(self, sw: int, command: str, file_id: int, data: bytes = b"") -> None:
        super().__init__(sw, command, data, f"file {file_id:04X} not found")
        self.file_id = file_id


class SelectRefused(StatusError):
    """SELECT was refused with P2=00h and with P2=0Ch alike (ISO/IEC 7816-4 §11.2.2)."""


class CorruptCc(Type4Error):
    """The capability container file E103h is not a T4T CC (T4T 2.0 §5.1, §5.1.2)."""


class UnsupportedVersion(CorruptCc):
    """The CC's mapping major version is not 1, 2 or 3 (T4T 2.0 §5.1.1: refuse a higher major).

    :ivar version: the mapping version byte (major in the upper nibble).
    """

    def __init__(self, version: int) -> None:
        super().__init__(f"CC mapping version {version >> 4}.{version & 0xF} is not supported (1.x, 2.x, 3.x are)")
        self.version = version


class ReadDenied(Type4Error):
    """The CC's NDEF File Control TLV denies (or restricts proprietarily) read access (T4T 2.0 §5.1.2)."""


class ReadOnly(Type4Error):
    """The CC's NDEF File Control TLV forbids writing (write access FFh or proprietary; T4T 2.0 §5.3.3)."""


class CapacityExceeded(Type4Error):
    """A message does not fit the NDEF file (max file size minus the 2- or 4-byte length field)."""


class NlenOutOfRange(Type4Error):
    """NLEN/ENLEN is larger than the NDEF file the CC declares (T4T 2.0 §5.2, §5.4.6).

    Raised in strict mode; a tolerant :class:`~cardlib.type4.tag.Type4Tag` reads on until
    the file itself ends (and raises :class:`NdefTruncated` if it ends first).

    :ivar nlen: the length read from the file, bytes.
    :ivar max_nlen: the largest length the CC allows, bytes.
    """

    def __init__(self, nlen: int, max_nlen: int) -> None:
        super().__init__(f"NLEN {nlen} exceeds the {max_nlen} bytes the CC's NDEF file size allows")
        self.nlen = nlen
        self.max_nlen = max_nlen


class NdefTruncated(Type4Error):
    """The NDEF file ended (6282, 6B00 or a short answer) before NLEN bytes were read.

    :ivar nlen: the length the file announces, bytes.
    :ivar got: bytes of message actually read.
    """

    def __init__(self, nlen: int, got: int, reason: str) -> None:
        super().__init__(f"NDEF file ended after {got} of {nlen} message bytes: {reason}")
        self.nlen = nlen
        self.got = got


class OffsetUnsupported(Type4Error):
    """An offset above 7FFFh needs READ/UPDATE BINARY with an offset data object (INS B1/D7), not supported."""


class LengthNotAccepted(Type4Error):
    """Neither an extended nor a short APDU of the size needed was accepted (6700 with every form)."""


class BadResponse(Type4Error):
    """The tag answered with success but data of the wrong shape (e.g. more bytes than Le)."""


class WriteVerifyFailed(Type4Error):
    """The NDEF message read back after an update differs from the one written."""
