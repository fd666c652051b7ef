"""A contactless PC/SC reader with a virtual NTAG on it: APDUs in, R-APDUs out.

Pure (no sockets, no threads): :class:`ReaderEmulator` turns the APDUs a host
sends through PC/SC into chip commands on a :class:`~simulator.chip.Ntag21x`
and builds the R-APDU (data + SW1 SW2) a reader of the chosen kind answers.
:mod:`simulator.vpcd` puts it behind vpcd; tests may use it directly.

Kinds (:class:`ReaderKind`)
---------------------------
``acr122u``
    ACS ACR122U API v2.04: GET DATA ``FF CA 00 00 00`` (§4.1), READ BINARY
    ``FF B0 00 pp Le`` (Le 1–16; one chip READ, §5.3), UPDATE BINARY
    ``FF D6 00 pp 04 <4 B>`` (§5.4), direct transmit ``FF 00 00 00 Lc <PN532
    frame>`` (§6.1) with ``D4 42`` InCommunicateThru → ``D5 43 <status> <data>``,
    ``D4 40 01`` InDataExchange → ``D5 41 <status> <data>``, ``D4 4A 01 00``
    InListPassiveTarget, ``D4 44 01``/``D4 52 01`` InDeselect/InRelease,
    ``D4 02`` GetFirmwareVersion; ``FF 00 48 00 00`` reader firmware version
    (ASCII, *no* status word, as the device answers, §6.3), ``FF 00 40 P2 04
    T1 T2 N link`` LED/buzzer (§6.2) → ``90 <LED state>``, ``FF 00 52 P2 00``
    buzzer on detection (§6.4) → ``90 00``. Failures of FF commands use the
    ACS status words: ``63 00`` operation failed (chip NAK), ``63 01`` tag did
    not answer, ``63 27`` checksum error (NAK 0x1).
    PN53x status byte in ``D5 43``/``D5 41``: ``00`` OK, ``01`` time-out (chip
    mute), ``02`` CRC error; a 4-bit ACK/NAK arrives as one data byte
    (``0A`` ACK, ``00/01/04/05`` NAK), as :meth:`Ntag21x.transceive` returns it.
``part3``
    PC/SC Part 3 v2.02 storage-card commands (``FF CA``, ``FF B0``, ``FF D6``,
    §3.2.2.1.3–.5) plus the transparent session (§3.2.2.1.8): ``FF C2 00 00``
    Manage Session with data objects ``81 00`` start, ``82 00`` end,
    ``83 00`` RF off, ``84 00`` RF on; ``FF C2 00 01`` Transparent Exchange
    with ``95 <len> <raw frame>`` (``90 02 ..`` transceive flags and ``5F46``
    timer accepted and ignored).  Answers are data objects
    ``C0 03 <error status> <SW1 SW2>`` (``C0 03 00 90 00`` = no error),
    ``92 01 00`` / ``97 <len> <chip answer>`` for a data answer (``92 01 04``
    + one byte for a 4-bit ACK/NAK), and ``C0 03 01 64 01`` when the chip did
    not answer; the outer SW is ``90 00``.  Storage-card failures use the
    Part 3 words ``64 00`` (no answer), ``65 81`` (memory failure, i.e. NAK).
``plain``
    Only ``FF CA``/``FF B0``/``FF D6``; no way to reach the chip directly.

Unknown ``FF`` instructions answer ``6A 81`` (function not supported); other
classes answer ``6D 00``, or — field case AP-1 — an *empty* response when
:attr:`ReaderQuirks.empty_on_unknown` is set (the real ACR122U passes the APDU
to the tag, which stays mute, and reports "ICC mute" as 0 bytes).

After a chip NAK or time-out the tag is in IDLE; the reader's polling loop
re-selects it before the next command (so PWD_AUTH state is lost, as on a real
reader).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from cardlib.apdu import split_response
from cardlib.ber import BerError, encode_object, parse_objects
from cardlib.part3 import Part3Object
from cardlib.pn53x import Pn53xCommand, Pn53xStatus, Tfi
from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved as TransportCardRemoved
from simulator.chip import ACK, Command, Nak, Ntag21x, nak_of
from simulator.errors import ChipLeftField, ChipMute

__all__ = [
    "ACR122U_FIRMWARE",
    "SW",
    "EmulatorConnection",
    "ReaderEmulator",
    "ReaderKind",
    "ReaderQuirks",
    "storage_card_atr",
]

log = logging.getLogger(__name__)

#: ``FF 00 48 00 00`` answer of the ACR122U (ASCII, no status word).
ACR122U_FIRMWARE = b"ACR122U215"
#: PN532 GetFirmwareVersion answer: IC 0x32, Ver 1, Rev 6, Support 7.
PN532_FIRMWARE = bytes((0x32, 0x01, 0x06, 0x07))
#: ATQA / SAK of NTAG21x (§8.5.1; ISO/IEC 14443-3), as InListPassiveTarget reports them.
NTAG_ATQA = bytes((0x00, 0x44))
NTAG_SAK = 0x00

CLA_PSEUDO = 0xFF
PAGE_SIZE = 4
READ_LEN = 16


class SW(enum.IntEnum):
    """Status words the emulated readers use (ISO 7816-4, PC/SC Part 3, ACR122U API)."""

    OK = 0x9000
    WARN_EOF = 0x6282  #: fewer bytes than Le (GET DATA)
    ACS_FAILED = 0x6300  #: ACR122U: operation failed
    ACS_NO_ANSWER = 0x6301  #: ACR122U: the tag did not answer
    ACS_CHECKSUM = 0x6327  #: ACR122U: checksum of the contactless response wrong
    NO_RESPONSE = 0x6401  #: PC/SC Part 3: no response from the ICC (time-out)
    EXEC_NO_INFO = 0x6400  #: PC/SC Part 3: execution error
    MEMORY_FAILURE = 0x6581  #: PC/SC Part 3: memory failure (write refused by the chip)
    WRONG_LENGTH = 0x6700
    WRONG_P1P2 = 0x6B00
    WRONG_LE = 0x6C00  #: low byte carries the right Le
    FUNC_NOT_SUPPORTED = 0x6A81
    INS_NOT_SUPPORTED = 0x6D00


class Ins(enum.IntEnum):
    """Pseudo-APDU instructions (class FF)."""

    GET_DATA = 0xCA
    READ_BINARY = 0xB0
    UPDATE_BINARY = 0xD6
    DIRECT = 0x00  #: ACR122U direct transmit / LED / firmware (P1 selects)
    ENVELOPE = 0xC2  #: PC/SC Part 3 manage session / transparent exchange


class ReaderKind(enum.Enum):
    """Which reader the emulator behaves like."""

    ACR122U = "acr122u"
    PART3 = "part3"
    PLAIN = "plain"


@dataclass
class ReaderQuirks:
    """Injectable reader oddities seen in the field.

    :ivar empty_on_unknown: a non-FF APDU the tag does not understand answers with
        :attr:`mute_answer` instead of ``6D 00`` (field case AP-1, ACR122U "ICC mute").
    :ivar mute_answer: what such an "ICC mute" transmit returns: 0 bytes as the
        ACR122U does (a vpcd card cannot send that: pcscd's SCardTransmit then
        blocks), or a 1-byte fragment to drive the same short-response path
        through real pcscd.
    """

    empty_on_unknown: bool = False
    mute_answer: bytes = b""


def storage_card_atr(standard: int = 0x03, card_name: int = 0x0003) -> bytes:
    """ATR a PC/SC Part 3 reader builds for a contactless storage card.

    ``3B 8F 80 01 80 4F 0C A0 00 00 03 06 SS C0 C1 00 00 00 00 TCK`` (PC/SC Part 3
    v2.02 §3.1.3.2.3.2): RID A0 00 00 03 06 (PC/SC), SS = 03 (ISO 14443A-3),
    card name 00 03 (MIFARE Ultralight, which ACR122U reports for NTAG21x).

    :param standard: SS byte.
    :param card_name: 2-byte card name (C0 C1).
    :returns: the 20-byte ATR with TCK = XOR of T0..last historical byte.
    """
    body = bytes((0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, standard)) + card_name.to_bytes(
        2, "big"
    ) + bytes(4)
    tck = 0
    for b in body:
        tck ^= b
    return bytes((0x3B,)) + body + bytes((tck,))


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class ReaderEmulator:
    """An ACR122U-class reader with one virtual NTAG on it.

    :param chip: the card on the reader (the emulator powers it on in :meth:`power_on`).
    :param kind: :class:`ReaderKind` or its value (``"acr122u"``, ``"part3"``, ``"plain"``).
    :param quirks: injectable oddities (:class:`ReaderQuirks`).
    """

    def __init__(
        self,
        chip: Ntag21x,
        kind: ReaderKind | str = ReaderKind.ACR122U,
        quirks: ReaderQuirks | None = None,
    ) -> None:
        self.chip = chip
        self.kind = ReaderKind(kind)
        self.quirks = quirks or ReaderQuirks()
        self.led_state = 0x00
        self._session = False

    @property
    def atr(self) -> bytes:
        """The PC/SC Part 3 storage-card ATR (20 bytes) for an NTAG on this reader."""
        return storage_card_atr()

    def power_on(self) -> None:
        """Reader field on with the card in it (vpcd power-on / reset).

        :raises ChipLeftField: if the card has left.
        """
        self.chip.field_on()
        self._session = False

    def power_off(self) -> None:
        """Reader field off: ends the chip's RF session."""
        self.chip.field_off()
        self._session = False

    # ----------------------------------------------------------------- dispatch

    def transmit(self, apdu: bytes) -> bytes:
        """Answer one command APDU.

        :param apdu: the C-APDU (CLA INS P1 P2 [Lc data] [Le]).
        :returns: the R-APDU: response data followed by SW1 SW2 (except the
            documented ACR122U quirks: firmware string without SW, AP-1 empty answer).
        :raises ChipLeftField: the card left the field (vpcd then drops the card).
        """
        apdu = bytes(apdu)
        log.log(5, "reader <- %s (APDU traffic may contain secrets)", apdu.hex())
        resp = self._dispatch(apdu)
        log.log(5, "reader -> %s", resp.hex())
        return resp

    def _dispatch(self, apdu: bytes) -> bytes:
        if self.chip.removed:
            raise ChipLeftField("the card has left the reader")
        if len(apdu) < 4:
            return _sw(SW.WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        if cla != CLA_PSEUDO:
            if self.quirks.empty_on_unknown:
                return bytes(self.quirks.mute_answer)
            return _sw(SW.INS_NOT_SUPPORTED)
        body = apdu[4:]
        if ins == Ins.GET_DATA:
            return self._get_data(p1, p2, body)
        if ins == Ins.READ_BINARY:
            return self._read_binary(p1, p2, body)
        if ins == Ins.UPDATE_BINARY:
            return self._update_binary(p1, p2, body)
        if ins == Ins.DIRECT and self.kind is ReaderKind.ACR122U:
            return self._acr_direct(p1, p2, body)
        if ins == Ins.ENVELOPE and self.kind is ReaderKind.PART3:
            return self._part3(p1, p2, body)
        return _sw(SW.FUNC_NOT_SUPPORTED)

    # ----------------------------------------------------------------- chip access

    def _chip(self, frame: bytes) -> bytes:
        """Send a frame to the chip, re-selecting it first if a NAK left it IDLE.

        :raises ChipMute: the chip did not answer.
        :raises ChipLeftField: the card left.
        """
        if self.chip.halted:
            self.chip.activate()
        return self.chip.transceive(frame)

    def _fail_sw(self, nak: Nak | None) -> int:
        if self.kind is ReaderKind.ACR122U:
            if nak is None:
                return SW.ACS_NO_ANSWER
            return SW.ACS_CHECKSUM if nak is Nak.CRC_ERROR else SW.ACS_FAILED
        return SW.NO_RESPONSE if nak is None else SW.MEMORY_FAILURE

    # ----------------------------------------------------------------- storage-card APDUs

    @staticmethod
    def _le(body: bytes) -> int | None:
        """Le of a case-2 APDU body (one byte), ``None`` when malformed."""
        if len(body) == 0:
            return 0
        if len(body) == 1:
            return body[0]
        return None

    def _get_data(self, p1: int, p2: int, body: bytes) -> bytes:
        le = self._le(body)
        if le is None:
            return _sw(SW.WRONG_LENGTH)
        if p2 != 0x00:
            return _sw(SW.WRONG_P1P2)
        if p1 == 0x01:  # ATS: a Type 2 tag has none
            return _sw(SW.FUNC_NOT_SUPPORTED)
        if p1 != 0x00:
            return _sw(SW.WRONG_P1P2)
        uid = self.chip.uid
        if le == 0 or le == len(uid):
            return uid + _sw(SW.OK)
        if le < len(uid):
            return _sw(SW.WRONG_LE | len(uid))
        return uid + _sw(SW.WARN_EOF)

    def _read_binary(self, p1: int, p2: int, body: bytes) -> bytes:
        le = self._le(body)
        if le is None:
            return _sw(SW.WRONG_LENGTH)
        if p1 != 0x00:
            return _sw(SW.WRONG_P1P2)
        if le == 0 or le > READ_LEN:
            return _sw(SW.WRONG_LE | READ_LEN)
        try:
            data = self._chip(bytes((Command.READ, p2)))
        except ChipMute:
            return _sw(self._fail_sw(None))
        nak = nak_of(data)
        if nak is not None or len(data) != READ_LEN:
            return _sw(self._fail_sw(nak))
        return data[:le] + _sw(SW.OK)

    def _update_binary(self, p1: int, p2: int, body: bytes) -> bytes:
        if p1 != 0x00:
            return _sw(SW.WRONG_P1P2)
        if len(body) != 1 + PAGE_SIZE or body[0] != PAGE_SIZE:
            return _sw(SW.ACS_FAILED if self.kind is ReaderKind.ACR122U else SW.WRONG_LENGTH)
        try:
            ans = self._chip(bytes((Command.WRITE, p2)) + body[1:])
        except ChipMute:
            return _sw(self._fail_sw(None))
        if ans != bytes((ACK,)):
            return _sw(self._fail_sw(nak_of(ans)))
        return _sw(SW.OK)

    # ----------------------------------------------------------------- ACR122U direct

    def _acr_direct(self, p1: int, p2: int, body: bytes) -> bytes:
        data = body[1:] if body else b""
        if body and body[0] != len(data):
            return _sw(SW.WRONG_LENGTH)
        if p1 == 0x00 and p2 == 0x00:
            return self._pn53x(data)
        if p1 == 0x48 and p2 == 0x00:
            return ACR122U_FIRMWARE
        if p1 == 0x40:
            return self._led(p2, data)
        if p1 == 0x52:
            return _sw(SW.OK)
        return _sw(SW.FUNC_NOT_SUPPORTED)

    def _led(self, p2: int, data: bytes) -> bytes:
        """Bi-colour LED and buzzer control (ACR122U API v2.04 §6.2).

        P2: bit0/1 final red/green state, bit2/3 red/green update mask; SW2 reports
        the LED state (bit0 red, bit1 green).
        """
        if len(data) != 4:
            return _sw(SW.ACS_FAILED)
        state = self.led_state
        if p2 & 0x04:
            state = (state & ~0x01) | (p2 & 0x01)
        if p2 & 0x08:
            state = (state & ~0x02) | (p2 & 0x02)
        self.led_state = state
        return bytes((0x90, state))

    def _pn53x(self, frame: bytes) -> bytes:
        if len(frame) < 2 or frame[0] != Tfi.HOST_TO_PN:
            return _sw(SW.ACS_FAILED)
        cmd = frame[1]
        out_cmd = bytes((Tfi.PN_TO_HOST, cmd + 1))
        if cmd == Pn53xCommand.GET_FIRMWARE_VERSION:
            return out_cmd + PN532_FIRMWARE + _sw(SW.OK)
        if cmd == Pn53xCommand.IN_COMMUNICATE_THRU:
            return out_cmd + self._thru(frame[2:]) + _sw(SW.OK)
        if cmd == Pn53xCommand.IN_DATA_EXCHANGE:
            if len(frame) < 3 or frame[2] != 0x01:
                return out_cmd + bytes((0x27,)) + _sw(SW.OK)  # 0x27: wrong target
            return out_cmd + self._thru(frame[3:]) + _sw(SW.OK)
        if cmd == Pn53xCommand.IN_LIST_PASSIVE_TARGET:
            return out_cmd + self._list_target() + _sw(SW.OK)
        if cmd in (Pn53xCommand.IN_DESELECT, Pn53xCommand.IN_RELEASE):
            self.chip.halt()
            return out_cmd + bytes((Pn53xStatus.OK,)) + _sw(SW.OK)
        return _sw(SW.ACS_FAILED)

    def _thru(self, raw: bytes) -> bytes:
        """One InCommunicateThru exchange: status byte + chip answer."""
        try:
            ans = self._chip(raw)
        except ChipMute:
            return bytes((Pn53xStatus.TIMEOUT,))
        return bytes((Pn53xStatus.OK,)) + ans

    def _list_target(self) -> bytes:
        """InListPassiveTarget 106 kbps type A: NbTg, Tg, SENS_RES, SEL_RES, NFCIDLength, NFCID."""
        try:
            self.chip.activate()
        except ChipMute:
            return bytes((0x00,))
        uid = self.chip.uid
        return bytes((0x01, 0x01)) + NTAG_ATQA + bytes((NTAG_SAK, len(uid))) + uid

    # ----------------------------------------------------------------- PC/SC Part 3 session

    def _part3(self, p1: int, p2: int, body: bytes) -> bytes:
        if p1 != 0x00 or p2 not in (0x00, 0x01):
            return _sw(SW.WRONG_P1P2)
        data = body[1:] if body else b""
        if body and body[0] != len(data):
            return _sw(SW.WRONG_LENGTH)
        try:
            objects = parse_objects(data)
        except BerError:
            return _part3_error(0x00, SW.WRONG_LENGTH)
        out = b""
        for tag, value in objects:
            if p2 == 0x00:
                if tag == Part3Object.START_SESSION:
                    self._session = True
                elif tag == Part3Object.END_SESSION:
                    self._session = False
                elif tag == Part3Object.RF_OFF:
                    self.chip.field_off()
                elif tag == Part3Object.RF_ON:
                    self.chip.field_on()
                else:
                    return _part3_error(0x01, SW.FUNC_NOT_SUPPORTED)
            else:
                if tag == Part3Object.TRANSCEIVE:
                    try:
                        out += self._part3_transceive(value)
                    except ChipMute:
                        return _part3_error(0x01, SW.NO_RESPONSE)
                elif tag in (Part3Object.TRANSCEIVE_FLAGS, Part3Object.TIMER):
                    continue
                else:
                    return _part3_error(0x01, SW.FUNC_NOT_SUPPORTED)
        return encode_object(Part3Object.GENERIC_ERROR, bytes((0x00,)) + _sw(SW.OK)) + out + _sw(SW.OK)

    def _part3_transceive(self, raw: bytes) -> bytes:
        """Transceive data object → 92 (valid bits) + 97 (ICC response).

        :raises ChipMute: no answer (the caller reports ``C0 03 01 64 01``).
        """
        ans = self._chip(raw)
        if len(ans) == 1:  # 4-bit ACK/NAK: 4 valid bits in the last byte
            return encode_object(Part3Object.VALID_BITS, bytes((0x04,))) + encode_object(Part3Object.ICC_RESPONSE, ans)
        return encode_object(Part3Object.VALID_BITS, bytes((0x00,))) + encode_object(Part3Object.ICC_RESPONSE, ans)


def _part3_error(status: int, sw: int) -> bytes:
    return encode_object(Part3Object.GENERIC_ERROR, bytes((status,)) + _sw(sw)) + _sw(SW.OK)


class EmulatorConnection(Connection):
    """A :class:`~cardlib.transport.Connection` straight into a :class:`ReaderEmulator` (no pcscd).

    The same APDU path the vpcd card serves behind pcscd, in-process: fast unit tests and
    benchmarks that must not count pcscd's polling. The chip leaving the field becomes the
    transport's :class:`~cardlib.transport.errors.CardRemoved`.

    :param reader: the emulator with the card; powered on here, off at :meth:`close`.
    :ivar apdus: every command APDU sent, in order.
    """

    def __init__(self, reader: ReaderEmulator) -> None:
        self.reader = reader
        self.apdus: list[bytes] = []
        reader.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """:raises cardlib.transport.errors.CardRemoved: the virtual card left the field."""
        self.apdus.append(bytes(apdu))
        try:
            raw = self.reader.transmit(apdu)
        except ChipLeftField as exc:
            raise TransportCardRemoved(f"virtual card left the field: {exc}") from exc
        return split_response(raw)

    def reconnect(self, unpower: bool = False) -> None:
        """Power the card down and up again (PC/SC reconnect with reset)."""
        self.reader.power_off()
        self.reader.power_on()

    def close(self) -> None:
        self.reader.power_off()

    @property
    def reader_name(self) -> str:
        return f"emulator {self.reader.kind.value}"

    @property
    def atr(self) -> bytes:
        return self.reader.atr
