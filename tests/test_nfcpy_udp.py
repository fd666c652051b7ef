"""nfcpy over UDP: nfcpy's own stack (unchanged) and our Type2Tag on the same virtual card file."""

from __future__ import annotations

from pathlib import Path

import ndef
import nfc
import nfc.clf
import nfc.tag
import pytest

from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from simulator.nfc_udp import NfcUdpPeer, UdpPeerProcess
from cardlib.transport.errors import CardRemoved, NoCard, ReaderNotFound, SessionLost
from cardlib.transport.nfcpy import NfcpyReader
from cardlib.type2 import Nak, Type2Tag
from firmware_config.loader import find_reader_profile

UID = bytes.fromhex("04A1B2C3D4E5F6")
BCC0 = 0x88 ^ 0x04 ^ 0xA1 ^ 0xB2
BCC1 = 0xC3 ^ 0xD4 ^ 0xE5 ^ 0xF6


def _encode(*records: ndef.Record) -> bytes:
    return b"".join(ndef.message_encoder(list(records)))


@pytest.fixture
def card_file(tmp_path: Path) -> Path:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    return chip.save(tmp_path / "card.json")


def test_peer_answers_iso14443a_activation_then_chip_commands() -> None:
    """Transcript of one activation and three tag commands, every byte asserted."""
    peer = NfcUdpPeer(Ntag21x.blank(ChipVariant.NTAG215, UID), persist=False)
    try:
        transcript = [
            ("26", "4400"),  # REQA -> ATQA 0x0044, LSB first
            ("9320", f"88{UID[:3].hex()}{BCC0:02x}"),  # SDD CL1: cascade tag + UID0..2 + BCC0
            (f"937088{UID[:3].hex()}{BCC0:02x}", "04"),  # SEL CL1 -> SAK cascade
            ("9520", f"{UID[3:].hex()}{BCC1:02x}"),  # SDD CL2
            (f"9570{UID[3:].hex()}{BCC1:02x}", "00"),  # SEL CL2 -> SAK 00: Type 2 tag
            ("60", "0004040201001103"),  # GET_VERSION: NTAG215
            ("3003", "e1103e00" "0300fe00" + "00" * 8),  # READ page 3: CC + empty NDEF TLV 03 00 FE
            ("a20403010000", "0a"),  # WRITE page 4 -> 4-bit ACK
        ]
        for command, answer in transcript:
            assert peer.handle(bytes.fromhex(command)) == bytes.fromhex(answer), command
        assert peer.handle(bytes.fromhex("1a00")) is None  # Ultralight-C probe: silence, chip IDLE
        assert peer.handle(bytes.fromhex("3004")) is None  # IDLE until re-selected
        assert peer.activations == 1
    finally:
        peer.stop()


def test_nfcpy_own_ndef_reads_what_type2tag_wrote_and_back(card_file: Path) -> None:
    """Same card file, two stacks: our Type2Tag over the nfcpy channel, then nfcpy's tag.ndef."""
    ours = _encode(ndef.TextRecord("Kartu Huma Betang " * 12, "id"), ndef.UriRecord("https://kalteng.go.id"))
    with UdpPeerProcess(card_file) as peer, NfcpyReader(peer.path) as reader:
        with reader.connect() as channel:
            assert channel.uid == UID
            Type2Tag(channel).write_ndef(ours)

        clf = nfc.ContactlessFrontend(peer.path)
        try:
            target = clf.sense(nfc.clf.RemoteTarget("106A"))
            tag = nfc.tag.activate(clf, target)
            assert str(tag).startswith("Type2Tag 'NXP NTAG215'")
            assert tag.ndef is not None
            assert tag.ndef.octets == ours
            assert tag.ndef.records[0].text.startswith("Kartu Huma Betang")
            tag.ndef.records = [ndef.TextRecord("ditulis oleh nfcpy", "id")]  # nfcpy writes
        finally:
            clf.close()

        with reader.connect() as channel:
            area = Type2Tag(channel).read_ndef()
            assert list(ndef.message_decoder(area.message))[0].text == "ditulis oleh nfcpy"
    saved = Ntag21x.load(card_file)  # the child process saved every write
    assert b"ditulis oleh nfcpy" in saved.memory


def test_full_ndef_read_takes_three_commands(card_file: Path) -> None:
    """GET_VERSION + two FAST_READs of 72 pages (max_frame 288 B) read a whole NTAG215 message."""
    profile = find_reader_profile("nfcpy-udp-sim")
    message = _encode(ndef.TextRecord("x" * 400))
    with UdpPeerProcess(card_file) as peer:
        reader = NfcpyReader(peer.path, profile.capabilities(), name_pattern=profile.name_pattern)
        with reader:
            with reader.connect() as channel:
                Type2Tag(channel).write_ndef(message, verify=False)
            with reader.connect() as channel:
                assert Type2Tag(channel).read_ndef().message == message
                assert channel.commands == 3


def test_profile_name_pattern_guards_the_device(card_file: Path) -> None:
    with UdpPeerProcess(card_file) as peer:
        with pytest.raises(ReaderNotFound, match="does not match"):
            NfcpyReader(peer.path, name_pattern=r"\bPN532v\d").open()


def test_empty_field_is_no_card() -> None:
    with NfcUdpPeer(None) as peer, NfcpyReader(peer.path) as reader:
        assert reader.poll() is None
        with pytest.raises(NoCard):
            reader.connect(timeout=0.0)


def test_nak_raises_and_the_channel_reselects_the_idle_chip() -> None:
    """A NAK drops the chip to IDLE (datasheet §9.1); the channel re-selects it before raising Nak."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    with NfcUdpPeer(chip, persist=False) as peer, NfcpyReader(peer.path) as reader:
        with reader.connect() as channel:
            activations = peer.activations
            with pytest.raises(Nak) as info:
                channel.read16(0xF0)  # beyond the last page (0x86): NAK 0x0
            assert info.value.code == 0x0
            assert peer.activations == activations + 1  # exactly one REQA..SELECT CL2 after the NAK
            assert channel.read16(0)[:3] == UID[:3]


def test_nak_leaves_the_chip_mute_until_reactivated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the channel's re-select, the next command meets an IDLE chip: a typed SessionLost (TagMute)."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    with NfcUdpPeer(chip, persist=False) as peer, NfcpyReader(peer.path) as reader:
        with reader.connect() as channel:
            with monkeypatch.context() as patch:
                patch.setattr(channel, "reactivate", lambda: None)  # suppress only the automatic re-select
                with pytest.raises(Nak):
                    channel.read16(0xF0)
                assert chip.halted
                with pytest.raises(SessionLost):
                    channel.read16(4)  # the chip stays silent in IDLE: nfcpy times out
            activations = peer.activations
            channel.reactivate()
            assert peer.activations == activations + 1
            assert channel.read16(0)[:3] == UID[:3]


def test_nfc_counter_counts_rf_sessions_through_the_peer() -> None:
    """READ_CNT rises once per RF session: the channel's close() switches the field off (RFOFF)."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    cfg1 = chip.layout.cfg1_page
    chip.poke(cfg1, bytes((0x10,)) + chip.page(cfg1)[1:])  # ACCESS.NFC_CNT_EN
    with NfcUdpPeer(chip, persist=False) as peer, NfcpyReader(peer.path) as reader:
        counts = []
        for _ in range(3):
            with reader.connect() as channel:
                tag = Type2Tag(channel)
                tag.read_pages(4, 4)
                tag.read_pages(8, 4)
                counts.append(tag.read_counter())
    assert counts == [1, 2, 3]


def test_card_pulled_mid_write_is_session_lost_and_the_file_shows_the_tear(tmp_path: Path) -> None:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    path = chip.save(tmp_path / "torn.json")
    chip = Ntag21x.load(path)
    with NfcUdpPeer(chip) as peer, NfcpyReader(peer.path) as reader:
        with reader.connect() as channel:
            tag = Type2Tag(channel)
            tag.identify()
            chip.arm(FaultPlan(remove_after_write_bytes=8))  # two pages, then gone
            with pytest.raises(SessionLost):
                tag.write_pages(10, bytes(range(16)))
        assert reader.poll() is None  # the card left the field
    saved = Ntag21x.load(path)
    assert saved.page(10) == bytes(range(4)) and saved.page(11) == bytes(range(4, 8))
    assert saved.page(12) == bytes(4)  # never written
    assert isinstance(SessionLost("x"), Exception) and issubclass(CardRemoved, SessionLost)
