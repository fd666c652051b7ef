"""Red team round 4, a dishonest clerk with an account on the counter PC: the supervisors' passwords, offline.

The manual fallback (docs/fallback.md, step 2) is approved by a supervisor's password, checked against its
scrypt hash in the terminal profile's ``[supervisors]``. The desk slows and locks guessing at the screen,
but the hash itself sat in ``/etc/huma/terminal.toml``, which operations wrote with the default mode
(0644, anyone on the machine reads it), and ``huma terminal supervisor-hash`` took any password, "42"
included. A clerk who reads the file tries every short password offline at scrypt speed (~0.1 s a guess
here, no lock-out), then approves manual entries as the supervisor: with red team r4 #3, payouts to
card ids nobody issued, which no finding names.

The tests assert the DEFENCE: a password under 8 characters gets no hash line (NIST SP 800-63B
§5.1.1.2's floor for memorised secrets), and the daemon refuses to start on a profile holding
supervisor hashes that other accounts may read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from huma.cli import main as huma_main
from terminal.daemon import build_daemon
from terminal.errors import TerminalProfileError
from terminal.fallback import SupervisorRefused, check_supervisor
from tests.test_supervisor_hash_cli import _PROFILE


def test_a_short_supervisor_password_gets_no_hash_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pw"
    secret.write_text("42\n")
    code = huma_main(["terminal", "supervisor-hash", "sri", "--password-file", str(secret)])
    out, err = capsys.readouterr()
    if code == 0:  # the attack: the line lands in a profile, and the clerk cracks it offline
        stored = json.loads(out.strip().split(" = ", 1)[1])
        for guess in range(100):
            try:
                check_supervisor({"sri": stored}, "sri", str(guess))
            except SupervisorRefused:
                continue
            pytest.fail(f"supervisor password {guess!r} accepted and found offline in {guess + 1} scrypt guesses")
    assert code == 2 and out == "" and "at least 8 characters" in err


def test_the_daemon_refuses_a_profile_others_can_read_with_supervisor_hashes(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("kopi tubruk 7\n")
    assert huma_main(["terminal", "supervisor-hash", "sri", "--password-file", str(secret)]) == 0
    profile = tmp_path / "terminal.toml"
    profile.write_text(_PROFILE + 'sri = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"\n')
    os.chmod(profile, 0o644)  # what `install` or an editor leaves by default
    with pytest.raises(TerminalProfileError, match="readable by other accounts"):
        build_daemon(profile)


def test_config_check_refuses_what_the_daemon_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``huma config check`` passed a 0644 profile with supervisor hashes that ``huma terminal run`` then refused.

    A technician checks a profile before installing it: the check must say what the daemon will say.
    """
    profile = tmp_path / "terminal.toml"
    profile.write_text(_PROFILE + 'sri = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"\n')
    os.chmod(profile, 0o644)
    code = huma_main(["config", "check", str(profile)])
    out, err = capsys.readouterr()
    assert code != 0 and "OK" not in out, out
    assert "readable by other accounts" in err and "chmod 640" in err
    os.chmod(profile, 0o640)
    assert huma_main(["config", "check", str(profile)]) == 0
    assert "OK" in capsys.readouterr().out
