"""Crash-safe file replacement for keys, manifests, issuance files and trust bundles.

POSIX rename is atomic (``os.replace``); fsync of the file before and of its
directory after makes the new content survive a power cut at the counter or the
district office (a reader of the path sees the old file or the new one, never a
torn mix).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_chunks"]

#: Default permission bits of a written file (``-rw-r--r--``); private keys pass 0o600.
DEFAULT_MODE = 0o644


def atomic_write(path: Path, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Writes a new temporary file ``.<name>.<random>.tmp`` next to it, created
    exclusively (``O_EXCL | O_NOFOLLOW``) with ``mode``, fsyncs it, renames it over
    ``path`` and fsyncs the directory. A file, symlink or leftover already at any
    ``*.tmp`` name is never opened, so its mode or content cannot end up in ``path``.
    On failure the temporary file is removed and ``path`` is unchanged.

    :param path: the target file; its directory must exist.
    :param data: the complete new content.
    :param mode: permission bits of a newly created file (umask applies).
    :raises OSError: the write, fsync or rename failed.
    """
    atomic_write_chunks(path, (data,), mode=mode)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes], *, mode: int = DEFAULT_MODE) -> None:
    """:func:`atomic_write` for content produced piece by piece (a streamed export).

    ``path`` becomes the concatenation of ``chunks`` or stays as it was: an exception
    raised while producing a chunk (a database error, Ctrl-C) removes the temporary
    file and propagates.

    :param chunks: the content, in order (bytes each).
    :raises OSError: the write, fsync or rename failed.
    """
    tmp, fd = _create_temporary(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: Attempts at a fresh temporary name before giving up (each name has 64 random bits).
_TEMP_ATTEMPTS = 16


def _create_temporary(path: Path, mode: int) -> tuple[Path, int]:
    """Create a new, empty file next to ``path`` that nobody else has opened (POSIX ``open(2)`` ``O_EXCL``).

    ``O_EXCL`` with ``O_CREAT`` fails on any existing name, symlinks included, so the
    file is ours and gets exactly ``mode`` (minus the umask); ``O_NOFOLLOW`` is kept
    for systems where ``O_EXCL`` alone would follow a symlink.

    :param mode: permission bits of the new file (umask applies).
    :returns: (temporary path, open write-only descriptor).
    :raises OSError: the directory is not writable, or no fresh name after :data:`_TEMP_ATTEMPTS` tries.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return tmp, os.open(tmp, flags, mode)
        except FileExistsError:
            continue
    raise FileExistsError(f"no fresh temporary name next to {path} after {_TEMP_ATTEMPTS} attempts")
