"""A private ``pcscd`` with vpcd virtual readers, for tests, the demo and benchmarks.

Several test runs may share this machine, so each harness runs its *own* pcscd:

* a ``reader.conf.d`` directory in a work dir with vpcd readers on free ports
  (each vpcd reader entry opens 2 slots: ports ``base`` and ``base + 1``, named
  ``Virtual PCD 0r 00`` / ``Virtual PCD 0r 01`` for entry ``r``);
* pcscd 1.9.9 always puts its socket in ``/run/pcscd`` (the daemon ignores
  ``PCSCLITE_CSOCK_NAME``; only the client library reads it), so pcscd runs in
  a private mount namespace (``unshare --mount``) where ``/run/pcscd`` is a bind
  mount of ``<workdir>/run``;
* clients reach it by setting ``PCSCLITE_CSOCK_NAME=<workdir>/run/pcscd.comm``
  *before their first* ``SCardEstablishContext`` (libpcsclite caches the name):
  :meth:`PcscdHarness.client_env` / :meth:`PcscdHarness.export_env`.

pcscd runs in the foreground (``-f``) without ``--auto-exit`` (field case PC-4:
an auto-exiting pcscd leaves virtual cards with "connection refused").

Fallback (``isolation="system"``, or with ``"auto"`` only when a private mount
namespace cannot be made at all — ``unshare`` missing or not permitted, probed
once): use the machine's pcscd and vpcd ports 35963/35964 from
``/etc/reader.conf.d`` — starting ``pcscd -f`` if none runs.  Runs then share
readers and must not run concurrently.  A private pcscd that merely failed to
start (e.g. a port taken between choosing it and pcscd binding it) is retried
on other ports and never silently replaced by the shared system pcscd.

Orphans: every pcscd this harness starts gets ``PR_SET_PDEATHSIG`` (SIGTERM)
(``prctl(2)``), so it stops when the process that started it dies, even by
SIGKILL.  Linux ties that signal to the *thread* that forked: start the
harness from a thread that lives as long as the harness (the main thread).

This module starts processes and never imports pyscard (one-module rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from simulator.errors import HarnessError

__all__ = ["READER_PREFIX", "VPCD_DRIVER", "PcscdHarness", "PcscdReaders", "die_with_parent", "free_port_pair",
           "reader_name", "serve_pcscd"]

log = logging.getLogger(__name__)

#: Debian package vsmartcard-vpcd installs the driver here.
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
#: FRIENDLYNAME of our vpcd readers; pcscd appends " <entry:02X> <slot:02X>".
READER_PREFIX = "Virtual PCD"
SYSTEM_SOCKET = Path("/run/pcscd/pcscd.comm")
SYSTEM_BASE_PORT = 35963
SLOTS_PER_READER = 2
_PORT_RANGE = (20000, 60000)
_READY_MARK = "daemon ready"


#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when its parent dies.

    Uses ``prctl(PR_SET_PDEATHSIG, sig)`` (Linux ``prctl(2)``); the setting survives
    ``execve`` of non-set-uid programs (``unshare``, ``sh``, ``pcscd``). If the parent
    already died between fork and the call, the child exits at once.

    :param sig: the signal to receive.
    :returns: the function to pass as ``preexec_fn``.
    """
    import ctypes

    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return _preexec


def private_namespace_possible() -> bool:
    """Whether this process may make a private mount namespace (``unshare --mount``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
    return probe.returncode == 0


def reader_name(slot: int) -> str:
    """PC/SC reader name of harness slot ``slot`` (0-based, 2 slots per vpcd entry)."""
    entry, sub = divmod(slot, SLOTS_PER_READER)
    return f"{READER_PREFIX} {entry:02X} {sub:02X}"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))  # vpcd binds INADDR_ANY
        except OSError:
            return False
    return True


def free_port_pair(rng_seed: int | None = None) -> int:
    """A base port ``p`` such that ``p`` and ``p + 1`` are free right now."""
    import random

    rnd = random.Random(rng_seed if rng_seed is not None else os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        p = rnd.randrange(_PORT_RANGE[0], _PORT_RANGE[1], 2)
        if _port_free(p) and _port_free(p + 1):
            return p
    raise HarnessError("no two consecutive free TCP ports found for vpcd")


@dataclass(frozen=True)
class _Conf:
    base_ports: tuple[int, ...]


class PcscdHarness:
    """Start and stop a private pcscd with vpcd slots.

    :param slots: number of virtual reader slots wanted (rounded up to even).
    :param workdir: directory for config, socket and log; a temp dir by default
        (removed by :meth:`cleanup`).
    :param isolation: ``"private"`` (own pcscd in a mount namespace), ``"system"``
        (the machine's pcscd on 35963/35964) or ``"auto"`` (private when a mount
        namespace can be made, else system).
    :raises HarnessError: pcscd or the vpcd driver is not installed.
    """

    def __init__(self, slots: int = 2, workdir: Path | str | None = None, isolation: str = "auto") -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if isolation not in ("auto", "private", "system"):
            raise ValueError(f"isolation must be auto, private or system, not {isolation!r}")
        self.pcscd = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
        if self.pcscd is None:
            raise HarnessError("pcscd not found: install the Debian package 'pcscd' (make setup does)")
        if not VPCD_DRIVER.exists():
            raise HarnessError(f"vpcd driver {VPCD_DRIVER} not found: install the Debian package 'vsmartcard-vpcd'")
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="huma-pcscd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.slots = slots + (slots % SLOTS_PER_READER)
        self.isolation = isolation
        self.mode: str | None = None  # "private" or "system" once started
        self._proc: subprocess.Popen[bytes] | None = None
        self._base_ports: list[int] = []
        self._log_fh: int | None = None
        self._log_offset = 0

    # ------------------------------------------------------------------ paths / names

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "reader.conf.d"

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def log_path(self) -> Path:
        """pcscd's foreground log (info level)."""
        return self.workdir / "pcscd.log"

    @property
    def socket_path(self) -> Path:
        """The pcscd socket clients must use (``PCSCLITE_CSOCK_NAME``)."""
        return self.run_dir / "pcscd.comm" if self.mode == "private" else SYSTEM_SOCKET

    @property
    def ports(self) -> list[int]:
        """vpcd TCP port per slot (index = slot)."""
        return [b + i for b in self._base_ports for i in range(SLOTS_PER_READER)][: self.slots]

    def port(self, slot: int) -> int:
        """vpcd TCP port of ``slot``."""
        return self.ports[slot]

    @staticmethod
    def reader_name(slot: int) -> str:
        """PC/SC reader name of ``slot`` (e.g. ``"Virtual PCD 00 01"``)."""
        return reader_name(slot)

    def client_env(self) -> dict[str, str]:
        """Environment a PC/SC client process needs to talk to this pcscd."""
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def export_env(self) -> None:
        """Set ``PCSCLITE_CSOCK_NAME`` in this process (before its first PC/SC context)."""
        os.environ.update(self.client_env())

    @property
    def pid(self) -> int | None:
        """PID of the pcscd this harness started, if running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> PcscdHarness:
        """Start pcscd and wait until every vpcd slot listens.

        :param timeout: seconds to wait for "daemon ready" and the slots.
        :raises HarnessError: pcscd exited, or slots did not come up in time.
        """
        if self.pid is not None:
            return self
        modes = {"auto": ["private"] if private_namespace_possible() else ["system"],
                 "private": ["private"], "system": ["system"]}[self.isolation]
        last: HarnessError | None = None
        for mode in modes:
            try:
                if mode == "private":
                    self._start_private(timeout)
                else:
                    self._start_system(timeout)
                self.mode = mode
                return self
            except HarnessError as exc:
                log.warning("pcscd harness (%s) failed: %s", mode, exc)
                last = exc
        assert last is not None
        raise last

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the pcscd we started (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_fh is not None:
            os.close(self._log_fh)
            self._log_fh = None

    def restart(self, down_for: float = 0.0, timeout: float = 10.0) -> None:
        """Stop pcscd, stay down ``down_for`` seconds, start it again on the same ports/socket."""
        self.stop()
        time.sleep(down_for)
        if self.mode == "private":
            self._launch_private(timeout)
        else:
            self._start_system(timeout)

    def cleanup(self) -> None:
        """Stop pcscd and remove the work dir if the harness created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PcscdHarness:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ internals

    def _write_conf(self, base_ports: list[int]) -> None:
        if self.conf_dir.exists():
            shutil.rmtree(self.conf_dir)
        self.conf_dir.mkdir(parents=True)
        for i, base in enumerate(base_ports):
            (self.conf_dir / f"vpcd-{i}").write_text(
                f'FRIENDLYNAME "{READER_PREFIX}"\n'
                f"DEVICENAME   /dev/null:0x{base:04X}\n"
                f"LIBPATH      {VPCD_DRIVER}\n"
                f"CHANNELID    0x{base:04X}\n",
                encoding="ascii",
            )

    def _start_private(self, timeout: float) -> None:
        if shutil.which("unshare") is None:
            raise HarnessError("util-linux 'unshare' not found; cannot isolate pcscd")
        self.mode = "private"
        last = HarnessError("private pcscd did not start")
        for _attempt in range(3):
            bases: list[int] = []
            for _ in range(self.slots // SLOTS_PER_READER):
                b = free_port_pair()
                while b in bases:
                    b = free_port_pair()
                bases.append(b)
            self._base_ports = bases
            self._write_conf(bases)
            try:
                self._launch_private(timeout)
                return
            except HarnessError as exc:
                log.info("private pcscd attempt failed (%s); retrying on other ports", exc)
                self.stop()
                last = exc
        self.mode = None
        raise last

    def _launch_private(self, timeout: float) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("pcscd.comm", "pcscd.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / stale).unlink()
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
        script = (
            f"mount --bind {_q(self.run_dir)} /run/pcscd && "
            f"exec {_q(Path(self.pcscd or 'pcscd'))} --foreground --info --config {_q(self.conf_dir)}"
        )
        self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], timeout)

    def _start_system(self, timeout: float) -> None:
        self.mode = "system"
        self._base_ports = [SYSTEM_BASE_PORT]
        self.slots = SLOTS_PER_READER
        if SYSTEM_SOCKET.exists() and _socket_alive(SYSTEM_SOCKET):
            log.warning("using the machine's running pcscd (not isolated from other runs)")
            return
        self._spawn([self.pcscd or "pcscd", "--foreground", "--info"], timeout)

    def _spawn(self, argv: list[str], timeout: float) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_fh = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        log.info("starting %s", " ".join(argv))
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = [f"on port {p}" for p in self.ports]
        while time.monotonic() < deadline:
            text = self._log_text()[self._log_offset :]
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(f"pcscd exited with status {self._proc.returncode}: {_tail(text)}")
            if _READY_MARK in text and all(w in text for w in wanted) and self._listening():
                return
            time.sleep(0.02)
        log_tail = _tail(self.log_path.read_text(errors="replace"))
        raise HarnessError(f"pcscd did not bring up vpcd slots {self.ports} within {timeout} s: {log_tail}")

    def _listening(self) -> bool:
        return all(not _port_free(p) for p in self.ports)

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def iter_log(self) -> Iterator[str]:
        """Lines of pcscd's log so far, across restarts (diagnostics)."""
        yield from self._log_text().splitlines()

    def removal_events(self, slot: int) -> int:
        """How many times pcscd's polling thread has seen a card leave ``slot`` (from its log)."""
        return self._log_text().count(f"Card Removed From {reader_name(slot)}")

    def wait_removal_seen(self, slot: int, before: int, timeout: float = 3.0) -> bool:
        """Wait until pcscd's poller logged a removal from ``slot`` beyond ``before`` events.

        Needed before the next card goes on the same slot: when a card vanishes in
        the middle of an APDU, pcscd marks the reader empty at once but its polling
        thread (every ~0.4 s) only resets its own state once it polls an empty
        slot; a new card arriving earlier is never reported (seen with pcscd 1.9.9).

        :returns: False on timeout (only in ``system`` mode without our log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.removal_events(slot) > before:
                return True
            time.sleep(0.02)
        return False


def _q(p: Path) -> str:
    import shlex

    return shlex.quote(str(p))


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class PcscdReaders:
    """What a client needs to use a running harness (``huma sim pcscd`` prints it).

    :ivar socket: the pcscd socket: ``PCSCLITE_CSOCK_NAME`` for ``huma readers``, counters, stations.
    :ivar slots: ``(reader name, vpcd TCP port)`` per slot, slot order (``huma sim present --port``).
    :ivar mode: ``"private"`` or ``"system"`` (:class:`PcscdHarness` ``isolation``).
    :ivar pid: the pcscd process, ``None`` when the system's was already running.
    """

    socket: Path
    slots: tuple[tuple[str, int], ...]
    mode: str
    workdir: Path
    log: Path
    pid: int | None


def serve_pcscd(slots: int = 2, workdir: Path | None = None, isolation: str = "private", *,
                ready: Callable[[PcscdReaders], None], stop: threading.Event | None = None) -> None:
    """Run a :class:`PcscdHarness` until SIGTERM, Ctrl-C (SIGINT) or ``stop``; then stop its pcscd.

    The use case of ``huma sim pcscd``: a pcscd of one's own for ``huma sim present``, a counter
    or a provisioning station on virtual readers, without root and without touching the machine's
    pcscd. SIGTERM is handled only when called from the main thread (Python's rule for signals).

    :param slots: vpcd reader slots (rounded up to even). :param workdir: its config, socket and
        log (default: a temporary directory, removed afterwards).
    :param ready: called once with the running harness's :class:`PcscdReaders` (the CLI prints them).
    :param stop: set to end early (tests).
    :raises HarnessError: pcscd or the vpcd driver missing, or pcscd did not come up.
    """
    done = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: done.set())
    harness = PcscdHarness(slots, workdir, isolation)
    try:
        harness.start()
        ready(PcscdReaders(harness.socket_path, tuple((harness.reader_name(i), p) for i, p in enumerate(harness.ports)),
                           harness.mode or isolation, harness.workdir, harness.log_path, harness.pid))
        while not done.wait(0.5):
            if harness.mode == "private" and harness.pid is None:  # our pcscd died under us
                raise HarnessError(f"pcscd exited; see {harness.log_path}")
    except KeyboardInterrupt:
        pass
    finally:
        harness.cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
