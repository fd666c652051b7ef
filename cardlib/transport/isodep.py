"""ISO/IEC 14443-4 (ISO-DEP) on the reader's side: RATS/ATS and the half-duplex block protocol.

Pure protocol code over a frame-exchange function, so a reader stack that
only carries raw frames (nfcpy's drivers, :mod:`cardlib.transport.nfcpy`) can
give an ISO-DEP card (an NFC Forum Type 4A tag) the same APDU
:class:`~cardlib.transport.Connection` a PC/SC reader gives.

Implemented (ISO/IEC 14443-4:2018): RATS with FSDI and CID 0 (§5.6.1), the
ATS's FSCI and FWI (§5.2.3-5.2.5), I-blocks with chaining in both directions
(§7.1.2, §7.5.2), R(ACK)/R(NAK) with the PCD rules 1-7 of §7.5.4 (one R(NAK)
retry on a time-out, re-transmission on an R(ACK) with the other block number),
S(WTX) (§7.3) and S(DESELECT) (§8). Not implemented: CID and NAD (never sent),
PPS (§5.6.3: the link stays at 106 kbps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cardlib.transport.errors import SessionLost, TagMute

logger = logging.getLogger(__name__)

#: FSDI/FSCI -> frame size in bytes (ISO/IEC 14443-4 §5.2.3, Table 1); 9..F are RFU (treated as 256).
FRAME_SIZES: Final = (16, 24, 32, 40, 48, 64, 96, 128, 256)
#: Carrier frequency fc in Hz; FWT = 256 * 16 / fc * 2^FWI (§7.2).
FC_HZ: Final = 13.56e6
#: ΔFWT added to every block wait (§7.2: 49152 / fc at most).
DELTA_FWT_S: Final = 49152 / FC_HZ
#: FWI and FSCI when the ATS omits TB / T0 (§5.2.3, §5.2.5).
DEFAULT_FWI: Final = 4
DEFAULT_FSCI: Final = 2
#: RATS start byte (§5.6.1).
RATS: Final = 0xE0
#: Bytes of a block besides its information field: PCB and CRC_A.
BLOCK_OVERHEAD: Final = 3
#: How many times a time-out or a transmission error is answered with R(NAK) before giving up (§7.5.4 rule 4).
MAX_RETRIES: Final = 2

_PCB_I = 0x02
_PCB_CHAINING = 0x10
_PCB_R_ACK = 0xA2
_PCB_R_NAK = 0xB2
_PCB_S_DESELECT = 0xC2
_PCB_S_WTX = 0xF2
_WTXM_MASK = 0x3F

#: A frame exchange: ``(frame, timeout in seconds) -> answer frame``; raises :class:`TagMute` on silence.
Exchange = Callable[[bytes, float], bytes]


class IsoDepProtocolError(SessionLost):
    """The card broke the ISO-DEP block protocol (wrong block type or number): the session is unusable."""


@dataclass(frozen=True)
class Ats:
    """What the ATS tells the reader (ISO/IEC 14443-4 §5.2).

    :ivar raw: the ATS bytes, TL first.
    :ivar fsc: largest frame the card accepts, bytes.
    :ivar fwi: frame waiting time integer (0..14).
    :ivar historical: historical bytes.
    """

    raw: bytes
    fsc: int
    fwi: int
    historical: bytes

    @property
    def fwt_s(self) -> float:
        """Frame waiting time in seconds (§7.2)."""
        return 256 * 16 / FC_HZ * (1 << self.fwi)

    @classmethod
    def parse(cls, raw: bytes) -> Ats:
        """Parse an ATS; RFU values are read as the largest allowed (FSCI 8, FWI 4 as the default).

        :raises IsoDepProtocolError: TL does not match the length, or interface bytes are missing.
        """
        raw = bytes(raw)
        if not raw or raw[0] != len(raw):
            raise IsoDepProtocolError(f"ATS {raw.hex()} has a length byte that does not match its length")
        fsci, fwi, pos = DEFAULT_FSCI, DEFAULT_FWI, 2
        if len(raw) > 1:
            t0 = raw[1]
            fsci = t0 & 0x0F
            present = [t0 & 0x10, t0 & 0x20, t0 & 0x40]  # TA, TB, TC
            if pos + sum(1 for p in present if p) > len(raw):
                raise IsoDepProtocolError(f"ATS {raw.hex()} is shorter than its T0 announces")
            if present[0]:
                pos += 1
            if present[1]:
                fwi = raw[pos] >> 4
                pos += 1
            if present[2]:
                pos += 1
        fwi = DEFAULT_FWI if fwi > 14 else fwi
        fsc = FRAME_SIZES[min(fsci, len(FRAME_SIZES) - 1)]
        return cls(raw, fsc, fwi, raw[pos:])


def rats_command(fsd: int) -> bytes:
    """RATS ``E0 <FSDI<<4 | CID 0>`` announcing the largest FSD in :data:`FRAME_SIZES` not above *fsd*."""
    fsdi = max(i for i, size in enumerate(FRAME_SIZES) if size <= max(fsd, FRAME_SIZES[0]))
    return bytes((RATS, fsdi << 4))


class IsoDepLink:
    """The reader's side of the block protocol with one activated card.

    :param exchange: sends one frame and returns the card's answer frame.
    :param ats: the card's ATS (frame size and waiting time).
    :param max_send: largest frame the reader itself sends, bytes (the smaller of it and FSC is used).
    :param min_timeout_s: floor for every block wait, seconds (the reader stack's own latency).
    """

    def __init__(self, exchange: Exchange, ats: Ats, max_send: int = 256, min_timeout_s: float = 0.0) -> None:
        self._exchange = exchange
        self.ats = ats
        self.miu = min(ats.fsc, max_send) - BLOCK_OVERHEAD
        self.timeout_s = max(ats.fwt_s + DELTA_FWT_S, min_timeout_s)
        self._pni = 0

    def _block(self, frame: bytes) -> bytes:
        """Send *frame*, answering S(WTX) requests, with R(NAK) retries on silence (rule 4)."""
        send = frame
        for attempt in range(MAX_RETRIES + 1):
            try:
                answer = self._exchange(send, self.timeout_s)
            except TagMute:
                if attempt == MAX_RETRIES:
                    raise
                logger.debug("ISO-DEP: no answer, sending R(NAK) (attempt %d)", attempt + 1)
                send = bytes((_PCB_R_NAK | self._pni,))
                continue
            while answer and answer[0] & 0xF7 == _PCB_S_WTX:
                wtxm = answer[1] & _WTXM_MASK if len(answer) > 1 else 1
                answer = self._exchange(bytes((_PCB_S_WTX, wtxm)), self.timeout_s * max(wtxm, 1))
            if not answer:
                raise IsoDepProtocolError("empty ISO-DEP block")
            if answer[0] & 0xE6 == _PCB_R_ACK and answer[0] & 1 != self._pni and send is not frame:
                send = frame  # rule 6: our I-block was lost, the card acknowledged the previous one
                continue
            return answer
        raise TagMute("ISO-DEP: no answer after R(NAK) retries")

    def transceive(self, apdu: bytes) -> bytes:
        """Send one APDU in I-blocks (chained when above the frame size) and return the whole response.

        :raises TagMute: the card stopped answering (after R(NAK) retries).
        :raises IsoDepProtocolError: a block of the wrong type or number.
        :raises cardlib.transport.TransportError: from the exchange function.
        """
        offset = 0
        while True:
            chunk = apdu[offset : offset + self.miu]
            offset += len(chunk)
            more = offset < len(apdu)
            answer = self._block(bytes((_PCB_I | self._pni | (_PCB_CHAINING if more else 0),)) + chunk)
            if more:
                if answer[0] & 0xF6 != _PCB_R_ACK or answer[0] & 1 != self._pni:
                    raise IsoDepProtocolError(f"expected R(ACK) {self._pni} while chaining, got {answer[:1].hex()}")
                self._pni ^= 1
                continue
            break
        out = bytearray()
        while True:
            if answer[0] & 0xE2 != _PCB_I or answer[0] & 1 != self._pni:
                raise IsoDepProtocolError(f"expected I-block {self._pni}, got PCB {answer[0]:02X}")
            self._pni ^= 1
            out += answer[1:]
            if not answer[0] & _PCB_CHAINING:
                return bytes(out)
            answer = self._block(bytes((_PCB_R_ACK | self._pni,)))

    def deselect(self) -> None:
        """S(DESELECT) (§8): the card goes to HALT; errors are ignored (the card may already be gone)."""
        try:
            self._exchange(bytes((_PCB_S_DESELECT,)), self.timeout_s)
        except SessionLost as exc:
            logger.debug("S(DESELECT) unanswered: %s", exc)


__all__ = ["Ats", "IsoDepLink", "IsoDepProtocolError", "rats_command"]
