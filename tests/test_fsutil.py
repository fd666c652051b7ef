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


def test_a_planted_tmp_file_does_not_leak_its_mode_or_content(tmp_path: Path) -> None:
    """A leftover or attacker's ``key.p8.pem.tmp`` with mode 0666 was reused: the key ended up 0666."""
    target = tmp_path / "key.p8.pem"
    planted = tmp_path / "key.p8.pem.tmp"
    planted.write_bytes(b"attacker's bytes, longer than the key")
    os.chmod(planted, 0o666)
    atomic_write(target, b"secret key", mode=0o600)
    assert target.read_bytes() == b"secret key"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert planted.read_bytes() == b"attacker's bytes, longer than the key"  # not ours: left alone


def test_a_planted_tmp_symlink_is_not_followed(tmp_path: Path) -> None:
    """``FILE.tmp`` pointing elsewhere must not make the write land in (or truncate) that file."""
    target = tmp_path / "manifest.cose"
    elsewhere = tmp_path / "victim"
    elsewhere.write_bytes(b"victim's content")
    (tmp_path / "manifest.cose.tmp").symlink_to(elsewhere)
    atomic_write(target, b"manifest")
    assert target.read_bytes() == b"manifest" and not target.is_symlink()
    assert elsewhere.read_bytes() == b"victim's content"


def test_no_temp_file_is_left_after_a_failure(tmp_path: Path) -> None:
    def chunks():
        yield b"half"
        raise RuntimeError("producer failed")

    from cardlib.fsutil import atomic_write_chunks

    with pytest.raises(RuntimeError):
        atomic_write_chunks(tmp_path / "export.json", chunks())
    assert list(tmp_path.iterdir()) == []
