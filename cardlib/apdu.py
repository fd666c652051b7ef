"""ISO/IEC 7816-4 command/response APDUs, status words and a robust APDU channel.

:class:`ApduChannel` sits on a :class:`~cardlib.transport.Connection` and does
what pyscard leaves to each caller:

- ``61xx``: GET RESPONSE loop (ISO/IEC 7816-4 §5.3.4 / T=0 "bytes remaining").
- ``6Cxx``: one resend of the same command with ``Le = xx``.
- Vendor status words of the reader's own ``FF``-class pseudo-APDUs, per reader
  (ACR122U API v2.04 §4/§6, field case AP-2): ``63 00`` failed, ``63 01`` no
  answer from the tag, ``63 27`` checksum error -> one retry after a re-poll,
  then :class:`~cardlib.transport.TagLost`. A LED/buzzer control command
  answering ``90 xx`` is success. Vendor ``63 xx`` is never confused with the
  ISO ``63 Cx`` retry counter (only ``FF``-class commands get the vendor table)
  nor with ``61 xx``.
- A response shorter than two bytes raises :class:`~cardlib.transport.TagMute`
  (field case AP-1) - see :func:`split_response`.

APDU traffic is logged at :data:`TRAFFIC` (5, below DEBUG). **Traffic logs may
contain secrets** (passwords sent with PWD_AUTH, UIDs, record contents): never
enable them in production. Follows Yubico yubikit ``logging.py``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cardlib.errors import CardlibError
from cardlib.transport import Connection
from cardlib.transport.errors import TagLost, TagMute

TRAFFIC = 5
"""Log level for APDU traffic, below ``logging.DEBUG``. May expose secrets."""
logging.addLevelName(TRAFFIC, "TRAFFIC")

logger = logging.getLogger(__name__)

#: CLA of the PC/SC Part 3 / reader-vendor pseudo-APDUs (storage cards, direct transmit).
CLA_PSEUDO = 0xFF
#: Largest short-APDU Lc (ISO/IEC 7816-4 §5.1).
MAX_SHORT_LC = 255
#: Largest short-APDU Le; encoded as ``00``.
MAX_SHORT_LE = 256
#: Bound on chained GET RESPONSEs: a broken card must not keep us in a loop.
MAX_GET_RESPONSE = 64


class SW(enum.IntEnum):
    """ISO/IEC 7816-4 §5.6 status words (SW1SW2) used by cardlib.

    ``61xx`` and ``6Cxx`` carry a length in SW2; compare ``sw >> 8`` with
    :attr:`BYTES_REMAINING_SW1` / :attr:`WRONG_LE_SW1` for those.
    """

    OK = 0x9000
    BYTES_REMAINING_SW1 = 0x61  # SW1 only
    WRONG_LE_SW1 = 0x6C  # SW1 only
    WARNING_NO_INFO = 0x6200
    END_OF_FILE = 0x6282
    VERIFY_FAILED_NO_INFO = 0x6300  # ISO meaning; see AcsSW for the vendor one
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    INCORRECT_P1P2 = 0x6A86
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN = 0x6F00


class AcsSW(enum.IntEnum):
    """Vendor status words of ACS readers on ``FF``-class pseudo-APDUs (ACR122U API v2.04 §4.1, §6)."""

    OPERATION_FAILED = 0x6300
    NO_RESPONSE = 0x6301
    CHECKSUM_ERROR = 0x6327
    LED_STATE_SW1 = 0x90  # SW1 only: "90 xx" answers LED/buzzer control, xx = LED state


def sw_name(sw: int) -> str:
    """Human name of a status word, e.g. ``"6A82 FILE_NOT_FOUND"``, ``"61 10 BYTES_REMAINING"``."""
    sw1 = sw >> 8
    if sw1 == SW.BYTES_REMAINING_SW1:
        return f"61{sw & 0xFF:02X} BYTES_REMAINING"
    if sw1 == SW.WRONG_LE_SW1:
        return f"6C{sw & 0xFF:02X} WRONG_LE"
    try:
        return f"{sw:04X} {SW(sw).name}"
    except ValueError:
        return f"{sw:04X}"


class ApduError(CardlibError):
    """The card or reader answered with a status word other than success.

    :ivar data: response data that came with the status word, bytes.
    :ivar sw: the status word SW1SW2 as a 16-bit int.
    """

    def __init__(self, data: bytes, sw: int, context: str = "") -> None:
        text = f"APDU error: SW={sw_name(sw)}"
        if context:
            text = f"{text} ({context})"
        super().__init__(text)
        self.data = data
        self.sw = sw


@dataclass(frozen=True)
class CommandApdu:
    """A short command APDU (ISO/IEC 7816-4 §5.1, cases 1-4).

    :ivar cla, ins, p1, p2: header bytes, 0..255 each.
    :ivar data: command data field, 0..255 bytes (Lc is derived).
    :ivar le: expected response length 1..256 (256 is encoded ``00``), or None for no Le.
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise ValueError(f"{name} must be one byte, got {value}")
        if len(self.data) > MAX_SHORT_LC:
            raise ValueError(f"short APDU data is at most {MAX_SHORT_LC} bytes, got {len(self.data)}")
        if self.le is not None and not 0 < self.le <= MAX_SHORT_LE:
            raise ValueError(f"Le must be 1..{MAX_SHORT_LE} or None, got {self.le}")

    def encode(self) -> bytes:
        """The APDU bytes: ``CLA INS P1 P2 [Lc data] [Le]``."""
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out.append(len(self.data))
            out += self.data
        if self.le is not None:
            out.append(self.le % MAX_SHORT_LE)
        return bytes(out)

    @classmethod
    def decode(cls, apdu: bytes) -> CommandApdu:
        """Parse a short command APDU (the inverse of :meth:`encode`).

        :raises ValueError: when *apdu* is not a well-formed short APDU.
        """
        if len(apdu) < 4:
            raise ValueError("APDU shorter than its 4-byte header")
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or MAX_SHORT_LE)
        lc = body[0]
        if lc == 0 or len(body) not in (1 + lc, 2 + lc):
            raise ValueError("Lc does not match the APDU length (extended APDUs are not supported)")
        data = bytes(body[1 : 1 + lc])
        le = (body[1 + lc] or MAX_SHORT_LE) if len(body) == 2 + lc else None
        return cls(cla, ins, p1, p2, data, le)

    def with_le(self, le: int) -> CommandApdu:
        """The same command with another Le (for the ``6Cxx`` resend)."""
        return CommandApdu(self.cla, self.ins, self.p1, self.p2, self.data, le)


@dataclass(frozen=True)
class ResponseApdu:
    """A response APDU: data and the status word (ISO/IEC 7816-4 §5.1)."""

    data: bytes
    sw: int

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    def encode(self) -> bytes:
        """``data || SW1 SW2``."""
        return self.data + self.sw.to_bytes(2, "big")


def split_response(raw: bytes) -> tuple[bytes, int]:
    """Split a raw response into ``(data, SW1SW2)``.

    :raises cardlib.transport.TagMute: when *raw* is shorter than the 2-byte
        status word (field case AP-1: "ICC mute" reported as a successful transmit).
    """
    if len(raw) < 2:
        raise TagMute(f"response of {len(raw)} byte(s) has no status word: card mute or gone")
    return bytes(raw[:-2]), int.from_bytes(raw[-2:], "big")


@dataclass(frozen=True)
class VendorStatusTable:
    """How one reader family answers its ``FF``-class pseudo-APDUs (field case AP-2).

    :ivar name: reader family, e.g. ``"acr122u"``.
    :ivar tag_failure: status words meaning "the tag did not answer / the RF
        exchange failed": retried once after a re-poll, then :class:`TagLost`.
    :ivar control_prefixes: ``(INS, P1, P2)`` of control pseudo-APDUs whose
        success is any ``90 xx`` (e.g. ACR122U LED/buzzer ``FF 00 40 xx``).
    """

    name: str
    tag_failure: frozenset[int] = field(default_factory=frozenset)
    control_prefixes: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def is_control(self, command: CommandApdu) -> bool:
        """True when *command* is a control pseudo-APDU answered with ``90 xx``."""
        return command.cla == CLA_PSEUDO and (command.ins, command.p1) in self.control_prefixes


#: ACS ACR122U / ACR1252U family (ACR122U API v2.04 §4.1, §6.2): LED/buzzer control is ``FF 00 40``.
ACS_TABLE = VendorStatusTable(
    name="acr122u",
    tag_failure=frozenset({AcsSW.OPERATION_FAILED, AcsSW.NO_RESPONSE, AcsSW.CHECKSUM_ERROR}),
    control_prefixes=frozenset({(0x00, 0x40)}),
)
#: Any PC/SC Part 3 reader: ``63 00`` on a storage-card pseudo-APDU means the operation failed.
PART3_TABLE = VendorStatusTable(name="part3", tag_failure=frozenset({AcsSW.OPERATION_FAILED}))
#: Readers without pass-through; same Part 3 meaning of ``63 00``.
GENERIC_TABLE = VendorStatusTable(name="none", tag_failure=frozenset({AcsSW.OPERATION_FAILED}))

VENDOR_TABLES: dict[str, VendorStatusTable] = {
    table.name: table for table in (ACS_TABLE, PART3_TABLE, GENERIC_TABLE)
}


class ApduChannel:
    """Exchange APDUs over a :class:`Connection` with the ISO and vendor rules applied.

    :param connection: the card session.
    :param reader: reader family name (a key of :data:`VENDOR_TABLES`:
        ``"acr122u"``, ``"part3"``, ``"none"``) or a :class:`VendorStatusTable`.
    :param repoll: called once before retrying a pseudo-APDU that failed with a
        vendor tag-failure word (e.g. ``PcscConnection.reconnect``); None retries
        without re-polling.
    """

    def __init__(
        self,
        connection: Connection,
        reader: str | VendorStatusTable = "none",
        repoll: Callable[[], None] | None = None,
    ) -> None:
        self.connection = connection
        if isinstance(reader, str):
            try:
                reader = VENDOR_TABLES[reader]
            except KeyError:
                raise ValueError(f"unknown reader family {reader!r}; known: {sorted(VENDOR_TABLES)}") from None
        self.table = reader
        self._repoll = repoll
        self.commands_sent = 0
        """Number of APDUs sent on this channel (benchmarks count card commands with it)."""
        self._warned_traffic = False

    def _raw(self, command: CommandApdu) -> ResponseApdu:
        apdu = command.encode()
        if not self._warned_traffic and logger.isEnabledFor(TRAFFIC):
            self._warned_traffic = True
            logger.warning("APDU traffic logging is on: the log may contain secrets (passwords, UIDs, records)")
        logger.log(TRAFFIC, "SEND: %s", apdu.hex())
        self.commands_sent += 1
        data, sw = self.connection.send_and_receive(apdu)
        logger.log(TRAFFIC, "RECV: %s %04X", data.hex(), sw)
        return ResponseApdu(bytes(data), sw)

    def _iso(self, command: CommandApdu) -> ResponseApdu:
        """One command with the ISO ``6Cxx`` resend and ``61xx`` GET RESPONSE loop."""
        resp = self._raw(command)
        if resp.sw1 == SW.WRONG_LE_SW1:
            resp = self._raw(command.with_le(resp.sw2 or MAX_SHORT_LE))
            if resp.sw1 == SW.WRONG_LE_SW1:
                raise ApduError(resp.data, resp.sw, "second 6Cxx after resending with the corrected Le")
        data = resp.data
        for _ in range(MAX_GET_RESPONSE):
            if resp.sw1 != SW.BYTES_REMAINING_SW1:
                return ResponseApdu(data, resp.sw)
            get_response = CommandApdu(command.cla, 0xC0, 0x00, 0x00, le=resp.sw2 or MAX_SHORT_LE)
            resp = self._raw(get_response)
            data += resp.data
        raise ApduError(data, resp.sw, f"more than {MAX_GET_RESPONSE} chained GET RESPONSEs")

    def exchange(self, command: CommandApdu) -> ResponseApdu:
        """Send *command* and return the final response, whatever its status word.

        Applies 6Cxx/61xx handling and, for ``FF``-class pseudo-APDUs, the
        reader's vendor table (retry once after re-poll on a tag-failure word).

        :raises cardlib.transport.TagLost: a pseudo-APDU failed twice with a vendor tag-failure word.
        :raises cardlib.transport.TransportError: (subclasses) from the connection.
        """
        resp = self._iso(command)
        if command.cla != CLA_PSEUDO or resp.sw not in self.table.tag_failure:
            return resp
        logger.debug("reader %s: %s on %02X %02X, re-polling once",
                     self.table.name, sw_name(resp.sw), command.cla, command.ins)
        if self._repoll is not None:
            self._repoll()
        resp = self._iso(command)
        if resp.sw in self.table.tag_failure:
            who = "" if self.table is GENERIC_TABLE else f"reader {self.table.name}: "  # "none": no vendor family
            raise TagLost(f"{who}tag lost (SW {resp.sw:04X} twice, after one re-poll)")
        return resp

    def send(self, command: CommandApdu) -> bytes:
        """Send *command* and return its response data on success.

        Success is ``90 00``; for the reader's control pseudo-APDUs (LED/buzzer)
        any ``90 xx``.

        :raises ApduError: any other status word (carries data and SW).
        :raises cardlib.transport.TransportError: (subclasses) from the connection or :meth:`exchange`.
        """
        resp = self.exchange(command)
        if resp.sw == SW.OK:
            return resp.data
        if resp.sw1 == AcsSW.LED_STATE_SW1 and self.table.is_control(command):
            return resp.data
        raise ApduError(resp.data, resp.sw)
