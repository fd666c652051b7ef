"""APDU layer (ISO/IEC 7816-4 §5): command/response encoding, 61xx/6Cxx, vendor words, AP-1, AP-2, PC-3.

Transcript tests replay recorded exchanges (each command asserted, in order),
for status words our simulator never emits (T=0 ``61xx``); the reader-level
cases run through real pcscd + vpcd with the virtual card.
"""

from __future__ import annotations

import logging

import pytest

from cardlib.apdu import (
    TRAFFIC,
    ApduChannel,
    ApduError,
    CommandApdu,
    ResponseApdu,
    split_response,
    sw_name,
)
from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved, SessionLost, TagLost, TagMute


class TranscriptConnection(Connection):
    """Replays a recorded transcript: asserts each command APDU, returns its recorded answer."""

    def __init__(self, exchanges: list[tuple[str, str]]) -> None:
        self.exchanges = [(bytes.fromhex(c), bytes.fromhex(r)) for c, r in exchanges]

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        assert self.exchanges, f"unexpected extra command {apdu.hex()}"
        expected, answer = self.exchanges.pop(0)
        assert apdu.hex() == expected.hex()
        return split_response(answer)

    def close(self) -> None:
        pass

    @property
    def reader_name(self) -> str:
        return "transcript"


def test_command_apdu_cases_encode_and_decode() -> None:
    cases = {
        "FFCA000000": CommandApdu(0xFF, 0xCA, 0, 0, le=256),
        "FFB0000410": CommandApdu(0xFF, 0xB0, 0, 4, le=16),
        "FFD6000404DEADBEEF": CommandApdu(0xFF, 0xD6, 0, 4, bytes.fromhex("DEADBEEF")),
        "00A4040007D276000085010100": CommandApdu(0, 0xA4, 4, 0, bytes.fromhex("D2760000850101"), 256),
        "FF00480000": CommandApdu(0xFF, 0x00, 0x48, 0, le=256),
        "FFC20000": CommandApdu(0xFF, 0xC2, 0, 0),
    }
    for hexed, cmd in cases.items():
        assert cmd.encode().hex().upper() == hexed
        assert CommandApdu.decode(bytes.fromhex(hexed)) == cmd
    with pytest.raises(ValueError):
        CommandApdu(0x100, 0, 0, 0)
    with pytest.raises(ValueError):
        CommandApdu(0, 0, 0, 0, bytes(256))
    with pytest.raises(ValueError):
        CommandApdu.decode(bytes.fromhex("00A40400050102"))


def test_get_response_loop_on_61xx() -> None:
    conn = TranscriptConnection([
        ("00B0000000", "6110"),
        ("00C0000010", "00112233445566778899AABBCCDDEEFF6104"),
        ("00C0000004", "CAFEBABE9000"),
    ])
    data = ApduChannel(conn).send(CommandApdu(0x00, 0xB0, 0, 0, le=256))
    assert data == bytes.fromhex("00112233445566778899AABBCCDDEEFFCAFEBABE")
    assert not conn.exchanges


def test_one_resend_on_6cxx_then_error() -> None:
    conn = TranscriptConnection([("FFCA000004", "6C07"), ("FFCA000007", "04A1B2C3D4E5F69000")])
    assert ApduChannel(conn).send(CommandApdu(0xFF, 0xCA, 0, 0, le=4)) == bytes.fromhex("04A1B2C3D4E5F6")
    conn = TranscriptConnection([("FFCA000004", "6C07"), ("FFCA000007", "6C08")])
    with pytest.raises(ApduError) as info:
        ApduChannel(conn).send(CommandApdu(0xFF, 0xCA, 0, 0, le=4))
    assert info.value.sw == 0x6C08


def test_apdu_error_carries_data_and_sw() -> None:
    conn = TranscriptConnection([("00A4000C02E104", "6A82")])
    with pytest.raises(ApduError) as info:
        ApduChannel(conn).send(CommandApdu(0, 0xA4, 0, 0x0C, bytes.fromhex("E104")))
    assert info.value.sw == 0x6A82 and info.value.data == b""
    assert "6A82 FILE_NOT_FOUND" in str(info.value)
    assert sw_name(0x6110) == "6110 BYTES_REMAINING"


def test_AP_1_short_response_is_tag_mute() -> None:
    with pytest.raises(TagMute):
        split_response(b"")
    with pytest.raises(TagMute):
        split_response(b"\x90")
    assert issubclass(TagMute, SessionLost)  # callers treat it like "card left the field"
    assert split_response(b"\x90\x00") == (b"", 0x9000)


def test_AP_2_vendor_words_retry_once_after_repoll_then_tag_lost() -> None:
    repolls: list[int] = []
    for word in ("6300", "6301", "6327"):
        conn = TranscriptConnection([("FFB0000410", word), ("FFB0000410", word)])
        channel = ApduChannel(conn, reader="acr122u", repoll=lambda: repolls.append(1))
        with pytest.raises(TagLost):
            channel.send(CommandApdu(0xFF, 0xB0, 0, 4, le=16))
        assert not conn.exchanges
    assert len(repolls) == 3
    # one failure then success: the retry recovers
    conn = TranscriptConnection([("FFB0000410", "6301"), ("FFB0000410", "00" * 16 + "9000")])
    assert ApduChannel(conn, reader="acr122u").send(CommandApdu(0xFF, 0xB0, 0, 4, le=16)) == bytes(16)


def test_AP_2_vendor_words_are_not_iso_63cx_or_other_classes() -> None:
    # ISO 63 C2 (retry counter) on an FF command is not a vendor word: no retry, ApduError.
    conn = TranscriptConnection([("FF20000004 31323334".replace(" ", ""), "63C2")])
    with pytest.raises(ApduError) as info:
        ApduChannel(conn, reader="acr122u").send(CommandApdu(0xFF, 0x20, 0, 0, b"1234"))
    assert info.value.sw == 0x63C2
    # 63 00 on an ISO (non-FF) command keeps its ISO meaning: no retry.
    conn = TranscriptConnection([("0020008104 31323334".replace(" ", ""), "6300")])
    with pytest.raises(ApduError):
        ApduChannel(conn, reader="acr122u").send(CommandApdu(0x00, 0x20, 0x00, 0x81, b"1234"))
    assert not conn.exchanges


def test_AP_2_led_control_90xx_is_success_only_for_control_commands() -> None:
    conn = TranscriptConnection([("FF00400E0400000000", "907F")])
    ApduChannel(conn, reader="acr122u").send(CommandApdu(0xFF, 0x00, 0x40, 0x0E, bytes(4)))
    conn = TranscriptConnection([("FFB0000410", "9001")])
    with pytest.raises(ApduError):
        ApduChannel(conn, reader="acr122u").send(CommandApdu(0xFF, 0xB0, 0, 4, le=16))


def test_traffic_is_logged_below_debug_with_a_secrets_warning(caplog: pytest.LogCaptureFixture) -> None:
    conn = TranscriptConnection([("FFCA000000", "04A1B2C3D4E5F69000")])
    with caplog.at_level(TRAFFIC, logger="cardlib.apdu"):
        ApduChannel(conn).send(CommandApdu(0xFF, 0xCA, 0, 0, le=256))
    assert TRAFFIC < logging.DEBUG
    assert any(r.levelno == TRAFFIC and "ffca000000" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING and "secrets" in r.getMessage() for r in caplog.records)
    assert ResponseApdu(b"\x01", 0x9000).encode() == b"\x01\x90\x00"


# ---------------------------------------------------------------- through real pcscd + vpcd


def test_AP_1_empty_answer_from_the_reader_simulator_is_tag_mute() -> None:
    # Through vpcd a 0-byte R-APDU blocks pcscd's SCardTransmit, so the 0-byte case runs on
    # the in-process reader simulator (same ReaderEmulator the vpcd card serves); the
    # 1-byte case below takes the same short-response path through real pcscd.
    from simulator.chip import ChipVariant, Ntag21x
    from simulator.reader import ReaderEmulator, ReaderQuirks
    from tests.type2_emulator import EmulatorConnection

    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    conn = EmulatorConnection(ReaderEmulator(chip, "acr122u", ReaderQuirks(empty_on_unknown=True)))
    with pytest.raises(TagMute):
        ApduChannel(conn, reader="acr122u").send(CommandApdu.decode(bytes.fromhex("A0A40000027F10")))


@pytest.mark.pcsc
def test_AP_1_one_byte_answer_through_pcscd_is_tag_mute(present_card, reader_name) -> None:
    from simulator.chip import ChipVariant, Ntag21x
    from simulator.reader import ReaderQuirks
    from cardlib.transport.pcsc import connect

    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    quirks = ReaderQuirks(empty_on_unknown=True, mute_answer=b"\x90")  # 1 byte: no SW1 SW2
    with present_card(chip, kind="acr122u", quirks=quirks):
        with connect(reader_name(0)) as conn:
            channel = ApduChannel(conn, reader="acr122u")
            with pytest.raises(TagMute, match="1 byte"):
                channel.send(CommandApdu.decode(bytes.fromhex("A0A40000027F10")))
            # the reader itself is fine: the next pseudo-APDU answers normally
            assert channel.send(CommandApdu(0xFF, 0xCA, 0x00, 0x00, le=256)) == chip.uid


@pytest.mark.pcsc
def test_AP_2_led_control_and_vendor_words_through_pcscd(present_card, reader_name) -> None:
    from simulator.chip import ChipVariant, Ntag21x
    from cardlib.transport.pcsc import connect

    chip = Ntag21x.blank(ChipVariant.parse("ntag213"))
    with present_card(chip, kind="acr122u"):
        with connect(reader_name(0)) as conn:
            channel = ApduChannel(conn, reader="acr122u", repoll=conn.reconnect)
            channel.send(CommandApdu(0xFF, 0x00, 0x40, 0x0E, bytes.fromhex("00000000")))
            # page 0x30 does not exist on an NTAG213: the chip NAKs, the ACR122U says 63 00 twice
            before = channel.commands_sent
            with pytest.raises(TagLost):
                channel.send(CommandApdu(0xFF, 0xB0, 0x00, 0x30, le=16))
            assert channel.commands_sent - before == 2
            assert channel.send(CommandApdu(0xFF, 0xB0, 0x00, 0x04, le=16)) == chip.memory[16:32]


@pytest.mark.pcsc
def test_PC_3_card_taken_away_mid_transaction(present_card, reader_name) -> None:
    from simulator.chip import ChipVariant, Ntag21x
    from cardlib.transport.pcsc import connect

    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    with present_card(chip, kind="acr122u") as card:
        conn = connect(reader_name(0))
        try:
            channel = ApduChannel(conn, reader="acr122u")
            channel.send(CommandApdu(0xFF, 0xB0, 0x00, 0x04, le=16))
            card.stop()  # the card is lifted
            with pytest.raises(SessionLost) as info:
                channel.send(CommandApdu(0xFF, 0xB0, 0x00, 0x08, le=16))
            assert info.value.code in (0x80100069, 0x80100016, 0x80100068, 0x80100066) or isinstance(
                info.value, (CardRemoved, TagMute)
            )
        finally:
            conn.close()
