"""NTAG213/215/216 chip model against the NXP datasheet behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.chip import ACK, ChipVariant, FaultPlan, Nak, Ntag21x, TornFill, crc_a, nak_of
from simulator.errors import CardFileError, ChipLeftField, ChipMute, UnknownChipError

UID = bytes.fromhex("04A1B2C3D4E5F6")
PWD = bytes.fromhex("11223344")
PACK = bytes.fromhex("AABB")


def chip215() -> Ntag21x:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.field_on()
    return chip


def cmd(chip: Ntag21x, hexframe: str) -> bytes:
    return chip.transceive(bytes.fromhex(hexframe))


def write(chip: Ntag21x, page: int, data: bytes) -> bytes:
    return chip.transceive(bytes((0xA2, page)) + data)


def protect(chip: Ntag21x, auth0: int, access: int) -> None:
    """Personalise PWD/PACK/AUTH0/ACCESS the way a provisioning tool writes them."""
    lay = chip.layout
    assert write(chip, lay.pwd_page, PWD) == bytes((ACK,))
    assert write(chip, lay.pack_page, PACK + b"\x00\x00") == bytes((ACK,))
    assert write(chip, lay.cfg1_page, bytes((access, 0x05, 0, 0))) == bytes((ACK,))
    assert write(chip, lay.cfg0_page, bytes((0x04, 0, 0, auth0))) == bytes((ACK,))


# ---------------------------------------------------------------- memory map / identity


@pytest.mark.parametrize(
    ("variant", "cc", "version", "pages"),
    [
        (ChipVariant.NTAG213, "E1101200", "0004040201000F03", 45),
        (ChipVariant.NTAG215, "E1103E00", "0004040201001103", 135),
        (ChipVariant.NTAG216, "E1106D00", "0004040201001303", 231),
    ],
)
def test_factory_card_T2_5_table(variant: ChipVariant, cc: str, version: str, pages: int) -> None:
    chip = Ntag21x.blank(variant, UID)
    chip.field_on()
    assert cmd(chip, "60") == bytes.fromhex(version)
    assert ChipVariant.from_version(bytes.fromhex(version)) is variant
    head = cmd(chip, "3000")
    # BCC0 = 88 ^ 04 ^ A1 ^ B2 = 9F ; BCC1 = C3 ^ D4 ^ E5 ^ F6 = 04 ; internal 48
    assert head == bytes.fromhex("04A1B29F C3D4E5F6 04480000") + bytes.fromhex(cc)
    assert len(chip.memory) == pages * 4
    assert chip.uid == UID


def test_blank_without_uid_is_nxp_like() -> None:
    a, b = Ntag21x.blank(ChipVariant.NTAG215), Ntag21x.blank(ChipVariant.NTAG215)
    assert a.uid[0] == 0x04 and len(a.uid) == 7 and a.uid != b.uid


def test_read_wraps_to_page_0_past_the_end() -> None:
    chip = chip215()
    out = cmd(chip, "3084")  # CFG1, PWD, PACK, page 0
    assert out[0:4] == bytes.fromhex("00050000")
    assert out[4:12] == bytes(8), "PWD and PACK read as 00h"
    assert out[12:16] == bytes.fromhex("04A1B29F")


def test_read_past_last_page_naks_and_chip_goes_idle() -> None:
    chip = chip215()
    assert nak_of(cmd(chip, "3087")) is Nak.INVALID_ARGUMENT
    with pytest.raises(ChipMute):
        cmd(chip, "3004")
    chip.activate()
    assert len(cmd(chip, "3004")) == 16


def test_fast_read_range_and_bounds() -> None:
    chip = chip215()
    write(chip, 4, b"ABCD")
    write(chip, 5, b"EFGH")
    assert cmd(chip, "3A0405") == b"ABCDEFGH"
    assert len(cmd(chip, "3A0086")) == 135 * 4
    chip.activate()
    assert nak_of(cmd(chip, "3A0504")) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert nak_of(cmd(chip, "3A8087")) is Nak.INVALID_ARGUMENT


def test_unknown_command_gets_no_answer() -> None:
    chip = chip215()
    with pytest.raises(ChipMute):
        cmd(chip, "1A00")  # Ultralight-C auth probe: NTAG stays silent
    assert chip.halted


def test_read_sig_returns_the_set_signature() -> None:
    chip = chip215()
    sig = bytes(range(32))
    chip.signature = sig
    assert cmd(chip, "3C00") == sig
    assert nak_of(cmd(chip, "3C01")) is Nak.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        chip.signature = b"short"


# ---------------------------------------------------------------- NFC counter


def test_counter_off_by_default() -> None:
    chip = chip215()
    cmd(chip, "3004")
    assert cmd(chip, "3902") == bytes(3)


def test_counter_rises_once_per_rf_session_lsb_first() -> None:
    chip = chip215()
    write(chip, chip.layout.cfg1_page, bytes((0x10, 0x05, 0, 0)))  # NFC_CNT_EN
    assert cmd(chip, "3902") == bytes(3), "READ_CNT alone does not count"
    cmd(chip, "3004")
    cmd(chip, "3A0410")
    cmd(chip, "3008")
    assert cmd(chip, "3902") == bytes((1, 0, 0))
    chip.field_off()
    chip.field_on()
    cmd(chip, "3A0404")  # FAST_READ counts too
    assert cmd(chip, "3902") == bytes((2, 0, 0))
    chip.activate()  # re-select in the same RF session does not count again
    cmd(chip, "3004")
    assert chip.nfc_counter == 2


def test_counter_saturates_at_24_bits() -> None:
    chip = Ntag21x(ChipVariant.NTAG213, UID, nfc_counter=0xFFFFFF)
    chip.poke(chip.layout.cfg1_page, bytes((0x10, 0x05, 0, 0)))
    chip.field_on()
    cmd(chip, "3004")
    assert cmd(chip, "3902") == b"\xff\xff\xff"


def test_read_cnt_pwd_protected() -> None:
    chip = chip215()
    protect(chip, auth0=0xFF, access=0x18)  # NFC_CNT_EN | NFC_CNT_PWD_PROT
    assert nak_of(cmd(chip, "3902")) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert chip.transceive(b"\x1b" + PWD) == PACK
    assert len(cmd(chip, "3902")) == 3
    chip.activate()
    assert nak_of(cmd(chip, "3903")) is Nak.INVALID_ARGUMENT


# ---------------------------------------------------------------- password protection


def test_pwd_auth_gates_writes_from_auth0_prot0() -> None:
    chip = chip215()
    protect(chip, auth0=0x10, access=0x00)
    assert write(chip, 0x0F, b"okok") == bytes((ACK,)), "below AUTH0 stays writable"
    assert nak_of(write(chip, 0x10, b"nope")) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert cmd(chip, "3010")[:4] == bytes(4), "PROT=0: reads stay open"
    assert nak_of(write(chip, chip.layout.cfg0_page, bytes(4))) is Nak.INVALID_ARGUMENT, "config pages protected"
    chip.activate()
    assert chip.transceive(b"\x1b" + PWD) == PACK
    assert chip.authenticated
    assert write(chip, 0x10, b"yes!") == bytes((ACK,))
    chip.field_off()
    chip.field_on()
    assert not chip.authenticated, "field off ends the authentication"
    assert nak_of(write(chip, 0x11, b"nope")) is Nak.INVALID_ARGUMENT


def test_prot1_read_protection_and_rollover_at_auth0() -> None:
    chip = chip215()
    write(chip, 0x0E, b"EEEE")
    write(chip, 0x0F, b"FFFF")
    protect(chip, auth0=0x10, access=0x80)  # PROT: read and write protected
    assert nak_of(cmd(chip, "3010")) is Nak.INVALID_ARGUMENT
    chip.activate()
    # READ 0E rolls over at AUTH0: pages 0E 0F 00 01
    assert cmd(chip, "300E") == b"EEEEFFFF" + bytes.fromhex("04A1B29FC3D4E5F6")
    assert nak_of(cmd(chip, "3A0E10")) is Nak.INVALID_ARGUMENT
    chip.activate()
    chip.transceive(b"\x1b" + PWD)
    assert cmd(chip, "300E")[8:12] == bytes(4)  # page 10 now readable


def test_wrong_password_naks_and_goes_idle() -> None:
    chip = chip215()
    protect(chip, auth0=0x04, access=0x00)
    assert nak_of(chip.transceive(b"\x1b" + b"\x00" * 4)) is Nak.INVALID_ARGUMENT
    assert chip.auth_failures == 0, "AUTHLIM=0: failures are not counted (no bricking)"
    with pytest.raises(ChipMute):
        cmd(chip, "3004")


def test_authlim_locks_for_good_even_with_the_right_password(tmp_path: Path) -> None:
    chip = chip215()
    protect(chip, auth0=0x04, access=0x02)  # AUTHLIM = 2 attempts
    for _ in range(2):
        chip.activate()
        assert nak_of(chip.transceive(b"\x1b\x00\x00\x00\x00")) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert nak_of(chip.transceive(b"\x1b" + PWD)) is Nak.AUTH_COUNTER_OVERFLOW
    # persists across taps and card files
    path = chip.save(tmp_path / "c.json")
    again = Ntag21x.load(path)
    again.field_on()
    assert nak_of(again.transceive(b"\x1b" + PWD)) is Nak.AUTH_COUNTER_OVERFLOW


def test_authlim_success_resets_failure_count() -> None:
    chip = chip215()
    protect(chip, auth0=0x04, access=0x02)
    chip.transceive(b"\x1b\x00\x00\x00\x00")
    assert chip.auth_failures == 1
    chip.activate()
    assert chip.transceive(b"\x1b" + PWD) == PACK
    assert chip.auth_failures == 0


def test_cfglck_freezes_config_but_not_password() -> None:
    chip = chip215()
    write(chip, chip.layout.cfg1_page, bytes((0x40, 0x05, 0, 0)))  # CFGLCK
    assert nak_of(write(chip, chip.layout.cfg0_page, bytes((4, 0, 0, 4)))) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert nak_of(write(chip, chip.layout.cfg1_page, bytes(4))) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert write(chip, chip.layout.pwd_page, PWD) == bytes((ACK,))


# ---------------------------------------------------------------- lock bits


def test_static_lock_bits_are_otp_and_lock_pages() -> None:
    chip = chip215()
    assert write(chip, 2, bytes.fromhex("FFFF1000")) == bytes((ACK,))  # L4; bytes 0-1 ignored
    assert chip.page(2) == bytes.fromhex("04481000")
    assert nak_of(write(chip, 4, b"xxxx")) is Nak.INVALID_ARGUMENT
    chip.activate()
    write(chip, 2, bytes.fromhex("00000000"))  # cannot clear (OR)
    assert chip.page(2)[2] == 0x10
    assert write(chip, 5, b"five") == bytes((ACK,))


def test_static_block_lock_bits_freeze_lock_bits() -> None:
    chip = chip215()
    write(chip, 2, bytes.fromhex("00000200"))  # BL 9-4
    write(chip, 2, bytes.fromhex("0000F003"))  # try L4..L9: ignored
    assert chip.page(2)[2:4] == bytes.fromhex("0200")
    assert write(chip, 4, b"free") == bytes((ACK,))
    write(chip, 2, bytes.fromhex("000000FC"))  # L10..L15 still settable
    assert nak_of(write(chip, 10, b"lock")) is Nak.INVALID_ARGUMENT


def test_cc_is_otp_and_lockable() -> None:
    chip = chip215()
    write(chip, 3, bytes.fromhex("0000000F"))
    assert chip.page(3) == bytes.fromhex("E1103E0F")
    write(chip, 2, bytes.fromhex("00000800"))  # L-CC
    assert nak_of(write(chip, 3, bytes(4))) is Nak.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("variant", "lock_bytes", "locked", "free"),
    [
        (ChipVariant.NTAG215, "010000", [16, 31], [32, 15]),
        (ChipVariant.NTAG215, "800000", [128, 129], [127]),
        (ChipVariant.NTAG213, "010000", [16, 17], [18]),
        (ChipVariant.NTAG213, "000800", [38, 39], [37]),
        (ChipVariant.NTAG216, "002000", [224, 225], [223]),
    ],
)
def test_dynamic_lock_bits(variant: ChipVariant, lock_bytes: str, locked: list[int], free: list[int]) -> None:
    chip = Ntag21x.blank(variant, UID)
    chip.field_on()
    dyn = chip.layout.dyn_lock_page
    assert write(chip, dyn, bytes.fromhex(lock_bytes) + b"\x00") == bytes((ACK,))
    assert chip.page(dyn)[3] == 0xBD, "RFUI byte keeps its factory value"
    for page in locked:
        chip.activate()
        assert nak_of(write(chip, page, b"lock")) is Nak.INVALID_ARGUMENT, page
    for page in free:
        chip.activate()
        assert write(chip, page, b"free") == bytes((ACK,)), page


def test_dynamic_block_lock_bit_freezes_its_lock_bits() -> None:
    chip = chip215()
    dyn = chip.layout.dyn_lock_page
    write(chip, dyn, bytes.fromhex("00000100"))  # BL 16-47 (lock bits 0-1)
    write(chip, dyn, bytes.fromhex("07000000"))  # try to lock 16-63
    assert chip.page(dyn)[:3] == bytes.fromhex("040001")
    assert write(chip, 16, b"open") == bytes((ACK,))
    assert nak_of(write(chip, 48, b"shut")) is Nak.INVALID_ARGUMENT


# ---------------------------------------------------------------- writes, CRC


def test_write_to_uid_pages_is_refused() -> None:
    chip = chip215()
    assert nak_of(write(chip, 0, b"\x00" * 4)) is Nak.INVALID_ARGUMENT
    chip.activate()
    assert nak_of(write(chip, 0x87, b"\x00" * 4)) is Nak.INVALID_ARGUMENT


def test_compatibility_write_uses_first_4_of_16_bytes() -> None:
    chip = chip215()
    assert cmd(chip, "A006") == bytes((ACK,))
    assert chip.transceive(b"WXYZ" + bytes(12)) == bytes((ACK,))
    assert chip.page(6) == b"WXYZ"


def test_crc_checked_on_rf_frames() -> None:
    chip = chip215()
    good = b"\x30\x04" + crc_a(b"\x30\x04")
    assert crc_a(b"\x30\x00") == bytes.fromhex("02A8")  # READ 0 as seen in every Proxmark trace
    assert crc_a(b"\x50\x00") == bytes.fromhex("57CD")  # HLTA
    ans = chip.transceive_rf(good)
    assert len(ans) == 18 and crc_a(ans[:16]) == ans[16:]
    assert nak_of(chip.transceive_rf(b"\x30\x04\x00\x00")) is Nak.CRC_ERROR


def test_eeprom_write_error_injected() -> None:
    chip = chip215()
    chip.arm(FaultPlan(eeprom_fail_pages=frozenset({9})))
    assert nak_of(write(chip, 9, b"bad!")) is Nak.EEPROM_WRITE_ERROR
    assert chip.page(9) == bytes(4)


# ---------------------------------------------------------------- tearing / removal


def test_removed_after_n_commands_tears_a_multipage_write() -> None:
    chip = chip215()
    chip.arm(FaultPlan(remove_after_commands=5))
    written = []
    with pytest.raises(ChipLeftField):
        for page in range(4, 40):
            write(chip, page, bytes([page] * 4))
            written.append(page)
    assert written == [4, 5, 6, 7, 8]
    assert [chip.page(p)[0] for p in range(4, 10)] == [4, 5, 6, 7, 8, 0]
    for frame in (b"\x30\x04", b"\x60"):
        with pytest.raises(ChipLeftField):
            chip.transceive(frame)
    with pytest.raises(ChipLeftField):
        chip.field_on()
    chip.reinsert()
    chip.field_on()
    assert cmd(chip, "3008")[:4] == bytes([8] * 4)


@pytest.mark.parametrize("fill", [TornFill.OLD, TornFill.GARBAGE])
def test_write_torn_mid_page(fill: TornFill) -> None:
    chip = chip215()
    write(chip, 5, b"oldd")
    chip.arm(FaultPlan(remove_after_write_bytes=6, torn_fill=fill, seed=7))
    assert write(chip, 4, b"AAAA") == bytes((ACK,))
    with pytest.raises(ChipLeftField):
        write(chip, 5, b"BBBB")
    torn = chip.page(5)
    assert torn[:2] == b"BB"
    if fill is TornFill.OLD:
        assert torn[2:] == b"dd"
    else:
        assert torn[2:] not in (b"dd", b"BB")
        other = chip215()
        other.transceive(b"\xa2\x05oldd")
        other.arm(FaultPlan(remove_after_write_bytes=2, torn_fill=fill, seed=7))
        with pytest.raises(ChipLeftField):
            other.transceive(b"\xa2\x05BBBB")
        assert other.page(5) == torn, "garbage is deterministic per seed and page"


def test_tear_on_remove_after_commands_with_byte_count() -> None:
    chip = chip215()
    chip.arm(FaultPlan(remove_after_commands=1, tear_during_remove=3))
    write(chip, 4, b"1111")
    with pytest.raises(ChipLeftField):
        write(chip, 5, b"2222")
    assert chip.page(5) == b"222\x00"


def test_lock_pages_are_never_torn() -> None:
    chip = chip215()
    chip.arm(FaultPlan(remove_after_write_bytes=2))
    with pytest.raises(ChipLeftField):
        write(chip, 2, bytes.fromhex("0000FFFF"))
    assert chip.page(2)[2:] == b"\x00\x00"


def test_fault_plan_validates() -> None:
    with pytest.raises(ValueError):
        FaultPlan(remove_after_commands=-1)
    with pytest.raises(ValueError):
        FaultPlan(tear_during_remove=5)


# ---------------------------------------------------------------- card files


def test_save_load_round_trip(tmp_path: Path) -> None:
    chip = chip215()
    protect(chip, auth0=0x20, access=0x10)
    write(chip, 8, b"data")
    cmd(chip, "3004")
    chip.signature = bytes(range(32))
    path = chip.save(tmp_path / "card.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "huma-sim-ntag21x/1" and doc["chip"] == "ntag215" and len(doc["pages"]) == 135
    again = Ntag21x.load(path)
    assert again.memory == chip.memory and again.nfc_counter == 1 and again.signature == chip.signature
    assert again.path == path and not again.dirty


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"format": "other"}', "not a virtual card file"),
        ('{"format": "huma-sim-ntag21x/1", "chip": "ntag215", "pages": ["00"]}', "needs 135 pages"),
        ('{"format": "huma-sim-ntag21x/1", "chip": "ntag215", "pages": ["zz"]}', "bad value"),
        ('{"format": "huma-sim-ntag21x/1", "pages": []}', "missing field 'chip'"),
    ],
)
def test_malformed_card_file_names_the_file(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(CardFileError) as info:
        Ntag21x.load(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_card_file(tmp_path: Path) -> None:
    with pytest.raises(CardFileError, match="no such card file"):
        Ntag21x.load(tmp_path / "nope.json")


def test_unknown_chip_type() -> None:
    assert ChipVariant.parse("NTAG 216") is ChipVariant.NTAG216
    with pytest.raises(UnknownChipError, match="ntag213, ntag215, ntag216"):
        ChipVariant.parse("mifare-classic")
