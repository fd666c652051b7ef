"""Crash-safe file replacement for keys, manifests, issuance files and trust bundles.

POSIX rename is atomic (``os.replace``); fsync of the file before and of its
directory after makes the new content survive a power cut at the counter or the
district office (a reader of the path sees the old file or the new one, never a
torn mix).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_chunks"]

#: Default permission bits of a written file (``-rw-r--r--``); private keys pass 0o600.
DEFAULT_MODE = 0o644


def atomic_write(path: Path, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Writes ``<name>.tmp`` next to it with ``mode``, fsyncs it, renames it over
    ``path`` and fsyncs the directory. On failure the temporary file is removed
    and ``path`` is unchanged.

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
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
