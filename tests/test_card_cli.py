"""``huma readers`` / ``huma card info|dump|format`` through real pcscd + vpcd with virtual cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cardlib import ndef as nd
from simulator.chip import ChipVariant, Ntag21x
from cardlib.transport.pcsc import select_reader
from cardlib.transport.errors import ReaderNotFound
from cardlib.type2 import ACR122U, Type2Tag
from huma.cli import main
from tests.type2_emulator import EmulatorConnection

SAMPLE_UID = bytes.fromhex("04E10CDA993C80")
SAMPLE_SIG = bytes.fromhex("8B76052EE42F5567BEB53238B3E3F9950707C0DCC956B5C5EFCFDB709B2D82B3")


def test_reader_choice_by_pattern_never_by_index() -> None:
    names = ["ACS ACR122U PICC Interface 00 00", "ACS ACR122U SAM Interface 00 01", "Virtual PCD 00 00"]
    assert select_reader(names, "ACS ACR122U PICC*") == names[0]
    assert select_reader(names, "re:SAM") == names[1]
    assert select_reader(names[2:], None) == names[2]
    for pattern in (None, "ACS*", "Nope*", "re:("):
        with pytest.raises(ReaderNotFound):
            select_reader(names, pattern)


def written_card(tmp: Path) -> Ntag21x:
    from simulator.reader import ReaderEmulator
    from cardlib.type2 import channel_for

    chip = Ntag21x(ChipVariant.parse("ntag215"), SAMPLE_UID, signature=SAMPLE_SIG)
    conn = EmulatorConnection(ReaderEmulator(chip, "acr122u"))
    msg = nd.encode_message([nd.external_record("humabetang.id:i", b"identity", "i"),
                             nd.external_record("humabetang.id:s", bytes(40), "a")])
    Type2Tag(channel_for(conn, ACR122U), conn.atr).write_ndef(msg)
    conn.close()
    return chip


@pytest.mark.pcsc
def test_card_info_json_and_readers(present_card, reader_name, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chip = written_card(tmp_path)
    with present_card(chip, kind="acr122u"):
        assert main(["readers"]) == 0
        listing = capsys.readouterr().out
        assert f"{reader_name(0)}\tcard" in listing and f"{reader_name(1)}\tempty" in listing
        # two readers exist: no pattern is refused (never "the first one")
        assert main(["card", "info"]) == 2
        assert "configure a --reader pattern" in capsys.readouterr().err
        assert main(["card", "info", "--reader", reader_name(0), "--kind", "acr122u", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert report["chip"] == "NTAG215" and report["uid"] == SAMPLE_UID.hex().upper()
    assert report["cc"]["raw"] == "E1103E00" and report["data_area"]["mis_issued"] is False
    assert report["originality"].startswith("verified")
    assert [r["type"] for r in report["ndef"]["records"]] == ["urn:nfc:ext:humabetang.id:i", "urn:nfc:ext:humabetang.id:s"]
    assert report["ndef"]["records"][0]["payload"] == b"identity".hex()


@pytest.mark.pcsc
def test_card_dump_loads_in_the_sim_and_format(present_card, reader_name, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    chip = written_card(tmp_path)
    out = tmp_path / "dump.json"
    with present_card(chip, kind="part3"):
        assert main(["card", "dump", "--reader", "re:PCD 00 00$", "--kind", "part3", str(out)]) == 0
    loaded = Ntag21x.load(out)
    assert loaded.uid == SAMPLE_UID and loaded.signature == SAMPLE_SIG
    visible = chip.memory[: chip.layout.pwd_page * 4]
    assert loaded.memory[: len(visible)] == visible
    blank = Ntag21x.blank(ChipVariant.parse("ntag213"))
    blank.poke(3, bytes(4))
    with present_card(blank, kind="plain"):
        assert main(["card", "format", "--reader", reader_name(0), "--kind", "none", "--chip", "NTAG213"]) == 0
    assert blank.page(3) == bytes.fromhex("E1101200") and blank.page(4)[:3] == bytes.fromhex("0300FE")
    capsys.readouterr()


_NO_PCSCD = {"PCSCLITE_CSOCK_NAME": "/nonexistent/pcscd.comm"}  # pcsc-lite's client socket override


@pytest.mark.parametrize("argv", [["readers"], ["card", "info"], ["card", "dump", "out.card.json"]])
def test_no_pcscd_says_how_to_start_it(tmp_path: Path, argv: list[str]) -> None:
    """PC-1: with no PC/SC service the message names pcscd and the command that starts it (exit 2)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "huma.cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **_NO_PCSCD}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: SCardEstablishContext: pcscd is not running (PC/SC service unavailable, 0x8010001D): "
        "start it with `pcscd` or `systemctl start pcscd`; or the pcscd behind "
        "PCSCLITE_CSOCK_NAME=/nonexistent/pcscd.comm (that socket does not exist) is not running"]


def test_service_errors_keep_their_code() -> None:
    from cardlib.transport.errors import ServiceUnavailable
    from cardlib.transport.pcsc import SCARD_E_NO_SERVICE, SCARD_E_SERVICE_STOPPED, SCARD_F_COMM_ERROR, map_pcsc_error

    for code in (SCARD_E_NO_SERVICE, SCARD_E_SERVICE_STOPPED, SCARD_F_COMM_ERROR):
        exc = map_pcsc_error(code - (1 << 32), "SCardListReaders")  # pyscard hands out signed codes
        assert isinstance(exc, ServiceUnavailable) and exc.code == code
        assert str(exc).count(f"0x{code:08X}") == 1 and "pcscd" in str(exc)


def test_card_dump_refuses_to_overwrite_before_touching_the_reader(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dump.json"
    out.write_text("keep")
    assert main(["card", "dump", "--reader", "no-such-reader", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"Error: {out} exists; pass --force to overwrite it"
    assert out.read_text() == "keep"


@pytest.mark.pcsc
def test_card_info_waits_for_the_card_and_says_so_when_none_comes(present_card, reader_name, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    assert main(["card", "info", "--reader", reader_name(1), "--wait", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"place a card on {reader_name(1)!r} (waiting up to 0.5 s)" in err
    assert f"error: no card on {reader_name(1)!r} after 0.5 s: place the card on the reader" in err
    assert "0x8010000C" in err  # the PC/SC code stays for whoever searches it

    chip = written_card(tmp_path)
    late = present_card(chip, slot=1, kind="acr122u")
    timer = threading.Timer(1.0, late.__enter__)  # the holder puts the card down after the command started
    timer.start()
    try:
        assert main(["card", "info", "--reader", reader_name(1), "--wait", "30", "--json"]) == 0
    finally:
        timer.join()
        late.__exit__(None, None, None)
    assert json.loads(capsys.readouterr().out)["uid"] == SAMPLE_UID.hex().upper()


@pytest.mark.pcsc
def test_card_info_auto_kind_comes_from_the_reader_profile(present_card, reader_name, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """'Virtual PCD' is the virtual-acr122u profile's reader: counter and version, not 'generic' failures."""
    chip = written_card(tmp_path)
    with present_card(chip, kind="acr122u"):
        assert main(["card", "info", "--reader", reader_name(0), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert isinstance(report["counter"], int) and report["version"] == "0004040201001103"
    assert report["originality"].startswith("verified")
    with present_card(chip, kind="plain"):  # a reader without pass-through: said plainly, not as an exception
        assert main(["card", "info", "--reader", reader_name(0), "--kind", "none"]) == 0
        out = capsys.readouterr().out
    assert "counter: unknown with this reader (no pass-through for raw tag commands); try --kind acr122u" in out
    assert "version: unknown with this reader" in out and "UnsupportedCommand" not in out
