"""``huma terminal supervisor-hash``: a supervisor's ``[supervisors]`` line made without writing Python.

Each test pastes the printed line into a real terminal profile, loads it with the profile loader
(schema included) and checks the password the way the counter's manual desk does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_config.loader import load_terminal_profile
from huma.cli import cli
from huma.cli import main as huma_main
from terminal.fallback import SupervisorRefused, check_supervisor

_PROFILE = """\
kind = "terminal"
schema_version = 1
terminal_id = "T-6271-0009"
region = "62.71"
counter_mode = "market_redemption"
programmes = ["food"]
language = "id"
server_url = "http://127.0.0.1:9"
sync_interval = 10

[paths]
key = "terminal-key.p8"
journal = "journal.sqlite"
root_key = "root.pem"
bundle = "bundle.cose"

[[readers]]
profile = "acr122u"

[supervisors]
"""


def _pasted(tmp_path: Path, line: str) -> dict[str, str]:
    """The supervisors of a profile with ``line`` pasted under ``[supervisors]``."""
    profile = tmp_path / "terminal.toml"
    profile.write_text(_PROFILE + line + "\n")
    return dict(load_terminal_profile(profile).supervisors)


def test_the_prompted_password_becomes_a_line_the_desk_accepts(tmp_path: Path) -> None:
    result = CliRunner(mix_stderr=False).invoke(cli, ["terminal", "supervisor-hash", "sri"],
                                                input="kopi tubruk 7\nkopi tubruk 7\n")
    assert result.exit_code == 0, result.output + result.stderr
    line = result.stdout.splitlines()[-1]
    assert line.startswith('sri = "scrypt$32768$8$1$') and "kopi" not in result.stdout
    assert "[supervisors]" in result.stderr
    supervisors = _pasted(tmp_path, line)
    check_supervisor(supervisors, "sri", "kopi tubruk 7")
    with pytest.raises(SupervisorRefused):
        check_supervisor(supervisors, "sri", "kopi tubruk 8")


def test_two_different_entries_are_asked_again(tmp_path: Path) -> None:
    # (CliRunner answers "" at the end of its input, which click asks again for: give the retry.)
    result = CliRunner(mix_stderr=False).invoke(cli, ["terminal", "supervisor-hash", "sri"],
                                                input="kopi tubruk 7\nkopi tubruk 8\nteh manis\nteh manis\n")
    assert result.exit_code == 0, result.output + result.stderr
    assert "do not match" in result.stdout + result.stderr
    supervisors = _pasted(tmp_path, result.stdout.splitlines()[-1])
    check_supervisor(supervisors, "sri", "teh manis")
    for typed in ("kopi tubruk 7", "kopi tubruk 8"):
        with pytest.raises(SupervisorRefused):
            check_supervisor(supervisors, "sri", typed)


def test_password_file_and_an_id_with_a_dot_is_quoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xef\xbb\xbfsandi rahasia\r\n")  # BOM and CRLF as an editor on Windows leaves them
    assert huma_main(["terminal", "supervisor-hash", " sri.kepala ", "--password-file", str(secret)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith('"sri.kepala" = "scrypt$')
    check_supervisor(_pasted(tmp_path, line), "sri.kepala", "sandi rahasia")


def test_an_empty_password_file_and_a_bad_id_are_refused(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert huma_main(["terminal", "supervisor-hash", "sri", "--password-file", str(empty)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "first line is empty" in err
    secret = tmp_path / "pw"
    secret.write_text("sandi\n")
    assert huma_main(["terminal", "supervisor-hash", "sri\u2010ani", "--password-file", str(secret)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "supervisor id is 1..64" in err
