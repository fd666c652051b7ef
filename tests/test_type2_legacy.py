"""Older Type 2 chips (NTAG203, MIFARE Ultralight): no GET_VERSION, no FAST_READ (issue 16).

cardlib.type2.tag must fall back to what the chip answers: GET_VERSION refused (NTAG203 NAKs it,
an Ultralight stays silent) -> the chip is not an NTAG21x, so it is read with 16-byte READs bounded
by the capability container; FAST_READ refused by a chip that did answer GET_VERSION -> READ from
then on. In-process through the reader emulator (ACR122U and PC/SC Part 3 pass-through, nfcpy's
UDP link), as a byte transcript, and once through pcscd.
"""

from __future__ import annotations

from collections.abc import Callable

import ndef
import pytest

from cardlib.transport import Connection
from cardlib.transport.nfcpy import NfcpyReader
from cardlib.type2 import ChipType, Type2Tag
from cardlib.type2.channel import Acr122uChannel, Part3Channel
from simulator.chip import ChipVariant, Nak, Ntag21x
from simulator.nfc_udp import NfcUdpPeer
from simulator.reader import EmulatorConnection, ReaderEmulator

UID = bytes.fromhex("04A1B2C3D4E5F6")
MESSAGE = b"".join(ndef.message_encoder([ndef.TextRecord("Kartu lama " * 3, "id")]))
FAST_READ_APDU_MARK = bytes.fromhex("D4423A")  # InCommunicateThru + FAST_READ


def _channel(kind: str, chip: Ntag21x) -> tuple[Acr122uChannel | Part3Channel, EmulatorConnection]:
    conn = EmulatorConnection(ReaderEmulator(chip, kind))
    channel = Acr122uChannel(conn) if kind == "acr122u" else Part3Channel(conn)
    return channel, conn


@pytest.mark.parametrize("kind", ["acr122u", "part3"])
@pytest.mark.parametrize(("variant", "user_bytes"), [(ChipVariant.NTAG203, 144), (ChipVariant.MF0ICU1, 48)])
def test_old_chip_is_read_and_written_with_read_only(kind: str, variant: ChipVariant, user_bytes: int) -> None:
    chip = Ntag21x.blank(variant, UID)
    channel, conn = _channel(kind, chip)
    tag = Type2Tag(channel, atr=conn.atr)
    info = tag.identify()
    assert info.chip is ChipType.UNKNOWN and info.source in ("cc", "atr+cc")
    area = tag.write_ndef(MESSAGE)
    assert area.data_area_size == user_bytes
    channel2, conn2 = _channel(kind, chip)
    assert Type2Tag(channel2, atr=conn2.atr).read_ndef().message == MESSAGE
    if kind == "acr122u":
        assert not any(FAST_READ_APDU_MARK in apdu for apdu in conn.apdus + conn2.apdus)


def test_ultralight_message_too_large_for_48_bytes_is_refused() -> None:
    from cardlib.type2 import CapacityExceeded

    chip = Ntag21x.blank(ChipVariant.MF0ICU1, UID)
    channel, conn = _channel("acr122u", chip)
    with pytest.raises(CapacityExceeded):
        Type2Tag(channel, atr=conn.atr).write_ndef(bytes(60))


class _NoFastRead(Ntag21x):
    """A chip answering GET_VERSION as an NTAG215 but NAKing FAST_READ (seen on some clones)."""

    def _fast_read(self, frame: bytes) -> bytes:
        return self._nak(Nak.INVALID_ARGUMENT, "no FAST_READ on this chip")


def test_fast_read_refused_falls_back_to_read() -> None:
    chip = _NoFastRead(ChipVariant.NTAG215, UID)
    channel, conn = _channel("acr122u", chip)
    tag = Type2Tag(channel, atr=conn.atr)
    assert tag.identify().chip is ChipType.NTAG215
    tag.write_ndef(MESSAGE * 4)
    fast_reads = sum(FAST_READ_APDU_MARK in apdu for apdu in conn.apdus)
    assert fast_reads == 1  # tried once, then READs only
    channel2, conn2 = _channel("acr122u", chip)
    assert Type2Tag(channel2, atr=conn2.atr).read_ndef().message == MESSAGE * 4


class Transcript(Connection):
    """Answers ``(command hex, response hex)`` pairs in order; fails on any other APDU."""

    def __init__(self, exchanges: list[tuple[str, str]]) -> None:
        self.exchanges = [(c.replace(" ", "").upper(), r.replace(" ", "").upper()) for c, r in exchanges]
        self.pos = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        assert self.pos < len(self.exchanges), f"unexpected APDU {apdu.hex()}"
        want, answer = self.exchanges[self.pos]
        assert apdu.hex().upper() == want, f"APDU #{self.pos + 1}: sent {apdu.hex().upper()}, expected {want}"
        self.pos += 1
        raw = bytes.fromhex(answer)
        return raw[:-2], int.from_bytes(raw[-2:], "big")

    def close(self) -> None:
        pass

    @property
    def reader_name(self) -> str:
        return "transcript"


def test_ntag203_transcript_through_acr122u() -> None:
    """GET_VERSION NAK 0 -> re-select -> READ 2 (lock bytes, CC 12h = 144 bytes, NDEF TLV) -> READ 6 ... READ only."""
    cc_page = "E1101200"
    # pages 2-5: BCC1 (04) 48 00 00 | CC | 03 0B D1 01 | 07 54 02 69 ; then the record goes on in pages 6-8
    tlv = bytes.fromhex("030BD1010754026964") + b"lama" + bytes.fromhex("FE")
    image = bytes.fromhex("04480000") + bytes.fromhex(cc_page) + tlv + bytes(32 - 4 - 4 - len(tlv))
    link = Transcript([
        ("FF00000003 D44260", "D543 00 00 9000"),  # GET_VERSION -> a 4-bit NAK 0h
        ("FF00000004 D44A0100", "D54B 01 01 0044 00 07 04A1B2C3D4E5F6 9000"),  # re-select after the NAK
        ("FF00000004 D4423002", "D543 00" + image[0:16].hex() + "9000"),  # READ page 2
        ("FF00000004 D4423006", "D543 00" + image[16:32].hex() + "9000"),  # READ page 6
    ])
    tag = Type2Tag(Acr122uChannel(link))
    area = tag.read_ndef()
    assert area.message == bytes.fromhex("D1010754026964") + b"lama"
    assert area.data_area_size == 144 and tag.chip.chip is ChipType.UNKNOWN
    assert link.pos == len(link.exchanges)


def test_ntag203_through_nfcpy_udp() -> None:
    chip = Ntag21x.blank(ChipVariant.NTAG203, UID)
    with NfcUdpPeer(chip, persist=False) as peer, NfcpyReader(peer.path) as reader:
        with reader.connect() as channel:
            Type2Tag(channel).write_ndef(MESSAGE)
        with reader.connect() as channel:
            assert Type2Tag(channel).read_ndef().message == MESSAGE


@pytest.mark.pcsc
def test_ntag203_through_pcscd(present_card: Callable, reader_name: Callable[[int], str]) -> None:
    from cardlib.transport.pcsc import connect

    chip = Ntag21x.blank(ChipVariant.NTAG203, UID)
    with present_card(chip, kind="acr122u"), connect(reader_name(0)) as conn:
        tag = Type2Tag(Acr122uChannel(conn), atr=conn.atr)
        tag.write_ndef(MESSAGE)
        assert Type2Tag(Acr122uChannel(conn), atr=conn.atr).read_ndef().message == MESSAGE
    assert b"Kartu lama" in chip.memory
