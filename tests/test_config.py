"""Reader and terminal profiles: shipped files validate; every kind of bad input names file, key and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware_config.errors import ConfigError, ConfigNotFound, ConfigSchemaError, ConfigSyntaxError
from firmware_config.loader import (
    SHIPPED_READERS_DIR,
    SHIPPED_TERMINALS_DIR,
    find_reader_profile,
    load_profile,
    load_reader_profile,
    load_terminal_profile,
    shipped_reader_profiles,
)
from firmware_config.models import (
    CounterMode,
    FeedbackChannel,
    FeedbackEvent,
    Language,
    PassThrough,
    ReaderProfile,
    Stack,
    TerminalProfile,
)
from firmware_config.toml_lines import key_lines
from huma.cli import main as huma_main

SHIPPED = sorted(SHIPPED_READERS_DIR.glob("*.toml")) + sorted(SHIPPED_TERMINALS_DIR.glob("*.toml"))

GOOD_READER = """\
kind = "reader"
schema_version = 1
name = "test-reader"
stack = "pcsc"
name_pattern = '^ACS ACR122U?\\b'
pass_through = "acr122u"
max_frame = 252
poll_interval = 0.2

[feedback]
channel = "apdu"
success = ["FF 00 40 AE 04 01 01 01 01"]
decline = [
  "FF 00 40 5D 04 02 02 03 01",
]
busy = ["FF 00 40 FC 04 01 01 02 00"]

[buzzer_on_detect]
enabled = false
set_off = "FF 00 52 00 00"
"""

GOOD_TERMINAL = """\
kind = "terminal"
schema_version = 1
terminal_id = "T-6271-0009"
region = "62.71"
counter_mode = "cash_payout"
programmes = ["cash"]
server_url = "http://127.0.0.1:8080/api/v1"
sync_interval = 60

[paths]
key = "keys/terminal.p8"
journal = "journal.sqlite"

[[readers]]
profile = "acr122u"

[[readers]]
profile = "generic-ccid"
slot_pattern = 'Identiv'
"""


def _write(tmp_path: Path, text: str, name: str = "profile.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _issue_for(exc: ConfigSchemaError, key: str):  # type: ignore[no-untyped-def]
    matches = [i for i in exc.issues if i.key == key]
    assert matches, f"no issue for {key!r} in {[str(i) for i in exc.issues]}"
    return matches[0]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_profile_validates(path: Path) -> None:
    profile = load_profile(path)
    assert isinstance(profile, (ReaderProfile, TerminalProfile))
    assert profile.source == path


def test_shipped_reader_set_covers_the_field() -> None:
    profiles = shipped_reader_profiles()
    assert {"acr122u", "acr1252u", "generic-ccid", "pn532-uart", "rcs380"} <= set(profiles)
    acr = profiles["acr122u"]
    assert acr.stack is Stack.PCSC and acr.pass_through is PassThrough.ACR122U
    assert acr.matches("ACS ACR122U PICC Interface 00 00")
    assert not acr.matches("ACS ACR1252 1S CL Reader PICC 00 00")
    assert acr.feedback.commands(FeedbackEvent.SUCCESS)[0][:3] == bytes.fromhex("FF 00 40")
    assert acr.buzzer_on_detect is not None and acr.buzzer_on_detect.command == bytes.fromhex("FF 00 52 00 00")
    acs1252 = profiles["acr1252u"]
    assert acs1252.escape_control_code == 0x42000000 + 3500  # SCARD_CTL_CODE(3500), pcsc-lite
    assert acs1252.feedback.channel is FeedbackChannel.ESCAPE
    assert acs1252.matches("ACS ACR1252 Dual Reader [ACR1252 Dual Reader PICC] 00 00")
    assert not acs1252.matches("ACS ACR1252 Dual Reader [ACR1252 Dual Reader SAM] 01 00")
    pn532 = profiles["pn532-uart"]
    assert pn532.stack is Stack.NFCPY and pn532.device_path == "tty:USB0:pn532"
    assert profiles["rcs380"].device_path == "usb:054c:06c3"
    assert profiles["generic-ccid"].feedback.channel is FeedbackChannel.NONE


def test_terminal_profile_loads_typed_and_resolves_readers_and_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_TERMINAL)
    term = load_terminal_profile(path)
    assert term.counter_mode is CounterMode.CASH_PAYOUT
    assert term.language is Language.ID  # default
    assert term.key_path == tmp_path / "keys" / "terminal.p8"
    assert term.journal_path == tmp_path / "journal.sqlite"
    assert [b.profile.name for b in term.readers] == ["acr122u", "generic-ccid"]
    binding = term.binding_for("Identiv uTrust 3700 F CL Reader 00 00")
    assert binding is not None and binding.profile.name == "generic-ccid"
    assert term.binding_for("ACS ACR122U PICC Interface 00 00") is term.readers[0]
    assert term.policy.offline_cap_per_tap is None


def test_profile_kind_is_detected_by_content(tmp_path: Path) -> None:
    reader = _write(tmp_path, GOOD_READER.replace('kind = "reader"\n', ""), "r.toml")
    terminal = _write(tmp_path, GOOD_TERMINAL.replace('kind = "terminal"\n', ""), "t.toml")
    assert isinstance(load_profile(reader), ReaderProfile)
    assert isinstance(load_profile(terminal), TerminalProfile)
    with pytest.raises(ConfigSchemaError, match="terminal profile, a reader profile was expected"):
        load_reader_profile(terminal)


# (description, edit applied to GOOD_READER, expected key, expected line, message fragment)
BAD_READERS = [
    ("unknown key", ("poll_interval = 0.2", "poll_intervall = 0.2"), "poll_intervall", 8, "did you mean 'poll_interval'"),
    ("wrong type", ("max_frame = 252", 'max_frame = "252"'), "max_frame", 7, "must be an integer"),
    ("missing required", ('stack = "pcsc"\n', ""), "stack", 1, "required key is missing"),
    ("bad hex", ('"FF 00 40 5D 04 02 02 03 01"', '"FF 00 40 5D 0"'), "feedback.decline[0]", 14, "not hex bytes"),
    ("bad regex", ("'^ACS ACR122U?\\b'", "'^ACS (ACR122'"), "name_pattern", 5, "not a valid regular expression"),
    ("bad enum", ('pass_through = "acr122u"', 'pass_through = "acr122"'), "pass_through", 6, "is not one of"),
    ("out of range", ("poll_interval = 0.2", "poll_interval = 0"), "poll_interval", 8, "less than or equal to the minimum"),
    ("missing in table", ('channel = "apdu"\n', ""), "feedback.channel", 10, "required key is missing"),
    ("unknown key in table", ("enabled = false", "enabled = false\nvolume = 3"), "buzzer_on_detect.volume", 20, "unknown key"),
    ("short APDU", ('busy = ["FF 00 40 FC 04 01 01 02 00"]', 'busy = ["FF 00"]'), "feedback.busy[0]", 16, "at least 4 bytes"),
    ("escape without code", ('channel = "apdu"', 'channel = "escape"'), "escape_control_code", 1, "escape"),
    ("nfcpy stack needs native", ('stack = "pcsc"', 'stack = "nfcpy"'), "pass_through", 6, "native"),
]


@pytest.mark.parametrize(
    ("edit", "key", "line", "fragment"),
    [case[1:] for case in BAD_READERS],
    ids=[case[0] for case in BAD_READERS],
)
def test_bad_reader_profile_names_file_key_and_line(
    tmp_path: Path, edit: tuple[str, str], key: str, line: int, fragment: str
) -> None:
    old, new = edit
    assert old in GOOD_READER
    path = _write(tmp_path, GOOD_READER.replace(old, new, 1))
    with pytest.raises(ConfigSchemaError) as info:
        load_reader_profile(path)
    issue = _issue_for(info.value, key)
    assert issue.file == path
    assert issue.line == line, str(issue)
    assert fragment in issue.message
    assert f"{path}:{line}: {key}: " in str(info.value)


BAD_TERMINALS = [
    ("bad region", ('region = "62.71"', 'region = "6271"'), "region", 4, "Kemendagri"),
    ("bad counter mode", ('counter_mode = "cash_payout"', 'counter_mode = "cashout"'), "counter_mode", 5, "is not one of"),
    ("unknown reader profile", ('profile = "generic-ccid"', 'profile = "acr9999"'), "readers[1].profile", 18, "no reader profile"),
    ("bad slot regex", ("slot_pattern = 'Identiv'", "slot_pattern = '[Identiv'"), "readers[1].slot_pattern", 19, "regular expression"),
    ("wrong type in array", ('programmes = ["cash"]', 'programmes = ["cash", 7]'), "programmes[1]", 6, "must be a string"),
    ("no programme", ('programmes = ["cash"]', "programmes = []"), "programmes", 6, "at least one programme"),
    ("missing path", ('journal = "journal.sqlite"\n', ""), "paths.journal", 10, "required key is missing"),
    ("bad policy type", ("sync_interval = 60", "sync_interval = 60\n[policy]\nmax_days_since_bundle = 1.5"), "policy.max_days_since_bundle", 10, "must be an integer"),
]


@pytest.mark.parametrize(
    ("edit", "key", "line", "fragment"),
    [case[1:] for case in BAD_TERMINALS],
    ids=[case[0] for case in BAD_TERMINALS],
)
def test_bad_terminal_profile_names_file_key_and_line(
    tmp_path: Path, edit: tuple[str, str], key: str, line: int, fragment: str
) -> None:
    old, new = edit
    assert old in GOOD_TERMINAL
    path = _write(tmp_path, GOOD_TERMINAL.replace(old, new, 1))
    with pytest.raises(ConfigSchemaError) as info:
        load_terminal_profile(path)
    issue = _issue_for(info.value, key)
    assert (issue.file, issue.line) == (path, line), str(issue)
    assert fragment in issue.message


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    text = GOOD_READER.replace('stack = "pcsc"', 'stack = "usb"').replace("max_frame = 252", "max_frame = 1.5")
    with pytest.raises(ConfigSchemaError) as info:
        load_reader_profile(_write(tmp_path, text))
    assert [i.key for i in info.value.issues] == ["stack", "max_frame"]


def test_toml_syntax_error_keeps_tomllib_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_READER.replace("max_frame = 252", "max_frame = = 252"))
    with pytest.raises(ConfigSyntaxError) as info:
        load_profile(path)
    assert info.value.issues[0].line == 7
    assert "TOML syntax error" in str(info.value)


def test_missing_file_and_missing_reader_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFound):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(ConfigNotFound, match="no reader profile 'acr9999'"):
        find_reader_profile("acr9999")
    assert issubclass(ConfigSchemaError, ConfigError)


def test_key_lines_follows_tables_arrays_and_strings() -> None:
    text = (
        'a = "x = 1 # not a key"\n'  # 1
        "[t]\n"  # 2
        "b.c = [\n"  # 3
        "  1,  # one\n"  # 4
        "  { d = 2 },\n"  # 5
        "]\n"  # 6
        "s = '''\n"  # 7
        "e = 3\n"  # 8
        "'''\n"  # 9
        "[[arr]]\n"  # 10
        "k = 1\n"  # 11
        "[[arr]]\n"  # 12
        '"q.k" = 2\n'  # 13
    )
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert lines[("t", "b", "c")] == 3
    assert lines[("t", "b", "c", 0)] == 4
    assert lines[("t", "b", "c", 1, "d")] == 5
    assert ("t", "e") not in lines and ("e",) not in lines
    assert lines[("arr", 0, "k")] == 11
    assert lines[("arr", 1, "q.k")] == 13


def test_huma_config_check_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, GOOD_READER, "good.toml")
    bad = _write(tmp_path, GOOD_READER.replace('pass_through = "acr122u"', 'pass_through = "raw"'), "bad.toml")
    assert huma_main(["config", "check", str(good)]) == 0
    assert f"OK {good}" in capsys.readouterr().out
    assert huma_main(["config", "check", str(good), str(bad)]) != 0
    captured = capsys.readouterr()
    assert f"OK {good}" in captured.out
    assert re.search(rf"{re.escape(str(bad))}:6: pass_through: 'raw' is not one of", captured.err)


def test_huma_config_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert huma_main(["config", "schema", "terminal"]) == 0
    assert '"counter_mode"' in capsys.readouterr().out
