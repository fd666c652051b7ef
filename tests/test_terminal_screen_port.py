"""``huma terminal run`` on a busy ``screen_port``: one line, exit 2, no boot journalled (docs/terminal.md)."""

from __future__ import annotations

import socket

from huma.cli import main
from tests.test_terminal_support import TrustKit, make_counter, reader_toml


def test_a_busy_screen_port_is_one_line_exit_2_before_the_journal_counts_a_boot(tmp_path, capsys) -> None:
    files = make_counter(tmp_path, TrustKit(), readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)])
    journal = files.state / "journal.sqlite"
    assert not journal.exists()
    with socket.create_server(("127.0.0.1", files.screen_port)):
        capsys.readouterr()
        code = main(["terminal", "run", "--profile", str(files.profile)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: cannot listen on 127.0.0.1:{files.screen_port}: Address already in use\n"
    assert not journal.exists()  # refused before the journal was opened (no BOOT entry)


def test_a_port_busy_with_a_daemon_on_the_same_journal_still_says_already_running(tmp_path, capsys) -> None:
    from terminal.journal_store import take_writer_lock

    files = make_counter(tmp_path, TrustKit(), readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)])
    held = take_writer_lock(files.state / "journal.sqlite")  # as the running daemon holds it
    try:
        with socket.create_server(("127.0.0.1", files.screen_port)):
            capsys.readouterr()
            code = main(["terminal", "run", "--profile", str(files.profile)])
    finally:
        import os

        os.close(held)
    err = capsys.readouterr().err
    assert code == 2 and "already running" in err and len(err.strip().splitlines()) == 1, err
