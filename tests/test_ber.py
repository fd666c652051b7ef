"""BER-TLV data objects (ISO/IEC 7816-4 §6.3, lengths ISO/IEC 8825-1 §8.1.3): tables of hex <-> arguments."""

from __future__ import annotations

import pytest

from cardlib.ber import BerError, encode_object, parse_objects


@pytest.mark.parametrize(
    "tag,length,head",
    [
        (0x97, 0, "9700"),
        (0x97, 0x7F, "977F"),
        (0x97, 0x80, "978180"),  # 128: first length needing the long form
        (0x97, 0xFC, "9781FC"),  # a 252-byte chip answer (63 pages)
        (0x97, 0xFF, "9781FF"),
        (0x97, 0x100, "97820100"),
        (0x5F46, 4, "5F4604"),  # two-byte tag (timer object)
    ],
)
def test_encode_and_parse_round_trip(tag: int, length: int, head: str) -> None:
    value = bytes(range(256)) * 2
    value = value[:length]
    encoded = encode_object(tag, value)
    assert encoded == bytes.fromhex(head) + value
    assert parse_objects(encoded + encode_object(0x92, b"\x00")) == [(tag, value), (0x92, b"\x00")]


@pytest.mark.parametrize(
    "hexdata,fragment",
    [
        ("5F", "two-byte tag"),
        ("97", "no length"),
        ("9781", "length 81"),
        ("9780", "length 80"),  # indefinite form is not for primitive objects
        ("978300000100", "length 83"),
        ("9702AA", "run past"),
        ("978180" + "00" * 127, "run past"),
    ],
)
def test_malformed_objects_raise_ber_error(hexdata: str, fragment: str) -> None:
    with pytest.raises(BerError, match=fragment):
        parse_objects(bytes.fromhex(hexdata))


def test_values_over_65535_bytes_are_refused() -> None:
    with pytest.raises(BerError):
        encode_object(0x97, bytes(0x10000))
