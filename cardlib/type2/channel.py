"""Raw Type 2 chip commands through a PC/SC reader, one channel per pass-through kind.

A :class:`Type2Channel` carries NTAG21x command frames (no CRC_A) to the chip
and returns its answer. Implementations here wrap an APDU
:class:`~cardlib.transport.Connection`:

- :class:`Acr122uChannel` - ACR122U direct transmit ``FF 00 00 00 Lc D4 42 <frame>``
  (PN533 InCommunicateThru; ACR122U API v2.04 §6.1, NXP UM0701-02 §7.3.9)
  answered ``D5 43 <status> <chip answer>``.
- :class:`Part3Channel` - PC/SC Part 3 v2.02 §3.2.2.1.8 transparent session:
  ``FF C2 00 00`` (81 00 start / 82 00 end), ``FF C2 00 01 Lc 95 <len> <frame>``
  answered with data objects ``C0 03 <status> <SW>``, ``92 01 <valid bits>``,
  ``97 <len> <chip answer>``.
- :class:`PlainChannel` - readers without pass-through: READ BINARY
  ``FF B0 00 <page> 10`` and UPDATE BINARY ``FF D6 00 <page> 04 <4 B>`` only
  (PC/SC Part 3 §3.2.2.1.4-5).

The nfcpy-backed channel (:mod:`cardlib.transport.nfcpy`) implements the same ABC.
A 4-bit ACK arrives as the one byte ``0A``; any other one-byte answer is a NAK
and raises :class:`~cardlib.type2.errors.Nak`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cardlib.apdu import ApduChannel, ApduError, CommandApdu
from cardlib.ber import BerError, encode_object, parse_objects
from cardlib.part3 import Part3Object
from cardlib.pn53x import STATUS_MASK, Pn53xCommand, Pn53xStatus, Tfi
from cardlib.transport import Connection
from cardlib.transport.errors import TagMute
from cardlib.type2.chip import PAGE_SIZE, READ_PAGES
from cardlib.type2.errors import BadResponse, Nak, UnsupportedCommand

PassthroughKind = Literal["acr122u", "part3", "none"]

ACK = 0x0A
_ACK_NAK_LEN = 1
READ_BYTES = READ_PAGES * PAGE_SIZE


class T2Command(enum.IntEnum):
    """NTAG21x command codes (NTAG213/215/216 datasheet §10, Table 22)."""

    GET_VERSION = 0x60
    READ = 0x30
    FAST_READ = 0x3A
    WRITE = 0xA2
    COMPATIBILITY_WRITE = 0xA0
    READ_CNT = 0x39
    PWD_AUTH = 0x1B
    READ_SIG = 0x3C


@dataclass(frozen=True)
class ReaderCapabilities:
    """What the reader can do for Type 2 tags (normally from a firmware_config reader profile).

    :ivar name: profile name, for logs.
    :ivar passthrough: how raw chip frames reach the tag: ``"acr122u"`` (PN533
        InCommunicateThru via direct transmit), ``"part3"`` (PC/SC Part 3
        transparent session) or ``"none"`` (READ/UPDATE BINARY only).
    :ivar max_frame: largest chip answer the reader passes in one exchange, in
        bytes; FAST_READ ranges are sized to it (``max_frame // 4`` pages).
    """

    name: str = "generic"
    passthrough: PassthroughKind = "none"
    max_frame: int = READ_BYTES

    def __post_init__(self) -> None:
        if self.passthrough not in ("acr122u", "part3", "none"):
            raise ValueError(f"unknown pass-through kind {self.passthrough!r}")
        if self.max_frame < READ_BYTES:
            raise ValueError(f"max_frame must be at least {READ_BYTES} bytes")

    @property
    def max_pages(self) -> int:
        """Pages one FAST_READ may return on this reader."""
        return self.max_frame // PAGE_SIZE


#: ACR122U: ≤ 255-byte direct transmit; the answer wraps ``D5 43 <status>`` around ≤ 252 chip bytes.
ACR122U = ReaderCapabilities("acr122u", "acr122u", 252)
#: A PC/SC Part 3 reader with a transparent session. The answer ``C0 03 00 90 00`` +
#: ``92 01 00`` + ``97 81 <len> <chip answer>`` must fit a short R-APDU's 256 data bytes
#: (ISO/IEC 7816-4 §5.1), so 11 bytes of objects leave 245: 61 whole pages = 244 bytes.
#: A reader that answers extended-length APDUs may declare more in its profile.
PART3 = ReaderCapabilities("part3", "part3", 244)
#: Any PC/SC reader: storage-card pseudo-APDUs only (16-byte READ BINARY).
GENERIC = ReaderCapabilities()


class Type2Channel(abc.ABC):
    """Carries raw NTAG21x command frames to the chip.

    :ivar caps: the reader's capabilities.
    :ivar commands: card commands (frames that reach the chip) sent so far.
    :ivar reader_exchanges: exchanges the reader answers itself (GET DATA UID, re-activation), so far.
    :ivar air_bytes: chip frame bytes sent plus received so far (without CRC_A).
    """

    def __init__(self, caps: ReaderCapabilities) -> None:
        self.caps = caps
        self.commands = 0
        self.reader_exchanges = 0
        self.air_bytes = 0

    def reader_uid(self) -> bytes | None:
        """The UID the reader learnt at anticollision, without a card command; None when it cannot tell.

        Default: None (the tag then reads pages 0-1).
        """
        return None

    @property
    def supports_raw(self) -> bool:
        """True when :meth:`transceive` can carry any chip command."""
        return True

    @abc.abstractmethod
    def _exchange(self, frame: bytes) -> bytes:
        """Send one frame, return the chip's raw answer (ACK/NAK as one byte).

        :raises cardlib.transport.TagMute: the chip did not answer.
        """

    def transceive(self, frame: bytes) -> bytes:
        """Send one raw chip command (no CRC) and return its answer.

        :param frame: command byte + arguments, e.g. ``3A 04 10`` (FAST_READ pages 4-16).
        :returns: the answer bytes; ``b"\\x0a"`` for an ACK.
        :raises Nak: the chip answered with a 4-bit NAK (the tag has been re-selected).
        :raises cardlib.transport.TagMute: the chip did not answer.
        :raises UnsupportedCommand: the channel cannot carry this command.
        """
        self.commands += 1
        answer = self._exchange(frame)
        self.air_bytes += len(frame) + len(answer)
        if len(answer) == _ACK_NAK_LEN and answer[0] != ACK:
            # A NAK drops the chip to IDLE (datasheet §9.1): re-select it so the session goes on.
            self.reactivate()
            raise Nak(answer[0] & 0x0F, f"command {frame[:1].hex()}")
        return answer

    def read16(self, page: int) -> bytes:
        """READ: 16 bytes from *page* (4 pages; the chip wraps past its last page, T2-6).

        :raises BadResponse: the answer is not 16 bytes.
        """
        data = self.transceive(bytes((T2Command.READ, page)))
        if len(data) != READ_BYTES:
            raise BadResponse(f"READ {page} answered {len(data)} bytes, expected {READ_BYTES}")
        return data

    def write4(self, page: int, data: bytes) -> None:
        """WRITE: 4 bytes to *page*, expecting an ACK (datasheet §10.4).

        :raises BadResponse: the answer is not an ACK.
        """
        if len(data) != PAGE_SIZE:
            raise ValueError("WRITE takes exactly 4 bytes")
        answer = self.transceive(bytes((T2Command.WRITE, page)) + bytes(data))
        if answer != bytes((ACK,)):
            raise BadResponse(f"WRITE {page} answered {answer.hex()} instead of ACK")

    def reactivate(self) -> None:  # noqa: B027 - an optional hook whose default does nothing, not abstract
        """Re-select the tag after a NAK or mute answer left it IDLE (datasheet §9.1). Default: nothing."""


class _ApduType2Channel(Type2Channel):
    """Common part of the PC/SC channels: an :class:`ApduChannel` over the connection."""

    def __init__(
        self, connection: Connection, caps: ReaderCapabilities, repoll: Callable[[], None] | None = None
    ) -> None:
        super().__init__(caps)
        self.apdu = ApduChannel(connection, caps.passthrough, repoll=repoll or self._repoll_hook)
        self.connection = connection

    def _repoll_hook(self) -> None:
        self.reactivate()

    def reader_uid(self) -> bytes | None:
        """GET DATA ``FF CA 00 00 00`` (PC/SC Part 3 v2.02 §3.2.2.1.3, ACR122U API v2.04 §4.1).

        The reader answers from the anticollision it ran: no RF command, so it is counted in
        :attr:`reader_exchanges`, not :attr:`commands`.

        :returns: the UID, or None when the reader refuses GET DATA (any SW but 9000).
        :raises cardlib.transport.TransportError: the reader or the card link failed.
        """
        self.reader_exchanges += 1
        try:
            return bytes(self.apdu.send(CommandApdu(0xFF, 0xCA, 0x00, 0x00, le=256)))
        except ApduError:
            return None


#: PC/SC Part 3 storage-card status words (v2.02 §3.2.2.1.4 Table 3-9).
_SW_NO_RESPONSE = 0x6401
_SW_EXEC_ERROR = 0x6400
_SW_MEMORY_FAILURE = 0x6581


def _storage_error(exc: ApduError, what: str) -> Exception:
    """Map a storage-card pseudo-APDU status word to a typed error."""
    if exc.sw in (_SW_NO_RESPONSE, _SW_EXEC_ERROR):
        return TagMute(f"{what}: the tag did not answer (SW {exc.sw:04X})")
    if exc.sw == _SW_MEMORY_FAILURE:
        return Nak(0x0, f"{what} (SW 6581 memory failure)")
    return exc


class PlainChannel(_ApduType2Channel):
    """A reader without pass-through: only READ (16 B) and WRITE (4 B) reach the chip."""

    @property
    def supports_raw(self) -> bool:
        return False

    def read16(self, page: int) -> bytes:
        """READ BINARY ``FF B0 00 <page> 10`` (one chip READ; PC/SC Part 3 §3.2.2.1.4)."""
        self.commands += 1
        try:
            data = self.apdu.send(CommandApdu(0xFF, 0xB0, 0x00, page, le=READ_BYTES))
        except ApduError as exc:
            raise _storage_error(exc, f"READ BINARY page {page}") from exc
        self.air_bytes += 2 + len(data)
        if len(data) != READ_BYTES:
            raise BadResponse(f"READ BINARY {page} answered {len(data)} bytes, expected {READ_BYTES}")
        return data

    def write4(self, page: int, data: bytes) -> None:
        """UPDATE BINARY ``FF D6 00 <page> 04 <data>`` (PC/SC Part 3 §3.2.2.1.5)."""
        if len(data) != PAGE_SIZE:
            raise ValueError("a page write takes exactly 4 bytes")
        self.commands += 1
        try:
            self.apdu.send(CommandApdu(0xFF, 0xD6, 0x00, page, bytes(data)))
        except ApduError as exc:
            raise _storage_error(exc, f"UPDATE BINARY page {page}") from exc
        self.air_bytes += 2 + PAGE_SIZE + 1

    def _exchange(self, frame: bytes) -> bytes:
        raise UnsupportedCommand(f"reader {self.caps.name!r} has no pass-through for command {frame[:1].hex()}")

    def transceive(self, frame: bytes) -> bytes:
        """Map READ and WRITE onto READ/UPDATE BINARY; anything else is unsupported.

        :raises UnsupportedCommand: for every other command.
        """
        if len(frame) == 2 and frame[0] == T2Command.READ:
            return self.read16(frame[1])
        if len(frame) == 2 + PAGE_SIZE and frame[0] == T2Command.WRITE:
            self.write4(frame[1], frame[2:])
            return bytes((ACK,))
        return self._exchange(frame)


_MAX_DIRECT = 255


class Acr122uChannel(_ApduType2Channel):
    """ACR122U-class reader: chip frames through PN533 InCommunicateThru (ACR122U API v2.04 §6.1)."""

    def __init__(self, connection: Connection, caps: ReaderCapabilities = ACR122U,
                 repoll: Callable[[], None] | None = None) -> None:
        super().__init__(connection, caps, repoll)

    def _direct(self, pn533_frame: bytes) -> bytes:
        if len(pn533_frame) > _MAX_DIRECT:
            raise ValueError("direct transmit payload is at most 255 bytes")
        return self.apdu.send(CommandApdu(0xFF, 0x00, 0x00, 0x00, pn533_frame))

    def _exchange(self, frame: bytes) -> bytes:
        resp = self._direct(bytes((Tfi.HOST_TO_PN, Pn53xCommand.IN_COMMUNICATE_THRU)) + bytes(frame))
        if len(resp) < 3 or resp[0] != Tfi.PN_TO_HOST or resp[1] != Pn53xCommand.IN_COMMUNICATE_THRU + 1:
            raise BadResponse(f"InCommunicateThru answered {resp[:3].hex()}")
        status = resp[2] & STATUS_MASK
        if status == Pn53xStatus.TIMEOUT:
            raise TagMute("the tag did not answer (PN533 time-out)")
        if status != Pn53xStatus.OK:
            raise BadResponse(f"PN533 status 0x{status:02X} on command {frame[:1].hex()}")
        return resp[3:]

    def reactivate(self) -> None:
        """InListPassiveTarget 106 kbps type A (``D4 4A 01 00``) re-selects the tag.

        :raises cardlib.transport.TagMute: no tag answered the poll.
        """
        self.reader_exchanges += 1
        resp = self.apdu.send(CommandApdu(0xFF, 0x00, 0x00, 0x00, bytes(
            (Tfi.HOST_TO_PN, Pn53xCommand.IN_LIST_PASSIVE_TARGET, 0x01, 0x00))))
        if len(resp) < 3 or resp[2] == 0:
            raise TagMute("no tag answered InListPassiveTarget")


class Part3Channel(_ApduType2Channel):
    """PC/SC Part 3 transparent session (v2.02 §3.2.2.1.8): ``FF C2`` envelopes."""

    def __init__(self, connection: Connection, caps: ReaderCapabilities = PART3,
                 repoll: Callable[[], None] | None = None) -> None:
        super().__init__(connection, caps, repoll)
        self._session = False

    def _envelope(self, p2: int, objects: bytes) -> list[tuple[int, bytes]]:
        resp = self.apdu.send(CommandApdu(0xFF, 0xC2, 0x00, p2, objects))
        try:
            parsed = parse_objects(resp)
        except BerError as exc:
            raise BadResponse(f"PC/SC Part 3 answer: {exc}") from exc
        for tag, value in parsed:
            if tag == Part3Object.GENERIC_ERROR and len(value) == 3 and value[0] != 0:
                sw = int.from_bytes(value[1:], "big")
                if sw == _SW_NO_RESPONSE:
                    raise TagMute("the tag did not answer (Part 3 C0 status 64 01)")
                raise ApduError(b"", sw, "PC/SC Part 3 transparent exchange")
        return parsed

    def start_session(self) -> None:
        """Manage Session: start a transparent session (``81 00``)."""
        self._envelope(0x00, encode_object(Part3Object.START_SESSION, b""))
        self._session = True

    def end_session(self) -> None:
        """Manage Session: end the transparent session (``82 00``)."""
        if self._session:
            self._envelope(0x00, encode_object(Part3Object.END_SESSION, b""))
            self._session = False

    def _exchange(self, frame: bytes) -> bytes:
        if not self._session:
            self.start_session()
            self.commands += 1
        parsed = self._envelope(0x01, encode_object(Part3Object.TRANSCEIVE, bytes(frame)))
        for tag, value in parsed:
            if tag == Part3Object.ICC_RESPONSE:
                return value
        raise TagMute("transparent exchange returned no ICC response object")

    def reactivate(self) -> None:
        """RF off then on (``83 00 84 00``): the tag powers up selected again."""
        self.reader_exchanges += 1
        self._envelope(0x00, encode_object(Part3Object.RF_OFF, b"") + encode_object(Part3Object.RF_ON, b""))


def channel_for(connection: Connection, caps: ReaderCapabilities = GENERIC,
                repoll: Callable[[], None] | None = None) -> Type2Channel:
    """The PC/SC channel for the reader's pass-through kind.

    :param connection: an APDU connection to the reader with the tag present.
    :param caps: reader capabilities (``passthrough`` selects the channel class).
    :param repoll: optional re-poll hook for vendor-word retries (e.g. ``PcscConnection.reconnect``).
    """
    if caps.passthrough == "acr122u":
        return Acr122uChannel(connection, caps, repoll)
    if caps.passthrough == "part3":
        return Part3Channel(connection, caps, repoll)
    return PlainChannel(connection, caps, repoll)


__all__ = [
    "ACR122U",
    "GENERIC",
    "PART3",
    "Acr122uChannel",
    "Part3Channel",
    "PassthroughKind",
    "PlainChannel",
    "ReaderCapabilities",
    "T2Command",
    "Type2Channel",
    "channel_for",
]
