"""cardlib.fsutil.atomic_write: new content, requested mode, nothing changed on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cardlib.fsutil import atomic_write


def test_replaces_content_with_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "key.p8.pem"
    atomic_write(target, b"old")
    old_umask = os.umask(0)
    try:
        atomic_write(tmp_path / "secret", b"s", mode=0o600)
    finally:
        os.umask(old_umask)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.p8.pem", "secret"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.cose"
    atomic_write(target, b"intact")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"intact"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.cose"]
