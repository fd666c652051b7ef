"""A virtual NFC Forum Type 4 tag: an ISO/IEC 7816-4 NDEF application behind vpcd or nfcpy's UDP link.

The card (:class:`Type4Card`) answers APDUs itself, as an ISO-DEP card does
behind a PC/SC contactless reader: SELECT (``A4``, by name and by file id),
READ BINARY (``B0``) and UPDATE BINARY (``D6``) on two transparent EFs, the
capability container E103h and the NDEF file (NFC Forum Type 4 Tag Operation
2.0 §5; mapping 3.0's ENDEF File Control TLV 06h and 4-byte ENLEN when the
file is larger than FFFEh bytes). The CC bytes are packed here from the
specification's table, independently of :mod:`cardlib.type4.cc`.

Status words (ISO/IEC 7816-4 §5.6): ``6A82`` unknown AID / file, ``6A86``
wrong P1-P2 (and a refused SELECT P2 when :attr:`Type4Options.select_p2` is
set), ``6700`` a length the card refuses (Le above MLe, Lc above MLc, any
extended-length APDU when :attr:`Type4Options.extended` is False), ``6282``
end of file before Le bytes, ``6B00`` offset past the file, ``6A84`` update
past the file, ``6982`` write to the CC or to a read-only NDEF file, ``6986``
READ/UPDATE without a selected EF, ``6D00`` unknown INS, ``6E00`` other CLA.

Front ends:

- :class:`simulator.vpcd.VpcdCard` with ``frontend=card``: the card answers the
  APDUs pcscd passes on (no PC/SC Part 3 storage-card pseudo-APDUs; only
  ``FF CA`` GET DATA, which a contactless reader answers with the UID itself).
  ATR per PC/SC Part 3 §3.1.3.2.3.1 for an ISO/IEC 14443-4 card: ``3B 80 80 01 01``.
- :class:`Type4UdpPeer`: ISO/IEC 14443-3 type A activation with SAK 20h (ISO-DEP),
  RATS/ATS and the ISO/IEC 14443-4 block protocol (:class:`IsoDepPicc`) for
  nfcpy's ``udp:`` driver. ``python -m simulator.type4 --card FILE`` serves a
  card file in its own process (:class:`Type4PeerProcess`).

Cards persist as ``huma-sim-type4/1`` JSON files (:meth:`Type4Card.save`).
Not for production: the UDP peer binds 127.0.0.1 only.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cardlib.apdu import split_response
from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved as TransportCardRemoved
from simulator.chip import CASCADE_TAG
from simulator.errors import CardFileError, ChipLeftField
from simulator.nfc_udp import NVB_SDD, NVB_SELECT, SAK_CASCADE, NfcUdpPeer, RfCommand, UdpPeerProcess, serve_card_file

__all__ = [
    "ATR",
    "CARD_FILE_FORMAT",
    "IsoDepPicc",
    "Type4Card",
    "Type4Connection",
    "Type4Options",
    "Type4PeerProcess",
    "Type4UdpPeer",
]

log = logging.getLogger(__name__)

#: Format marker of a virtual Type 4 card file.
CARD_FILE_FORMAT: Final = "huma-sim-type4/1"
#: PC/SC Part 3 §3.1.3.2.3.1 ATR of an ISO/IEC 14443-4 card without historical bytes.
ATR: Final = bytes.fromhex("3B80800101")
AID_V2: Final = bytes.fromhex("D2760000850101")
AID_V1: Final = bytes.fromhex("D2760000850100")
CC_FILE_ID: Final = 0xE103
#: SENS_RES (ATQA) of a 7-byte-UID ISO-DEP card, LSB first on air (0x0344, as MIFARE DESFire).
SENS_RES: Final = bytes((0x44, 0x03))
#: SAK of the complete UID with bit 6 set: ISO/IEC 14443-4 compliant (ISO/IEC 14443-3 §6.5.3.4).
SAK_ISO_DEP: Final = 0x20
#: RATS command byte (ISO/IEC 14443-4 §5.6.1).
RATS: Final = 0xE0
#: ATS: TL=05, T0=78 (TA, TB, TC present; FSCI 8 = 256 bytes), TA=80, TB=A0 (FWI 10 ≈ 302 ms, SFGI 0),
#: TC=00 (no CID, no NAD). ISO/IEC 14443-4 §5.2.
ATS: Final = bytes.fromhex("057880A000")
#: FSDI -> FSD in bytes (ISO/IEC 14443-4 §5.1, Table 1).
FSD_TABLE: Final = (16, 24, 32, 40, 48, 64, 96, 128, 256)
_MAX_FILE_TLV04 = 0xFFFE


class Sw(enum.IntEnum):
    """Status words the virtual card answers (ISO/IEC 7816-4 §5.6)."""

    OK = 0x9000
    END_OF_FILE = 0x6282
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982
    NO_CURRENT_EF = 0x6986
    NOT_ENOUGH_MEMORY = 0x6A84
    FILE_NOT_FOUND = 0x6A82
    INCORRECT_P1P2 = 0x6A86
    FUNCTION_NOT_SUPPORTED = 0x6A81
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


@dataclass(frozen=True)
class Type4Options:
    """How the virtual tag is built and which field differences it shows.

    :ivar version: CC mapping version byte: 0x10 (answers only the mapping-1.0 AID), 0x20, 0x30.
    :ivar mle: MLe in the CC; READ BINARY with a larger Le gets 6700.
    :ivar mlc: MLc in the CC; UPDATE BINARY with more data gets 6700.
    :ivar file_id: NDEF file identifier.
    :ivar max_size: NDEF file size in bytes (length field included); above FFFEh needs version 0x30.
    :ivar writable: CC write access 00h (True) or FFh.
    :ivar extended: accept extended-length APDUs (else 6700).
    :ivar select_p2: when set (0x00 or 0x0C), SELECT with any other P2 gets 6A86 (a tag quirk).
    :ivar cc_size: NDEF file size the CC declares when it differs from the real one (a mis-personalised tag).
    """

    version: int = 0x20
    mle: int = 0x00FF
    mlc: int = 0x00FF
    file_id: int = 0xE104
    max_size: int = 0x0800
    writable: bool = True
    extended: bool = False
    select_p2: int | None = None
    cc_size: int | None = None

    def __post_init__(self) -> None:
        if self.version >> 4 not in (1, 2, 3):
            raise ValueError(f"mapping version {self.version:#x} is not 1.x, 2.x or 3.x")
        if self.max_size > _MAX_FILE_TLV04 and self.version >> 4 < 3:
            raise ValueError("an NDEF file above FFFEh bytes needs mapping version 3.0 (ENDEF TLV)")
        if not 5 <= self.max_size <= 0x10000 * 4:
            raise ValueError("NDEF file size must be 5..262144 bytes here")

    @property
    def endef(self) -> bool:
        """True when the CC carries the ENDEF File Control TLV 06h (4-byte ENLEN)."""
        return self.max_size > _MAX_FILE_TLV04

    @property
    def nlen_size(self) -> int:
        """Bytes of NLEN (2) or ENLEN (4)."""
        return 4 if self.endef else 2

    def cc_bytes(self) -> bytes:
        """The CC file: CCLEN, version, MLe, MLc, NDEF (04h) or ENDEF (06h) File Control TLV (T4T 2.0 §5.1)."""
        declared = self.max_size if self.cc_size is None else self.cc_size
        if self.endef:
            tlv = bytes((0x06, 0x08)) + self.file_id.to_bytes(2, "big") + declared.to_bytes(4, "big")
        else:
            tlv = bytes((0x04, 0x06)) + self.file_id.to_bytes(2, "big") + declared.to_bytes(2, "big")
        tlv += bytes((0x00, 0x00 if self.writable else 0xFF))
        body = bytes((self.version,)) + self.mle.to_bytes(2, "big") + self.mlc.to_bytes(2, "big") + tlv
        return (len(body) + 2).to_bytes(2, "big") + body


@dataclass(frozen=True)
class _Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None
    extended: bool


def _parse_apdu(apdu: bytes) -> _Apdu | None:
    """Split a short or extended command APDU (ISO/IEC 7816-4 §5.1); None when malformed."""
    if len(apdu) < 4:
        return None
    cla, ins, p1, p2 = apdu[:4]
    body = apdu[4:]
    if not body:
        return _Apdu(cla, ins, p1, p2, b"", None, False)
    if len(body) == 1:
        return _Apdu(cla, ins, p1, p2, b"", body[0] or 256, False)
    if body[0] == 0 and len(body) >= 3:
        n = int.from_bytes(body[1:3], "big")
        if len(body) == 3:
            return _Apdu(cla, ins, p1, p2, b"", n or 0x10000, True)
        if n and len(body) == 3 + n:
            return _Apdu(cla, ins, p1, p2, bytes(body[3:]), None, True)
        if n and len(body) == 5 + n:
            return _Apdu(cla, ins, p1, p2, bytes(body[3 : 3 + n]), int.from_bytes(body[-2:], "big") or 0x10000, True)
        return None
    lc = body[0]
    if lc and len(body) == 1 + lc:
        return _Apdu(cla, ins, p1, p2, bytes(body[1:]), None, False)
    if lc and len(body) == 2 + lc:
        return _Apdu(cla, ins, p1, p2, bytes(body[1:-1]), body[-1] or 256, False)
    return None


class Type4Card:
    """One Type 4 tag: an NDEF Tag Application with a CC file and an NDEF file.

    Also the :class:`simulator.vpcd.CardFrontend` for vpcd (it answers APDUs itself).
    Not thread-safe: one front end owns it.

    :param uid: 7-byte UID (anticollision and ``FF CA`` GET DATA).
    :param options: CC values and quirks.
    :param ndef_file: the NDEF file's bytes (``options.max_size`` long); None = NLEN 0 and zeros.
    :param path: card file backing the card (for :meth:`save` without argument).
    :ivar apdus: command APDUs answered, in order (tests assert the traffic).
    """

    def __init__(self, uid: bytes, options: Type4Options | None = None, *, ndef_file: bytes | None = None,
                 path: Path | str | None = None) -> None:
        if len(uid) != 7:
            raise ValueError(f"UID is 7 bytes here, got {len(uid)}")
        self.uid = bytes(uid)
        self.options = options or Type4Options()
        size = self.options.max_size
        self._ndef = bytearray(ndef_file if ndef_file is not None else bytes(size))
        if len(self._ndef) != size:
            raise ValueError(f"NDEF file is {size} bytes, got {len(self._ndef)}")
        self._cc = self.options.cc_bytes()
        self.path: Path | None = Path(path) if path is not None else None
        self.dirty = False
        self._removed = False
        self._field = False
        self._app = False
        self._ef: int | None = None
        self.apdus: list[bytes] = []

    # ------------------------------------------------------------------ factory, files

    @classmethod
    def blank(cls, uid: bytes | None = None, options: Type4Options | None = None) -> Type4Card:
        """A formatted tag with an empty NDEF message (NLEN 0); a random NXP-like UID when *uid* is None."""
        return cls(uid if uid is not None else b"\x04" + secrets.token_bytes(6), options)

    @property
    def message(self) -> bytes:
        """The NDEF message the file holds now (NLEN/ENLEN bytes after the length field)."""
        n = self.options.nlen_size
        nlen = int.from_bytes(self._ndef[:n], "big")
        return bytes(self._ndef[n : n + nlen])

    @message.setter
    def message(self, value: bytes) -> None:
        n = self.options.nlen_size
        if n + len(value) > len(self._ndef):
            raise ValueError(f"message of {len(value)} bytes does not fit the {len(self._ndef)}-byte file")
        self._ndef[:n] = len(value).to_bytes(n, "big")
        self._ndef[n : n + len(value)] = value
        self.dirty = True

    @property
    def ndef_file(self) -> bytes:
        """A copy of the whole NDEF file."""
        return bytes(self._ndef)

    def poke(self, offset: int, data: bytes) -> None:
        """Set NDEF file bytes bypassing every rule (tests: a damaged NLEN)."""
        self._ndef[offset : offset + len(data)] = data
        self.dirty = True

    def save(self, path: Path | str | None = None, *, durable: bool = True) -> Path:
        """Write the card to a ``huma-sim-type4/1`` JSON file atomically (fsync first when *durable*).

        :raises CardFileError: no path known, or the file cannot be written.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise CardFileError("<memory>", "no file to save the card to")
        doc = {"format": CARD_FILE_FORMAT, "uid": self.uid.hex(), "options": asdict(self.options),
               "ndef_file": self._ndef.hex()}
        data = (json.dumps(doc, indent=1) + "\n").encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise CardFileError(target, exc.strerror or str(exc)) from exc
        if self.path is None:
            self.path = target
        self.dirty = False
        return target

    @classmethod
    def load(cls, path: Path | str) -> Type4Card:
        """Read a card file written by :meth:`save`.

        :raises CardFileError: missing file, bad JSON, wrong format marker or inconsistent content.
        """
        p = Path(path)
        try:
            doc: dict[str, Any] = json.loads(p.read_text())
        except OSError as exc:
            raise CardFileError(p, exc.strerror or str(exc)) from exc
        except ValueError as exc:
            raise CardFileError(p, f"not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != CARD_FILE_FORMAT:
            raise CardFileError(p, f"not a {CARD_FILE_FORMAT} card file")
        try:
            options = Type4Options(**doc["options"])
            return cls(bytes.fromhex(doc["uid"]), options, ndef_file=bytes.fromhex(doc["ndef_file"]), path=p)
        except (KeyError, TypeError, ValueError) as exc:
            raise CardFileError(p, f"bad content: {exc}") from exc

    # ------------------------------------------------------------------ presence (vpcd / UDP front ends)

    @property
    def removed(self) -> bool:
        """True once the card has left the field."""
        return self._removed

    def remove(self) -> None:
        """Take the card out of the field: later APDUs raise :class:`ChipLeftField`."""
        self._removed = True
        self.field_off()

    def field_off(self) -> None:
        """Power down: the application and EF selections are lost."""
        self._field = False
        self._app = False
        self._ef = None

    @property
    def atr(self) -> bytes:
        """The PC/SC ATR of this ISO-DEP card (``3B 80 80 01 01``)."""
        return ATR

    def power_on(self) -> None:
        """Field on (vpcd power-on/reset, or ISO-DEP activation): nothing selected.

        :raises ChipLeftField: the card has left the field.
        """
        if self._removed:
            raise ChipLeftField("the card has left the field")
        self.field_off()
        self._field = True

    def power_off(self) -> None:
        """Field off."""
        self.field_off()

    # ------------------------------------------------------------------ APDUs

    def transmit(self, apdu: bytes) -> bytes:
        """Answer one command APDU with ``data || SW1 SW2``.

        :raises ChipLeftField: the card has left the field.
        """
        if self._removed:
            raise ChipLeftField("the card has left the field")
        apdu = bytes(apdu)
        self.apdus.append(apdu)
        resp = self._dispatch(apdu)
        log.log(5, "type4 %s -> %s (APDU traffic may contain secrets)", apdu.hex(), resp.hex())
        return resp

    def _dispatch(self, raw: bytes) -> bytes:
        cmd = _parse_apdu(raw)
        if cmd is None:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.extended and not self.options.extended:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.cla == 0xFF and cmd.ins == 0xCA and not cmd.extended:
            return self._get_data(cmd)
        if cmd.cla != 0x00:
            return _sw(Sw.CLA_NOT_SUPPORTED)
        if cmd.ins == 0xA4:
            return self._select(cmd)
        if cmd.ins == 0xB0:
            return self._read_binary(cmd)
        if cmd.ins == 0xD6:
            return self._update_binary(cmd)
        return _sw(Sw.INS_NOT_SUPPORTED)

    def _get_data(self, cmd: _Apdu) -> bytes:
        """``FF CA 00 00 Le``: the UID, as a PC/SC contactless reader answers for any card (PC/SC Part 3 §3.2.2.1.3)."""
        if (cmd.p1, cmd.p2) != (0x00, 0x00):
            return _sw(Sw.FUNCTION_NOT_SUPPORTED)
        return self.uid + _sw(Sw.OK)

    def _select(self, cmd: _Apdu) -> bytes:
        if cmd.p2 not in (0x00, 0x0C):
            return _sw(Sw.INCORRECT_P1P2)
        if self.options.select_p2 is not None and cmd.p2 != self.options.select_p2:
            return _sw(Sw.INCORRECT_P1P2)
        if cmd.p1 == 0x04:
            wanted = AID_V1 if self.options.version >> 4 == 1 else AID_V2
            if cmd.data != wanted:
                return _sw(Sw.FILE_NOT_FOUND)
            self._app = True
            self._ef = None
            return _sw(Sw.OK)
        if cmd.p1 == 0x00:
            if len(cmd.data) != 2:
                return _sw(Sw.WRONG_LENGTH)
            fid = int.from_bytes(cmd.data, "big")
            if not self._app or fid not in (CC_FILE_ID, self.options.file_id):
                return _sw(Sw.FILE_NOT_FOUND)
            self._ef = fid
            return _sw(Sw.OK)
        return _sw(Sw.INCORRECT_P1P2)

    def _current(self) -> bytes | bytearray | None:
        if self._ef == CC_FILE_ID:
            return self._cc
        if self._ef == self.options.file_id:
            return self._ndef
        return None

    def _read_binary(self, cmd: _Apdu) -> bytes:
        ef = self._current()
        if ef is None:
            return _sw(Sw.NO_CURRENT_EF)
        if cmd.p1 & 0x80:
            return _sw(Sw.INCORRECT_P1P2)  # short EF identifier addressing: not offered
        if cmd.le is None or cmd.data:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.le > self.options.mle:
            return _sw(Sw.WRONG_LENGTH)
        offset = cmd.p1 << 8 | cmd.p2
        if offset >= len(ef):
            return _sw(Sw.WRONG_P1P2)
        data = bytes(ef[offset : offset + cmd.le])
        return data + _sw(Sw.OK if len(data) == cmd.le else Sw.END_OF_FILE)

    def _update_binary(self, cmd: _Apdu) -> bytes:
        if self._ef is None:
            return _sw(Sw.NO_CURRENT_EF)
        if self._ef == CC_FILE_ID or not self.options.writable:
            return _sw(Sw.SECURITY_NOT_SATISFIED)
        if cmd.p1 & 0x80:
            return _sw(Sw.INCORRECT_P1P2)
        if not cmd.data or cmd.le is not None or len(cmd.data) > self.options.mlc:
            return _sw(Sw.WRONG_LENGTH)
        offset = cmd.p1 << 8 | cmd.p2
        if offset >= len(self._ndef):
            return _sw(Sw.WRONG_P1P2)
        if offset + len(cmd.data) > len(self._ndef):
            return _sw(Sw.NOT_ENOUGH_MEMORY)
        self._ndef[offset : offset + len(cmd.data)] = cmd.data
        self.dirty = True
        return _sw(Sw.OK)

    def __repr__(self) -> str:
        version = self.options.version
        return f"<Type4Card uid={self.uid.hex().upper()} mapping={version >> 4}.{version & 15}>"


class Type4Connection(Connection):
    """A :class:`~cardlib.transport.Connection` straight into a :class:`Type4Card` (no pcscd, no RF).

    The APDU path a PC/SC reader gives an ISO-DEP card, in-process, for fast tests. The card
    leaving the field becomes the transport's :class:`~cardlib.transport.errors.CardRemoved`.

    :param card: the card; powered on here, off at :meth:`close`.
    """

    def __init__(self, card: Type4Card) -> None:
        self.card = card
        card.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """:raises cardlib.transport.errors.CardRemoved: the virtual card left the field."""
        try:
            raw = self.card.transmit(apdu)
        except ChipLeftField as exc:
            raise TransportCardRemoved(f"virtual card left the field: {exc}") from exc
        return split_response(raw)

    def close(self) -> None:
        self.card.power_off()

    @property
    def reader_name(self) -> str:
        return "type4 emulator"

    @property
    def atr(self) -> bytes:
        return self.card.atr


class IsoDepCard(Protocol):
    """What :class:`IsoDepPicc` and :class:`Type4UdpPeer` need of a card: a :class:`Type4Card`, or the
    secure card application (:class:`simulator.secure_card.SecureCard`) behind the same ISO-DEP front end."""

    @property
    def uid(self) -> bytes: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def removed(self) -> bool: ...
    @property
    def dirty(self) -> bool: ...
    def transmit(self, apdu: bytes) -> bytes: ...
    def power_on(self) -> None: ...
    def field_off(self) -> None: ...
    def save(self, path: Path | str | None = None, *, durable: bool = True) -> Path: ...


class IsoDepPicc:
    """The card side of the ISO/IEC 14443-4 half-duplex block protocol (ISO-DEP) around a :class:`Type4Card`.

    Handles RATS/ATS (§5.6), I-blocks with chaining both ways (§7.1.2, §7.5.2), R(ACK)/R(NAK)
    (rules 11-13 of §7.5.4) and S(DESELECT) (§8). No CID, no NAD (ATS TC=00), no WTX.

    :param card: the card answering the APDUs.
    :ivar deselected: True after S(DESELECT): the card waits for a new activation.
    """

    def __init__(self, card: IsoDepCard) -> None:
        self.card = card
        self.active = False
        self.deselected = False
        self._fsd = FSD_TABLE[0]
        self._bn = 1
        self._command = bytearray()
        self._pending = b""
        self._last = b""

    def rats(self, frame: bytes) -> bytes:
        """Answer RATS ``E0 <FSDI|CID>`` with the ATS; the card's block number starts at 1."""
        fsdi = min(frame[1] >> 4, len(FSD_TABLE) - 1) if len(frame) > 1 else 0
        self._fsd = FSD_TABLE[fsdi]
        self._bn = 1
        self._command.clear()
        self._pending = b""
        self.active = True
        self.deselected = False
        self.card.power_on()
        return ATS

    def _send(self, block: bytes) -> bytes:
        self._last = block
        return block

    def _next_chunk(self) -> bytes:
        room = self._fsd - 3  # PCB + CRC_A, as nfcpy counts
        chunk, self._pending = self._pending[:room], self._pending[room:]
        pcb = 0x02 | self._bn | (0x10 if self._pending else 0x00)
        return self._send(bytes((pcb,)) + chunk)

    def block(self, frame: bytes) -> bytes | None:
        """Answer one ISO-DEP block; None for silence (a protocol error the PCD must time out on)."""
        if not frame:
            return None
        pcb = frame[0]
        if pcb & 0xE2 == 0x02 and not pcb & 0x0C:  # I-block without CID/NAD
            self._bn = pcb & 1  # rule D: toggle (the PCD's number is the one after ours)
            self._command += frame[1:]
            if pcb & 0x10:
                return self._send(bytes((0xA2 | self._bn,)))  # R(ACK): more command to come
            command, self._command = bytes(self._command), bytearray()
            self._pending = self.card.transmit(command)
            return self._next_chunk()
        if pcb & 0xE6 == 0xA2:  # R-block
            if pcb & 1 == self._bn:
                return self._last  # rule 11: retransmit the last block
            if pcb & 0x10:  # R(NAK) with the other number: rule 12
                return self._send(bytes((0xA2 | self._bn,)))
            if self._pending:  # R(ACK) continuing our chaining: rule 13
                self._bn ^= 1
                return self._next_chunk()
            return None
        if pcb == 0xC2:  # S(DESELECT)
            self.active = False
            self.deselected = True
            self.card.field_off()
            return bytes((0xC2,))
        return None


class Type4UdpPeer(NfcUdpPeer):
    """A :class:`Type4Card` as an ISO-DEP type A target (Type 4A) in front of nfcpy's ``udp:`` driver.

    ISO/IEC 14443-3 activation as :class:`NfcUdpPeer` does for a Type 2 tag, but the
    complete UID's SAK is 20h (ISO-DEP); then RATS/ATS and ISO-DEP blocks
    (:class:`IsoDepPicc`). ``RFOFF`` powers the card down and saves its file.

    :param card: the card in the field, or None.
    :param port: UDP port on 127.0.0.1; 0 picks a free one.
    :param persist: save the card to its file after each change and at field off.
    """

    def __init__(self, card: IsoDepCard | None, port: int = 0, *, persist: bool = True) -> None:
        super().__init__(None, port, persist=persist)
        self._card = card
        self._picc = IsoDepPicc(card) if card is not None else None
        self._t4_phase = "idle"

    @property
    def card(self) -> IsoDepCard | None:
        """The Type 4 card in the field, if any."""
        return self._card

    def place_card(self, card: IsoDepCard) -> None:
        """Put a card in the field (it answers the next REQA)."""
        with self._lock:
            self._card = card
            self._picc = IsoDepPicc(card)
            self._t4_phase = "idle"

    def remove(self) -> None:
        """Take the card out of the field (saved first); the peer goes silent."""
        with self._lock:
            if self._card is not None:
                self._card.field_off()
                self._save()
            self._card = None
            self._picc = None
            self._t4_phase = "idle"

    def rf_off(self) -> None:
        """The reader switched its field off: the card powers down and its file is saved."""
        with self._lock:
            if self._card is not None:
                self._card.field_off()
                self._save()
            self._t4_phase = "idle"

    def _save(self) -> None:
        card = self._card
        if self.persist and card is not None and card.path is not None and card.dirty:
            card.save(durable=False)

    def _handle(self, frame: bytes) -> bytes | None:
        card, picc = self._card, self._picc
        if card is None or picc is None or card.removed or not frame:
            return None
        uid = card.uid
        cl1 = bytes((CASCADE_TAG,)) + uid[0:3]
        cl1 += bytes((cl1[0] ^ cl1[1] ^ cl1[2] ^ cl1[3],))
        cl2 = uid[3:7] + bytes((uid[3] ^ uid[4] ^ uid[5] ^ uid[6],))
        phase = self._t4_phase
        if len(frame) == 1 and frame[0] in (RfCommand.REQA, RfCommand.WUPA):
            self._t4_phase = "ready1"
            return SENS_RES
        if phase == "ready1" and frame[0] == RfCommand.SEL_CL1:
            if frame[1:] == bytes((NVB_SDD,)):
                return cl1
            if frame[1:] == bytes((NVB_SELECT,)) + cl1:
                self._t4_phase = "ready2"
                return bytes((SAK_CASCADE,))
        elif phase == "ready2" and frame[0] == RfCommand.SEL_CL2:
            if frame[1:] == bytes((NVB_SDD,)):
                return cl2
            if frame[1:] == bytes((NVB_SELECT,)) + cl2:
                self._t4_phase = "active"
                self.activations += 1
                return bytes((SAK_ISO_DEP,))
        elif phase == "active" and frame[0] == RATS:
            self._t4_phase = "protocol"
            return picc.rats(frame)
        elif phase == "active" and frame == bytes((RfCommand.HLTA, 0x00)):
            self._t4_phase = "idle"
            return None
        elif phase == "protocol":
            self.commands += 1
            try:
                answer = picc.block(frame)
            except ChipLeftField:
                self._t4_phase = "idle"
                self._save()
                return None
            if picc.deselected:
                self._t4_phase = "idle"
            self._save()
            return answer
        self._t4_phase = "idle"
        return None


class Type4PeerProcess(UdpPeerProcess):
    """:class:`Type4UdpPeer` in its own process on a ``huma-sim-type4/1`` card file (nfcpy's 30 ms RATS timeout)."""

    module = "simulator.type4"


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.type4 --card FILE [--port N]``: serve one Type 4 card file until SIGTERM.

    Prints ``READY <port>`` on stdout once listening.
    """
    return serve_card_file(argv, description="Virtual Type 4 tag for nfcpy's udp: driver (127.0.0.1 only)",
                           card_help=f"virtual card file ({CARD_FILE_FORMAT})",
                           make_peer=lambda card, port: Type4UdpPeer(Type4Card.load(card), port))


if __name__ == "__main__":
    sys.exit(main())
