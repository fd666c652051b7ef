"""One look at a counter, for the clerk or technician at the counter: ``huma terminal status``.

:func:`counter_status` reads what the daemon keeps on disk and writes nothing: the profile,
the installed trust bundle (:meth:`terminal.trust.TrustStore.open_read_only`: nothing saved, an
install cut short reported, not finished), the journal
(:meth:`terminal.journal_store.JournalStore.open_read_only`: no writer lock taken, no BOOT
entry), and whether a daemon holds the journal's writer lock. It runs the same whether the
daemon is running or stopped. The counts come from the daemon's own code: entries waiting for
upload and the terminal's exposure are
:meth:`terminal.journal_store.JournalStore.unsent_count` and
:meth:`~terminal.journal_store.JournalStore.exposure` (what the signed upload receipts have
confirmed), the caps in force those a card tap applies (:func:`terminal.tap.counter_limits`,
tightened for the bundle's age), the clock check :func:`terminal.tap.clock_wrong`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cardlib.keys.errors import KeysError
from cardlib.keys.root import load_root_key
from cardlib.keys.signer import PublicKey
from cardlib.records.claims import Unit
from firmware_config.models import TerminalProfile
from terminal.clock import kernel_clock_synced
from terminal.daemon import offline_limits
from terminal.enrol import certificate_path, load_receipt_key
from terminal.errors import JournalStoreError, TerminalError, TrustStoreError
from terminal.journal_store import JournalStore, lock_path
from terminal.policy import SECONDS_PER_DAY
from terminal.tap import Trust, clock_wrong, counter_limits
from terminal.trust import TrustStore

__all__ = ["BundleState", "ClockState", "CounterStatus", "JournalState", "counter_status", "daemon_pid"]


@dataclass(frozen=True)
class BundleState:
    """The installed trust bundle.

    :ivar version: bundle version.
    :ivar in_force_until: end of its time in force (its expiry), POSIX seconds.
    :ivar checked_at: when the server last confirmed it current, POSIX seconds: the end of the last
        sync round that got through (0.0: never).
    :ivar age_days: days since ``checked_at`` (the caps tighten from the profile's ``fresh_days``).
    :ivar expired: past its time in force or its key revoked: cash stops, other caps at their floor.
    :ivar unfinished_install: the ``.new`` file of an install cut short before its last rename (this
        bundle was read from it; the daemon finishes the install at its next start), else None.
    """

    version: int
    in_force_until: float
    checked_at: float
    age_days: float
    expired: bool
    unfinished_install: Path | None = None


@dataclass(frozen=True)
class ClockState:
    """The counter's clock as a card tap judges it.

    :ivar now: the wall clock, POSIX seconds.
    :ivar kernel_synced: the kernel reports the wall clock synchronised (NTP).
    :ivar time_mark: the never-lowered high-water mark of trusted time, POSIX seconds (0.0: none).
    :ivar wrong: a tap now would be declined ``counter_clock_wrong``; None without a bundle to judge by.
    """

    now: float
    kernel_synced: bool
    time_mark: float
    wrong: bool | None


@dataclass(frozen=True)
class JournalState:
    """The journal file.

    :ivar path: the SQLite file.
    :ivar size_bytes: the file and its ``-wal`` together, bytes.
    :ivar entries: signed entries (the head's seq).
    :ivar boots: daemon starts it has counted.
    :ivar unsent: entries no signed upload receipt has confirmed yet (refused ones excluded).
    :ivar refused: entries the server refused (conflict/rejected), kept, not offered again.
    :ivar receipt_key_pinned: the server receipt key enrolment pinned was found; without it no receipt
        verifies, so every entry since the receipts were kept counts as not uploaded.
    """

    path: Path
    size_bytes: int
    entries: int
    boots: int
    unsent: int
    refused: int
    receipt_key_pinned: bool


@dataclass(frozen=True)
class CounterStatus:
    """What ``huma terminal status`` shows.

    :ivar terminal_id: the profile's terminal id.
    :ivar server_url: the server it syncs with.
    :ivar certificate: the certificate enrolment saved, or None: not enrolled yet.
    :ivar bundle: the installed bundle, or None (see ``bundle_problem``).
    :ivar bundle_problem: why there is no bundle (none installed yet, refused on load), else None.
    :ivar clock: the clock state.
    :ivar journal: the journal, or None when the file does not exist yet (never started).
    :ivar daemon_pid: pid of the ``huma terminal run`` holding the journal's writer lock, or None.
    :ivar daemon_running: a daemon holds the lock (its pid may be unknown).
    :ivar exposure: units handed out and not confirmed uploaded, by unit (the terminal's exposure).
    :ivar caps: the terminal-exposure cap in force now, by unit (a unit missing has no cap).
    """

    terminal_id: str
    server_url: str
    certificate: Path | None
    bundle: BundleState | None
    bundle_problem: str | None
    clock: ClockState
    journal: JournalState | None
    daemon_pid: int | None
    daemon_running: bool
    exposure: Mapping[Unit, int]
    caps: Mapping[Unit, int]


def daemon_pid(journal: Path) -> tuple[bool, int | None]:
    """Whether a daemon holds ``journal``'s writer lock (:func:`terminal.journal_store.lock_path`), and its pid.

    Probes with a shared, non-blocking ``flock`` (flock(2)) on the lock file opened read-only, released at
    once; nothing is written.

    :returns: ``(running, pid)``; pid None when not running or the file names none.
    """
    try:
        fd = os.open(lock_path(journal), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        raise JournalStoreError(f"cannot read journal lock {lock_path(journal)}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalStoreError(f"cannot probe journal lock {lock_path(journal)}: {exc.strerror}") from exc
            holder = os.pread(fd, 16, 0).decode("ascii", "replace").strip()
            return True, int(holder) if holder.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


def _trust(profile: TerminalProfile, at: float) -> tuple[Trust | None, Path | None, str | None]:
    """The bundle in force as the daemon would load it and the ``.new`` file of an install cut short
    (or None), or None, None and why not."""
    if profile.bundle_path is None or profile.root_key_path is None:
        return None, None, "the profile names no bundle path or root key"
    try:
        store = TrustStore.open_read_only(profile.bundle_path, load_root_key(profile.root_key_path))
        return store.current(at), store.unfinished_install, None
    except (TrustStoreError, KeysError) as exc:
        return None, None, str(exc)


def _pinned_receipt_key(profile: TerminalProfile) -> PublicKey | None:
    """The server receipt key pinned at enrolment, or None (not enrolled: no upload can be confirmed)."""
    try:
        return load_receipt_key(profile)
    except TerminalError:
        return None


def counter_status(profile: TerminalProfile, now: float | None = None) -> CounterStatus:
    """Everything ``huma terminal status`` shows, read from disk; writes nothing.

    :param profile: the loaded terminal profile.
    :param now: POSIX seconds (default: the wall clock).
    :returns: the status; a missing bundle, root key or journal is a field, not an error.
    :raises JournalStoreError: the journal exists but cannot be read (not an SQLite journal, unreadable).
    """
    at = time.time() if now is None else now
    trust, unfinished, problem = _trust(profile, at)
    running, pid = daemon_pid(profile.journal_path)
    journal: JournalState | None = None
    reader: JournalStore | None = None
    receipt_key = _pinned_receipt_key(profile)
    if profile.journal_path.is_file() and profile.journal_path.stat().st_size > 0:
        reader = JournalStore.open_read_only(profile.journal_path, receipt_key)
    try:
        if trust is not None and reader is not None:
            trust = trust.raised(reader.wall_mark())  # as a tap does: never below what the journal saw
        base = offline_limits(profile)
        limits = base if trust is None else counter_limits(base, trust.bundle)
        if trust is not None:
            limits = limits.tightened(limits.effective_age(trust.age_days(at), at_floor=trust.expired))
        exposure: dict[Unit, int] = {}
        if reader is not None:
            exposure = reader.exposure(open_since=at - limits.stale_days * SECONDS_PER_DAY)
            wal = Path(f"{profile.journal_path}-wal")
            journal = JournalState(
                path=profile.journal_path,
                size_bytes=profile.journal_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
                entries=reader.head[0], boots=reader.boot_id, unsent=reader.unsent_count(),
                refused=len(reader.upload_problems()), receipt_key_pinned=receipt_key is not None)
    finally:
        if reader is not None:
            reader.close()
    cert = certificate_path(profile)
    bundle = None if trust is None else BundleState(
        version=trust.bundle.version, in_force_until=float(trust.bundle.in_force_until),
        checked_at=trust.checked_at, age_days=trust.age_days(at), expired=trust.expired,
        unfinished_install=unfinished)
    clock = ClockState(
        now=at, kernel_synced=kernel_clock_synced(), time_mark=0.0 if trust is None else trust.mark,
        wrong=None if trust is None else clock_wrong(trust.bundle, at, limits.stale_days, trust.mark))
    return CounterStatus(
        terminal_id=profile.terminal_id, server_url=profile.server_url,
        certificate=cert if cert.is_file() else None, bundle=bundle, bundle_problem=problem, clock=clock,
        journal=journal, daemon_pid=pid, daemon_running=running, exposure=exposure,
        caps=dict(limits.terminal_exposure))
