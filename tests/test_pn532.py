"""PN532 over UART: the emulator's host link byte by byte, and nfcpy's pn532 driver over a pty."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import ndef
import nfc
import nfc.clf
import nfc.tag
import pytest

from simulator.chip import ChipVariant, Ntag21x, crc_a
from simulator.pn532 import ACK_FRAME, ERROR_FRAME, NACK_FRAME, Pn532Emulator, Pn532Pty, build_frame
from cardlib.transport.nfcpy import NfcpyReader
from cardlib.type2 import Type2Tag
from firmware_config.loader import find_reader_profile

UID = bytes.fromhex("04A1B2C3D4E5F6")


def host_frame(cmd: int, data: bytes = b"") -> bytes:
    """A host command frame built independently of the emulator (UM0701-02 §6.2.1.1)."""
    payload = bytes((0xD4, cmd)) + data
    assert len(payload) < 255
    return bytes((0x00, 0x00, 0xFF, len(payload), (0x100 - len(payload)) & 0xFF)) + payload + bytes(
        ((0x100 - sum(payload)) & 0xFF, 0x00)
    )


def test_get_firmware_version_is_ack_then_answer_with_checksums() -> None:
    emu = Pn532Emulator()
    out = emu.feed(bytes.fromhex("0000ff02fed4022a00"))  # nfcpy's own get_version_cmd
    assert out == ACK_FRAME + bytes.fromhex("0000ff06fad50332010607e800")


def test_frames_split_across_reads_are_reassembled() -> None:
    emu = Pn532Emulator()
    frame = host_frame(0x14, b"\x01\x00\x00")  # SAMConfiguration normal mode
    out = b"".join(emu.feed(frame[i : i + 1]) for i in range(len(frame)))
    assert out == ACK_FRAME + bytes.fromhex("0000ff02fed5151600")


def test_bad_checksums_are_dropped_without_ack() -> None:
    emu = Pn532Emulator()
    good = host_frame(0x02)
    bad_dcs = good[:-2] + bytes(((good[-2] + 1) & 0xFF, 0x00))
    bad_lcs = good[:4] + bytes(((good[4] + 1) & 0xFF,)) + good[5:]
    assert emu.feed(bad_dcs) == b""
    assert emu.feed(bad_lcs + good) .startswith(ACK_FRAME)  # resynchronises on the next frame
    assert emu.dropped == 2


def test_nack_repeats_last_answer_and_ack_aborts_silently() -> None:
    emu = Pn532Emulator()
    first = emu.feed(host_frame(0x02))
    assert emu.feed(NACK_FRAME) == first[len(ACK_FRAME) :]
    assert emu.feed(ACK_FRAME) == b""


def test_unknown_command_and_wrong_tfi_get_the_error_frame() -> None:
    emu = Pn532Emulator()
    assert emu.feed(host_frame(0x7E)) == ACK_FRAME + ERROR_FRAME
    wrong_tfi = bytes.fromhex("0000ff02fed5022900")
    assert emu.feed(wrong_tfi) == ACK_FRAME + ERROR_FRAME


def test_extended_frames_both_ways() -> None:
    """Diagnose line test with 263 bytes: extended frame in, extended frame out (§6.2.1.2)."""
    emu = Pn532Emulator()
    data = b"\x00" + bytes(i & 0xFF for i in range(262))
    payload = bytes((0xD4, 0x00)) + data
    lenm, lenl = len(payload) >> 8, len(payload) & 0xFF
    frame = bytes((0, 0, 0xFF, 0xFF, 0xFF, lenm, lenl, (-(lenm + lenl)) & 0xFF)) + payload
    frame += bytes(((-sum(payload)) & 0xFF, 0))
    out = emu.feed(frame)
    assert out == ACK_FRAME + build_frame(bytes((0xD5, 0x01)) + data)
    assert out[len(ACK_FRAME) : len(ACK_FRAME) + 5] == bytes((0, 0, 0xFF, 0xFF, 0xFF))


def test_power_down_needs_the_long_preamble_wake_up() -> None:
    emu = Pn532Emulator()
    assert emu.feed(host_frame(0x16, b"\xb0\x00")).endswith(build_frame(b"\xd5\x17\x00"))
    assert emu.asleep
    assert emu.feed(host_frame(0x02)) == b""  # lost: the HSU was asleep
    assert emu.feed(b"\x55\x55" + bytes(8) + host_frame(0x02)).startswith(ACK_FRAME)
    assert not emu.asleep


def test_in_list_passive_target_and_communicate_thru_crc_handling() -> None:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    emu = Pn532Emulator(chip, persist=False)
    out = emu.feed(host_frame(0x4A, b"\x01\x00"))
    assert out == ACK_FRAME + build_frame(bytes.fromhex("d54b01010044000704a1b2c3d4e5f6"))
    # RxCRCEn on: answer without CRC_A
    assert emu.feed(host_frame(0x42, b"\x60")) == ACK_FRAME + build_frame(bytes.fromhex("d5430000040402010011 03".replace(" ", "")))
    # nfcpy clears RxCRCEn for Type 2 tags to see the 4-bit ACK: now the CRC bytes come along
    emu.feed(host_frame(0x08, bytes.fromhex("630300")))
    version = bytes.fromhex("0004040201001103")
    assert emu.feed(host_frame(0x42, b"\x60")) == ACK_FRAME + build_frame(b"\xd5\x43\x00" + version + crc_a(version))
    assert emu.feed(host_frame(0x42, bytes.fromhex("a20401020304"))) == ACK_FRAME + build_frame(b"\xd5\x43\x00\x0a")
    assert emu.feed(host_frame(0x42, b"\x1a\x00")) == ACK_FRAME + build_frame(b"\xd5\x43\x01")  # mute: time-out


def test_no_card_lists_no_target_and_leaves_reqa_in_the_fifo() -> None:
    emu = Pn532Emulator(None)
    assert emu.feed(host_frame(0x4A, b"\x01\x00")) == ACK_FRAME + build_frame(b"\xd5\x4b\x00")
    assert emu.feed(host_frame(0x06, b"\x63\x39")) == ACK_FRAME + build_frame(b"\xd5\x07\x26")


@pytest.fixture
def pn532_pty(tmp_path: Path) -> Iterator[Pn532Pty]:
    """A PN532 emulator on a pty, linked as /dev/huma-pn532-<pid> for nfcpy's tty: path."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.save(tmp_path / "card.json")
    with Pn532Pty(Pn532Emulator(chip), link=f"huma-pn532-{os.getpid()}") as pty:
        yield pty


def test_nfcpy_pn532_driver_reads_and_writes_a_virtual_card(pn532_pty: Pn532Pty) -> None:
    profile = find_reader_profile("pn532-uart")
    message = b"".join(ndef.message_encoder([ndef.TextRecord("lewat UART " * 20, "id")]))
    with NfcpyReader(pn532_pty.nfcpy_path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
        assert reader.name.startswith("PN532v1.6")
        with reader.connect() as channel:
            tag = Type2Tag(channel)
            assert tag.identify().chip.value == "NTAG215"
            tag.write_ndef(message)
        with reader.connect() as channel:
            assert Type2Tag(channel).read_ndef().message == message
            assert channel.commands == 2  # GET_VERSION + one FAST_READ of 63 pages (max_frame 252 B)
    # nfcpy's own Type 2 stack, a second open of the port (wakes the chip from PowerDown)
    clf = nfc.ContactlessFrontend(pn532_pty.nfcpy_path)
    try:
        tag = nfc.tag.activate(clf, clf.sense(nfc.clf.RemoteTarget("106A")))
        assert str(tag).startswith("Type2Tag 'NXP NTAG215'")
        assert tag.ndef is not None and tag.ndef.octets == message
    finally:
        clf.close()
    chip = pn532_pty.emulator.chip
    assert chip is not None and chip.path is not None
    pn532_pty.stop()
    assert Ntag21x.load(chip.path).memory == chip.memory  # saved to the card file
    assert pn532_pty.emulator.dropped == 0
