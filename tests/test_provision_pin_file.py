"""``huma provision card --pin-file``: the beneficiary's PIN from a file's first line.

``--pin`` only prompts (a PIN piped in printed GetPassWarning and could not be scripted), so a
script or test gives ``--pin-file`` as ``pin-reset --new-pin-file``: read with the same bound
(``cardlib.clitypes.read_secret_line``), checked before the reader or the state directory is
touched, and the issued card takes that PIN at a counter.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.records.access import load_password_keys
from cardlib.records.cose import Algorithm
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from huma.cli import cli, main
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.provision_support import OriginalityIssuer
from tests.test_pin_reset_pcsc import PAYOUT, PIN, PROFILE, WRONG_PIN, _bundle
from tests.test_provision_cli import KEY_PW, _args, office  # noqa: F401 - office is a fixture


@pytest.mark.parametrize(("line", "why"), [("12", "PIN must be 6 digits"), ("12345a", "PIN must be 6 digits"),
                                           ("", "PIN must be 6 digits")])
def test_a_bad_pin_file_is_refused_before_the_reader(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                     line: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pin.txt").write_text(line + "\n")
    state_dir = tmp_path / "single"
    code = main(["provision", "card", "--pin-file", str(tmp_path / "pin.txt"), "--household-ref",
                 "9f3c2a1b000000dd", "--region", "62.71",
                 *_args(tmp_path, office, "no such reader"), "--state-dir", str(state_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "--pin-file" in err and why in err, err
    assert not state_dir.exists()  # no reader opened, no journal


def test_a_secure_pin_file_takes_4_to_8_digits(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pin.txt").write_text("123456789\n")
    code = main(["provision", "card", "--card-profile", "secure", "--pin-file", str(tmp_path / "pin.txt"),
                 "--household-ref", "9f3c2a1b000000dd", "--region", "62.71",
                 *_args(tmp_path, office, "no such reader")])
    err = capsys.readouterr().err
    assert code == 2 and "a PIN is 4..8 digits" in err, err


@pytest.mark.pcsc
def test_a_card_issued_with_a_pin_file_takes_that_pin(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                      present_card, reader_name) -> None:
    (tmp_path / "profile.toml").write_text(PROFILE)
    (tmp_path / "pin.txt").write_text(PIN + "\r\n")  # first line, line ending dropped
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chip = fab.genuine()
    with present_card(chip):  # no input: a prompt would abort
        issued = CliRunner().invoke(cli, ["provision", "card", "--pin-file", str(tmp_path / "pin.txt"),
                                          "--household-ref", "9f3c2a1b000000dd", "--region", "62.71",
                                          *_args(tmp_path, office, reader_name(0)),
                                          "--state-dir", str(tmp_path / "single")])
    assert issued.exit_code == 0, issued.output
    assert "PIN" not in issued.output.split("place the card")[0]  # nothing asked
    signer = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    bundle = _bundle(tmp_path, office, signer)
    ring = load_password_keys(tmp_path / "card-keys.json", KEY_PW.encode())
    journal = JournalStore(tmp_path / "counter.sqlite", terminal_id="T-6271-0001", signer=signer,
                           clock=Clock(force_synced=True))
    entered: list[str | None] = [None]
    tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.CASH_PAYOUT, OfflineLimits(), caps={"": ACR122U},
                                     card_passwords=ring),
                       journal, signer, trust=lambda: Trust(bundle, time.time()),
                       request=lambda: ("cash", PAYOUT, entered[0]))

    def counter(pin: str) -> object:
        entered[0] = pin
        with present_card(chip), PcscContext() as pctx:
            conn = PcscConnection(pctx, reader_name(0))
            try:
                return tap(conn, None)  # type: ignore[arg-type]
            finally:
                conn.close()

    try:
        assert counter(WRONG_PIN).reason is DeclineReason.PIN_WRONG  # type: ignore[attr-defined]
        out = counter(PIN)
        assert out.status is TapStatus.ACCEPTED and out.amount == PAYOUT  # type: ignore[attr-defined]
    finally:
        journal.close()


def test_pin_file_is_in_the_help() -> None:
    r = CliRunner().invoke(cli, ["provision", "card", "--help"])
    assert "--pin-file FILE" in r.output and "first line" in r.output
