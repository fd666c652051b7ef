"""ISO/IEC 14443-4 on the reader's side (cardlib.transport.isodep): block transcripts, then against the virtual PICC."""

from __future__ import annotations

import pytest

from cardlib.apdu import split_response
from cardlib.transport import Connection
from cardlib.transport.errors import TagMute
from cardlib.transport.isodep import Ats, IsoDepLink, IsoDepProtocolError, rats_command
from cardlib.type4 import Type4Tag
from simulator.type4 import IsoDepPicc, Type4Card, Type4Options


class Blocks:
    """Frame exchange from a list of ``(frame hex, answer hex or None for silence)``, failing on anything else."""

    def __init__(self, exchanges: list[tuple[str, str | None]]) -> None:
        self.exchanges = exchanges
        self.pos = 0

    def __call__(self, frame: bytes, timeout: float) -> bytes:
        want, answer = self.exchanges[self.pos]
        assert frame.hex().upper() == want.replace(" ", "").upper(), f"block #{self.pos + 1}"
        self.pos += 1
        if answer is None:
            raise TagMute("silence")
        return bytes.fromhex(answer)


ATS_32 = Ats.parse(bytes.fromhex("05 72 80 40 00"))  # FSCI 2: 32 bytes, FWI 4


def test_ats_and_rats() -> None:
    ats = Ats.parse(bytes.fromhex("0578 80A0 00"))
    assert (ats.fsc, ats.fwi, ats.historical) == (256, 10, b"")
    assert Ats.parse(bytes.fromhex("01")).fsc == 32  # T0 absent: FSCI 2
    assert Ats.parse(bytes.fromhex("06 75 77 81 02 80")).historical == bytes.fromhex("80")
    assert rats_command(256) == bytes.fromhex("E080") and rats_command(64) == bytes.fromhex("E050")
    with pytest.raises(IsoDepProtocolError):
        Ats.parse(bytes.fromhex("0578"))


def test_i_blocks_toggle_and_chain_both_ways() -> None:
    apdu = bytes(40)
    link = IsoDepLink(Blocks([
        ("12" + "00" * 29, "A2"),  # I(0) chaining, 29 bytes -> R(ACK 0)
        ("03" + "00" * 11, "12 AABB"),  # I(1) last -> the card answers with block number 0: wrong
    ]), ATS_32)
    with pytest.raises(IsoDepProtocolError):  # the card's I-block must carry the PCD's number (1)
        link.transceive(apdu)
    link = IsoDepLink(Blocks([
        ("12" + "00" * 29, "A2"),
        ("03" + "00" * 11, "13 AABB"),  # I(1) chaining from the card
        ("A2", "02 CC 9000"),  # R(ACK 0) -> I(0) last
    ]), ATS_32)
    assert link.transceive(apdu) == bytes.fromhex("AABBCC9000")


def test_timeout_is_answered_with_r_nak_then_the_block_is_retransmitted() -> None:
    link = IsoDepLink(Blocks([
        ("02 00B0000002", None),  # silence
        ("B2", "A3"),  # R(NAK 0) -> R(ACK 1): the card never got our I(0) (rule 12)
        ("02 00B0000002", "02 0000 9000"),  # rule 6: retransmit
    ]), ATS_32)
    assert link.transceive(bytes.fromhex("00B0000002")) == bytes.fromhex("00009000")


def test_wtx_is_granted() -> None:
    link = IsoDepLink(Blocks([("02 00B0000002", "F2 02"), ("F2 02", "02 9000")]), ATS_32)
    assert link.transceive(bytes.fromhex("00B0000002")) == bytes.fromhex("9000")


def test_persistent_silence_is_tag_mute() -> None:
    link = IsoDepLink(Blocks([("02 00", None), ("B2", None), ("B2", None)]), ATS_32)
    with pytest.raises(TagMute):
        link.transceive(b"\x00")


class _LinkConnection(Connection):
    def __init__(self, link: IsoDepLink) -> None:
        self.link = link

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return split_response(self.link.transceive(apdu))

    def close(self) -> None:
        pass

    @property
    def reader_name(self) -> str:
        return "iso-dep"


def test_type4_tag_through_small_frames_against_the_virtual_picc() -> None:
    """FSD = FSC = 32: every APDU of a 600-byte NDEF update and read is chained."""
    card = Type4Card.blank(bytes(7), Type4Options(mle=0xFF, mlc=0xFF))
    picc = IsoDepPicc(card)
    ats = Ats.parse(picc.rats(rats_command(32)))
    link = IsoDepLink(lambda frame, timeout: picc.block(frame) or b"", Ats(ats.raw, 32, ats.fwi, b""), max_send=32)
    tag = Type4Tag(_LinkConnection(link))
    tag.write_ndef(bytes(range(200)) * 3)
    assert card.message == bytes(range(200)) * 3
