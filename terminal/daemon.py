"""``huma terminal run``: the counter daemon, wired from one terminal profile.

profile (TOML) → reader profiles → :class:`~terminal.supervisor.Supervisor`
(one watcher per matching reader/slot) → :class:`~terminal.tap.TapProcessor`
→ :class:`~terminal.journal_store.JournalStore` → :class:`~terminal.sync.SyncLoop`
→ :class:`~terminal.feedback.FeedbackWorker` → counter screen on 127.0.0.1.

Threads: the supervisor and its watchers, the sync loop, the feedback worker
and the screen server each run in their own thread; the main thread is a
watchdog that restarts any of them that died (logged at ERROR, never silent)
and waits for SIGTERM/SIGINT. Shutdown order keeps the journal consistent:
readers stop first (an in-flight tap finishes its journal entries), then sync,
screen and feedback, then the journal is closed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cardlib.apdu import CLA_PSEUDO, SW, ApduChannel, ApduError, CommandApdu
from cardlib.keys.root import load_root_key
from cardlib.keys.signer import PublicKey, Signer
from cardlib.records.claims import Unit
from cardlib.secure import SecureCardError, SecureCardSession
from cardlib.transport import Connection
from cardlib.type2.channel import ReaderCapabilities
from cardlib.type2.tag import Type2Tag
from firmware_config.loader import load_terminal_profile, profile_mode_issue
from firmware_config.models import (
    FeedbackChannel,
    FeedbackEvent,
    ReaderBinding,
    ReaderProfile,
    Stack,
    TerminalProfile,
)
from terminal.checkpoint import shift_checkpoint
from terminal.clock import Clock
from terminal.connection import Deadline, DeadlineConnection, stack_uid, type2_channel
from terminal.enrol import load_receipt_key
from terminal.errors import (
    JournalInUse,
    JournalStoreError,
    ScreenListenError,
    TerminalError,
    TerminalProfileError,
    TrustStoreError,
)
from terminal.fallback import FallbackDesk
from terminal.feedback import FeedbackWorker
from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.journal_store import JournalStore, take_writer_lock
from terminal.keys import load_card_passwords
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import OfflineLimits
from terminal.screen import CounterScreen, ScreenState
from terminal.secure_tap import is_secure_atr
from terminal.supervisor import (
    NfcpyBackend,
    NfcpyDevice,
    PcscBackend,
    ReaderBackend,
    ReaderSelector,
    Supervisor,
    SupervisorGroup,
)
from terminal.sync import HttpApi, SyncClient, SyncLoop, TrustStore
from terminal.tap import CounterConfig, TapProcessor, Trust

log = logging.getLogger(__name__)

#: Environment variable holding the terminal key passphrase when the profile names no file.
PASSPHRASE_ENV = "HUMA_KEY_PASSPHRASE"
#: Watchdog period, seconds.
WATCHDOG_S = 1.0
#: How long a watcher keeps the card connection open for ``apdu``-channel feedback, seconds.
#: The outcome is already journalled and on screen; this only delays closing the connection.
FEEDBACK_GRACE_S = 0.3
#: Time budget for reading a card's UID at re-attach, seconds.
IDENTIFY_BUDGET_S = 1.0
#: INS of the PC/SC Part 3 §3.2.2.1.3 GET DATA pseudo-APDU (``FF CA``), answered by the reader.
_GET_DATA = 0xCA
#: Seconds between retries while no trust bundle is installed yet.
NO_BUNDLE_RETRY_S = 2.0

_EVENT_OF = {
    TapStatus.ACCEPTED: FeedbackEvent.SUCCESS,
    TapStatus.BALANCE: FeedbackEvent.SUCCESS,
    TapStatus.RECOVERED: FeedbackEvent.SUCCESS,
    TapStatus.DECLINED: FeedbackEvent.DECLINE,
    TapStatus.VOIDED: FeedbackEvent.BUSY,
    TapStatus.UNCERTAIN: FeedbackEvent.BUSY,
    TapStatus.RETRY: FeedbackEvent.BUSY,
}


class FeedbackFailed(TerminalError):
    """A reader answered an LED/buzzer command with an error status word."""


def offline_limits(profile: TerminalProfile) -> OfflineLimits:
    """The profile's offline caps (rupiah) as :class:`OfflineLimits`.

    ``max_days_since_bundle`` is the bundle age at which limits reach their
    floor (:attr:`OfflineLimits.stale_floor`): service goes on at low amounts
    rather than stopping (docs/design.md §Keys and trust).
    """
    p = profile.policy

    def rupiah(v: int | None) -> dict[Unit, int]:
        return {} if v is None else {Unit.RUPIAH: v}

    stale = float(p.max_days_since_bundle) if p.max_days_since_bundle is not None else 30.0
    return OfflineLimits(
        per_tap=rupiah(p.offline_cap_per_tap),
        per_card_since_sync=rupiah(p.offline_cap_per_card_since_sync),
        terminal_exposure=rupiah(p.offline_terminal_exposure),
        fresh_days=min(7.0, stale),
        stale_days=stale,
    )


class ReaderFeedback:
    """The tap's feedback hook: LED/buzzer per reader profile, best effort (AP-3).

    Called by the tap processor after the outcome is journalled and published.
    Commands go through the :class:`FeedbackWorker` thread; for the ``apdu``
    channel the watcher keeps the card connection open up to
    :data:`FEEDBACK_GRACE_S` so the commands can reach the reader. On the first
    card of each reader the profile's ``buzzer_on_detect`` setting is applied.
    """

    def __init__(self, worker: FeedbackWorker, grace_s: float = FEEDBACK_GRACE_S) -> None:
        self.worker = worker
        self.grace_s = grace_s
        self._configured: set[str] = set()

    def __call__(self, conn: Connection, binding: ReaderSelector, outcome: TapOutcome) -> None:
        if not isinstance(binding, ReaderBinding) or binding.profile.feedback.channel is FeedbackChannel.NONE:
            return
        profile = binding.profile
        reader = conn.reader_name
        commands = profile.feedback
        if reader not in self._configured:
            self._configured.add(reader)
            setting = profile.buzzer_on_detect.command if profile.buzzer_on_detect else None
            if setting is not None:
                commands = commands.sending_first(_EVENT_OF[outcome.status], setting)
        done = self.worker.signal(reader, _EVENT_OF[outcome.status], commands,
                                  apdu=lambda cmd: _send_apdu(conn, cmd),
                                  control=_control_sender(conn, profile))
        # Both channels use the card handle (SCardTransmit / SCardControl): keep the
        # connection open a moment so the commands reach the reader; a late command
        # meets a closed GuardedConnection and is counted as a feedback failure.
        done.wait(self.grace_s)


def card_uid(caps: dict[str, ReaderCapabilities], conn: Connection, binding: ReaderSelector) -> bytes:
    """What tells the card on ``conn`` from another: the supervisor's identify hook.

    Tells the card resting on a reader after a PC/SC re-attach from a new one. A Type 2 tag
    (NTAG) gives its 7-byte UID from T2T pages 0-1 (NFC Forum T2T 1.0 §2.1; NTAG215 datasheet
    §8.5); an ISO-DEP card (a PC/SC ATR of ISO/IEC 14443-4, :func:`terminal.secure_tap.is_secure_atr`)
    takes no Type 2 frames and is told by :func:`iso_dep_key`.

    :raises TransportError: the card did not answer (or left) within 1 s.
    """
    name = binding.profile.name if isinstance(binding, ReaderBinding) else ""
    dconn = DeadlineConnection(conn, Deadline(IDENTIFY_BUDGET_S), IDENTIFY_BUDGET_S)
    if is_secure_atr(conn.atr):
        return iso_dep_key(dconn)
    channel = type2_channel(dconn, caps.get(name))
    return bytes(Type2Tag(channel, conn.atr).uid)


def iso_dep_key(conn: Connection) -> bytes:
    """The key of an ISO-DEP card for :func:`card_uid`: SHA-256 of its identity record, else its UID.

    A secure card may present a random UID at each activation (docs/card-format.md §Conventions), and a
    reader re-attach re-activates it, so our card is told by the issuer-signed identity it answers
    (SELECT, GET DATA identity: docs/secure-card.md §3-4; not verified, only compared). Any other
    ISO-DEP card is told by the UID of its anticollision: the one the stack read (nfcpy's NFCID1),
    or the reader's answer to GET DATA ``FF CA 00 00 00`` (PC/SC Part 3 §3.2.2.1.3).

    :raises TransportError: the card left or did not answer.
    :raises ApduError: the reader refused GET DATA (a card of neither kind).
    """
    session = SecureCardSession(conn)
    try:
        session.select()
        return hashlib.sha256(session.read_identity()).digest()
    except SecureCardError:
        pass
    uid = stack_uid(conn)
    if uid is not None:
        return uid
    resp = ApduChannel(conn).exchange(CommandApdu(CLA_PSEUDO, _GET_DATA, 0x00, 0x00, le=256))
    if resp.sw != SW.OK:
        raise ApduError(resp.data, resp.sw, "GET DATA (UID)")
    return resp.data


def _send_apdu(conn: Connection, cmd: bytes) -> None:
    _data, sw = conn.send_and_receive(cmd)
    # ACR122U API v2.04 §6.2: the LED/buzzer answer is 90 <LED state>; others 90 00.
    if sw >> 8 != 0x90:
        raise FeedbackFailed(f"reader answered {sw:04X} to {cmd[:4].hex()}")


def _control_sender(conn: Connection, profile: ReaderProfile) -> Callable[[bytes], object] | None:
    code = profile.escape_control_code
    control = getattr(conn, "control", None)
    if code is None or control is None:
        return None
    return lambda cmd: control(code, cmd)


def reader_supervisor(bindings: tuple[ReaderBinding, ...], on_tap: TapProcessor,
                      identify: Callable[[Connection, ReaderSelector], bytes]) -> Supervisor | SupervisorGroup:
    """The supervisor of the counter's readers: one per stack (PC/SC, nfcpy), grouped when both are used.

    docs/readers.md lists the stacks and how each is configured.

    :raises TerminalProfileError: a reader profile no backend can drive (an nfcpy profile without a
        device path, a stack without a backend); the loader refuses these already, so this is the
        daemon's own guard that no configured reader is silently left undriven.
    """
    by_stack: dict[Stack, list[ReaderBinding]] = {}
    for binding in bindings:
        by_stack.setdefault(binding.profile.stack, []).append(binding)
    supervisors = []
    for stack, group in by_stack.items():
        backend: ReaderBackend
        if stack is Stack.PCSC:
            backend = PcscBackend()
        elif stack is Stack.NFCPY:
            devices = []
            for b in group:
                path = b.profile.device_path
                if path is None:
                    raise TerminalProfileError(f"reader profile {b.profile.name!r}: no nfcpy device path")
                devices.append(NfcpyDevice(path, b.profile.capabilities(), b.profile.name_pattern,
                                           b.profile.poll_interval))
            backend = NfcpyBackend(devices)
        else:
            raise TerminalProfileError(f"reader profile {group[0].profile.name!r}: no backend drives "
                                       f"stack {stack.value!r}")
        supervisors.append(Supervisor(group, on_tap, backend=backend, scan_s=0.5, identify=identify))
    return supervisors[0] if len(supervisors) == 1 else SupervisorGroup(supervisors)


def load_terminal_signer(profile: TerminalProfile) -> Signer:
    """The terminal key the profile names: an encrypted PKCS#8 file or a PKCS#11 token (:mod:`terminal.keys`).

    :raises TerminalProfileError: no passphrase/PIN available, or a refused passphrase file.
    :raises cardlib.keys.errors.KeysError: wrong passphrase or PIN, unreadable key, no key on the token.
    """
    from terminal.keys import load_terminal_signer as load

    return load(profile)


@dataclass
class DaemonHealth:
    """What the watchdog saw (logged every ``health_log_s``)."""

    supervisor_restarts: int = 0
    screen_restarts: int = 0


def _refuse_if_running(journal: Path) -> None:
    """Raise :class:`JournalInUse` when another daemon holds ``journal``'s writer lock; nothing is journalled.

    :param journal: the profile's journal file.
    :raises JournalInUse: another ``huma terminal run`` holds it.
    """
    try:
        os.close(take_writer_lock(journal))
    except JournalInUse:
        raise
    except JournalStoreError:
        return  # no lock to probe (no state directory yet): the caller's own error stands


class Daemon:
    """All parts of one counter, started and stopped together.

    :param profile: the loaded terminal profile.
    :param signer: the terminal key.
    :param root_key: the pinned root public key.
    :param clock: the clock source.
    """

    def __init__(self, profile: TerminalProfile, signer: Signer, root_key: PublicKey,
                 clock: Clock | None = None) -> None:
        if profile.bundle_path is None:
            raise TerminalProfileError("the profile has no bundle path")
        # Configuration first (card-password keys and their passphrase, pinned server key, server URL):
        # a start that cannot run fails before the screen binds and before the journal counts a boot.
        card_passwords = load_card_passwords(profile)
        receipt_key = load_receipt_key(profile)
        try:
            api = HttpApi(profile.server_url)
        except ValueError as exc:  # plain http to another host (docs/security.md "Server answers are signed")
            raise TerminalProfileError(f"{profile.source}: {exc}") from exc
        self.profile = profile
        self.signer = signer
        self.stop_event = threading.Event()
        self.health = DaemonHealth()
        # The screen binds its port first: a busy port is one clear error before the journal counts a boot.
        self.state = ScreenState(profile.counter_mode, profile.programmes or ("-",))
        try:
            self.screen = CounterScreen(self.state, port=profile.screen_port, language=profile.language.value)
        except ScreenListenError:
            _refuse_if_running(profile.journal_path)  # a second daemon on this profile: say that, not the port
            raise
        self.journal = JournalStore(profile.journal_path, terminal_id=profile.terminal_id, signer=signer,
                                    clock=clock, receipt_key=receipt_key)
        self.trust = TrustStore(profile.bundle_path, root_key)
        mode = profile.counter_mode
        self.feedback = FeedbackWorker()
        self.reader_feedback = ReaderFeedback(self.feedback)
        caps = {b.profile.name: b.profile.capabilities() for b in profile.readers}
        self.tap = TapProcessor(
            CounterConfig(profile.terminal_id, mode, offline_limits(profile), caps=caps,
                          card_passwords=card_passwords),
            self.journal, signer, trust=self.trust.current,
            request=self._request, publish=self.state.publish, feedback=self.reader_feedback,
        )
        self.supervisor = reader_supervisor(profile.readers, self.tap, identify=partial(card_uid, caps))
        client = SyncClient(api, self.journal, signer, profile.terminal_id, self.trust, receipt_key=receipt_key)
        self.sync = SyncLoop(client, interval_s=profile.sync_interval)
        self._sup_thread: threading.Thread | None = None
        self.state.health_source = self.health_view
        self.state.sync_trigger = self.sync.kick
        self.state.checkpoint_source = partial(shift_checkpoint, self.journal, signer)
        # Complaints taken on the screen, next to the journal; each sync round sends them (docs/grievances.md).
        # Each one is also a signed journal entry (EntryKind.COMPLAINT): the file alone can be edited
        # (docs/security.md "A complaint erased at the clerk's own counter").
        self.grievances = GrievanceQueue(profile.journal_path.with_name("grievances.sqlite"), journal=self.journal)
        self.state.grievances = self.grievances
        client.grievances = GrievanceSender(api, self.grievances, signer, profile.terminal_id,
                                            receipt_key=client.receipt_key)
        self.state.fallback = FallbackDesk(self.journal, self._bundle_now, mode, profile.supervisors,
                                           limits=offline_limits(profile))

    def _bundle_now(self) -> Trust | None:
        """The installed trust bundle and when it was last confirmed current (its age), or None before the first one."""
        try:
            return self.trust.current()
        except TrustStoreError:
            return None

    def health_view(self) -> dict[str, object]:
        """Readers, PC/SC service, sync and journal state for the screen's ``/api/state``."""
        h = self.supervisor.health
        try:
            trust = self.trust.current()
            bundle_version: int | None = trust.bundle.version
            bundle_age: float | None = trust.age_days(time.time())
        except TrustStoreError:
            bundle_version = bundle_age = None
        return {
            "pcsc": h.service.value,
            "pcsc_restarts": h.restarts,
            "readers": {name: status.value for name, status in list(h.readers.items())},
            "sync_rounds": self.sync.health.rounds,
            "sync_error": self.sync.health.last_error,
            "last_sync_ok": self.sync.health.last_ok,
            "unsent": self.journal.unsent_count(),
            "upload_refused": len(self.journal.upload_problems()),  # flagged by a signed receipt, kept
            "bundle_version": bundle_version,
            "bundle_age_days": bundle_age,
            "bundle_fresh_days": self.tap.cfg.limits.fresh_days,
            "boot_id": self.journal.boot_id,
        }

    def _request(self) -> tuple[str, int, str | None]:
        programme, qty = self.state.request()
        return programme, qty, self.state.take_pin()

    # ------------------------------------------------------------------ lifecycle

    def _start_supervisor(self) -> None:
        if self._sup_thread is not None:
            self.health.supervisor_restarts += 1
            log.error("reader supervisor thread had died; restarting it")
            self.supervisor.stop_event.clear()
        self._sup_thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._sup_thread.start()

    def _supervise(self) -> None:
        try:
            self.supervisor.run()
        except Exception:
            log.exception("reader supervisor crashed")
            raise

    def _wait_for_bundle(self) -> bool:
        """Block until a trust bundle is installed (first start); sync keeps trying meanwhile.

        Expected on a counter's first start before enrolment completes: logged once at WARNING, and
        at INFO when the bundle arrives.
        """
        warned = False
        while not self.stop_event.is_set():
            try:
                version = self.trust.current().bundle.version
                if warned:
                    log.info("trust bundle v%d installed, readers on", version)
                return True
            except TrustStoreError as exc:
                if not warned:
                    log.warning("%s; readers stay off until the first bundle arrives", exc)
                    warned = True
                self.sync.kick()
                self.stop_event.wait(NO_BUNDLE_RETRY_S)
        return False

    def run(self, ready: Callable[[Daemon], object] | None = None) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT via :func:`run_daemon`)."""
        self.screen.start()
        self.sync.start()
        log.info("counter %s: screen on %s, journal %s", self.profile.terminal_id, self.screen.url,
                 self.journal.path)
        try:
            if not self._wait_for_bundle():
                return
            self._start_supervisor()
            if ready is not None:
                ready(self)
            while not self.stop_event.wait(WATCHDOG_S):
                self._watchdog()
        finally:
            self._shutdown()

    def _watchdog(self) -> None:
        if self._sup_thread is not None and not self._sup_thread.is_alive():
            self._start_supervisor()
        self.sync.ensure_running()
        self.feedback.healthy()
        if not self.screen.healthy():
            self.health.screen_restarts += 1
            log.error("counter screen stopped; restarting it")
            self.screen = CounterScreen(self.state, port=self.profile.screen_port,
                                        language=self.profile.language.value).start()

    def stop(self) -> None:
        """Ask :meth:`run` to shut down (signal-safe: only sets an event)."""
        self.stop_event.set()

    def _shutdown(self) -> None:
        self.supervisor.stop()
        if self._sup_thread is not None:
            self._sup_thread.join(timeout=15)
        self.sync.stop(timeout=5)
        self.screen.stop()
        self.feedback.stop()
        self.journal.close()
        self.grievances.close()
        log.info("counter %s stopped cleanly", self.profile.terminal_id)


def check_profile_mode(profile_path: Path, profile: TerminalProfile) -> None:
    """Refuse a profile holding supervisor password hashes that other accounts may read or write.

    The rule is :func:`firmware_config.loader.profile_mode_issue` (``huma config check`` applies it too).

    :raises TerminalProfileError: supervisors listed and the file readable or writable by others, or owned
        by an account other than root or the daemon's.
    """
    issue = profile_mode_issue(profile_path, profile)
    if issue is not None:
        raise TerminalProfileError(f"{profile_path} {issue.message}")


def build_daemon(profile_path: Path, reader_dirs: tuple[Path, ...] = ()) -> Daemon:
    """Load the profile, the key and the pinned root; build (not start) the daemon.

    :raises firmware_config.errors.ConfigError: invalid profile.
    :raises TerminalProfileError: missing passphrase or root key path, or supervisor hashes in a profile others
        may read (:func:`check_profile_mode`).
    :raises cardlib.keys.root.RootKeyError: the pinned root key file is unreadable or not a key.
    """
    profile = load_terminal_profile(profile_path, reader_dirs)
    check_profile_mode(profile_path, profile)
    if profile.root_key_path is None:
        raise TerminalProfileError("the profile has no root key path")
    return Daemon(profile, load_terminal_signer(profile), load_root_key(profile.root_key_path))


def run_daemon(profile_path: Path) -> None:
    """``huma terminal run``: build the daemon, stop cleanly on SIGTERM/SIGINT."""
    daemon = build_daemon(profile_path)

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("signal %d: shutting down", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    daemon.run()
    log.info("ran %.0f s", time.monotonic() - started)
