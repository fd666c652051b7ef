"""NDEF message codec over ndeflib (NFC Forum NDEF 1.0 §3.2), field case T2-4 and property tests."""

from __future__ import annotations

import tracemalloc

import ndef
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardlib.ndef import NdefError, Tnf, decode_message, encode_message, external_record, scan_records
from cardlib.type2.tlv import ndef_tlv, walk


def test_T2_4_long_payload_record_decodes() -> None:
    text = "x" * 253  # payload = status byte + "en" + 253 = 256 bytes: SR flag clear
    record = ndef.TextRecord(text, "en")
    message = encode_message([record])
    assert message[:6] == bytes.fromhex("C10100000100") and message[6:7] == b"T"
    assert len(message) == 263
    tlv = ndef_tlv(message)
    assert tlv[:4] == bytes.fromhex("03FF0107")
    found = walk(bytes(16) + tlv + bytes(40), 16 + 496)
    assert found is not None
    (decoded,) = decode_message(found.message)
    assert isinstance(decoded, ndef.TextRecord) and decoded.text == text


@pytest.mark.parametrize(
    "hexmsg,fragment",
    [
        ("C1010000FFFF54", "run past"),  # payload 65535 declared, 0 present
        ("D1FF0154", "run past"),  # type length 255 declared
        ("D901010F5400", "run past"),  # id length 15 declared
        ("C1017FFFFFFF54", "run past"),  # 2 GiB payload declared: no allocation
        ("D7000000", "TNF 7"),
        ("D0010000", "no type"),
        ("9101005411010054", "no ME"),  # neither record carries ME
    ],
)
def test_T2_4_lengths_past_the_buffer_raise_typed_errors(hexmsg: str, fragment: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(NdefError) as info:
            decode_message(bytes.fromhex(hexmsg))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fragment in str(info.value)
    assert peak < 1_000_000


def test_external_record_round_trip_with_id() -> None:
    records = [external_record("humabetang.id:i", b"\x01\x02", "i"), external_record("humabetang.id:s", bytes(300), "a")]
    message = encode_message(records)
    headers = scan_records(message)
    assert [h.tnf for h in headers] == [Tnf.EXTERNAL, Tnf.EXTERNAL]
    assert [h.id for h in headers] == [b"i", b"a"]
    assert headers[1].payload_length == 300
    decoded = decode_message(message)
    assert [r.type for r in decoded] == ["urn:nfc:ext:humabetang.id:i", "urn:nfc:ext:humabetang.id:s"]
    assert [bytes(r.data) for r in decoded] == [b"\x01\x02", bytes(300)]
    assert [r.name for r in decoded] == ["i", "a"]


def test_empty_message_is_an_error() -> None:
    with pytest.raises(NdefError):
        decode_message(b"")


_ext_records = st.lists(
    st.tuples(
        st.from_regex(r"[a-z]{1,8}\.[a-z]{2,3}:[a-z]{1,4}", fullmatch=True),
        st.binary(max_size=300),
        st.from_regex(r"[a-z]{0,3}", fullmatch=True),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(_ext_records)
def test_property_valid_messages_round_trip(specs: list[tuple[str, bytes, str]]) -> None:
    records = [external_record(t, p, n) for t, p, n in specs]
    message = encode_message(records)
    decoded = decode_message(message)
    assert [(r.type, bytes(r.data), r.name) for r in decoded] == [
        (f"urn:nfc:ext:{t}", p, n) for t, p, n in specs
    ]
    assert encode_message(decoded) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_property_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    try:
        decode_message(data)
    except NdefError:
        pass


@settings(max_examples=300, deadline=None)
@given(_ext_records, st.data())
def test_property_mutated_messages_raise_only_typed_errors(specs: list[tuple[str, bytes, str]], data: st.DataObject) -> None:
    message = bytearray(encode_message([external_record(t, p, n) for t, p, n in specs]))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(message) - 1))
        message[pos] = data.draw(st.integers(0, 255))
    try:
        decode_message(bytes(message))
    except NdefError:
        pass
