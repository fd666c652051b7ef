"""Profile input a fresh user hit: NaN/inf numbers, a UTF-8 BOM, and the one terminal id rule."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cardlib.keys.errors import CsrError
from cardlib.keys.terminal_ca import make_terminal_csr
from cardlib.keys.terminal_id import TERMINAL_ID_RULE, check_terminal_id
from firmware_config.errors import ConfigSchemaError
from firmware_config.loader import load_reader_profile, load_terminal_profile
from huma.cli import main as huma_main
from tests.test_config import GOOD_READER, GOOD_TERMINAL


def _write(tmp_path: Path, text: str | bytes, name: str = "profile.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("value", ["nan", "+nan", "-nan", "inf", "-inf"])
def test_terminal_sync_interval_must_be_finite(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, GOOD_TERMINAL.replace("sync_interval = 60", f"sync_interval = {value}"))
    with pytest.raises(ConfigSchemaError) as info:
        load_terminal_profile(path)
    keys = [(i.key, i.line) for i in info.value.issues]
    assert keys == [("sync_interval", 8)], str(info.value)  # one issue, not "inf > maximum" as well
    assert "must be a finite number" in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_reader_poll_interval_must_be_finite(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, GOOD_READER.replace("poll_interval = 0.2", f"poll_interval = {value}"))
    with pytest.raises(ConfigSchemaError, match=rf"poll_interval: must be a finite number, not {value}"):
        load_reader_profile(path)


def test_nan_inside_arrays_and_tables_is_found(tmp_path: Path) -> None:
    text = GOOD_TERMINAL.replace("sync_interval = 60", "sync_interval = 60\n[policy]\nmax_days_since_bundle = nan")
    with pytest.raises(ConfigSchemaError) as info:
        load_terminal_profile(_write(tmp_path, text))
    assert [i.key for i in info.value.issues] == ["policy.max_days_since_bundle"]


def test_utf8_bom_is_accepted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = load_terminal_profile(_write(tmp_path, GOOD_TERMINAL, "plain.toml"))
    with caplog.at_level(logging.INFO, logger="firmware_config.loader"):
        bom = load_terminal_profile(_write(tmp_path, b"\xef\xbb\xbf" + GOOD_TERMINAL.encode(), "bom.toml"))
    assert bom == plain
    assert "byte-order mark" in caplog.text
    # Line numbers are unchanged by the BOM.
    bad = b"\xef\xbb\xbf" + GOOD_TERMINAL.replace('region = "62.71"', 'region = "6271"').encode()
    with pytest.raises(ConfigSchemaError) as info:
        load_terminal_profile(_write(tmp_path, bad, "bad.toml"))
    assert info.value.issues[0].line == 4


@pytest.mark.parametrize("tid", ["T-6271-0001", "KT-6271-STATION", "ABC", "A" * 32])
def test_one_terminal_id_rule_accepts(tmp_path: Path, tid: str) -> None:
    assert check_terminal_id(tid) == tid
    make_terminal_csr(tid)  # enrolment accepts it
    load_terminal_profile(_write(tmp_path, GOOD_TERMINAL.replace("T-6271-0009", tid)))  # and the profile


@pytest.mark.parametrize("tid", ["t-6271-0001", "T.6271", "T_1", "-T1", "AB", "A" * 33, "T 1"])
def test_one_terminal_id_rule_refuses_in_both_places(tmp_path: Path, tid: str) -> None:
    with pytest.raises(ValueError, match="upper-case"):
        check_terminal_id(tid)
    with pytest.raises(CsrError) as csr_info:
        make_terminal_csr(tid)
    assert csr_info.value.reason == "bad_terminal_id"
    with pytest.raises(ConfigSchemaError) as cfg_info:
        load_terminal_profile(_write(tmp_path, GOOD_TERMINAL.replace("T-6271-0009", tid)))
    assert cfg_info.value.issues[0].key == "terminal_id"
    assert TERMINAL_ID_RULE in str(cfg_info.value) and TERMINAL_ID_RULE in str(csr_info.value)


def test_keys_csr_refuses_bad_terminal_id_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = huma_main(["keys", "csr", "--terminal-id", "t-lower", "--key-out", str(tmp_path / "k"),
                      "--csr-out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--terminal-id" in err and "upper-case" in err and "Traceback" not in err
    assert not (tmp_path / "k").exists()
