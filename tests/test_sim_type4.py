"""The virtual Type 4 tag (simulator.type4) read and written by cardlib, nfcpy's own tt4, and through pcscd.

Three stacks on one card model:

- in-process: :class:`cardlib.type4.Type4Tag` over :class:`simulator.type4.Type4Connection`
  (the quirks: mapping 1.0/2.0/3.0, extended refused, one SELECT P2 only, a CC file size below NLEN);
- nfcpy's UDP link: nfcpy's *own* ``nfc.tag.tt4`` reader (an independent implementation of
  T4T 2.0) reads what cardlib wrote, and cardlib reads through nfcpy's ISO-DEP activation;
- real pcscd + vpcd (marked ``pcsc``): the card answers the APDUs pcscd passes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ndef
import nfc
import nfc.clf
import nfc.tag
import pytest

from cardlib.transport.errors import CardRemoved
from cardlib.transport.nfcpy import NfcpyReader, UnsupportedTarget
from cardlib.type4 import (
    SHORT_ONLY,
    NdefAid,
    NlenOutOfRange,
    NoNdefApplication,
    ReadOnly,
    Type4Tag,
)
from simulator.errors import CardFileError
from simulator.harness import PcscdHarness, reader_name
from simulator.type4 import (
    ATS,
    IsoDepPicc,
    Type4Card,
    Type4Connection,
    Type4Options,
    Type4PeerProcess,
    Type4UdpPeer,
)
from simulator.vpcd import VpcdCard
from tests.fixtures.pcsc import wait_for_card

UID = bytes.fromhex("04112233445566")


def _message(*records: ndef.Record) -> bytes:
    return b"".join(ndef.message_encoder(list(records)))


TEXT = _message(ndef.TextRecord("Kartu Huma Betang", "id"), ndef.UriRecord("https://kalteng.go.id"))
LONG = _message(ndef.TextRecord("x" * 700, "id"))


def _tag(card: Type4Card, **kwargs: object) -> Type4Tag:
    return Type4Tag(Type4Connection(card), **kwargs)  # type: ignore[arg-type]  # keyword options


# ---------------------------------------------------------------------- in-process


@pytest.mark.parametrize("version", [0x10, 0x20, 0x30])
def test_write_then_read_every_mapping_version(version: int) -> None:
    card = Type4Card.blank(UID, Type4Options(version=version))
    _tag(card).write_ndef(TEXT)
    assert card.message == TEXT
    ndef_file = _tag(card).read_ndef()
    assert ndef_file.message == TEXT
    assert ndef_file.aid == (NdefAid.V1.value if version == 0x10 else NdefAid.V2.value)


def test_mapping_3_0_large_file_uses_a_4_byte_enlen() -> None:
    card = Type4Card.blank(UID, Type4Options(version=0x30, max_size=0x10400, extended=True, mle=0x0400,
                                             mlc=0x0400))
    tag = _tag(card)
    tag.write_ndef(LONG)
    assert card.ndef_file[:4] == len(LONG).to_bytes(4, "big")
    assert _tag(card).read_ndef().cc.nlen_size == 4


def test_extended_apdus_when_the_card_takes_them() -> None:
    card = Type4Card.blank(UID, Type4Options(extended=True, mle=0x0400, mlc=0x0400))
    tag = _tag(card)
    tag.write_ndef(LONG, verify=False)
    assert _tag(card).read_ndef().message == LONG
    assert any(len(apdu) > 300 for apdu in card.apdus)  # one extended UPDATE BINARY carried the message
    reader = _tag(card)
    reader.read_ndef()
    assert reader.extended


def test_extended_refused_falls_back_to_short_apdus() -> None:
    card = Type4Card.blank(UID, Type4Options(extended=False, mle=0x0400, mlc=0x0400))
    tag = _tag(card)
    tag.write_ndef(LONG)
    assert not tag.extended
    assert _tag(card).read_ndef().message == LONG
    assert _tag(card, limits=SHORT_ONLY).read_ndef().message == LONG


@pytest.mark.parametrize("p2", [0x00, 0x0C])
def test_a_card_taking_one_select_p2_only(p2: int) -> None:
    card = Type4Card.blank(UID, Type4Options(select_p2=p2))
    _tag(card).write_ndef(TEXT)
    assert _tag(card).read_ndef().message == TEXT
    assert all(apdu[3] == p2 for apdu in card.apdus[-4:] if apdu[1] == 0xA4)


def test_cc_file_size_smaller_than_nlen_strict_and_tolerant() -> None:
    card = Type4Card.blank(UID, Type4Options(max_size=0x0200, cc_size=0x0020))
    card.message = TEXT  # the file holds it, but the CC says 32 bytes
    with pytest.raises(NlenOutOfRange):
        _tag(card).read_ndef()
    assert _tag(card, strict=False).read_ndef().message == TEXT


def test_read_only_card() -> None:
    card = Type4Card.blank(UID, Type4Options(writable=False))
    card.message = TEXT
    with pytest.raises(ReadOnly):
        _tag(card).write_ndef(b"")
    assert _tag(card).read_ndef().message == TEXT


def test_a_card_without_the_ndef_application_is_no_ndef() -> None:
    class NotNdef(Type4Card):
        def _select(self, cmd):  # type: ignore[no-untyped-def]  # a card with another application only
            return bytes.fromhex("6A82")

    with pytest.raises(NoNdefApplication):
        _tag(NotNdef(UID)).read_ndef()


def test_card_removed_is_the_transports_card_removed() -> None:
    card = Type4Card.blank(UID)
    tag = _tag(card)
    card.remove()
    with pytest.raises(CardRemoved):
        tag.read_ndef()


def test_card_file_round_trip(tmp_path: Path) -> None:
    card = Type4Card.blank(UID, Type4Options(version=0x30, select_p2=0x00))
    card.message = TEXT
    path = card.save(tmp_path / "t4.json")
    back = Type4Card.load(path)
    assert (back.uid, back.options, back.message) == (UID, card.options, TEXT)
    (tmp_path / "bad.json").write_text('{"format": "huma-sim-ntag21x/1"}')
    with pytest.raises(CardFileError):
        Type4Card.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------- ISO-DEP block transcript


def test_iso_dep_picc_chains_both_ways() -> None:
    """ISO/IEC 14443-4: RATS/ATS, a chained command (R(ACK) in between) and a chained response."""
    card = Type4Card.blank(UID)
    card.message = bytes(range(250))
    picc = IsoDepPicc(card)
    assert picc.rats(bytes.fromhex("E020")) == ATS  # FSDI 2: FSD 32, 29 information bytes per block
    select_app = bytes.fromhex("00A4040007D276000085010100")
    assert picc.block(b"\x02" + select_app) == bytes.fromhex("029000")
    assert picc.block(bytes.fromhex("0300A4000C02E104")) == bytes.fromhex("039000")
    # a 40-byte UPDATE BINARY in two blocks: I(0, chaining) -> R(ACK 0), I(1) -> I(1) 9000
    update = bytes.fromhex("00D6000221") + bytes(range(0x21))
    assert picc.block(b"\x12" + update[:29]) == bytes.fromhex("A2")
    assert picc.block(b"\x03" + update[29:]) == bytes.fromhex("039000")
    # READ BINARY 40 bytes: answered in I(0, chaining) 29 bytes, then I(1) with the rest after R(ACK 1)
    first = picc.block(bytes.fromhex("0200B0000228"))
    assert first is not None and first[0] == 0x12 and len(first) == 30
    rest = picc.block(bytes.fromhex("A3"))
    assert rest is not None and rest[0] == 0x03 and first[1:] + rest[1:] == bytes(range(0x21)) + bytes(
        range(0x21, 0x28)) + b"\x90\x00"
    assert picc.block(bytes.fromhex("A3")) == rest  # R(ACK) with our number: the last block again (rule 11)
    assert picc.block(bytes.fromhex("B2")) == bytes.fromhex("A3")  # R(NAK) other number: R(ACK) (rule 12)
    assert picc.block(bytes.fromhex("C2")) == bytes.fromhex("C2") and picc.deselected


# ---------------------------------------------------------------------- nfcpy's UDP link


@pytest.fixture
def card_file(tmp_path: Path) -> Path:
    card = Type4Card.blank(UID, Type4Options(mle=0x0080, mlc=0x0040))
    return card.save(tmp_path / "t4.json")


def test_nfcpy_own_tt4_reads_what_cardlib_wrote(card_file: Path) -> None:
    """Independent check: nfcpy's Type4Tag (its own T4T 2.0 reading) decodes the message cardlib wrote."""
    with Type4PeerProcess(card_file) as peer:
        with NfcpyReader(peer.path) as reader, reader.connect_iso_dep() as conn:
            assert conn.uid == UID and conn.ats == ATS
            Type4Tag(conn).write_ndef(LONG)

        clf = nfc.ContactlessFrontend(peer.path)
        try:
            target = clf.sense(nfc.clf.RemoteTarget("106A"))
            tag = nfc.tag.activate(clf, target)
            assert type(tag).__name__ == "Type4ATag"
            assert tag.ndef is not None
            assert tag.ndef.octets == LONG
            assert tag.ndef.records[0].text == "x" * 700
            tag.ndef.records = [ndef.TextRecord("ditulis oleh nfcpy", "id")]  # nfcpy's own update
        finally:
            clf.close()

        with NfcpyReader(peer.path) as reader, reader.connect_iso_dep() as conn:
            message = Type4Tag(conn).read_ndef().message
    assert next(iter(ndef.message_decoder(message))).text == "ditulis oleh nfcpy"
    assert Type4Card.load(card_file).message == message  # the child process saved the card


def test_nfcpy_type2_connect_refuses_an_iso_dep_card_and_the_reverse() -> None:
    with Type4UdpPeer(Type4Card.blank(UID), persist=False) as peer, NfcpyReader(peer.path) as reader:
        with pytest.raises(UnsupportedTarget, match="not a Type 2 tag"):
            reader.poll()
        with reader.connect_iso_dep() as conn:
            assert Type4Tag(conn).read_ndef().message == b""


# ---------------------------------------------------------------------- pcscd + vpcd


@contextlib.contextmanager
def _on_reader(harness: PcscdHarness, card: Type4Card, slot: int = 0) -> Iterator[VpcdCard]:
    removals = harness.removal_events(slot)
    vcard = VpcdCard(card, harness.port(slot), frontend=card)
    vcard.start()
    try:
        vcard.wait_connected()
        wait_for_card(reader_name(slot), present=True)
        yield vcard
    finally:
        vcard.stop()
        wait_for_card(reader_name(slot), present=False)
        harness.wait_removal_seen(slot, removals)


@pytest.mark.pcsc
@pytest.mark.parametrize("extended", [True, False], ids=["extended", "short-fallback"])
def test_cardlib_reads_and_writes_the_type4_card_through_pcscd(pcscd_service: PcscdHarness, tmp_path: Path,
                                                                extended: bool) -> None:
    from cardlib.transport.pcsc import connect

    path = Type4Card.blank(UID, Type4Options(mle=0x0400, mlc=0x0400, extended=extended)).save(tmp_path / "t4.json")
    card = Type4Card.load(path)
    with _on_reader(pcscd_service, card) as vcard:
        with connect(reader_name(0)) as conn:
            assert conn.atr == bytes.fromhex("3B80800101")
            tag = Type4Tag(conn)
            tag.write_ndef(LONG)
            assert tag.extended is extended  # pcscd and vpcd carry extended APDUs; the card decides
            assert Type4Tag(conn).read_ndef().message == LONG
        assert vcard.apdus == len(card.apdus) > 0
    extended_apdus = sum(len(apdu) >= 7 and apdu[4] == 0 for apdu in card.apdus)  # Lc/Le as 00 xx xx
    # UPDATE + 2 READs; without: the refused UPDATE and the second session's refused READ (one try per session)
    assert extended_apdus == (3 if extended else 2)
    assert Type4Card.load(path).message == LONG  # persisted by the vpcd card
