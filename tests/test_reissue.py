"""Re-issue from the server's numbers (issue 18): the balance is the server's signed statement, never typed.

``huma provision card --reissue-of`` takes the household's remaining entitlement from a balance
statement signed with the server receipt key (:mod:`cardlib.records.balance`), verified offline
under the key pinned at the station; ``--remaining`` may lower it, never raise it. Every check
runs before the chip is touched; two runs on one state directory are refused.
"""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner
from cardlib.provision.errors import StationInputError
from cardlib.provision.households import Household
from cardlib.provision.profile import Profile
from cardlib.provision.reissue import StationBusy, check_remaining, reissue_remaining, station_lock
from cardlib.records.balance import sign_balance, verify_balance
from huma.cli import main
from tests.test_provision_cli import PROFILE, office  # noqa: F401 - pytest fixture
from tests.test_provision_errors import _card, _error_line, _nothing_journalled

REF = "9f3c2a1b00000001"
LOST = "00112233445566aa"
_SERVER = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


def _profile() -> Profile:
    return Profile.from_mapping(tomllib.loads(PROFILE))


def server_statement(tmp_path: Path, ref: str, reissue_of: str, remaining: dict[int, int], *,
                     signer: SoftwareSigner = _SERVER, cycle: int | None = None, at: float | None = None,
                     valid_s: int = 3600) -> tuple[Path, Path]:
    """A statement file and the server-key PEM file, as the server would hand them out."""
    now = time.time() if at is None else at
    cycle = _profile().cycle_at(int(time.time())) if cycle is None else cycle
    message = sign_balance(signer, bytes.fromhex(ref), cycle, remaining, now, valid_s, bytes.fromhex(reissue_of),
                           [bytes.fromhex(reissue_of)])
    statement, key = tmp_path / "balance.cose", tmp_path / "server-key.pem"
    statement.write_bytes(message)
    key.write_bytes(_SERVER.public_key.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return statement, key


def _row() -> Household:
    return Household(1, bytes.fromhex(REF), "62.71", (1, 2))


def _remaining(tmp_path: Path, statement_remaining: dict[int, int], lower: dict[int, int] | None = None,
               **kw: object) -> dict[int, int]:
    statement, _ = server_statement(tmp_path, REF, LOST, statement_remaining, **kw)  # type: ignore[arg-type]
    return reissue_remaining(statement.read_bytes(), _SERVER.public_key, _row(), bytes.fromhex(LOST),
                             int(time.time()), _profile(), lower)


def test_the_server_figure_is_taken_and_may_only_be_lowered(tmp_path: Path) -> None:
    assert _remaining(tmp_path, {1: 0, 2: 100000}) == {1: 0, 2: 100000}
    assert _remaining(tmp_path, {1: 1, 2: 100000}, {2: 50000}) == {1: 1, 2: 50000}
    with pytest.raises(StationInputError, match="may only lower the server's figure: 1: 1 > 0"):
        _remaining(tmp_path, {1: 0, 2: 100000}, {1: 1})  # the attack: the package already taken


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"signer": SoftwareSigner(ed25519.Ed25519PrivateKey.generate())}, "does not verify"),
    ({"at": time.time() - 7200}, "out of date"),
    ({"cycle": 20201}, "is for cycle 20201"),
])
def test_a_statement_from_another_key_old_or_of_another_cycle_is_refused(tmp_path: Path, kw: dict[str, object],
                                                                          fragment: str) -> None:
    with pytest.raises(StationInputError, match=fragment):
        _remaining(tmp_path, {1: 0, 2: 0}, **kw)


def test_a_statement_for_another_household_or_card_is_refused(tmp_path: Path) -> None:
    statement, _ = server_statement(tmp_path, "9f3c2a1b000000ff", LOST, {1: 0, 2: 0})
    with pytest.raises(StationInputError, match="household 9f3c2a1b000000ff"):
        reissue_remaining(statement.read_bytes(), _SERVER.public_key, _row(), bytes.fromhex(LOST),
                          int(time.time()), _profile())
    statement, _ = server_statement(tmp_path, REF, "00112233445566bb", {1: 0, 2: 0})
    with pytest.raises(StationInputError, match="re-issuing 00112233445566bb"):
        reissue_remaining(statement.read_bytes(), _SERVER.public_key, _row(), bytes.fromhex(LOST),
                          int(time.time()), _profile())
    statement, _ = server_statement(tmp_path, REF, LOST, {1: 0})
    with pytest.raises(StationInputError, match=r"no entitlement .* programme\(s\) \[2\]"):
        reissue_remaining(statement.read_bytes(), _SERVER.public_key, _row(), bytes.fromhex(LOST),
                          int(time.time()), _profile())


def test_amounts_outside_the_entitlement_are_refused() -> None:
    with pytest.raises(StationInputError, match=r"programme 9 is not on this card.*programme 1: 2 is not within 0..1"):
        check_remaining(_profile(), _row(), {1: 2, 2: 0, 9: 1})


def test_statement_round_trip_and_aad() -> None:
    message = sign_balance(_SERVER, bytes.fromhex(REF), 20261, {1: 0}, 1_780_000_000, 60, None, [])
    s = verify_balance(message, _SERVER.public_key)
    assert (s.household_ref.hex(), s.cycle, s.remaining, s.valid_until, s.reissue_of) == (
        REF, 20261, {1: 0}, 1_780_000_060, None)
    from cardlib.records.statements import verify_receipt

    with pytest.raises(Exception):  # noqa: B017 - any refusal: another statement kind's AAD
        verify_receipt(message, _SERVER.public_key)


def test_a_typed_balance_is_refused_before_any_reader(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_card(tmp_path, office, "--reissue-of", LOST, "--remaining", "1=1,2=250000",
                      "--state-dir", str(tmp_path / "single"))) == 2
    assert "balance is never typed" in capsys.readouterr().err
    statement, key = server_statement(tmp_path, REF, LOST, {1: 0, 2: 100000})
    assert main(_card(tmp_path, office, "--reissue-of", LOST, "--remaining", "1=1", "--balance-statement",
                      str(statement), "--server-key", str(key), "--state-dir", str(tmp_path / "single"))) == 2
    assert "may only lower the server's figure" in _error_line(capsys)
    _nothing_journalled(tmp_path)


@pytest.mark.pcsc
def test_a_second_run_on_one_state_directory_is_refused(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                        reader_name, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_provision_cli import _args

    with station_lock(tmp_path / "single") as lock:
        assert lock.read_text().splitlines() == [str(os.getpid())]
        assert main(["provision", "card", "--household-ref", REF, "--region", "62.71",
                     *_args(tmp_path, office, reader_name(0)), "--state-dir", str(tmp_path / "single")]) == 2
        assert "in use by another provisioning run" in _error_line(capsys)
        with pytest.raises(StationBusy), station_lock(tmp_path / "single"):
            pass
    with station_lock(tmp_path / "single"):  # released
        pass


@pytest.mark.pcsc
def test_bad_input_leaves_the_virtual_chip_untouched(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                     present_card, reader_name,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_provision_cli import _args

    fab = office["fab"]
    chip = fab.genuine()  # type: ignore[attr-defined]
    before = chip.memory
    statement, key = server_statement(tmp_path, REF, LOST, {1: 5, 2: 0})  # more than the card's 1 per cycle
    args = [*_args(tmp_path, office, reader_name(0)), "--state-dir", str(tmp_path / "single")]
    with present_card(chip):
        assert main(["provision", "card", "--household-ref", REF, "--region", "62.71", "--reissue-of", LOST,
                     "--balance-statement", str(statement), "--server-key", str(key), *args]) == 2
    assert "programme 1: 5 is not within 0..1" in _error_line(capsys)
    assert chip.memory == before
    assert not (tmp_path / "single").exists()
