"""Byte transcripts of cardlib's Type 4 tag procedures (NFC Forum T4T 2.0 §5.4, ISO/IEC 7816-4).

In the style of nfcpy's ``tests/test_tag_tt4.py``: every command APDU is paired with the
response the tag gives, and the :class:`Transcript` connection fails on any APDU that is not
the next one expected, so each test asserts every exchange, in order. The bytes are written
out from the specification's examples (T4T 2.0 Annex C), not produced by our simulator.
"""

from __future__ import annotations

import pytest

from cardlib.transport import Connection
from cardlib.type4 import (
    SHORT_ONLY,
    CapabilityContainer,
    CapacityExceeded,
    CorruptCc,
    ExtendedCommandApdu,
    FileNotFound,
    NdefTruncated,
    NlenOutOfRange,
    NoNdefApplication,
    ReaderLimits,
    ReadOnly,
    SelectRefused,
    StatusError,
    Type4Tag,
    UnsupportedVersion,
)


class Transcript(Connection):
    """A connection that answers from a list of ``(command hex, response hex)`` and fails on anything else."""

    def __init__(self, exchanges: list[tuple[str, str]]) -> None:
        self.exchanges = [(c.replace(" ", "").upper(), r.replace(" ", "").upper()) for c, r in exchanges]
        self.pos = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        sent = apdu.hex().upper()
        assert self.pos < len(self.exchanges), f"unexpected APDU #{self.pos + 1} {sent}: transcript ended"
        want, answer = self.exchanges[self.pos]
        assert sent == want, f"APDU #{self.pos + 1}: sent {sent}, expected {want}"
        self.pos += 1
        raw = bytes.fromhex(answer)
        return raw[:-2], int.from_bytes(raw[-2:], "big")

    def close(self) -> None:
        pass

    @property
    def reader_name(self) -> str:
        return "transcript"

    def assert_done(self) -> None:
        assert self.pos == len(self.exchanges), f"only {self.pos} of {len(self.exchanges)} APDUs were sent"


# T4T 2.0 Annex C command flow pieces.
SELECT_APP_V2 = ("00A4040007D276000085010100", "9000")
SELECT_CC = ("00A4000C02E103", "9000")
READ_CC = "00B000000F"
SELECT_NDEF = ("00A4000C02E104", "9000")
READ_NLEN = "00B0000002"
#: CCLEN 000F, mapping 2.0, MLe 00FF, MLc 00FF, TLV 04 06: file E104, 2048 bytes, read 00, write 00.
CC_V2 = "000F 20 00FF 00FF 0406 E104 0800 00 00"
#: A Text record "hi", language "id" (NDEF 1.0 short record, TNF 1, type "T").
MSG = "D1010554026964" "6869"


def cc(mle: int = 0xFF, mlc: int = 0xFF, version: int = 0x20, size: int = 0x0800, write: int = 0x00) -> str:
    return f"000F {version:02X} {mle:04X} {mlc:04X} 0406 E104 {size:04X} 00 {write:02X}"


def detection(cc_hex: str = CC_V2) -> list[tuple[str, str]]:
    return [SELECT_APP_V2, SELECT_CC, (READ_CC, cc_hex + "9000"), SELECT_NDEF]


def run(*parts: list[tuple[str, str]], **kwargs: object) -> tuple[Type4Tag, Transcript]:
    link = Transcript([exchange for part in parts for exchange in part])
    return Type4Tag(link, **kwargs), link  # type: ignore[arg-type]  # keyword options of Type4Tag


# ---------------------------------------------------------------------- reads


def test_happy_read_mapping_2_0() -> None:
    tag, link = run(detection(), [(READ_NLEN, "0009 9000"), ("00B0000209", MSG + "9000")])
    ndef = tag.read_ndef()
    assert ndef.message == bytes.fromhex(MSG)
    assert ndef.aid == bytes.fromhex("D2760000850101")
    assert (ndef.cc.mle, ndef.cc.mlc, ndef.cc.file_id, ndef.capacity) == (0xFF, 0xFF, 0xE104, 2046)
    assert ndef.writable
    link.assert_done()


def test_empty_message_nlen_zero_reads_no_body() -> None:
    tag, link = run(detection(), [(READ_NLEN, "0000 9000")])
    assert tag.read_ndef().message == b""
    link.assert_done()


def test_chunked_read_bounded_by_small_mle() -> None:
    """MLe 0Fh: a 40-byte message comes in 15 + 15 + 10 bytes."""
    body = bytes(range(40)).hex()
    tag, link = run(detection(cc(mle=0x0F)), [
        (READ_NLEN, "0028 9000"),
        ("00B000020F", body[0:30] + "9000"),
        ("00B000110F", body[30:60] + "9000"),
        ("00B000200A", body[60:80] + "9000"),
    ])
    assert tag.read_ndef().message == bytes(range(40))
    link.assert_done()


def test_chunked_read_bounded_by_the_reader() -> None:
    """MLe FFh but the reader passes only 100 bytes per response."""
    body = bytes(i % 256 for i in range(150)).hex()
    tag, link = run(detection(), [
        (READ_NLEN, "0096 9000"),
        ("00B0000264", body[0:200] + "9000"),
        ("00B0006632", body[200:300] + "9000"),
    ], limits=ReaderLimits("small", max_le=100, max_lc=100, extended=False))
    assert len(tag.read_ndef().message) == 150
    link.assert_done()


def test_wrong_le_6cxx_is_resent_with_the_le_the_tag_names() -> None:
    tag, link = run(detection(), [
        (READ_NLEN, "0009 9000"),
        ("00B0000209", "6C05"),
        ("00B0000205", MSG[:10] + "9000"),
        ("00B0000704", MSG[10:] + "9000"),
    ])
    assert tag.read_ndef().message == bytes.fromhex(MSG)
    link.assert_done()


def test_short_answer_goes_on_from_where_it_ended() -> None:
    tag, link = run(detection(), [
        (READ_NLEN, "0009 9000"),
        ("00B0000209", MSG[:8] + "9000"),  # 4 bytes with 9000
        ("00B0000605", MSG[8:] + "9000"),
    ])
    assert tag.read_ndef().message == bytes.fromhex(MSG)
    link.assert_done()


def test_mapping_3_0_endef_tlv_reads_a_4_byte_enlen() -> None:
    """TLV 06h (T4T 3.0): the CC is 17 bytes, the length field ENLEN is 4 bytes."""
    tag, link = run([
        SELECT_APP_V2, SELECT_CC,
        (READ_CC, "0011 30 00FF 00FF 0608 E104 00010000" "9000"),  # the first 15 of 17 bytes
        ("00B0000F02", "00 00" "9000"),  # read access, write access
        SELECT_NDEF,
        ("00B0000004", "00000009 9000"),
        ("00B0000409", MSG + "9000"),
    ])
    ndef = tag.read_ndef()
    assert ndef.message == bytes.fromhex(MSG)
    assert (ndef.cc.nlen_size, ndef.cc.max_size) == (4, 0x10000)
    link.assert_done()


# ---------------------------------------------------------------------- extended vs short


def test_extended_read_accepted_in_one_apdu() -> None:
    body = bytes(i % 251 for i in range(300)).hex()
    tag, link = run(detection(cc(mle=0x0400)), [
        (READ_NLEN, "012C 9000"),
        ("00B00002 00012C", body + "9000"),
    ])
    assert len(tag.read_ndef().message) == 300
    assert tag.extended
    link.assert_done()


@pytest.mark.parametrize("refusal", ["6700", "6D00"])
def test_extended_read_refused_falls_back_to_short_apdus(refusal: str) -> None:
    body = bytes(i % 251 for i in range(300)).hex()
    tag, link = run(detection(cc(mle=0x0400)), [
        (READ_NLEN, "012C 9000"),
        ("00B00002 00012C", refusal),  # extended Le: refused
        ("00B0000200", body[:512] + "9000"),  # short Le 256
        ("00B001022C", body[512:] + "9000"),  # the last 44 bytes
    ])
    assert len(tag.read_ndef().message) == 300
    assert not tag.extended
    link.assert_done()


def test_extended_update_refused_falls_back_to_short_chunks() -> None:
    body = bytes(i % 251 for i in range(300))
    tag, link = run(detection(cc(mle=0x0400, mlc=0x0400)), [
        ("00D6000002 0000", "9000"),
        ("00D60002 00012C" + body.hex(), "6700"),
        ("00D60002 FF" + body[:255].hex(), "9000"),
        ("00D601012D" + body[255:].hex(), "9000"),
        ("00D6000002 012C", "9000"),
    ])
    tag.write_ndef(body, verify=False)
    link.assert_done()


def test_short_only_reader_never_sends_extended_apdus() -> None:
    body = bytes(300).hex()
    tag, link = run(detection(cc(mle=0x0400)), [
        (READ_NLEN, "012C 9000"),
        ("00B0000200", body[:512] + "9000"),
        ("00B001022C", body[512:] + "9000"),
    ], limits=SHORT_ONLY)
    assert tag.read_ndef().message == bytes(300)
    link.assert_done()


def test_extended_command_apdu_encodings() -> None:
    """ISO/IEC 7816-4 §5.1 cases 2E, 3E, 4E."""
    assert ExtendedCommandApdu(0, 0xB0, 0, 2, le=0x12C).encode().hex() == "00b0000200012c"
    assert ExtendedCommandApdu(0, 0xB0, 0, 2, le=0x10000).encode().hex() == "00b00002000000"
    assert ExtendedCommandApdu(0, 0xD6, 0, 0, b"\x01\x02").encode().hex() == "00d600000000020102"
    assert ExtendedCommandApdu(0, 0xB1, 0, 0, b"\x54", le=5).encode().hex() == "00b10000000001540005"


# ---------------------------------------------------------------------- update


def test_update_writes_nlen_zero_then_message_then_nlen_and_verifies() -> None:
    tag, link = run(detection(), [
        ("00D6000002 0000", "9000"),
        ("00D6000209" + MSG, "9000"),
        ("00D6000002 0009", "9000"),
        (READ_NLEN, "0009 9000"),
        ("00B0000209", MSG + "9000"),
    ])
    written = tag.write_ndef(bytes.fromhex(MSG))
    assert written.message == bytes.fromhex(MSG)
    link.assert_done()


def test_update_chunks_by_mlc() -> None:
    body = bytes(range(20))
    tag, link = run(detection(cc(mlc=0x08)), [
        ("00D6000002 0000", "9000"),
        ("00D6000208" + body[0:8].hex(), "9000"),
        ("00D6000A08" + body[8:16].hex(), "9000"),
        ("00D6001204" + body[16:20].hex(), "9000"),
        ("00D6000002 0014", "9000"),
    ])
    tag.write_ndef(body, verify=False)
    link.assert_done()


def test_read_only_cc_refuses_before_any_update() -> None:
    tag, link = run(detection(cc(write=0xFF)))
    with pytest.raises(ReadOnly):
        tag.write_ndef(bytes.fromhex(MSG))
    link.assert_done()


def test_tag_refusing_update_with_6982_is_read_only() -> None:
    tag, link = run(detection(), [("00D6000002 0000", "6982")])
    with pytest.raises(ReadOnly, match="6982"):
        tag.write_ndef(bytes.fromhex(MSG))
    link.assert_done()


def test_message_larger_than_the_file_is_refused_before_writing() -> None:
    tag, link = run(detection(cc(size=0x000B)))  # 11-byte file: 9 bytes of message
    with pytest.raises(CapacityExceeded):
        tag.write_ndef(bytes(10))
    link.assert_done()


# ---------------------------------------------------------------------- SELECT quirks and versions


def test_file_select_p2_0c_refused_is_retried_with_00_and_kept() -> None:
    tag, link = run([
        SELECT_APP_V2,
        ("00A4000C02E103", "6A86"),
        ("00A4000002E103", "9000"),
        (READ_CC, CC_V2 + "9000"),
        ("00A4000002E104", "9000"),  # the P2 that worked comes first now
        (READ_NLEN, "0009 9000"),
        ("00B0000209", MSG + "9000"),
    ])
    assert tag.read_ndef().message == bytes.fromhex(MSG)
    link.assert_done()


def test_application_select_p2_00_refused_is_retried_with_0c() -> None:
    tag, link = run([
        ("00A4040007D276000085010100", "6A86"),
        ("00A4040C07D2760000850101", "9000"),
        SELECT_CC, (READ_CC, CC_V2 + "9000"), SELECT_NDEF,
        (READ_NLEN, "0000 9000"),
    ])
    assert tag.read_ndef().message == b""
    link.assert_done()


def test_select_refused_with_both_p2_is_typed() -> None:
    tag, link = run([SELECT_APP_V2, ("00A4000C02E103", "6B00"), ("00A4000002E103", "6A86")])
    with pytest.raises(SelectRefused) as info:
        tag.read_ndef()
    assert info.value.sw == 0x6A86
    link.assert_done()


def test_mapping_1_0_aid_fallback_selects_files_with_p2_00() -> None:
    """T4T 2.0 §5.5: a mapping-1.0 tag answers only D2760000850100; its files take P2=00h."""
    tag, link = run([
        ("00A4040007D276000085010100", "6A82"),
        ("00A4040007D276000085010000", "9000"),
        ("00A4000002E103", "9000"),
        (READ_CC, cc(version=0x10, mle=0x3B, mlc=0x34) + "9000"),
        ("00A4000002E104", "9000"),
        (READ_NLEN, "0009 9000"),
        ("00B0000209", MSG + "9000"),
    ])
    ndef = tag.read_ndef()
    assert ndef.aid == bytes.fromhex("D2760000850100") and ndef.cc.major == 1
    link.assert_done()


def test_no_ndef_application_only_when_both_aids_answer_6a82() -> None:
    tag, link = run([
        ("00A4040007D276000085010100", "6A82"),
        ("00A4040007D276000085010000", "6A82"),
    ])
    with pytest.raises(NoNdefApplication) as info:
        tag.read_ndef()
    assert info.value.sw == 0x6A82
    link.assert_done()


def test_application_select_other_error_is_not_no_ndef() -> None:
    tag, link = run([("00A4040007D276000085010100", "6F00")])
    with pytest.raises(StatusError) as info:
        tag.read_ndef()
    assert not isinstance(info.value, NoNdefApplication)
    assert info.value.sw == 0x6F00
    link.assert_done()


# ---------------------------------------------------------------------- 6A82 and bad CCs


def test_ndef_file_named_by_the_cc_missing_is_file_not_found() -> None:
    tag, link = run(detection()[:3], [("00A4000C02E104", "6A82")])
    with pytest.raises(FileNotFound) as info:
        tag.read_ndef()
    assert info.value.file_id == 0xE104 and info.value.sw == 0x6A82
    assert not isinstance(info.value, NoNdefApplication)
    link.assert_done()


def test_cc_file_missing_is_file_not_found() -> None:
    tag, link = run([SELECT_APP_V2, ("00A4000C02E103", "6A82")])
    with pytest.raises(FileNotFound) as info:
        tag.read_ndef()
    assert info.value.file_id == 0xE103
    link.assert_done()


def test_unsupported_major_version_is_refused() -> None:
    tag, link = run([SELECT_APP_V2, SELECT_CC, (READ_CC, cc(version=0x40) + "9000")])
    with pytest.raises(UnsupportedVersion) as info:
        tag.read_ndef()
    assert info.value.version == 0x40
    link.assert_done()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("000E 20 00FF 00FF 0406 E104 0800 00 00", "CCLEN"),
        ("000F 20 00FF 00FF 0506 E104 0800 00 00", "not an NDEF File Control TLV"),
        ("000F 20 00FF 00FF 0405 E104 0800 00 00", "length 5"),
        ("000F 20 00FF 0000 0406 E104 0800 00 00", "MLc is 0"),
        ("000F 20 000A 00FF 0406 E104 0800 00 00", "MLe 10"),
        ("000F 20 00FF 00FF 0406 E103 0800 00 00", "reserved"),
        ("000F 20 00FF 00FF 0406 E104 0004 00 00", "below the minimum 5"),
        ("000F 20 00FF 00FF", "at least 15"),
    ],
)
def test_bad_cc_is_corrupt_cc(raw: str, why: str) -> None:
    with pytest.raises(CorruptCc, match=why):
        CapabilityContainer.parse(bytes.fromhex(raw.replace(" ", "")))


def test_tolerant_cc_accepts_small_mle_and_records_it() -> None:
    parsed = CapabilityContainer.parse(bytes.fromhex(cc(mle=0x0A).replace(" ", "")), strict=False)
    assert parsed.mle == 0x0A and parsed.issues == ("MLe 10 is below the minimum 15",)


def test_bad_cc_through_the_tag_is_typed() -> None:
    tag, link = run([SELECT_APP_V2, SELECT_CC, (READ_CC, "000F 20 00FF 00FF 0506 E104 0800 00 00 9000")])
    with pytest.raises(CorruptCc):
        tag.read_ndef()
    link.assert_done()


# ---------------------------------------------------------------------- NLEN vs the CC's file size


def test_nlen_larger_than_the_file_is_typed_in_strict_mode() -> None:
    tag, link = run(detection(cc(size=0x0010)), [(READ_NLEN, "0020 9000")])
    with pytest.raises(NlenOutOfRange) as info:
        tag.read_ndef()
    assert (info.value.nlen, info.value.max_nlen) == (0x20, 0x0E)
    link.assert_done()


def test_tolerant_mode_reads_past_a_too_small_cc_size_when_the_file_has_the_bytes() -> None:
    body = bytes(range(0x20)).hex()
    tag, link = run(detection(cc(size=0x0010)), [(READ_NLEN, "0020 9000"), ("00B0000220", body + "9000")],
                    strict=False)
    assert tag.read_ndef().message == bytes(range(0x20))
    link.assert_done()


def test_tolerant_mode_end_of_file_6282_is_truncated_not_empty() -> None:
    body = bytes(range(14)).hex()
    tag, link = run(detection(cc(size=0x0010)), [(READ_NLEN, "0020 9000"), ("00B0000220", body + "6282")],
                    strict=False)
    with pytest.raises(NdefTruncated) as info:
        tag.read_ndef()
    assert (info.value.nlen, info.value.got) == (0x20, 14)
    link.assert_done()


def test_end_of_file_6282_with_all_bytes_is_success() -> None:
    tag, link = run(detection(), [(READ_NLEN, "0009 9000"), ("00B0000209", MSG + "6282")])
    assert tag.read_ndef().message == bytes.fromhex(MSG)
    link.assert_done()


def test_offset_past_the_end_6b00_is_truncated() -> None:
    body = bytes(range(40)).hex()
    tag, link = run(detection(cc(mle=0x0F)), [
        (READ_NLEN, "0028 9000"),
        ("00B000020F", body[0:30] + "9000"),
        ("00B000110F", "6B00"),
    ])
    with pytest.raises(NdefTruncated):
        tag.read_ndef()
    link.assert_done()
