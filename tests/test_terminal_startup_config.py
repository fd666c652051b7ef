"""``huma terminal run`` checks its configuration before the journal counts a boot.

A start-up that fails on a missing card-keys passphrase or file must leave the journal as it
was: each failed start used to append a signed BOOT entry (docs/operations.md, terminal step 4).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.records.access import PasswordKeyFileError
from terminal.daemon import build_daemon
from terminal.errors import TerminalProfileError
from tests.test_terminal_support import TrustKit, make_counter, reader_toml


def _journal(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.glob("journal.sqlite*"))}


def _counter(tmp_path: Path) -> Path:
    files = make_counter(tmp_path, TrustKit(), readers={"virtual-acr122u": reader_toml("virtual-acr122u")},
                         bindings=[("virtual-acr122u", None)])
    text = files.profile.read_text()
    line = 'bundle = "../state/bundle.cose"\n'
    assert line in text
    files.profile.write_text(text.replace(line, line + 'card_keys = "../state/card-keys.json"\n'))
    return Path(files.profile)


def test_failed_starts_on_card_keys_leave_the_journal_unchanged(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HUMA_CARD_KEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    profile = _counter(tmp_path)
    state = tmp_path / "state"
    (state / "card-keys.json").write_text("{}")
    before = _journal(state)
    for _ in range(2):  # no passphrase from any source
        with pytest.raises(TerminalProfileError, match="no passphrase for the card-password keys"):
            build_daemon(profile)
    assert _journal(state) == before
    (state / "card-keys.json").unlink()
    monkeypatch.setenv("HUMA_CARD_KEYS_PASSPHRASE", "card keys passphrase")
    for _ in range(2):  # the key file is gone
        with pytest.raises((TerminalProfileError, PasswordKeyFileError)):
            build_daemon(profile)
    assert _journal(state) == before
