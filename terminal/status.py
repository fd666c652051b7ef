"""One look at a counter, for the clerk or technician at the counter: ``huma terminal status``.

:func:`counter_status` reads what the daemon keeps on disk and writes nothing: the profile,
the installed trust bundle (:class:`terminal.trust.TrustStore`), the journal (opened
read-only, no writer lock taken, no BOOT entry), and whether a daemon holds the journal's
writer lock. It runs the same whether the daemon is running or stopped. The counts come
from the daemon's own code: entries waiting for upload and the terminal's exposure are
:meth:`terminal.journal_store.JournalStore.unsent_count` and
:meth:`~terminal.journal_store.JournalStore.exposure` (what the signed upload receipts have
confirmed), the caps in force those a card tap applies (:func:`terminal.tap.counter_limits`,
tightened for the bundle's age), the clock check :func:`terminal.tap.clock_wrong`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_der_public_key

from cardlib.keys.errors import KeysError
from cardlib.keys.root import load_root_key
from cardlib.keys.signer import PublicKey, cose_key
from cardlib.records.claims import Unit
from cardlib.records.journal import GENESIS_HASH
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
    """

    version: int
    in_force_until: float
    checked_at: float
    age_days: float
    expired: bool


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


class _ReadOnlyJournal(JournalStore):
    """:class:`JournalStore`'s own read methods on a read-only connection: no writer lock, no BOOT entry.

    :meth:`JournalStore.__init__` takes the writer lock and appends a BOOT entry, so it is not run:
    this sets the state the read methods use and rebuilds, with the store's own code, what the
    server's signed upload receipts confirmed (verified under the pinned receipt key, as the daemon
    does at open). Only read methods are called on it.
    """

    def __init__(self, path: Path, receipt_key: PublicKey | None) -> None:
        # Without a -wal beside it the file is all there is: immutable, so no -wal/-shm is created.
        mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
        self.path = path
        self._receipt_key = receipt_key
        self._upto = 0
        self._lock = threading.Lock()
        self.decision_lock = threading.Lock()
        self._writer_fd = self._file_fd = None
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None,
                                       check_same_thread=False)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            last = self._db.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            (newest_ms,) = self._db.execute("SELECT max(wall_ms) FROM entries").fetchone()
            public = load_der_public_key(bytes(meta["public_key_spki"]))
            self.terminal_id = str(meta["terminal_id"])
            with self._lock:
                self._load_verified()
        except (sqlite3.Error, KeyError, ValueError) as exc:
            if hasattr(self, "_db"):
                self._db.close()
            raise JournalStoreError(f"cannot read journal {path}: {exc}") from exc
        if not isinstance(public, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            self._db.close()
            raise JournalStoreError(f"cannot read journal {path}: its key is a {type(public).__name__}")
        self._key = cose_key(public)
        self.boot_id = int(meta.get("boot_count", 0))
        self._seq = int(last[0]) if last else 0
        self._head = bytes(last[1]) if last else GENESIS_HASH
        self._wall_mark_ms = int(newest_ms or 0)


class _ReadOnlyTrust(TrustStore):
    """The installed bundle as the daemon loads it, never saving state: the daemon owns those files."""

    def _save_floor(self, lower: bool = False) -> None:
        return None

    def _save_state(self) -> None:
        return None


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


def _trust(profile: TerminalProfile, at: float) -> tuple[Trust | None, str | None]:
    """The bundle in force as the daemon would load it, or None and why not."""
    if profile.bundle_path is None or profile.root_key_path is None:
        return None, "the profile names no bundle path or root key"
    try:
        return _ReadOnlyTrust(profile.bundle_path, load_root_key(profile.root_key_path)).current(at), None
    except (TrustStoreError, KeysError) as exc:
        return None, str(exc)


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
    trust, problem = _trust(profile, at)
    running, pid = daemon_pid(profile.journal_path)
    journal: JournalState | None = None
    reader: _ReadOnlyJournal | None = None
    receipt_key = _pinned_receipt_key(profile)
    if profile.journal_path.is_file() and profile.journal_path.stat().st_size > 0:
        reader = _ReadOnlyJournal(profile.journal_path, receipt_key)
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
        checked_at=trust.checked_at, age_days=trust.age_days(at), expired=trust.expired)
    clock = ClockState(
        now=at, kernel_synced=kernel_clock_synced(), time_mark=0.0 if trust is None else trust.mark,
        wrong=None if trust is None else clock_wrong(trust.bundle, at, limits.stale_days, trust.mark))
    return CounterStatus(
        terminal_id=profile.terminal_id, server_url=profile.server_url,
        certificate=cert if cert.is_file() else None, bundle=bundle, bundle_problem=problem, clock=clock,
        journal=journal, daemon_pid=pid, daemon_running=running, exposure=exposure,
        caps=dict(limits.terminal_exposure))
