"""Type2Tag over every reader kind: identify, pages, NDEF, counter, signature, password, locks; T2-1..T2-6.

Fast tests run on the in-process reader simulator (``EmulatorConnection``:
the same ReaderEmulator the vpcd card serves); the ``pcsc`` tests repeat the
features through real pcscd + vpcd.
"""

from __future__ import annotations

import pytest

from cardlib import ndef as nd
from cardlib.transport.errors import SessionLost, TagLost
from cardlib.type2 import ACR122U, GENERIC, PART3, ChipType, ReaderCapabilities, Type2Tag, channel_for
from cardlib.type2.errors import (
    AddressOutOfRange,
    CapacityExceeded,
    CorruptTlv,
    Nak,
    NotBlank,
    OriginalityError,
    PwdAuthFailed,
    ReadOnly,
    TagError,
    UnsupportedChip,
    UnsupportedCommand,
)
from cardlib.type2.tag import raise_for_issuance
from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from simulator.reader import ReaderEmulator
from tests.type2_emulator import EmulatorConnection

KINDS = {"acr122u": ACR122U, "part3": PART3, "plain": GENERIC}
SAMPLE_UID = bytes.fromhex("04E10CDA993C80")
SAMPLE_SIG = bytes.fromhex("8B76052EE42F5567BEB53238B3E3F9950707C0DCC956B5C5EFCFDB709B2D82B3")


def make_tag(chip: Ntag21x, kind: str = "acr122u") -> Type2Tag:
    conn = EmulatorConnection(ReaderEmulator(chip, kind))
    return Type2Tag(channel_for(conn, KINDS[kind]), conn.atr)


def message_of(size: int) -> bytes:
    """An NDEF message of exactly *size* bytes: one external record (header 4 or 7 + type 15)."""
    rtype = "humabetang.id:c"
    overhead = 3 + len(rtype) if size - 3 - len(rtype) <= 255 else 6 + len(rtype)
    payload = bytes((i * 13) & 0xFF for i in range(size - overhead))
    msg = nd.encode_message([nd.external_record(rtype, payload)])
    assert len(msg) == size
    return msg


def poke_bytes(chip: Ntag21x, offset: int, data: bytes) -> None:
    mem = bytearray(chip.memory)
    mem[offset : offset + len(data)] = data
    for page in range(offset // 4, (offset + len(data) + 3) // 4):
        chip.poke(page, bytes(mem[page * 4 : page * 4 + 4]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant,pages", [("ntag213", 45), ("ntag215", 135), ("ntag216", 231)])
def test_identify_and_uid(kind: str, variant: str, pages: int) -> None:
    chip = Ntag21x.blank(ChipVariant.parse(variant))
    tag = make_tag(chip, kind)
    info = tag.identify()
    assert info.chip.value == variant.upper() and info.total_pages == pages
    assert info.source == ("get_version" if kind != "plain" else "atr+cc")
    assert tag.uid == chip.uid


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 253, 254, 255, 256, 491])
def test_T2_3_write_read_round_trip_at_length_boundaries(kind: str, size: int) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    msg = message_of(size) if size else b""
    area = make_tag(chip, kind).write_ndef(msg)
    assert area.length_form == (1 if size < 255 else 3)
    back = make_tag(chip, kind).read_ndef()
    assert back.message == msg and back.capacity == 491
    tlv_at = chip.memory[16:20]
    assert tlv_at[:2] == (bytes((3, size)) if size < 255 else b"\x03\xff")


@pytest.mark.parametrize("kind", KINDS)
def test_capacity_exceeded_writes_nothing(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag213"))
    before = chip.memory
    with pytest.raises(CapacityExceeded):
        make_tag(chip, kind).write_ndef(message_of(142))
    assert chip.memory == before


@pytest.mark.parametrize("kind,limit", [("acr122u", 3), ("plain", 32)])
def test_full_ntag215_message_in_the_fewest_commands(kind: str, limit: int) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    msg = message_of(490)
    make_tag(chip, kind).write_ndef(msg)
    tag = make_tag(chip, kind)
    assert tag.read_ndef().message == msg
    assert tag.channel.commands <= limit


def test_T2_1_torn_header_reads_as_corrupt_tlv() -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag213"))
    poke_bytes(chip, 16, bytes.fromhex("0103A00C FF7FFFFF 010E5402 656E6865 6C6C6F20 776F726C 64FE3A20"))
    for kind in KINDS:
        with pytest.raises(CorruptTlv) as info:
            make_tag(chip, kind).read_ndef()
        assert info.value.offset == 21


def test_T2_2_read_only_cc_with_clear_lock_bits() -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag213"))
    chip.poke(3, bytes.fromhex("E110120F"))
    text = nd.encode_message([nd.ndef.TextRecord("0123456789abcdef0123456789abcd8a", "en")])
    poke_bytes(chip, 16, bytes.fromhex("0103A00C34") + bytes((3, len(text))) + text + b"\xfe")
    poke_bytes(chip, 64, bytes.fromhex("23540265"))
    for kind in KINDS:
        tag = make_tag(chip, kind)
        area = tag.read_ndef()
        assert area.message == text and area.tlv_offset == 21
        assert area.data_area.read_only and area.data_area.issuance_errors
        with pytest.raises(TagError):
            raise_for_issuance(area.data_area)
        with pytest.raises(ReadOnly):
            tag.write_ndef(b"")


@pytest.mark.parametrize("kind", KINDS)
def test_T2_5_cc_claiming_more_than_the_chip(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    chip.poke(3, bytes.fromhex("E1108700"))
    tag = make_tag(chip, kind)
    if kind == "plain":
        # No GET_VERSION without pass-through and CC2 0x87 is no factory value: the chip
        # stays unknown and only the header is trusted; the walk is bounded by the CC.
        assert tag.identify().chip is ChipType.UNKNOWN
        return
    area = tag.read_ndef()
    assert area.data_area.mis_issued and area.data_area.size == 504
    assert area.capacity == 504 - 4 - 1
    with pytest.raises(CapacityExceeded):
        tag.write_ndef(message_of(500))


@pytest.mark.parametrize("kind", KINDS)
def test_T2_6_reads_bounded_by_the_real_size(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag213"))
    tag = make_tag(chip, kind)
    tag.identify()
    sent = tag.channel.commands
    with pytest.raises(AddressOutOfRange):
        tag.read_pages(0x2B, 4)  # would pass page 44, the last of 45
    assert tag.channel.commands == sent  # refused before anything reached the reader
    tail = tag.read_pages(42, 3)  # READ 16 B at 42 wraps to page 0 on the chip: wrap bytes dropped
    assert tail[:4] == chip.memory[42 * 4 : 43 * 4] and len(tail) == 12


@pytest.mark.parametrize("kind", KINDS)
def test_write_page_refuses_header_lock_and_config_pages(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    tag = make_tag(chip, kind)
    for page in (0, 2, 3, 130, 131, 134):
        with pytest.raises(AddressOutOfRange):
            tag.write_page(page, b"\xff\xff\xff\xff")
    tag.write_pages(4, b"ABCDEFGH", verify=True)
    assert chip.memory[16:24] == b"ABCDEFGH"


@pytest.mark.parametrize("kind", ["acr122u", "part3"])
def test_counter_signature_password(kind: str) -> None:
    chip = Ntag21x(ChipVariant.parse("ntag216"), SAMPLE_UID, signature=SAMPLE_SIG, nfc_counter=41)
    lay = chip.layout
    chip.poke(lay.cfg1_page, bytes((0x10, 0, 0, 0)))  # NFC_CNT_EN
    chip.poke(lay.pwd_page, bytes.fromhex("11223344"))
    chip.poke(lay.pack_page, bytes.fromhex("ABCD0000"))
    chip.poke(lay.cfg0_page, bytes((0x04, 0x00, 0x00, 0x10)))  # AUTH0 = page 16: write-protected from there
    tag = make_tag(chip, kind)
    tag.read_ndef()
    assert tag.read_counter() == 42  # first read of the RF session counted
    tag.verify_originality()
    assert tag.read_signature() == SAMPLE_SIG
    with pytest.raises(Nak):
        tag.write_page(16, b"abcd")
    with pytest.raises(PwdAuthFailed):
        tag.pwd_auth(bytes.fromhex("00000000"))
    assert tag.pwd_auth(bytes.fromhex("11223344"), expected_pack=bytes.fromhex("ABCD")) == bytes.fromhex("ABCD")
    tag.write_page(16, b"abcd")
    assert chip.page(16) == b"abcd"


def test_originality_fails_for_a_copied_signature() -> None:
    chip = Ntag21x(ChipVariant.parse("ntag215"), bytes.fromhex("04E10CDA993C81"), signature=SAMPLE_SIG)
    with pytest.raises(OriginalityError):
        make_tag(chip).verify_originality()
    with pytest.raises(OriginalityError):
        make_tag(Ntag21x.blank(ChipVariant.parse("ntag215"))).verify_originality()


def test_plain_reader_has_no_raw_commands() -> None:
    tag = make_tag(Ntag21x.blank(ChipVariant.parse("ntag215")), "plain")
    with pytest.raises(UnsupportedCommand):
        tag.read_counter()


@pytest.mark.parametrize("kind", KINDS)
def test_lock_bits_are_guarded_and_lock(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    tag = make_tag(chip, kind)
    with pytest.raises(ValueError):
        tag.set_lock_bits(static=b"\xf0\x00")
    bits = tag.set_lock_bits(static=b"\x10\x00", irreversible=True)  # L-4: page 4 locked
    assert bits.static == b"\x10\x00" and bits.any_user_lock
    with pytest.raises((Nak, TagLost)):
        tag.write_page(4, b"\x03\x00\xfe\x00")


@pytest.mark.parametrize("kind", KINDS)
def test_format_blank_and_foreign_cc(kind: str) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag216"))
    chip.poke(3, bytes(4))
    chip.poke(4, bytes.fromhex("DEADBEEF"))
    tag = make_tag(chip, kind)
    if kind == "plain":  # no GET_VERSION and a blank CC: the operator names the chip
        with pytest.raises(UnsupportedChip):
            tag.format()
        area = make_tag(chip, kind).format(ChipType.NTAG216)
    else:
        area = tag.format()
    assert chip.page(3) == bytes.fromhex("E1106D00") and area.message == b"" and area.data_area_size == 872
    foreign = Ntag21x.blank(ChipVariant.parse("ntag213"))
    foreign.poke(3, bytes.fromhex("E1100800"))
    with pytest.raises(NotBlank):
        make_tag(foreign, kind).format(ChipType.NTAG213)


def test_tear_at_every_command_never_leaves_a_corrupt_tlv() -> None:
    old = message_of(300)
    new = message_of(120)
    commands = None
    for n in range(200):
        chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
        make_tag(chip).write_ndef(old)
        chip.arm(FaultPlan(remove_after_commands=n))
        tag = make_tag(chip)
        try:
            tag.write_ndef(new)
        except SessionLost:
            pass
        else:
            commands = n
            break
        chip.reinsert()
        back = make_tag(chip).read_ndef().message  # never CorruptTlv
        assert back in (old, new, b"")
    assert commands is not None and commands > 5


def test_reader_capabilities_validate() -> None:
    with pytest.raises(ValueError):
        ReaderCapabilities("x", "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReaderCapabilities("x", "acr122u", 8)
    assert ReaderCapabilities().passthrough == "none" and ACR122U.max_pages == 63


# ---------------------------------------------------------------- real pcscd + vpcd


@pytest.mark.pcsc
@pytest.mark.parametrize("kind", KINDS)
def test_pcsc_tag_features_through_pcscd(kind: str, present_card, reader_name) -> None:
    from cardlib.transport.pcsc import connect

    chip = Ntag21x(ChipVariant.parse("ntag215"), SAMPLE_UID, signature=SAMPLE_SIG)
    chip.poke(chip.layout.cfg1_page, bytes((0x10, 0, 0, 0)))
    msg = message_of(490)
    with present_card(chip, kind=kind):
        with connect(reader_name(0)) as conn:
            tag = Type2Tag(channel_for(conn, KINDS[kind], repoll=conn.reconnect), conn.atr)
            assert tag.identify().chip is ChipType.NTAG215 and tag.uid == SAMPLE_UID
            tag.write_ndef(msg)
        with connect(reader_name(0)) as conn:
            tag = Type2Tag(channel_for(conn, KINDS[kind], repoll=conn.reconnect), conn.atr)
            area = tag.read_ndef()
            assert area.message == msg
            if kind == "acr122u":
                assert tag.channel.commands <= 3
            if kind == "plain":
                assert tag.channel.commands <= 32
            else:
                assert tag.read_counter() >= 1
                tag.verify_originality()
            with pytest.raises(AddressOutOfRange):
                tag.read_pages(134, 2)


@pytest.mark.pcsc
def test_pcsc_T2_1_and_T2_5_through_pcscd(present_card, reader_name) -> None:
    from cardlib.transport.pcsc import connect

    torn = Ntag21x.blank(ChipVariant.parse("ntag213"))
    poke_bytes(torn, 16, bytes.fromhex("0103A00C FF7FFFFF 010E5402"))
    with present_card(torn, kind="acr122u"):
        with connect(reader_name(0)) as conn:
            with pytest.raises(CorruptTlv):
                Type2Tag(channel_for(conn, ACR122U), conn.atr).read_ndef()
    mis = Ntag21x.blank(ChipVariant.parse("ntag215"))
    mis.poke(3, bytes.fromhex("E1108700"))
    with present_card(mis, kind="part3"):
        with connect(reader_name(0)) as conn:
            area = Type2Tag(channel_for(conn, PART3), conn.atr).read_ndef()
            assert area.data_area.mis_issued and area.data_area.size == 504
