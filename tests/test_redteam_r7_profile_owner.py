"""Red team round 7, a dishonest clerk with an account on the counter PC: a supervisors profile he owns.

3a92f49 moved the daemon's profile rule to :func:`firmware_config.loader.profile_mode_issue`, applied by
``huma config check`` too. The rule looked at the mode bits only: read or write for others, write for the
group. The file's *owner* reads and writes it whatever the mode, and may chmod it: a profile at 0640 owned
by the clerk's account (a technician's ``install -o`` or ``cp`` as the clerk; docs/operations.md says
``root:huma``) passed the check (OK) and started the daemon, and the clerk cracks the supervisor hashes
offline or writes his own supervisor line (red team round 4). Now a profile with ``[supervisors]`` must
belong to root or to the account reading it (the daemon's, or whoever runs the check on his own files).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_config.loader import load_terminal_profile, profile_mode_issue
from huma.cli import main as huma_main
from tests.test_supervisor_hash_cli import _PROFILE

CLERK_UID = 4242  #: an account that is neither root nor the one running the check (no such user needed)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another account needs root")
def test_a_supervisors_profile_owned_by_another_account_is_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "terminal.toml"
    profile.write_text(_PROFILE + 'sri = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"\n')
    os.chmod(profile, 0o640)
    os.chown(profile, CLERK_UID, os.getegid())
    issue = profile_mode_issue(profile, load_terminal_profile(profile))
    assert issue is not None and "owned by" in issue.message, issue
    code = huma_main(["config", "check", str(profile)])
    out, err = capsys.readouterr()
    assert code != 0 and "OK" not in out and "chown root:huma" in err, (out, err)
    os.chown(profile, 0, os.getegid())  # root:huma 0640, as docs/operations.md says
    assert profile_mode_issue(profile, load_terminal_profile(profile)) is None


def test_a_profile_without_supervisors_may_belong_to_anyone(tmp_path: Path) -> None:
    profile = tmp_path / "terminal.toml"
    profile.write_text(_PROFILE.rsplit("[supervisors]", 1)[0])
    os.chmod(profile, 0o644)
    if os.geteuid() == 0:
        os.chown(profile, CLERK_UID, os.getegid())
    assert profile_mode_issue(profile, load_terminal_profile(profile)) is None
