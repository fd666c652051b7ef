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


# Any NFC Forum external type name (RTD 1.0 §3.2): DNS labels, ":", URN NSS characters.
_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)
_type_name = st.from_regex(r"[A-Za-z0-9()+,\-.:=@;$_!*']{1,6}", fullmatch=True)
_ext_records = st.lists(
    st.tuples(
        st.tuples(_domain, _type_name).map(":".join),
        st.binary(max_size=300),
        st.from_regex(r"[a-z]{0,3}", fullmatch=True),
    ),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize(
    "domain_type",
    ["humabetang", "humabetang.id", ":i", "humabetang.id:", "-bad.id:i", "bad-.id:i", "a..b:i", "a.b:c/d",
     "a.b:c d", "a.b:ü", "a b:c", "x" * 251 + ".id:i"],
)
def test_external_record_refuses_names_outside_rtd(domain_type: str) -> None:
    with pytest.raises(NdefError, match="external type"):
        external_record(domain_type, b"")


def test_external_record_refuses_an_id_ndeflib_cannot_carry() -> None:
    with pytest.raises(NdefError):
        external_record("humabetang.id:i", b"", "x" * 256)  # ID LENGTH is one byte


def test_encode_refuses_non_records() -> None:
    with pytest.raises(NdefError):
        encode_message([b"\xd1\x01\x00T"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "hexmsg,fragment",
    [
        ("D4040068747470", "external type"),  # TNF 4 type "http": no <domain>:<type>
        ("D30600612E61613A61", "ndeflib"),  # TNF 3 type "a.aa:a": not an absolute URI ndeflib can hold
        ("D20300616263", "ndeflib"),  # TNF 2 type "abc": not a media type
        ("D101045402656EFF", "ndeflib"),  # Text record whose text is not UTF-8
    ],
)
def test_records_ndeflib_refuses_raise_typed_errors(hexmsg: str, fragment: str) -> None:
    with pytest.raises(NdefError, match=fragment):
        decode_message(bytes.fromhex(hexmsg))


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


_known_records = st.lists(
    st.one_of(
        st.builds(ndef.TextRecord, st.text(max_size=20), st.sampled_from(["en", "id"])),
        st.builds(ndef.UriRecord, st.sampled_from(["https://kalteng.go.id/", "tel:+62", "mailto:a@b.id"])),
        st.builds(ndef.SmartposterRecord, st.just("https://kalteng.go.id"), st.text(max_size=10)),
        st.builds(ndef.Record, st.sampled_from(["text/plain", "application/cbor", "https://kalteng.go.id/t"]),
                  st.just(""), st.binary(max_size=40)),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_ext_records.map(lambda specs: [external_record(t, p, n) for t, p, n in specs]), _known_records),
       st.data())
def test_property_mutated_messages_raise_only_typed_errors(records: list[ndef.Record], data: st.DataObject) -> None:
    """Any 1-3 byte mutation of a valid message decodes or raises NdefError, never an ndeflib error."""
    message = bytearray(encode_message(records))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(message) - 1))
        message[pos] = data.draw(st.integers(0, 255))
    try:
        decode_message(bytes(message))
    except NdefError:
        pass
