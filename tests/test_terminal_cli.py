"""``huma terminal init`` / ``enrol`` when something is missing: a message that says what to do, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from huma.cli import main as huma_main
from tests.test_terminal_support import TrustKit, make_counter, reader_toml


@pytest.fixture
def counter(tmp_path: Path) -> object:
    return make_counter(tmp_path, TrustKit(), readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                        bindings=[("virtual-acr122u", None)])


def test_init_with_a_missing_passphrase_file_names_it_and_how_to_make_it(counter: object,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    state: Path = counter.state  # type: ignore[attr-defined]
    secret = counter.root / "secrets" / "passphrase"  # type: ignore[attr-defined]
    secret.unlink()
    (state / "terminal-key.p8").unlink()
    assert huma_main(["terminal", "init", "--profile", str(counter.profile)]) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "paths.passphrase" in err and str(secret.resolve()) in err and "install -m 600" in err
    assert "Traceback" not in err and not (state / "terminal-key.p8").exists()


def test_enrol_with_the_server_down_names_host_and_port(counter: object,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = Path(counter.profile).read_text()  # type: ignore[attr-defined]
    url = next(line.split('"')[1] for line in text.splitlines() if line.startswith("server_url"))
    hostport = url.removeprefix("http://")
    assert huma_main(["terminal", "enrol", "--profile", str(counter.profile)]) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert f"cannot reach the server at {hostport}" in err and "Traceback" not in err


def test_enrol_before_init_says_to_run_init(counter: object, capsys: pytest.CaptureFixture[str]) -> None:
    state: Path = counter.state  # type: ignore[attr-defined]
    (state / "terminal-key.csr.pem").unlink()
    assert huma_main(["terminal", "enrol", "--profile", str(counter.profile)]) == 2  # type: ignore[attr-defined]
    assert "huma terminal init" in capsys.readouterr().err
