"""``huma sim`` commands: happy paths and the bad-input messages (exit status 2)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from simulator.chip import ChipVariant, Ntag21x
from simulator.harness import PcscdHarness
from huma.cli import main

UID = "04A1B2C3D4E5F6"


def test_new_import_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "c.json"
    assert main(["sim", "new", str(card), "--chip", "ntag213", "--uid", UID]) == 0
    chip = Ntag21x.load(card)
    assert chip.variant is ChipVariant.NTAG213 and chip.uid.hex().upper() == UID
    for fmt, name in (("flipper", "c.nfc"), ("proxmark", "c.pm3.json")):
        dump = tmp_path / name
        assert main(["sim", "export", str(card), str(dump), "--format", fmt]) == 0
        back = tmp_path / f"back-{fmt}.json"
        assert main(["sim", "import", str(dump), str(back)]) == 0
        assert Ntag21x.load(back).memory == chip.memory
    assert "ntag213 UID 04A1B2C3D4E5F6" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sim", "new", "{tmp}/x.json", "--chip", "mifare-classic"], "unknown chip type 'mifare-classic'"),
        (["sim", "import", "{tmp}/missing.nfc", "{tmp}/x.json"], "missing.nfc: no such dump file"),
        (["sim", "import", "{tmp}/bad.nfc", "{tmp}/x.json"], "bad.nfc:3: expected 'Key: value'"),
        (["sim", "export", "{tmp}/bad.nfc", "{tmp}/x.nfc", "--format", "flipper"], "bad.nfc: not JSON"),
        (["sim", "present", "{tmp}/card.json", "--port", "{free}", "--for", "0"], "nothing listens on vpcd port"),
    ],
)
def test_bad_input_names_file_or_port_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "bad.nfc").write_text("Filetype: Flipper NFC device\nVersion: 4\ngarbage line\n")
    Ntag21x.blank(ChipVariant.NTAG215).save(tmp_path / "card.json")
    from simulator.harness import free_port_pair

    args = [a.format(tmp=tmp_path, free=free_port_pair()) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    if "present" in argv:
        assert "vsmartcard-vpcd" in err


@pytest.mark.pcsc
def test_present_puts_card_on_reader_and_busy_slot_is_reported(
    pcscd_service: PcscdHarness, present_card, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smartcard.System import readers

    path = tmp_path / "card.json"
    assert main(["sim", "new", str(path), "--uid", UID]) == 0
    port = str(pcscd_service.port(1))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(["sim", "present", str(path), "--port", port, "--for", "3"])))
    t.start()
    from tests.fixtures.pcsc import wait_for_card

    wait_for_card(pcscd_service.reader_name(1), present=True)
    (reader,) = [r for r in readers() if str(r) == pcscd_service.reader_name(1)]
    conn = reader.createConnection()
    conn.connect()
    data, sw1, _ = conn.transmit([0xFF, 0xD6, 0x00, 0x04, 0x04, 1, 2, 3, 4])
    assert sw1 == 0x90
    conn.release()
    # a second card on the same slot: vpcd never polls it
    other = tmp_path / "other.json"
    Ntag21x.blank(ChipVariant.NTAG215).save(other)
    assert main(["sim", "present", str(other), "--port", port, "--for", "0", "--wait", "0.5"]) == 2
    assert "never polled it" in capsys.readouterr().err
    t.join(10)
    assert result == [0]
    assert Ntag21x.load(path).page(4) == bytes([1, 2, 3, 4]), "memory saved when the card left"


def test_import_partial_dump_needs_fill_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_sim_dumps import _flipper_partial, _image_215

    dump = tmp_path / "partial.nfc"
    dump.write_text(_flipper_partial(_image_215(), 130))
    out = tmp_path / "c.json"
    capsys.readouterr()
    assert main(["sim", "import", str(dump), str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "partial.nfc" in err and "130-134" in err and "--fill-missing" in err
    assert not out.exists()
    assert main(["sim", "import", str(dump), str(out), "--fill-missing"]) == 0
    err = capsys.readouterr().err
    assert "lacked page(s) 130-134" in err and "AUTH0=FF" in err
    chip = Ntag21x.load(out)
    assert chip.page(chip.layout.cfg0_page)[3] == 0xFF


@pytest.mark.parametrize("argv", [
    ["sim", "new", "{out}"],
    ["sim", "import", "{dump}", "{out}"],
    ["sim", "export", "{card}", "{out}", "--format", "flipper"],
])
def test_output_files_are_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        argv: list[str]) -> None:
    card, dump, out = tmp_path / "card.json", tmp_path / "d.nfc", tmp_path / "existing"
    assert main(["sim", "new", str(card), "--uid", UID]) == 0
    assert main(["sim", "export", str(card), str(dump), "--format", "flipper"]) == 0
    out.write_bytes(b"precious")
    args = [a.format(out=out, dump=dump, card=card) for a in argv]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"Error: {out} exists; pass --force to overwrite it"
    assert out.read_bytes() == b"precious"
    assert main([*args, "--force"]) == 0
    assert out.read_bytes() != b"precious"


def test_sim_new_hex_options_are_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["sim", "new", str(tmp_path / "c.json"), "--uid", "04A1B2"]) == 2
    assert "'--uid': '04A1B2' is 3 bytes (expected 7 bytes" in capsys.readouterr().err
    assert main(["sim", "new", str(tmp_path / "c.json"), "--signature", "zz"]) == 2
    assert "'--signature': 'zz' is not hex" in capsys.readouterr().err
