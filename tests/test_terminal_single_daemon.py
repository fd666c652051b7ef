"""One counter daemon per journal (issue 17): a second ``huma terminal run`` on the same profile is refused.

Before the lock, the second daemon opened the live journal, wrote its own BOOT entry
with the next seq, and from then on every tap of the running counter failed with
``UNIQUE constraint failed`` (both processes numbered entries from their own copy of
the head).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from terminal.journal_audit import iter_messages
from tests.test_terminal_daemon import bundle_kw, card, in_process, kit, wait_results  # noqa: F401
from tests.test_terminal_support import make_counter, reader_toml

pytestmark = pytest.mark.pcsc


def test_second_daemon_on_the_same_journal_is_refused_and_writes_nothing(tmp_path, kit, in_process,  # noqa: F811
                                                                          present_card) -> None:
    files = make_counter(tmp_path, kit, readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)], bundle_extra=bundle_kw())
    in_process(files.profile)
    port = files.screen_port
    journal = files.state / "journal.sqlite"
    before = list(iter_messages(journal))

    huma = str(Path(sys.executable).parent / "huma")
    second = subprocess.Popen([huma, "terminal", "run", "--profile", str(files.profile)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        out, err = second.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        second.kill()
        out, err = second.communicate()
        pytest.fail(f"the second daemon kept running: {err.decode()[-2000:]}")
    assert list(iter_messages(journal)) == before, "the second daemon wrote into the live journal"
    assert second.returncode == 2, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "already running" in lines[0], lines
    assert out == b""

    with present_card(card(0), slot=0):
        result = wait_results(port, 1)[-1]
    assert result["status"] == "accepted", result
