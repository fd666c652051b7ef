"""``TrustStore.open_read_only``: the installed bundle as the daemon loads it, with no file written.

The files are written by the daemon's own :class:`terminal.trust.TrustStore` (installs of bundles
signed under a test root); each test shows what the daemon's open or call writes and that the
read-only store writes none of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from terminal.errors import TerminalError, TrustStoreError, TrustStoreReadOnly
from terminal.trust import MARK_SAVE_STEP_S, TrustStore
from tests.test_terminal_support import TrustKit


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _cut_short(tmp_path: Path, kit: TrustKit) -> tuple[Path, bytes, bytes]:
    """The files of a daemon that died installing v2 between saving the trust state and its last rename:
    the state and floor name v2, ``bundle.cose`` still holds v1, ``bundle.cose.new`` holds v2."""
    path = tmp_path / "bundle.cose"
    v1, v2 = kit.bundle(1)[1], kit.bundle(2)[1]
    daemon = TrustStore(path, kit.root.public_key)
    assert daemon.install(v1, None) and daemon.install(v2, None)
    path.write_bytes(v1)
    path.with_name("bundle.cose.new").write_bytes(v2)
    return path, v1, v2


def test_an_install_cut_short_is_reported_not_finished(tmp_path: Path) -> None:
    kit = TrustKit()
    path, v1, v2 = _cut_short(tmp_path, kit)
    new = path.with_name("bundle.cose.new")
    before = _digest(tmp_path)

    ro = TrustStore.open_read_only(path, kit.root.public_key)
    assert ro.read_only and ro.unfinished_install == new
    assert ro.version == 2 and ro.current().bundle.version == 2  # what the state names, read from .new
    assert _digest(tmp_path) == before and path.read_bytes() == v1 and new.read_bytes() == v2

    daemon = TrustStore(path, kit.root.public_key)  # the daemon's open finishes it
    assert not daemon.read_only and daemon.unfinished_install is None and daemon.version == 2
    assert not new.exists() and path.read_bytes() == v2
    assert TrustStore.open_read_only(path, kit.root.public_key).unfinished_install is None


def test_a_new_file_the_state_does_not_name_is_refused_as_by_the_daemon(tmp_path: Path) -> None:
    kit = TrustKit()
    path, _v1, _v2 = _cut_short(tmp_path, kit)
    path.with_name("bundle.cose.new").write_bytes(kit.bundle(3)[1])  # not what the state recorded
    before = _digest(tmp_path)
    with pytest.raises(TrustStoreError, match="not the installed one"):
        TrustStore.open_read_only(path, kit.root.public_key)
    assert _digest(tmp_path) == before
    with pytest.raises(TrustStoreError, match="not the installed one"):
        TrustStore(path, kit.root.public_key)


def test_writing_methods_raise_and_a_rising_clock_saves_no_time_mark(tmp_path: Path) -> None:
    kit = TrustKit()
    path = tmp_path / "bundle.cose"
    installed_at = time.time()
    assert TrustStore(path, kit.root.public_key, clock=lambda: installed_at).install(kit.bundle(1)[1], None)
    before = _digest(tmp_path)
    later = installed_at + 10 * MARK_SAVE_STEP_S

    ro = TrustStore.open_read_only(path, kit.root.public_key, clock=lambda: later)
    assert issubclass(TrustStoreReadOnly, TrustStoreError) and issubclass(TrustStoreReadOnly, TerminalError)
    with pytest.raises(TrustStoreReadOnly):
        ro.install(kit.bundle(2)[1], '"v2"')
    with pytest.raises(TrustStoreReadOnly):
        ro.confirm()
    with pytest.raises(TrustStoreReadOnly):
        ro.set_server_time(int(installed_at) - 3600, journal_mark=later)
    assert ro.current().mark == int(later)  # raised in memory, as the daemon's would be
    assert ro.version == 1 and ro.checked_at == pytest.approx(installed_at)
    assert _digest(tmp_path) == before

    TrustStore(path, kit.root.public_key, clock=lambda: later).current()  # the daemon's saves the mark
    assert json.loads((tmp_path / "bundle.cose.floor.json").read_text())["time_mark"] == int(later)


def test_a_legacy_install_is_adopted_in_memory_only(tmp_path: Path) -> None:
    """A state file from before the trust state (etag and checked_at only), no floor record: the daemon
    adopts the bundle and rewrites the state; the read-only store adopts it without writing."""
    kit = TrustKit()
    path = tmp_path / "bundle.cose"
    assert TrustStore(path, kit.root.public_key).install(kit.bundle(1)[1], None)
    state = tmp_path / "bundle.cose.state.json"
    state.write_text(json.dumps({"etag": None, "checked_at": 0.0}))
    (tmp_path / "bundle.cose.floor.json").unlink()
    before = _digest(tmp_path)

    assert TrustStore.open_read_only(path, kit.root.public_key).version == 1
    assert _digest(tmp_path) == before

    assert TrustStore(path, kit.root.public_key).version == 1
    assert "installed" in json.loads(state.read_text())
