"""Flipper Zero .nfc (v2, v4) and Proxmark3 JSON dumps: import, export, byte-exact round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.chip import ChipVariant, Ntag21x
from simulator.dumps import PartialDumpError, export_flipper, export_proxmark, filled_pages, import_dump, write_export
from simulator.errors import DumpFormatError

SIG = bytes.fromhex("1B84EB70BD4CBD1B1DE4980B1858BD7C7285B4E47B388E96CF886BEEA343AD90")


def _image_215() -> bytes:
    """An NTAG215 with an NDEF Text record 'hello', NFC counter enabled."""
    chip = Ntag21x.blank(ChipVariant.NTAG215, bytes.fromhex("04515CFA6F4980"))
    chip.poke(4, bytes.fromhex("03 0A D1 01"))
    chip.poke(5, bytes.fromhex("06 54 02 65"))
    chip.poke(6, bytes.fromhex("6E 68 65 6C"))
    chip.poke(7, bytes.fromhex("6C 6F FE 00"))
    chip.poke(chip.layout.cfg1_page, bytes.fromhex("10 05 00 00"))
    chip.poke(chip.layout.pwd_page, bytes(4))  # PWD reads as 00 in a dump
    return chip.memory


def _pages(image: bytes, indent: str = "") -> str:
    return "".join(
        f"{indent}Page {n}: " + " ".join(f"{b:02X}" for b in image[4 * n : 4 * n + 4]) + "\n"
        for n in range(len(image) // 4)
    )


def flipper_v2(image: bytes) -> str:
    # Layout of Flipper firmware 0.5x files (file format v2: LSB-first ATQA, chip in Device type).
    return (
        "Filetype: Flipper NFC device\n"
        "Version: 2\n"
        "# Nfc device type can be UID, Mifare Ultralight, Mifare Classic, Bank card\n"
        "Device type: NTAG215\n"
        "# UID, ATQA and SAK are common for all formats\n"
        "UID: 04 51 5C FA 6F 49 80\n"
        "ATQA: 44 00\n"
        "SAK: 00\n"
        "# Mifare Ultralight specific data\n"
        "Signature: " + " ".join(f"{b:02X}" for b in SIG) + "\n"
        "Mifare version: 00 04 04 02 01 00 11 03\n"
        "Counter 0: 0\nTearing 0: 00\nCounter 1: 0\nTearing 1: 00\nCounter 2: 7\nTearing 2: 00\n"
        "Pages total: 135\n" + _pages(image)
    )


def flipper_v4(image: bytes) -> str:
    # Layout of current firmware (file format v4, NTAG/Ultralight data format 2, MSB-first ATQA).
    return (
        "Filetype: Flipper NFC device\n"
        "Version: 4\n"
        "# Device type can be ISO14443-3A, ISO14443-3B, ISO14443-4A, ISO15693-3, FeliCa, NTAG/Ultralight, "
        "Mifare Classic, Mifare Plus, Mifare DESFire, SLIX, ST25TB, EMV\n"
        "Device type: NTAG/Ultralight\n"
        "# UID is common for all formats\n"
        "UID: 04 51 5C FA 6F 49 80\n"
        "# ISO14443-3A specific data\n"
        "ATQA: 00 44\n"
        "SAK: 00\n"
        "# NTAG/Ultralight specific data\n"
        "Data format version: 2\n"
        "NTAG/Ultralight type: NTAG215\n"
        "Signature: " + " ".join(f"{b:02X}" for b in SIG) + "\n"
        "Mifare version: 00 04 04 02 01 00 11 03\n"
        "Counter 0: 0\nTearing 0: 00\nCounter 1: 0\nTearing 1: 00\nCounter 2: 7\nTearing 2: 00\n"
        "Pages total: 135\nPages read: 135\n" + _pages(image) + "Failed authentication attempts: 0\n"
    )


def proxmark(image: bytes) -> str:
    # proxmark3 saveFileJSON(jsfMfuMemory): jansson JSON_INDENT(2), insertion order, no final newline.
    doc = {
        "Created": "proxmark3",
        "FileType": "mfu",
        "Card": {
            "UID": "04515CFA6F4980",
            "Version": "0004040201001103",
            "TBO_0": "0000",
            "TBO_1": "00",
            "Signature": SIG.hex().upper(),
            "Counter0": "000000",
            "Tearing0": "BD",
            "Counter1": "000000",
            "Tearing1": "BD",
            "Counter2": "070000",
            "Tearing2": "BD",
        },
        "blocks": {str(n): image[4 * n : 4 * n + 4].hex().upper() for n in range(len(image) // 4)},
    }
    return json.dumps(doc, indent=2)


@pytest.mark.parametrize("make", [flipper_v2, flipper_v4, proxmark], ids=["flipper-v2", "flipper-v4", "proxmark"])
def test_import_round_trips_byte_for_byte(tmp_path: Path, make) -> None:
    image = _image_215()
    text = make(image)
    src = tmp_path / "dump.in"
    src.write_text(text)
    chip = import_dump(src)
    assert chip.variant is ChipVariant.NTAG215
    assert chip.uid == bytes.fromhex("04515CFA6F4980")
    assert chip.memory == image
    assert chip.signature == SIG
    assert chip.nfc_counter == 7
    # through a card file (what `huma sim import` + `huma sim export` do)
    card = chip.save(tmp_path / "card.json")
    again = Ntag21x.load(card)
    out = export_proxmark(again) if make is proxmark else export_flipper(again)
    assert out.encode() == text.encode()


def test_export_reflects_changes_made_on_the_virtual_card(tmp_path: Path) -> None:
    src = tmp_path / "d.nfc"
    src.write_text(flipper_v4(_image_215()))
    chip = import_dump(src)
    chip.field_on()
    chip.transceive(bytes.fromhex("A2 08 CA FE BA BE"))
    chip.transceive(b"\x30\x04")  # counter +1
    text = export_flipper(chip)
    assert "Page 8: CA FE BA BE\n" in text and "Counter 2: 8\n" in text
    assert import_dump(_write(tmp_path / "back.nfc", text)).memory == chip.memory


def test_cross_format_export(tmp_path: Path) -> None:
    chip = import_dump(_write(tmp_path / "a.nfc", flipper_v2(_image_215())))
    pm3 = write_export(chip, tmp_path / "a.json", "proxmark")
    again = import_dump(pm3)
    assert again.memory == chip.memory and again.signature == SIG and again.nfc_counter == 7


def test_fresh_card_exports_current_flipper_layout(tmp_path: Path) -> None:
    chip = Ntag21x.blank(ChipVariant.NTAG213, bytes.fromhex("04A1B2C3D4E5F6"))
    text = export_flipper(chip)
    assert text.startswith("Filetype: Flipper NFC device\nVersion: 4\n")
    assert "NTAG/Ultralight type: NTAG213\n" in text and "Page 44: 00 00 00 00\n" in text
    back = import_dump(_write(tmp_path / "x.nfc", text))
    assert back.memory == chip.memory


def test_T2_1_dump_from_the_field_imports(tmp_path: Path) -> None:
    # field case T2-1 (NTAG213, torn NDEF header) as a Flipper v4 data-format-1 file
    head = {
        0: "04 A1 B2 3F", 1: "C3 D4 E5 F6", 2: "C2 48 00 00", 3: "E1 10 12 00", 4: "01 03 A0 0C",
        5: "FF 7F FF FF", 6: "01 0E 54 02", 7: "65 6E 68 65", 8: "6C 6C 6F 20", 9: "77 6F 72 6C",
        10: "64 FE 3A 20",
    }
    lines = ["Filetype: Flipper NFC device", "Version: 4", "Device type: NTAG213", "UID: 04 A1 B2 C3 D4 E5 F6",
             "ATQA: 44 00", "SAK: 00", "Pages total: 45"]
    lines += [f"Page {n}: {head.get(n, '00 00 00 00')}" for n in range(45)]
    chip = import_dump(_write(tmp_path / "t21.nfc", "\n".join(lines) + "\n"))
    assert chip.variant is ChipVariant.NTAG213 and chip.page(5) == bytes.fromhex("FF7FFFFF")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("mutate", "line", "reason"),
    [
        (lambda t: t.replace("Page 9: 00 00 00 00", "Page 9: 00 0G 00 00"), "Page 9:", "not hex"),
        (lambda t: t.replace("Version: 4", "Version: 9"), "Version: 9", "unsupported Flipper file version"),
        (lambda t: t.replace("NTAG/Ultralight type: NTAG215", "NTAG/Ultralight type: NTAG I2C 1K"),
         "NTAG/Ultralight type", "not modelled"),
        (lambda t: t.replace("ATQA: 00 44", "ATQA: 00 04"), "ATQA:", "not an NTAG21x ATQA"),
        (lambda t: t.replace("UID: 04 51 5C FA 6F 49 80", "UID: 04 51 5C FA 6F 49 81"), "UID:", "disagrees"),
        (lambda t: t.replace("Mifare version: 00 04 04 02 01 00 11 03", "Mifare version: 00 04 04 02 01 00 13 03"),
         "Mifare version", "does not match"),
        (lambda t: t.replace("Page 10: 00 00 00 00", "Page 10 00 00 00 00"), "Page 10 00", "expected 'Key: value'"),
        (lambda t: t.replace("Page 11: 00 00 00 00", "Page 135: 00 00 00 00"), "Page 135", "beyond the last page"),
    ],
)
def test_malformed_flipper_names_file_and_line(tmp_path: Path, mutate, line: str, reason: str) -> None:
    text = mutate(flipper_v4(_image_215()))
    path = _write(tmp_path / "bad.nfc", text)
    expected_line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith(line))
    with pytest.raises(DumpFormatError) as info:
        import_dump(path)
    assert info.value.line == expected_line
    assert f"{path}:{expected_line}" in str(info.value) and reason in str(info.value)


def test_malformed_proxmark_names_file_and_line(tmp_path: Path) -> None:
    text = proxmark(_image_215()).replace('"7": "6C6FFE00"', '"7": "6C6FFE"')
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(DumpFormatError) as info:
        import_dump(path)
    assert info.value.line == next(i for i, l in enumerate(text.splitlines(), 1) if '"7":' in l)
    assert "expected 4 bytes" in str(info.value)
    broken = _write(tmp_path / "trunc.json", text[:200])
    with pytest.raises(DumpFormatError, match="not JSON") as info:
        import_dump(broken)
    assert info.value.line is not None
    with pytest.raises(DumpFormatError, match="FileType must be 'mfu'"):
        import_dump(_write(tmp_path / "mfc.json", '{"Created": "proxmark3", "FileType": "mfcard"}'))


def test_missing_and_binary_dump(tmp_path: Path) -> None:
    with pytest.raises(DumpFormatError, match="no such dump file"):
        import_dump(tmp_path / "none.nfc")
    with pytest.raises(DumpFormatError, match="not a text dump"):
        import_dump(_write_bytes(tmp_path / "x.bin", b"\x04\xff\xfe\x00" * 10))
    with pytest.raises(DumpFormatError, match="missing field 'Filetype'"):
        import_dump(_write(tmp_path / "e.nfc", "# empty\n"))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flipper_partial(image: bytes, read: int) -> str:
    """Flipper's layout when the read stopped at page ``read``: every page line, unread ones 00."""
    cut = image[: 4 * read] + bytes(len(image) - 4 * read)
    return flipper_v4(cut).replace("Pages read: 135", f"Pages read: {read}")


def test_partial_flipper_dump_is_refused_with_the_missing_range(tmp_path: Path) -> None:
    src = _write(tmp_path / "partial.nfc", _flipper_partial(_image_215(), 130))
    with pytest.raises(PartialDumpError) as info:
        import_dump(src)
    assert info.value.missing == list(range(130, 135))
    assert str(info.value).startswith(f"{src}:")
    assert "page(s) 130-134 of ntag215 (0-134) missing (Pages read: 130 of 135)" in str(info.value)
    assert "--fill-missing" in str(info.value)


def test_partial_dump_filled_with_factory_config_not_zeros(tmp_path: Path) -> None:
    image = _image_215()
    chip = import_dump(_write(tmp_path / "partial.nfc", _flipper_partial(image, 130)), fill_missing=True)
    lay = chip.layout
    factory = Ntag21x.blank(ChipVariant.NTAG215, chip.uid)
    assert filled_pages(chip) == list(range(130, 135))
    assert chip.memory[: 130 * 4] == image[: 130 * 4]
    assert chip.page(lay.cfg0_page) == bytes.fromhex("040000FF")  # AUTH0 = FF: no password, as shipped
    assert chip.page(lay.cfg1_page) == factory.page(lay.cfg1_page)
    assert chip.page(lay.dyn_lock_page) == factory.page(lay.dyn_lock_page)
    # A complete dump records no filled pages.
    assert filled_pages(import_dump(_write(tmp_path / "full.nfc", flipper_v4(image)))) == []


def test_flipper_missing_page_lines_are_partial_too(tmp_path: Path) -> None:
    text = "".join(line + "\n" for line in flipper_v4(_image_215()).splitlines()
                   if line not in ("Page 20: 00 00 00 00", "Page 21: 00 00 00 00", "Page 40: 00 00 00 00"))
    with pytest.raises(PartialDumpError, match=r"page\(s\) 20-21, 40 of ntag215") as info:
        import_dump(_write(tmp_path / "holes.nfc", text))
    assert info.value.missing == [20, 21, 40]


def test_partial_proxmark_dump(tmp_path: Path) -> None:
    image = _image_215()
    doc = json.loads(proxmark(image))
    for n in range(129, 135):
        del doc["blocks"][str(n)]
    src = _write(tmp_path / "partial.json", json.dumps(doc, indent=2))
    with pytest.raises(PartialDumpError, match=r"partial.json:\d+: partial dump: page\(s\) 129-134 of ntag215"):
        import_dump(src)
    chip = import_dump(src, fill_missing=True)
    assert filled_pages(chip) == list(range(129, 135))
    assert chip.page(chip.layout.cfg0_page)[3] == 0xFF


def test_bad_pages_read_value(tmp_path: Path) -> None:
    src = _write(tmp_path / "bad.nfc", flipper_v4(_image_215()).replace("Pages read: 135", "Pages read: 999"))
    with pytest.raises(DumpFormatError, match=r"bad.nfc:\d+: Pages read '999' is not 2..135"):
        import_dump(src)
