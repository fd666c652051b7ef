"""Pure tests of the Type 2 CC and TLV parsers (NFC Forum T2T 1.0 §2.2-2.3), field cases T2-1..T2-3, T2-5."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardlib.type2.cc import CapabilityContainer, check_data_area
from cardlib.type2.errors import CorruptCc, CorruptTlv, NotFormatted, TagError
from cardlib.type2.tlv import (
    ReservedArea,
    TlvType,
    Truncated,
    capacity,
    control_area,
    ndef_tlv,
    place,
    tlv_header,
    walk,
)


def image(pages: dict[int, str], total_pages: int = 45) -> bytes:
    """A tag image from ``{page: "hex of 4 bytes"}``, other pages zero."""
    mem = bytearray(total_pages * 4)
    for page, hexed in pages.items():
        mem[page * 4 : page * 4 + 4] = bytes.fromhex(hexed.replace(" ", ""))
    return bytes(mem)


T2_1 = image({
    0: "04 A1 B2 3F", 1: "C3 D4 E5 F6", 2: "C2 48 00 00", 3: "E1 10 12 00",
    4: "01 03 A0 0C", 5: "FF 7F FF FF", 6: "01 0E 54 02", 7: "65 6E 68 65",
    8: "6C 6C 6F 20", 9: "77 6F 72 6C", 10: "64 FE 3A 20",
})

T2_2_TEXT = b"0123456789abcdef0123456789abcd8a"  # 32 ASCII characters, last two '8a'
T2_2 = bytearray(image({2: "57 48 00 00", 3: "E1 10 12 0F", 4: "01 03 A0 0C", 5: "34 03 27 D1",
                        6: "01 23 54 02", 0x10: "23 54 02 65"}))
T2_2[28:30] = b"en"
T2_2[30:62] = T2_2_TEXT
T2_2[60:64] = bytes.fromhex("3861FE00")  # page 0xF: last two characters '8a', terminator
T2_2 = bytes(T2_2)


def test_T2_1_torn_ndef_header() -> None:
    cc = CapabilityContainer.parse(T2_1[12:16])
    area = check_data_area(cc, chip_size=144)
    with pytest.raises(CorruptTlv) as info:
        walk(T2_1, area.end)
    # Byte 21 holds type 0x7F; its length byte FF opens the 3-byte form, whose two
    # bytes are FF (byte 23) and 01 (byte 24, page 6): 0xFF01, far past the 144-byte area.
    assert info.value.offset == 21
    assert "0x7F" in info.value.reason and "0xFF01" in info.value.reason and "144-byte" in info.value.reason


def test_T2_2_lock_tlv_first_stale_bytes_after_terminator_read_only_cc() -> None:
    cc = CapabilityContainer.parse(T2_2[12:16])
    area = check_data_area(cc, chip_size=144, locked=False)
    assert area.read_only and not area.mis_issued
    assert any("issuance error" in e for e in area.issuance_errors)
    found = walk(T2_2, area.end)
    assert found is not None
    assert found.tlv.offset == 21 and found.tlv.length == 0x27 and found.tlv.value_offset == 23
    assert found.message[:6] == bytes.fromhex("D101235402") + b"e"
    assert len(found.message) == 0x27
    assert found.message.endswith(b"8a")
    # the Lock Control TLV reserves 12 bits = 2 bytes at page 40 (byte 160, outside the data area)
    assert found.reserved == (ReservedArea(TlvType.LOCK_CONTROL, 160, 2),)


@pytest.mark.parametrize("length", [0, 1, 253, 254, 255, 256, 491])
def test_T2_3_length_forms_round_trip(length: int) -> None:
    message = bytes((i * 7) & 0xFF for i in range(length))
    tlv = ndef_tlv(message)
    if length < 255:
        assert tlv[:2] == bytes((0x03, length))
    else:
        assert tlv[:4] == bytes((0x03, 0xFF)) + length.to_bytes(2, "big")
    mem = bytearray(16) + tlv + bytes(600)
    found = walk(bytes(mem), 16 + 496)
    assert found is not None and found.message == message
    assert found.tlv.length_form == (1 if length < 255 else 3)


def test_T2_3_three_byte_form_with_small_length_is_accepted() -> None:
    mem = bytes(16) + bytes.fromhex("03FF0003D00000FE") + bytes(40)
    found = walk(mem, 64)
    assert found is not None and found.message == bytes.fromhex("D00000") and found.tlv.length_form == 3


def test_T2_3_encoder_switches_at_exactly_255() -> None:
    assert tlv_header(0x03, 254) == bytes.fromhex("03FE")
    assert tlv_header(0x03, 255) == bytes.fromhex("03FF00FF")
    assert tlv_header(0x03, 300) == bytes.fromhex("03FF012C")


def test_T2_3_capacity_counts_header_terminator_and_reserved() -> None:
    # NTAG215: 496-byte area, NDEF TLV at 16: 496 - 4 (3-byte header) - 1 (terminator)
    assert capacity(16, 16 + 496, ()) == 491
    # NTAG213: 144-byte area, TLV after a 5-byte Lock Control TLV: 139 - 2 - 1 = 136
    assert capacity(21, 160, ()) == 136
    # reserved bytes inside the area reduce it
    assert capacity(16, 16 + 64, (ReservedArea(TlvType.MEMORY_CONTROL, 40, 8),)) == 64 - 8 - 2 - 1
    # an area of exactly 258 non-reserved bytes: 1-byte form would allow 254 at most
    assert capacity(16, 16 + 258, ()) == 254
    assert capacity(16, 16 + 260, ()) == 255


def test_T2_5_cc_larger_than_chip_marks_mis_issued() -> None:
    cc = CapabilityContainer.parse(bytes.fromhex("E1108700"))
    assert cc.data_area_size == 8 * 0x87 == 1080
    area = check_data_area(cc, chip_size=504)
    assert area.mis_issued and area.size == 504 and area.end == 520


@pytest.mark.parametrize("cc2,size", [(0x12, 144), (0x3E, 496), (0x6D, 872), (0x01, 8), (0xFF, 2040)])
def test_T2_5_data_area_is_8_times_cc2(cc2: int, size: int) -> None:
    assert CapabilityContainer.parse(bytes((0xE1, 0x10, cc2, 0x00))).data_area_size == size


def test_cc_errors() -> None:
    with pytest.raises(NotFormatted):
        CapabilityContainer.parse(bytes(4))
    with pytest.raises(CorruptCc):
        CapabilityContainer.parse(bytes.fromhex("E2103E00"))
    with pytest.raises(CorruptCc):
        CapabilityContainer.parse(bytes.fromhex("E1203E00"))


def test_lock_control_value_names_page_40_on_ntag213() -> None:
    # NTAG213 datasheet default 01 03 A0 0C 34: page 10 × 16 bytes = byte 160 (page 40), 12 bits.
    area = control_area(TlvType.LOCK_CONTROL, bytes.fromhex("A00C34"))
    assert (area.start, area.size) == (160, 2)
    mem_area = control_area(TlvType.MEMORY_CONTROL, bytes.fromhex("520302"))
    assert (mem_area.start, mem_area.size) == (5 * 4 + 2, 3)


def test_memory_control_reserved_bytes_are_skipped_inside_the_message() -> None:
    # Memory Control reserves bytes 24..27 (page 6): the NDEF value flows around them.
    mem = bytearray(16 + 64)
    mem[16:21] = bytes.fromhex("02 03 60 04 02")  # page 6 (x4 bytes per page), 4 bytes
    mem[21:23] = bytes.fromhex("03 06")
    mem[23] = 0xA1
    mem[24:28] = b"RSVD"
    mem[28:33] = bytes.fromhex("A2A3A4A5A6")
    mem[33] = 0xFE
    found = walk(bytes(mem), len(mem))
    assert found is not None and found.message == bytes.fromhex("A1A2A3A4A5A6")
    new = bytearray(mem)
    place(new, 23, b"xyzuvw", len(mem), found.reserved)
    assert new[24:28] == b"RSVD" and bytes(new[23:24] + new[28:33]) == b"xyzuvw"


def test_null_tlvs_are_skipped_and_terminator_ends_the_walk() -> None:
    mem = bytes(16) + bytes.fromhex("0000FE03") + bytes(40)
    assert walk(mem, 60) is None
    mem = bytes(16) + bytes.fromhex("0000FD0211220301AAFE") + bytes(40)
    found = walk(mem, 60)
    assert found is not None and found.message == b"\xaa" and [b.type for b in found.blocks] == [0, 0, 0xFD]


def test_control_tlv_with_wrong_length_is_corrupt() -> None:
    mem = bytes(16) + bytes.fromhex("0102A00C0300FE") + bytes(40)
    with pytest.raises(CorruptTlv) as info:
        walk(mem, 60)
    assert info.value.offset == 16


def test_truncated_image_asks_for_more_bytes() -> None:
    full = bytes(16) + ndef_tlv(bytes(100)) + bytes(100)
    with pytest.raises(Truncated) as info:
        walk(full[:40], 16 + 200)
    assert info.value.needed == 16 + 2 + 100
    assert walk(full[: info.value.needed], 16 + 200) is not None


def test_walk_never_reads_past_the_data_area() -> None:
    # An NDEF TLV whose value would end exactly one byte past the area is corrupt,
    # even though the image has the bytes (T2-6: bytes past the end never parsed).
    mem = bytes(16) + bytes.fromhex("030A") + bytes(30)
    with pytest.raises(CorruptTlv):
        walk(mem, 16 + 11)
    assert walk(mem, 16 + 12) is not None


# ---------------------------------------------------------------- property tests

_valid_tag = st.tuples(
    st.sampled_from([144, 496, 872]),
    st.binary(min_size=0, max_size=300),
    st.lists(st.sampled_from([b"\x00", bytes.fromhex("0103A00C34"), bytes.fromhex("FD0199")]), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_tag)
def test_property_valid_images_round_trip(tag: tuple[int, bytes, list[bytes]]) -> None:
    size, message, prefix = tag
    body = b"".join(prefix) + ndef_tlv(message)
    if len(body) > size:
        return
    mem = bytes(16) + body + bytes(size - len(body))
    found = walk(mem, 16 + size)
    assert found is not None and found.message == message


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(min_value=1, max_value=255))
def test_property_random_images_raise_only_typed_errors(data: bytes, cc2: int) -> None:
    mem = bytes.fromhex("04A1B23F C3D4E5F6 C2480000") + bytes((0xE1, 0x10, cc2, 0x00)) + data
    end = min(16 + 8 * cc2, 16 + 504)
    try:
        found = walk(mem, end)
    except TagError:
        return
    if found is not None:
        assert found.value_offsets_end <= end
        assert len(found.message) == found.tlv.length


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_property_mutated_images_raise_only_typed_errors(message: bytes, data: st.DataObject) -> None:
    mem = bytearray(bytes(16) + bytes.fromhex("0103A00C34") + ndef_tlv(message) + bytes(300))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(16, len(mem) - 1))
        mem[pos] = data.draw(st.integers(0, 255))
    try:
        walk(bytes(mem), 16 + 496)
    except TagError:
        pass
