"""``huma sim import`` (and the other commands that write a card or dump file) on mistaken
input: an output directory that does not exist, malformed page lines, mistyped JSON fields,
huge or endless input files. Each is refused with one line naming the cause, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.chip import ChipVariant, Ntag21x
from simulator.dumps import export_flipper, export_proxmark, import_dump
from simulator.errors import DumpFormatError
from huma.cli import main

UID = bytes.fromhex("04515CFA6F4980")


@pytest.fixture
def dumps(tmp_path: Path) -> dict[str, Path]:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    flipper = tmp_path / "c1.nfc"
    flipper.write_text(export_flipper(chip))
    proxmark = tmp_path / "c1.json"
    proxmark.write_text(export_proxmark(chip))
    card = tmp_path / "card.json"
    chip.save(card)
    return {"flipper": flipper, "proxmark": proxmark, "card": card}


# ---------------------------------------------------------------- output directory


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "import", "{flipper}", "{out}"],
        ["sim", "import", "{proxmark}", "{out}"],
        ["sim", "new", "{out}"],
        ["sim", "export", "{card}", "{out}", "--format", "flipper"],
    ],
)
def test_missing_output_directory_is_an_error_not_created(
    tmp_path: Path, dumps: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    out = missing / "o.json"
    args = [a.format(out=out, **dumps) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "does not exist" in err[0], err
    assert not (tmp_path / "nonexistent").exists()


def test_output_parent_that_is_a_file_is_an_error(
    tmp_path: Path, dumps: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = dumps["card"] / "o.json"
    assert main(["sim", "import", str(dumps["flipper"]), str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_existing_output_directory_still_works(tmp_path: Path, dumps: dict[str, Path]) -> None:
    out = tmp_path / "o.json"
    assert main(["sim", "import", str(dumps["flipper"]), str(out)]) == 0
    assert Ntag21x.load(out).uid == UID


# ---------------------------------------------------------------- Flipper page lines


@pytest.mark.parametrize(
    "bad", ["Page -3", "Page 3a", "Page", "Page +3", "Page 3.0", "page 3", "PAGE 3", "Page \uff13"]
)
def test_malformed_page_line_is_named(dumps: dict[str, Path], bad: str) -> None:
    path = dumps["flipper"]
    text = path.read_text().replace("Page 3: ", f"{bad}: ", 1)
    path.write_text(text)
    expected = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(f"{bad}:"))
    with pytest.raises(DumpFormatError) as info:
        import_dump(path)
    assert info.value.line == expected, str(info.value)
    assert repr(bad) in str(info.value) and "missing" not in str(info.value)


# ---------------------------------------------------------------- Proxmark JSON types


def _proxmark_with(path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["Card"].__setitem__("UID", 12345), "Card.UID must be a hex string, not a number"),
        (lambda d: d["Card"].__setitem__("Version", None), "Card.Version must be a hex string, not null"),
        (lambda d: d["Card"].__setitem__("Signature", ["00"]), "Card.Signature must be a hex string, not an array"),
        (lambda d: d["Card"].__setitem__("Counter2", True), "Card.Counter2 must be a hex string, not true/false"),
        (lambda d: d.__setitem__("Card", ["UID"]), "'Card' must be an object, not an array"),
        (lambda d: d.__setitem__("blocks", "00"), "'blocks' must be an object, not a string"),
        (lambda d: d["blocks"].__setitem__("3", 0), "block '3' must be a hex string, not a number"),
    ],
)
def test_mistyped_proxmark_field_says_wrong_type(dumps: dict[str, Path], edit, expected: str) -> None:
    path = _proxmark_with(dumps["proxmark"], edit)
    with pytest.raises(DumpFormatError) as info:
        import_dump(path)
    assert expected in str(info.value) and "missing" not in str(info.value), str(info.value)


def test_absent_proxmark_field_still_says_missing(dumps: dict[str, Path]) -> None:
    path = _proxmark_with(dumps["proxmark"], lambda d: d["Card"].pop("UID"))
    with pytest.raises(DumpFormatError, match="missing Card.UID"):
        import_dump(path)
    path = _proxmark_with(dumps["proxmark"], lambda d: d.pop("Card"))
    with pytest.raises(DumpFormatError, match="missing object 'Card'"):
        import_dump(path)


# ---------------------------------------------------------------- huge or endless dumps


def test_dump_over_the_cap_is_refused(tmp_path: Path, dumps: dict[str, Path]) -> None:
    big = tmp_path / "big.nfc"
    text = dumps["flipper"].read_text()
    big.write_text(text + "#" * (1024 * 1024 + 1 - len(text.encode())) + "\n")
    with pytest.raises(DumpFormatError, match="larger than 1 MiB"):
        import_dump(big)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_dump_is_refused_in_one_line_with_bounded_memory(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    limit = 768 * 1024 * 1024  # far above what the CLI needs, far below an unbounded read

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "huma", "sim", "import", "/dev/zero", str(tmp_path / "o.json")],
        capture_output=True, text=True, timeout=120, preexec_fn=limited,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/dev/zero" in lines[0] and "larger than" in lines[0], lines
    assert not (tmp_path / "o.json").exists()
