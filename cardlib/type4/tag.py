"""An NFC Forum Type 4 tag over an APDU :class:`~cardlib.transport.Connection`.

Follows the NFC Forum Type 4 Tag Operation Specification 2.0 (T4T 2.0) and,
for mapping version 3.0, the Type 4 Tag Technical Specification (T4T 3.0:
ENDEF File Control TLV 06h, 4-byte ENLEN). Commands are ISO/IEC 7816-4 short
APDUs, extended-length ones only where a chunk needs them.

Procedures (T4T 2.0 §5.4): NDEF Tag Application Select (AID D2760000850101,
then the mapping-1.0 AID D2760000850100, §5.5), Capability Container select and
read, NDEF select, NDEF read (NLEN, then the message in chunks) and NDEF update
(NLEN=0, message, NLEN).

Tolerated field differences (each logged at DEBUG):

- SELECT refused with one P2 (00h "return FCI" or 0Ch "no data", SW 6A86,
  6B00, 6A81, 6700, 6A87, 6985, 6D00 or 6E00 answered on the first try) is retried with the other; the
  P2 that worked is kept for the rest of the session.
- An extended-length APDU refused (SW 6700 or 6D00) switches the session to
  short APDUs and the chunk is resent short.
- ``6Cxx`` (resend with the right Le) and ``61xx`` (GET RESPONSE) are handled by
  :class:`~cardlib.apdu.ApduChannel`; ``6282`` (end of file before Le bytes)
  returns the bytes that were there.
- A chunk answered with fewer bytes than asked goes on from where it ended.
- ``strict=False`` also accepts a CC with out-of-range values and an NLEN larger
  than the CC's file size (the file itself then bounds the read).

One instance per card session: nothing is cached across sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cardlib.apdu import SW, ApduChannel, CommandApdu, ResponseApdu, sw_name
from cardlib.transport import Connection
from cardlib.type4.cc import CC_FILE_ID, CC_MIN_LEN, CapabilityContainer
from cardlib.type4.commands import (
    MAX_EXTENDED_LC,
    MAX_EXTENDED_LE,
    MAX_P1P2_OFFSET,
    NdefAid,
    SelectP1,
    SelectP2,
    read_binary,
    select,
    update_binary,
)
from cardlib.type4.errors import (
    BadResponse,
    CapacityExceeded,
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
    WriteVerifyFailed,
)

logger = logging.getLogger(__name__)

#: Largest short-APDU Le and Lc (ISO/IEC 7816-4 §5.1).
SHORT_LE = 256
SHORT_LC = 255
#: Status words meaning "this SELECT form (P2, Le) is not accepted": retry with the other P2.
_P2_REFUSED = frozenset({SW.INCORRECT_P1P2, SW.WRONG_P1P2, SW.FUNCTION_NOT_SUPPORTED, SW.WRONG_LENGTH,
                         0x6A87, SW.CONDITIONS_NOT_SATISFIED, SW.INS_NOT_SUPPORTED, SW.CLA_NOT_SUPPORTED})
#: Status words an extended-length APDU gets from a tag or reader that only takes short ones.
_EXTENDED_REFUSED = frozenset({SW.WRONG_LENGTH, SW.INS_NOT_SUPPORTED})
#: UPDATE BINARY refusals that mean "this file is protected" (ISO/IEC 7816-4 §5.6).
_WRITE_PROTECTED = frozenset({SW.SECURITY_NOT_SATISFIED, SW.CONDITIONS_NOT_SATISFIED, SW.COMMAND_NOT_ALLOWED})


@dataclass(frozen=True)
class ReaderLimits:
    """What the reader and its link carry for ISO-DEP cards.

    :ivar name: profile name, for logs.
    :ivar max_le: largest response data field the reader passes in one APDU, bytes.
    :ivar max_lc: largest command data field the reader passes in one APDU, bytes.
    :ivar extended: try extended-length APDUs when a chunk exceeds 256/255 bytes
        (falls back to short ones for the session when refused).
    """

    name: str = "generic"
    max_le: int = MAX_EXTENDED_LE
    max_lc: int = MAX_EXTENDED_LC
    extended: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_le <= MAX_EXTENDED_LE or not 1 <= self.max_lc <= MAX_EXTENDED_LC:
            raise ValueError(f"max_le 1..{MAX_EXTENDED_LE} and max_lc 1..{MAX_EXTENDED_LC} bytes")


#: Try extended APDUs, fall back to short ones.
DEFAULT_LIMITS = ReaderLimits()
#: Short APDUs only (most PC/SC contactless readers with ACR122U-class front ends).
SHORT_ONLY = ReaderLimits("short", SHORT_LE, SHORT_LC, extended=False)


@dataclass(frozen=True)
class NdefFile:
    """The NDEF message of a Type 4 tag and where it came from (T4T 2.0 §5.2).

    :ivar message: the NDEF message bytes (empty when NLEN is 0).
    :ivar cc: the capability container read.
    :ivar aid: the NDEF Tag Application name that answered (mapping 2.0 or 1.0 AID).
    """

    message: bytes
    cc: CapabilityContainer
    aid: bytes

    @property
    def capacity(self) -> int:
        """Largest message the NDEF file holds, bytes."""
        return self.cc.max_nlen

    @property
    def writable(self) -> bool:
        """True when the CC grants write access."""
        return self.cc.writable


class Type4Tag:
    """One Type 4 tag in the field, reached through an APDU *connection*.

    :param connection: the card session (PC/SC, or nfcpy's ISO-DEP link).
    :param limits: what the reader carries (:data:`DEFAULT_LIMITS`, :data:`SHORT_ONLY`).
    :param strict: refuse a CC value or NLEN the spec does not allow (typed errors);
        False accepts them where a read can still be bounded by the file itself.
    :param reader: reader family for :class:`~cardlib.apdu.ApduChannel` (vendor words).
    """

    def __init__(self, connection: Connection, limits: ReaderLimits = DEFAULT_LIMITS, *,
                 strict: bool = True, reader: str = "none") -> None:
        self.apdu = ApduChannel(connection, reader)
        self.limits = limits
        self.strict = strict
        self._extended = limits.extended
        self._aid: bytes | None = None
        self._file_p2: SelectP2 | None = None
        self._selected: int | None = None
        self._cc: CapabilityContainer | None = None

    @property
    def commands(self) -> int:
        """APDUs sent so far (GET RESPONSE and 6Cxx resends included)."""
        return self.apdu.commands_sent

    @property
    def extended(self) -> bool:
        """True while extended-length APDUs are still tried in this session."""
        return self._extended

    # ------------------------------------------------------------------ SELECT

    def _select(self, p1: SelectP1, first: SelectP2, name: bytes, what: str) -> tuple[ResponseApdu, SelectP2]:
        """SELECT with *first* P2, once more with the other when that form is refused."""
        other = SelectP2.NO_RESPONSE_DATA if first is SelectP2.RETURN_FCI else SelectP2.RETURN_FCI
        resp = self.apdu.exchange(select(p1, first, name))
        if resp.sw not in _P2_REFUSED:
            return resp, first
        logger.debug("%s with P2=%02Xh refused (%s): retrying with P2=%02Xh", what, first, sw_name(resp.sw), other)
        retry = self.apdu.exchange(select(p1, other, name))
        if retry.sw in _P2_REFUSED:
            raise SelectRefused(retry.sw, what, retry.data, f"P2={first:02X}h answered {sw_name(resp.sw)}")
        return retry, other

    def select_application(self) -> bytes:
        """NDEF Tag Application Select (T4T 2.0 §5.4.2), falling back to the mapping-1.0 AID (§5.5).

        :returns: the AID that answered 9000.
        :raises NoNdefApplication: both AIDs answered 6A82 (not an NDEF tag).
        :raises SelectRefused: both P2 forms were refused.
        :raises StatusError: any other status word.
        :raises cardlib.transport.TransportError: from the connection.
        """
        if self._aid is not None:
            return self._aid
        last: ResponseApdu | None = None
        for aid in (NdefAid.V2, NdefAid.V1):
            resp, _p2 = self._select(SelectP1.BY_NAME, SelectP2.RETURN_FCI, aid.value, f"SELECT {aid.value.hex()}")
            if resp.sw == SW.OK:
                self._aid = aid.value
                self._selected = None
                return aid.value
            if resp.sw != SW.FILE_NOT_FOUND:
                raise StatusError(resp.sw, f"SELECT NDEF Tag Application {aid.value.hex().upper()}", resp.data)
            last = resp
        assert last is not None
        raise NoNdefApplication(last.sw, "SELECT NDEF Tag Application", last.data, "neither AID ...0101 nor ...0100")

    def _select_file(self, file_id: int) -> None:
        """Select an EF by identifier (T4T 2.0 §5.4.3, §5.4.5): P2=0Ch under mapping 2.0+, 00h under 1.0.

        :raises FileNotFound: SW 6A82.
        """
        aid = self.select_application()
        if self._selected == file_id:
            return
        first = self._file_p2
        if first is None:
            first = SelectP2.RETURN_FCI if aid == NdefAid.V1.value else SelectP2.NO_RESPONSE_DATA
        what = f"SELECT file {file_id:04X}"
        resp, used = self._select(SelectP1.BY_FILE_ID, first, file_id.to_bytes(2, "big"), what)
        if resp.sw == SW.FILE_NOT_FOUND:
            raise FileNotFound(resp.sw, what, file_id, resp.data)
        if resp.sw != SW.OK:
            raise StatusError(resp.sw, what, resp.data)
        self._file_p2 = used
        self._selected = file_id

    # ------------------------------------------------------------------ READ / UPDATE BINARY

    def _read_chunk_limit(self, mle: int) -> int:
        limit = min(mle, self.limits.max_le)
        return limit if self._extended else min(limit, SHORT_LE)

    def _write_chunk_limit(self, mlc: int) -> int:
        limit = min(mlc, self.limits.max_lc)
        return limit if self._extended else min(limit, SHORT_LC)

    def _send_sized(self, short: CommandApdu, extended: CommandApdu | None, what: str) -> ResponseApdu:
        """Send *extended* if given and allowed, else *short*; an extended refusal falls back once."""
        if extended is not None and self._extended:
            resp = self.apdu.exchange(extended)
            if resp.sw not in _EXTENDED_REFUSED:
                return resp
            logger.debug("%s: extended APDU refused (%s), using short APDUs from now on", what, sw_name(resp.sw))
            self._extended = False
        return self.apdu.exchange(short)

    def _read(self, offset: int, length: int, what: str) -> tuple[bytes, bool]:
        """READ BINARY up to *length* bytes at *offset* (one APDU, chunk already bounded).

        :returns: ``(data, end_of_file)``; end of file for 6282 or 6B00 (offset past the end).
        :raises StatusError: any other status word.
        """
        if offset > MAX_P1P2_OFFSET:
            raise OffsetUnsupported(f"{what}: offset {offset} needs READ BINARY with an offset data object (B1h)")
        if length > SHORT_LE:
            short_len = min(length, SHORT_LE)
            resp = self._send_sized(read_binary(offset, short_len), read_binary(offset, length, extended=True), what)
        else:
            resp = self.apdu.exchange(read_binary(offset, length))
        if resp.sw == SW.WRONG_LENGTH:
            raise LengthNotAccepted(f"{what}: Le {length} refused with 6700 as a short APDU")
        if resp.sw == SW.WRONG_P1P2:
            return b"", True
        if resp.sw not in (SW.OK, SW.END_OF_FILE):
            raise StatusError(resp.sw, what, resp.data)
        if len(resp.data) > length:
            raise BadResponse(f"{what}: {len(resp.data)} bytes answered for Le {length}")
        return resp.data, resp.sw == SW.END_OF_FILE

    def _read_range(self, offset: int, length: int, mle: int, what: str) -> tuple[bytes, str | None]:
        """Read *length* bytes from *offset* in chunks.

        :returns: the bytes and None, or the bytes read so far and why the file ended early.
        """
        out = bytearray()
        while len(out) < length:
            chunk = min(length - len(out), self._read_chunk_limit(mle))
            data, eof = self._read(offset + len(out), chunk, f"{what} offset {offset + len(out)}")
            out += data
            if len(out) >= length:
                break
            if eof:
                return bytes(out), "end of file (6282/6B00)"
            if not data:
                return bytes(out), "an empty answer with 9000"
        return bytes(out), None

    def _update(self, offset: int, data: bytes, what: str) -> None:
        """UPDATE BINARY one chunk (already bounded) at *offset*.

        :raises ReadOnly: the tag refuses the write as protected (6982, 6985, 6986).
        :raises StatusError: any other status word but 9000.
        """
        if offset + len(data) - 1 > MAX_P1P2_OFFSET:
            raise OffsetUnsupported(f"{what}: offset {offset} needs UPDATE BINARY with an offset data object (D7h)")
        if len(data) > SHORT_LC:
            resp = self._send_sized(update_binary(offset, data[:SHORT_LC]), update_binary(offset, data, True), what)
            if not self._extended and resp.sw == SW.OK and len(data) > SHORT_LC:
                self._update(offset + SHORT_LC, data[SHORT_LC:], what)  # the rest, short
                return
        else:
            resp = self.apdu.exchange(update_binary(offset, data))
        if resp.sw in _WRITE_PROTECTED:
            raise ReadOnly(f"{what}: the tag refuses writing ({sw_name(resp.sw)})")
        if resp.sw == SW.WRONG_LENGTH:
            raise LengthNotAccepted(f"{what}: Lc {len(data)} refused with 6700")
        if resp.sw != SW.OK:
            raise StatusError(resp.sw, what, resp.data)

    def _update_range(self, offset: int, data: bytes, mlc: int, what: str) -> None:
        done = 0
        while done < len(data):
            chunk = min(len(data) - done, self._write_chunk_limit(mlc))
            self._update(offset + done, data[done : done + chunk], f"{what} offset {offset + done}")
            done += chunk

    # ------------------------------------------------------------------ procedures

    def read_cc(self) -> CapabilityContainer:
        """Capability Container select and read (T4T 2.0 §5.4.3, §5.4.4).

        Reads 15 bytes (Le=0Fh), and 2 more when the TLV is an ENDEF File Control TLV.

        :raises NoNdefApplication: no NDEF application (see :meth:`select_application`).
        :raises FileNotFound: the application has no CC file E103h.
        :raises CorruptCc, UnsupportedVersion: see :meth:`CapabilityContainer.parse`.
        :raises StatusError, cardlib.transport.TransportError: other answers.
        """
        if self._cc is not None:
            return self._cc
        self._select_file(CC_FILE_ID)
        raw, _ended = self._read_range(0, CC_MIN_LEN, CC_MIN_LEN, "READ BINARY CC")
        need = CapabilityContainer.needed_length(raw)
        if len(raw) == CC_MIN_LEN and need > CC_MIN_LEN:
            more, _ended = self._read_range(CC_MIN_LEN, need - CC_MIN_LEN, CC_MIN_LEN, "READ BINARY CC")
            raw += more
        cc = CapabilityContainer.parse(raw, strict=self.strict)
        for issue in cc.issues:
            logger.debug("CC accepted despite: %s", issue)
        self._cc = cc
        return cc

    def _detect(self) -> CapabilityContainer:
        """NDEF Detection Procedure (T4T 2.0 §5.4.1) up to the NDEF Select (§5.4.5)."""
        cc = self.read_cc()
        if not cc.readable:
            raise ReadDenied(f"CC read access byte {cc.read_access:02X}h does not grant reading")
        self._select_file(cc.file_id)
        return cc

    def read_nlen(self) -> int:
        """Read NLEN (2 bytes) or ENLEN (4 bytes) from the NDEF file (T4T 2.0 §5.4.1, §5.4.6).

        :raises NlenOutOfRange: (strict) NLEN exceeds the CC's file size.
        :raises NdefTruncated: the file is shorter than its length field.
        """
        cc = self._detect()
        raw, ended = self._read_range(0, cc.nlen_size, cc.mle, "READ BINARY NLEN")
        if ended is not None:
            raise NdefTruncated(cc.nlen_size, len(raw), f"length field: {ended}")
        nlen = int.from_bytes(raw, "big")
        if nlen > cc.max_nlen:
            if self.strict:
                raise NlenOutOfRange(nlen, cc.max_nlen)
            logger.debug("NLEN %d exceeds the CC's %d bytes: reading until the file ends", nlen, cc.max_nlen)
        if cc.nlen_size + nlen - 1 > MAX_P1P2_OFFSET:
            raise OffsetUnsupported(f"a {nlen}-byte message ends past offset {MAX_P1P2_OFFSET}")
        return nlen

    def read_ndef(self) -> NdefFile:
        """NDEF Detection and Read Procedures (T4T 2.0 §5.4.1, §5.4.6).

        :returns: the message (possibly empty) with its CC.
        :raises NoNdefApplication: the card has no NDEF application (the only "no NDEF" answer).
        :raises FileNotFound: the CC or the NDEF file the CC names is missing.
        :raises CorruptCc, UnsupportedVersion, ReadDenied: the CC forbids reading.
        :raises NlenOutOfRange: (strict) NLEN larger than the CC's file size.
        :raises NdefTruncated: the file ended before NLEN bytes.
        :raises LengthNotAccepted, StatusError, cardlib.transport.TransportError: other failures.
        """
        nlen = self.read_nlen()
        cc = self.read_cc()
        message, ended = self._read_range(cc.nlen_size, nlen, cc.mle, "READ BINARY NDEF")
        if ended is not None:
            raise NdefTruncated(nlen, len(message), ended)
        assert self._aid is not None
        return NdefFile(message, cc, self._aid)

    def write_ndef(self, message: bytes, verify: bool = True) -> NdefFile:
        """NDEF Update Procedure (T4T 2.0 §5.4.7): NLEN=0, the message, then NLEN.

        A tear before the last step leaves NLEN=0, an empty message, never a
        length that announces bytes not yet written.

        :param message: encoded NDEF message.
        :param verify: read NLEN and the message back and compare.
        :raises ReadOnly: the CC's write access byte is not 00h, or the tag refuses writing.
        :raises CapacityExceeded: the message does not fit the NDEF file.
        :raises OffsetUnsupported: the message would end past offset 7FFFh.
        :raises WriteVerifyFailed: the read-back differs.
        :raises NoNdefApplication, FileNotFound, CorruptCc, StatusError: see :meth:`read_ndef`.
        """
        message = bytes(message)
        cc = self._detect()
        if not cc.writable:
            raise ReadOnly(f"CC write access byte {cc.write_access:02X}h forbids writing")
        if len(message) > cc.max_nlen:
            raise CapacityExceeded(f"message of {len(message)} bytes exceeds the NDEF file's {cc.max_nlen}")
        if cc.nlen_size + len(message) - 1 > MAX_P1P2_OFFSET:
            raise OffsetUnsupported(f"a {len(message)}-byte message would end past offset {MAX_P1P2_OFFSET}")
        self._update_range(0, bytes(cc.nlen_size), cc.mlc, "UPDATE BINARY NLEN=0")
        if message:
            self._update_range(cc.nlen_size, message, cc.mlc, "UPDATE BINARY NDEF")
            self._update_range(0, len(message).to_bytes(cc.nlen_size, "big"), cc.mlc, "UPDATE BINARY NLEN")
        assert self._aid is not None
        written = NdefFile(message, cc, self._aid)
        if verify:
            back = self.read_ndef()
            if back.message != message:
                raise WriteVerifyFailed("NDEF message read back differs from what was written")
        return written


__all__ = ["DEFAULT_LIMITS", "SHORT_ONLY", "NdefFile", "ReaderLimits", "Type4Tag"]
