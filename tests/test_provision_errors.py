"""``huma provision``: every bad input is a one-line typed error (exit 2) found at start-up,
before a reader is opened, a card touched or anything journalled."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.provision.errors import CsvError, ProfileError
from cardlib.provision.households import parse_households
from cardlib.provision.profile import Profile
from huma.cli import main
from tests.test_provision_cli import PROFILE, office  # noqa: F401 - pytest fixture

NO_READER = "no-such-reader-*"


def _args(tmp_path: Path, office: dict[str, object], **override: str) -> list[str]:  # noqa: F811
    fab = office["fab"]
    opts = {"--keys": str(tmp_path / "keys"), "--technician": "tech-07", "--station-key": str(tmp_path / "station.key"),
            "--bundle": str(tmp_path / "bundle.cbor"), "--profile": str(tmp_path / "profile.toml"),
            "--pwd-secret-file": str(tmp_path / "pwd.secret"), "--passphrase-file": str(tmp_path / "pw.txt"),
            "--card-format": "1", "--reader": NO_READER, "--timeout": "1", "--originality-key": fab.public_key.hex()}  # type: ignore[attr-defined]
    opts.update(override)
    return [x for kv in opts.items() for x in kv]


def _csv(tmp_path: Path, body: str = "9f3c2a1b00000001,62.71,1\n") -> Path:
    path = tmp_path / "households.csv"
    path.write_text("household_ref,region,programmes\n" + body)
    return path


def _card(tmp_path: Path, office: dict[str, object], *extra: str, **override: str) -> list[str]:  # noqa: F811
    return ["provision", "card", "--household-ref", "9f3c2a1b00000001", "--region", "62.71", *extra,
            *_args(tmp_path, office, **override)]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, err
    return lines[-1]


def _nothing_journalled(tmp_path: Path) -> None:
    assert not (tmp_path / "households.provision").exists()
    assert not (tmp_path / "single").exists()


@pytest.mark.parametrize(("option", "value", "why"), [
    ("--pin-root", "zz", "is not hex"), ("--pin-root", "abcd", "is 2 bytes"),
    ("--originality-key", "zz", "is not hex"), ("--originality-key", "0011", "expected 33 bytes"),
])
def test_hex_options_fail_before_anything(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                          capsys: pytest.CaptureFixture[str], option: str, value: str, why: str) -> None:
    households = _csv(tmp_path)
    assert main(["provision", "batch", str(households), *_args(tmp_path, office, **{option: value})]) == 2
    line = _error_line(capsys)
    assert f"'{option}'" in line and why in line
    assert main(_card(tmp_path, office, "--state-dir", str(tmp_path / "single"), **{option: value})) == 2
    assert why in _error_line(capsys)
    _nothing_journalled(tmp_path)


@pytest.mark.parametrize("value", ["zz", "0011", "00112233445566778899"])
def test_reissue_of_is_checked_before_any_card(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                               capsys: pytest.CaptureFixture[str], value: str) -> None:
    code = main(_card(tmp_path, office, "--reissue-of", value, "--remaining", "1=0", "--state-dir", str(tmp_path / "single")))
    assert code == 2
    line = _error_line(capsys)
    assert "'--reissue-of'" in line and "expected 8 bytes" in line
    _nothing_journalled(tmp_path)


@pytest.mark.parametrize("secret", [b"", b"short\n", b"fifteen-bytes!!\n", b"  \n"])
def test_short_password_secret_is_refused_and_nothing_journalled(
        tmp_path: Path, office: dict[str, object], capsys: pytest.CaptureFixture[str], secret: bytes) -> None:  # noqa: F811
    (tmp_path / "pwd.secret").write_bytes(secret)
    households = _csv(tmp_path)
    assert main(["provision", "batch", str(households), *_args(tmp_path, office)]) == 2
    line = _error_line(capsys)
    assert "--pwd-secret-file" in line and str(tmp_path / "pwd.secret") in line and "at least 16" in line
    assert main(_card(tmp_path, office, "--state-dir", str(tmp_path / "single"))) == 2
    assert "at least 16" in _error_line(capsys)
    _nothing_journalled(tmp_path)


def test_good_inputs_reach_the_reader_only_after_all_checks(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Control: with every input valid the run gets as far as the reader (none matches here)."""
    households = _csv(tmp_path)
    code = main(["provision", "batch", str(households), *_args(tmp_path, office)])
    assert code == 2
    line = _error_line(capsys)
    assert "reader" in line or "pcscd" in line, line
    _nothing_journalled(tmp_path)


def test_oversized_csv_field_is_a_row_error(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                            capsys: pytest.CaptureFixture[str]) -> None:
    households = _csv(tmp_path, "9f3c2a1b00000001,62.71,1\n" + "9" * (200 * 1024) + ",62.71,1\n9f3c2a1b00000003,xx,1\n")
    assert main(["provision", "batch", str(households), *_args(tmp_path, office)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{households}:line 3: malformed row: unreadable CSV row: field larger than field limit" in err
    assert f"{households}:line 4: region:" in err
    assert "2 bad row(s)" in err
    _nothing_journalled(tmp_path)


def test_csv_with_nul_byte_is_a_row_error() -> None:
    with pytest.raises(CsvError) as info:
        parse_households("household_ref,region\n9f3c2a1b00000001,62.71\n9f3c\x002a1b00000002,62.71\n", [1])
    assert [e.line for e in info.value.errors] == [3]


@pytest.mark.parametrize(("content", "fragment"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff", "not a TOML profile (byte 0 is not UTF-8"),
    (b"valid_days = 730\n", "programmes: required table is missing"),
    (b'[programmes.1]\nper_cycle = 1\n', "programmes.1.unit: required key is missing"),
    (b'[programmes.1]\nunit = "package"\n', "programmes.1.per_cycle: required key is missing"),
    (b'[programmes.1]\nunit = "package"\nper_cycle = nan\n', "programmes.1.per_cycle: must be an integer, not nan"),
    (b'[programmes.1]\nunit = "package"\nper_cycle = 1.5\n', "must be an integer, not 1.5"),
    (b'valid_days = inf\n[programmes.1]\nunit = "package"\nper_cycle = 1\n', "valid_days: must be an integer, not inf"),
    (b'[programmes.x]\nunit = "package"\nper_cycle = 1\n', "programmes.x: programme ids are non-negative integers"),
    (b"valid_days = = 1\n", "TOML syntax error"),
])
def test_bad_profile_names_file_and_key(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                        capsys: pytest.CaptureFixture[str], content: bytes, fragment: str) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_bytes(content)
    with pytest.raises(ProfileError, match="programmes|TOML|UTF-8|valid_days") as info:
        Profile.load(profile)
    assert str(info.value).startswith(str(profile)) and fragment in str(info.value)
    assert main(["provision", "batch", str(_csv(tmp_path)), *_args(tmp_path, office)]) == 2
    line = _error_line(capsys)
    assert str(profile) in line and fragment in line


def test_profile_with_bom_is_accepted(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_bytes(b"\xef\xbb\xbf" + PROFILE.encode())
    assert sorted(Profile.load(profile).programmes) == [1, 2]


@pytest.mark.parametrize(("options", "fragment"), [
    (("--household-ref", "nothex"), "--household-ref: malformed household reference: 'nothex' is not 16 hex digits"),
    (("--region", "64.01"), "--region: not a Kalimantan Tengah region code"),
    (("--programmes", "9"), "--programmes: unknown programme: id(s) [9]"),
    (("--household-ref", "9f3c2a1b00000001,62.71"), "--household-ref: '9f3c2a1b00000001,62.71' may not contain a comma"),
    (("--remaining", "1=x"), "--remaining: '1=x' is not 'programme=amount,...'"),
])
def test_card_option_errors_name_the_option(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                            capsys: pytest.CaptureFixture[str], options: tuple[str, str], fragment: str) -> None:
    args = _card(tmp_path, office, "--state-dir", str(tmp_path / "single"))
    i = args.index(options[0]) if options[0] in args else None
    if i is None:
        args += list(options)
        if options[0] == "--remaining":
            args += ["--reissue-of", "0011223344556677"]
    else:
        args[i + 1] = options[1]
    assert main(args) == 2
    line = _error_line(capsys)
    assert fragment in line, line
    assert "bad row(s)" not in line
    _nothing_journalled(tmp_path)


def test_state_dir_help_matches_behaviour(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "card", "--help"]) == 0
    card_help = "".join(capsys.readouterr().out.split())  # help text wraps anywhere
    assert "[default:provision-single]" in card_help and "nexttotheCSV" not in card_help
    assert main(["provision", "batch", "--help"]) == 0
    batch_help = "".join(capsys.readouterr().out.split())
    assert "'.provision',nexttotheCSV" in batch_help


def test_format2_without_the_card_password_key_file_is_one_line(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The default card format (2) needs the provincial key file: refused before any reader or journal."""
    households = _csv(tmp_path)
    assert main(["provision", "batch", str(households), *_args(tmp_path, office, **{"--card-format": "2"})]) == 2
    line = _error_line(capsys)
    assert "--card-keys" in line and "format-2" in line
    _nothing_journalled(tmp_path)
