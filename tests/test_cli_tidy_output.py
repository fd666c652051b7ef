"""What the CLI prints, tidied after a fresh user's run of ``make demo`` and docs/: paths without
``..`` (``huma terminal status``, a second daemon's refusal), one option name per concept (``--out``),
and messages that say what a missing setting holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from huma.cli import cli, main


def test_a_second_daemon_is_refused_naming_the_journal_without_dotdot(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cardlib.keys.signer import SoftwareSigner
    from terminal.errors import JournalInUse
    from terminal.journal_store import JournalStore

    (tmp_path / "terminals").mkdir()
    untidy = tmp_path / "terminals" / ".." / "journal.sqlite"  # paths.journal = "../journal.sqlite" in a profile
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    first = JournalStore(untidy, terminal_id="T-6271-0001", signer=signer)
    try:
        with pytest.raises(JournalInUse) as refused:
            JournalStore(untidy, terminal_id="T-6271-0001", signer=signer)
    finally:
        first.close()
    assert str(tmp_path / "journal.sqlite") in str(refused.value) and ".." not in str(refused.value)


def test_terminal_status_prints_the_journal_path_resolved(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from firmware_config.loader import load_terminal_profile
    from terminal.cli import _print_status
    from terminal.journal_store import JournalStore
    from terminal.status import counter_status
    from tests.test_terminal_status import _counter
    from tests.test_terminal_support import TrustKit

    monkeypatch.setenv("COLUMNS", "1000")  # no folding of long paths
    files = _counter(tmp_path, TrustKit())
    profile = load_terminal_profile(files.profile)
    JournalStore(profile.journal_path, terminal_id=profile.terminal_id, signer=files.signer).close()
    st = counter_status(profile)
    assert st.journal is not None
    untidy = st.journal.path.parent / "sub" / ".." / st.journal.path.name
    _print_status(dataclasses.replace(st, journal=dataclasses.replace(st.journal, path=untidy)))
    out = capsys.readouterr().out
    assert str(st.journal.path.resolve()) in out and "/../" not in out


def _visible_options(command: click.Command, ctx: click.Context) -> dict[str, list[str]]:
    """``huma a b`` → the option names its --help shows, for every command under ``command``."""
    found: dict[str, list[str]] = {}
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                for path, names in _visible_options(sub, click.Context(sub, info_name=name, parent=ctx)).items():
                    found[f"{name} {path}".strip()] = names
        return found
    names = [n for p in command.get_params(ctx) if isinstance(p, click.Option) and p.get_help_record(ctx)
             for n in (p.get_help_record(ctx) or ("", ""))[0].split(" ")[0::1]]
    return {"": names}


def test_output_files_are_named_out_everywhere() -> None:
    """One name per concept: every command writing a file takes ``--out`` (``huma server bundle export --out``)."""
    ctx = click.Context(cli, info_name="huma")
    shown = _visible_options(cli, ctx)
    assert "--out" in " ".join(shown["audit export"])
    assert not [path for path, names in shown.items() if any(n.rstrip(",") == "--output" for n in names)], shown


@pytest.mark.parametrize("flag", ["--out", "--output", "-o"])
def test_audit_export_takes_out_and_keeps_output_as_a_hidden_alias(tmp_path: Path, flag: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'huma.db'}"
    assert main(["server", "db", "upgrade", "--database", url]) == 0
    out = tmp_path / "findings.csv"
    assert main(["audit", "export", "findings", "--format", "csv", flag, str(out), "--database", url]) == 0, \
        capsys.readouterr()
    assert out.read_text().startswith("finding_id") or out.stat().st_size > 0
    help_text = CliRunner().invoke(cli, ["audit", "export", "--help"]).output
    assert "--out" in help_text and "--output" not in help_text


def test_upload_issuance_without_a_trust_root_says_which_file_to_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HUMA_TRUST_ROOT_CERT", raising=False)
    url = f"sqlite:///{tmp_path / 'huma.db'}"
    issuance = tmp_path / "issuances.cose"
    issuance.write_bytes(b"\xd2")
    code = main(["server", "cards", "upload-issuance", str(issuance), "--technician", "tech-01", "--database", url])
    err = capsys.readouterr().err
    assert code == 2 and "HUMA_TRUST_ROOT_CERT" in err and "certs/<root kid>.crt.pem" in err, err


def test_the_demo_closing_line_says_its_counts_are_the_scripted_runs_after_keep_running(tmp_path: Path) -> None:
    from simulator.demo import closing_line
    from simulator.scenario.day import DayResult

    result = DayResult(tmp_path, committed={"a": 2, "b": 1}, clone_card_id="b")
    assert closing_line(result, 31.2, False) == ("\n[bold green]done[/] in 31 s: 3 redemptions committed on 2 cards, "
                                                 "0 finding(s) (0 on the cloned card), journals verified.")
    kept = closing_line(result, 900, True)
    assert "the scripted run: 3 redemptions committed on 2 cards" in kept and "not counted" in kept, kept


def test_sim_present_ends_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report ends with a newline (a fresh user saw the prompt glued to it: with ``&`` from the docs,
    the line arrives after the shell printed its next prompt)."""
    import simulator.cli

    monkeypatch.setattr(simulator.cli, "present_for", lambda *a, **k: 29)
    result = CliRunner().invoke(cli, ["sim", "present", str(tmp_path / "card.json"), "--port", "40123", "--for", "1"])
    assert result.exit_code == 0 and result.output.endswith("29 APDUs answered\n"), result.output
