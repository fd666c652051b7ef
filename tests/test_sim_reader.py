"""Reader front end: pseudo-APDUs, direct transmit, Part 3 transparent session, status words.

Transcript style: each C-APDU paired with the exact R-APDU the emulated reader sends.
"""

from __future__ import annotations

import pytest

from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from simulator.errors import ChipLeftField
from simulator.reader import ReaderEmulator, ReaderQuirks, storage_card_atr

UID = bytes.fromhex("04A1B2C3D4E5F6")


def reader(kind: str = "acr122u", **kw: object) -> ReaderEmulator:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.poke(4, bytes.fromhex("03 00 FE 00"))
    r = ReaderEmulator(chip, kind=kind, **kw)  # type: ignore[arg-type]
    r.power_on()
    return r


def run(r: ReaderEmulator, transcript: list[tuple[str, str]]) -> None:
    for capdu, rapdu in transcript:
        got = r.transmit(bytes.fromhex(capdu))
        assert got == bytes.fromhex(rapdu), f"{capdu} -> {got.hex(' ').upper()}, expected {rapdu}"


def test_atr_is_pcsc_part3_storage_card_with_correct_tck() -> None:
    atr = storage_card_atr()
    assert atr == bytes.fromhex("3B8F8001804F0CA0000003060300030000000068")
    tck = 0
    for b in atr[1:]:
        tck ^= b
    assert tck == 0, "XOR of T0..TCK is zero"
    assert storage_card_atr(card_name=0x0001)[-1] != atr[-1]


def test_acr122u_storage_card_pseudo_apdus() -> None:
    run(
        reader(),
        [
            ("FFCA000000", "04A1B2C3D4E5F6 9000"),
            ("FFCA000004", "6C07"),  # Le too short: the right Le
            ("FFCA000010", "04A1B2C3D4E5F6 6282"),
            ("FFCA010000", "6A81"),  # no ATS on a Type 2 tag
            ("FFB0000310", "E1103E00 0300FE00 00000000 00000000 9000"),
            ("FFB0000304", "E1103E00 9000"),
            ("FFB0000311", "6C10"),
            ("FFD6000504 CAFEBABE", "9000"),
            ("FFB0000504", "CAFEBABE 9000"),
            ("FFD6000503 CAFEBA", "6300"),
            ("FFD6000004 00000000", "6300"),  # chip NAK on the UID page
            ("FFB0008710", "6300"),  # past the last page: NAK
            ("FFB0000404", "0300FE00 9000"),  # reader re-selected the tag after the NAK
        ],
    )


def test_acr122u_direct_transmit_pn533_status() -> None:
    run(
        reader(),
        [
            ("FF00000003 D44260", "D543 00 0004040201001103 9000"),
            ("FF00000004 D4423004", "D543 00 0300FE00000000000000000000000000 9000"),
            ("FF00000008 D442A2080102 0304", "D543 00 0A 9000"),  # 4-bit ACK as one byte
            ("FF00000008 D442A2000102 0304", "D543 00 00 9000"),  # NAK 0
            ("FF00000004 D4421A00", "D543 01 9000"),  # tag mute: PN533 time-out
            ("FF00000005 D44001 3008", "D541 00 01020304000000000000000000000000 9000"),
            ("FF00000004 D44A0100", "D54B 01 01 0044 00 07 04A1B2C3D4E5F6 9000"),
            ("FF00000002 D402", "D503 32010607 9000"),
        ],
    )


def test_acr122u_pwd_auth_through_direct_transmit_lost_after_nak() -> None:
    r = reader()
    lay = r.chip.layout
    run(
        r,
        [
            (f"FFD600{lay.pwd_page:02X}04 11223344", "9000"),
            (f"FFD600{lay.cfg0_page:02X}04 040000 10", "9000"),  # AUTH0 = 0x10
            ("FFD6001004 01010101", "6300"),
            ("FF00000007 D4421B11223344", "D543 00 0000 9000"),  # PACK 00 00
            ("FFD6001004 01010101", "9000"),
            ("FF00000004 D4423087", "D543 00 00 9000"),  # NAK -> tag IDLE
            ("FFD6001104 01010101", "6300"),  # re-selected: authentication gone
        ],
    )


def test_acr122u_reader_commands() -> None:
    run(
        reader(),
        [
            ("FF00480000", "41435231323255323135"),  # "ACR122U215", no SW (as the device)
            ("FF00400E0400000000", "9002"),  # green on, red off
            ("FF0040050400000000", "9003"),  # red on (mask+state)
            ("FF00520000", "9000"),
            ("FF99000000", "6A81"),
            ("00A4000002 7F10", "6D00"),
        ],
    )


def test_AP_1_unknown_apdu_empty_answer_is_injectable() -> None:
    r = reader(quirks=ReaderQuirks(empty_on_unknown=True))
    assert r.transmit(bytes.fromhex("A0A40000027F10")) == b""
    assert r.transmit(bytes.fromhex("FFCA000000"))[-2:] == b"\x90\x00"


def test_plain_reader_has_no_pass_through() -> None:
    run(
        reader("plain"),
        [
            ("FFCA000000", "04A1B2C3D4E5F6 9000"),
            ("FF00000003 D44260", "6A81"),
            ("FFC2000002 8100", "6A81"),
        ],
    )


def test_part3_transparent_session() -> None:
    run(
        reader("part3"),
        [
            ("FFC2000002 8100", "C003009000 9000"),
            ("FFC2000103 950160", "C003009000 920100 9708 0004040201001103 9000"),
            ("FFC2000104 95023004", "C003009000 920100 9710 0300FE00000000000000000000000000 9000"),
            ("FFC2000108 9506A2040A0B0C0D", "C003009000 920104 9701 0A 9000"),
            ("FFC2000103 95011A", "C003016401 9000"),
            ("FFC2000002 8200", "C003009000 9000"),
            ("FFB0008710", "6581"),  # Part 3 storage failure word
            ("FF00000003 D44260", "6A81"),  # no ACR122U escape on a Part 3 reader
        ],
    )


def test_part3_answers_of_128_bytes_and_more_use_ber_long_lengths() -> None:
    """FAST_READ of 32 and 61 pages: the 97 object's length is 81 80 / 81 F4 (ISO/IEC 8825-1 §8.1.3.5)."""
    r = reader("part3")
    run(r, [("FFC2000002 8100", "C003009000 9000")])
    for last, length in ((0x23, "8180"), (0x40, "81F4")):
        got = r.transmit(bytes.fromhex(f"FFC2000105 95033A04{last:02X}"))
        n = int(length[2:], 16)
        assert got[:11] == bytes.fromhex(f"C003009000 920100 97{length}")
        assert len(got) == 11 + n + 2 and got[-2:] == bytes.fromhex("9000")
        assert got[11:15] == bytes.fromhex("0300FE00")  # page 4 first


def test_part3_long_form_length_in_the_command_is_understood() -> None:
    run(reader("part3"), [("FFC2000002 8100", "C003009000 9000"), ("FFC2000105 958102 3004", "C003009000 920100 9710 0300FE00000000000000000000000000 9000")])


def test_card_removal_propagates() -> None:
    r = reader()
    r.chip.arm(FaultPlan(remove_after_commands=1))
    run(r, [("FFB0000410", "0300FE00000000000000000000000000 9000")])
    with pytest.raises(ChipLeftField):
        r.transmit(bytes.fromhex("FFB0000410"))
    with pytest.raises(ChipLeftField):
        r.transmit(bytes.fromhex("FFCA000000"))  # the reader reads the UID from the card
