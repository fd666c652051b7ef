"""Reader supervision: PC/SC contexts, reader attach/detach, card presentations.

Field cases PC-1 … PC-4 (docs/field-cases.md §PC):

- PC-1 pcscd restarts: every PC/SC failure of kind
  :class:`~cardlib.transport.errors.ServiceUnavailable` (0x8010001D/1E/13)
  makes the supervisor release its context, wait with capped exponential
  backoff plus jitter, re-establish, re-list readers and re-arm every reader
  watcher. Health (:class:`Health`) says which state it is in.
- PC-2 readers come and go, maybe under another name suffix: readers are
  chosen by the configured name pattern (``re.search`` on the name, plus an
  optional slot pattern to skip SAM slots), never by index; a vanished
  reader's watcher ends in state GONE and a reader matching the pattern is
  attached again on the next scan, whatever its suffix; the tap in flight
  fails with a retry status.
- PC-3 card taken away mid-transaction: the tap sees
  :class:`~cardlib.transport.errors.SessionLost`; the watcher disconnects and
  waits for PC/SC to report the card absent and then present again (a status
  change, not an immediate reconnect), and the next presentation re-reads
  everything (the tap keeps no card memory between presentations).
- PC-4 pcscd exiting when idle: the supervisor holds a context for as long as it runs.

One presentation, one transaction — also across re-attach: a pcscd restart
(PC-1) or a reader coming back (PC-2) powers the field again, so PC/SC reports
the card that was resting on the reader as if it had just arrived. The
supervisor keeps a :class:`PresentationMemory` that outlives watchers: the
last *served* card per reader (binding, UID). A watcher that attaches with a
card already present asks the ``identify`` hook for its UID; the same UID on
the same binding is still resting (no tap) until PC/SC reports it gone. A
different UID, or a card absent at attach, is a new presentation.

A watcher whose own context reports the service gone does not by itself
mean pcscd left: pcscd drops a single client connection (e.g. after a call on
a handle that another thread of that client just disconnected — "Client failed
to authenticate" in pcscd's log). The supervisor probes the service with a fresh
context before declaring it down; if it answers, only that reader re-attaches.
The card connection given to the tap is a :class:`~terminal.connection.GuardedConnection`: feedback
threads that still hold it after the watcher disconnected get a typed error
instead of sending a stale handle to pcscd.

Structure: :meth:`Supervisor.run` is a loop the daemon's main thread owns. It
starts one :class:`ReaderWatcher` thread per matching reader, each with its
own PC/SC context (pcsc-lite serialises calls per context, so a blocking
``SCardGetStatusChange`` must not share one with a transmit). The loop checks
the watchers every scan; one that died is logged with its exception and
restarted — a watcher can never stop silently.

Readers driven by nfcpy (a PN532 on a serial port, the USB readers nfcpy has
drivers for, the ``udp:`` link of the simulator) have no service between us
and the reader: :class:`NfcpyBackend` opens each configured device itself,
lists it under the name nfcpy reports (``PN532v1.6 at /dev/ttyUSB0``) while it
answers, and polls the field for presence. A device that stops answering ends
its watcher (GONE, as PC-2) and is re-opened with capped exponential back-off;
the same :class:`PresentationMemory` keeps a resting card from being served
twice after it comes back. A counter with readers of both stacks runs one
:class:`Supervisor` per stack under a :class:`SupervisorGroup`.

A configured reader entry that matches no listed reader is logged at WARNING,
once per entry until it matches.

Only :mod:`cardlib.transport.pcsc` imports pyscard and only
:mod:`cardlib.transport.nfcpy` imports nfcpy; this module loads each only when
its backend is used.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from cardlib.transport import Connection
from cardlib.transport.errors import (
    NoCard,
    ReaderGone,
    ServiceUnavailable,
    SessionLost,
    TransportError,
)
from terminal.connection import GuardedConnection

if TYPE_CHECKING:
    from cardlib.transport.nfcpy import NfcpyReader
    from cardlib.transport.pcsc import PcscContext
    from cardlib.type2.channel import ReaderCapabilities

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ReaderStatus(enum.Enum):
    """State of one configured reader."""

    WAITING = "waiting"  #: attached, no card
    BUSY = "busy"  #: a tap is running
    CARD_RESTING = "card_resting"  #: tap finished, card still in the field (no new tap until it leaves)
    GONE = "gone"  #: unplugged or its slot vanished (PC-2)


class ServiceStatus(enum.Enum):
    """State of the PC/SC service as the supervisor sees it."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"  #: pcscd unreachable; retrying with backoff (PC-1)


class ReaderSelector(Protocol):
    """Which PC/SC readers one configured reader entry serves.

    The daemon passes the profile's :class:`firmware_config.models.ReaderBinding`
    entries; the supervisor hands the matching one back to the tap with each
    presentation.
    """

    def matches(self, reader_name: str) -> bool:
        """Whether a PC/SC reader name belongs to this entry."""
        ...


@dataclass(frozen=True)
class ReaderNamePattern:
    """A reader chosen by its PC/SC name alone, with no reader profile (tools and tests).

    :ivar name_pattern: ``re.search``-ed in the reader name PC/SC reports.
    :ivar slot_pattern: also searched (e.g. ``PICC`` to skip a SAM slot), or None.
    """

    name_pattern: re.Pattern[str]
    slot_pattern: re.Pattern[str] | None = None

    def matches(self, reader_name: str) -> bool:
        """Whether a PC/SC reader name matches both patterns."""
        return bool(self.name_pattern.search(reader_name)) and (
            self.slot_pattern is None or bool(self.slot_pattern.search(reader_name))
        )


@dataclass
class Health:
    """A snapshot the daemon logs and the screen can show.

    :ivar service: PC/SC service state.
    :ivar readers: reader name -> status.
    :ivar restarts: PC/SC context re-establishments since start.
    :ivar watcher_restarts: watcher threads restarted after dying.
    :ivar last_error: the last PC/SC error text.
    """

    service: ServiceStatus = ServiceStatus.STARTING
    readers: dict[str, ReaderStatus] = field(default_factory=dict)
    restarts: int = 0
    watcher_restarts: int = 0
    last_error: str = ""


def _describe(binding: ReaderSelector) -> str:
    """A reader entry for logs: its profile name, name pattern and slot pattern when it has them."""
    profile = getattr(binding, "profile", None)
    parts = [f"profile {profile.name!r}"] if profile is not None else []
    pattern = getattr(profile if profile is not None else binding, "name_pattern", None)
    slot = getattr(binding, "slot_pattern", None)
    if isinstance(pattern, re.Pattern):
        parts.append(f"name pattern {pattern.pattern!r}")
    if isinstance(slot, re.Pattern):
        parts.append(f"slot pattern {slot.pattern!r}")
    return ", ".join(parts) or repr(binding)


#: Reads the UID of the card on a connection (e.g. T2T page 0-1, NFC Forum T2T 1.0 §2.1).
#: May raise TransportError subclasses; the card is then treated as a new presentation.
Identify = Callable[[Connection, ReaderSelector], bytes]


class PresentationMemory:
    """The last served card per reader, kept across watcher restarts and PC/SC re-attach.

    Entries: reader name -> ``(binding index, UID or None)``. An entry exists from
    the end of a served tap until a watcher *sees* that reader empty. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[str, tuple[int, bytes | None]] = {}

    def remember(self, reader: str, binding: int, uid: bytes | None) -> None:
        """A tap on ``reader`` (binding index ``binding``) served the card ``uid``."""
        with self._lock:
            self._served[reader] = (binding, uid)

    def forget(self, reader: str) -> None:
        """PC/SC reported ``reader`` empty: the next card there is a new presentation."""
        with self._lock:
            self._served.pop(reader, None)

    def candidates(self, reader: str, binding: int, attached: Sequence[str]) -> list[tuple[str, bytes | None]]:
        """Served cards that may still be resting on ``reader``.

        The reader's own entry, plus entries of the same binding whose reader PC/SC
        no longer lists (PC-2: a reader may come back under another suffix).

        :returns: ``[(reader name of the entry, UID or None)]``.
        """
        with self._lock:
            return [(name, uid) for name, (b, uid) in self._served.items()
                    if name == reader or (b == binding and name not in attached)]

    def claim(self, reader: str, entry: str) -> None:
        """Move ``entry``'s served card to ``reader`` (the same card, seen under a new reader name)."""
        with self._lock:
            item = self._served.pop(entry, None)
            if item is not None:
                self._served[reader] = item


#: Runs one tap on a connected card. Returns when the tap is done (a result with a
#: ``tag_uid`` attribute, bytes, names the served card without another card read); may raise
#: TransportError subclasses (the watcher handles them) — anything else is a bug
#: that is logged and counted, and the watcher carries on.
TapHandler = Callable[[Connection, ReaderSelector], object]


class PcscBackend:
    """The PC/SC calls the supervisor needs, over :mod:`cardlib.transport.pcsc`."""

    def open(self) -> object:
        """A new PC/SC context.

        :raises ServiceUnavailable: pcscd is not there.
        """
        from cardlib.transport.pcsc import PcscContext

        return PcscContext()

    # Contexts are opaque to the supervisor (a test backend hands out its own); the ones
    # given to these methods are those this backend's open() made.

    def readers(self, ctx: object) -> list[str]:
        """The reader names PC/SC lists now."""
        return cast("PcscContext", ctx).readers()

    def wait(self, ctx: object, reader: str, present: bool, timeout_s: float) -> bool:
        """Block in ``SCardGetStatusChange`` until the card is present/absent or the timeout."""
        return cast("PcscContext", ctx).wait_for_card(reader, present=present, timeout_s=timeout_s)

    def connect(self, ctx: object, reader: str) -> Connection:
        """Connect to the card on ``reader``."""
        from cardlib.transport.pcsc import PcscConnection

        return PcscConnection(cast("PcscContext", ctx), reader)

    def close(self, ctx: object) -> None:
        """Release the context."""
        cast("PcscContext", ctx).close()

    def shutdown(self) -> None:
        """Nothing outlives a PC/SC context."""


class ReaderBackend(Protocol):
    """What the supervisor and its watchers need from a reader stack (:class:`PcscBackend`, :class:`NfcpyBackend`).

    Contexts are opaque: each backend takes back only the ones its own :meth:`open` made.
    """

    def open(self) -> object:
        """A new context. :raises ServiceUnavailable: the stack's service is not there."""
        ...

    def readers(self, ctx: object) -> list[str]:
        """The reader names the stack lists now."""
        ...

    def wait(self, ctx: object, reader: str, present: bool, timeout_s: float) -> bool:
        """Block until a card is present (``present``) or absent, or ``timeout_s`` seconds passed.

        :raises ReaderGone: the reader vanished.
        """
        ...

    def connect(self, ctx: object, reader: str) -> Connection:
        """Connect to the card on ``reader``. :raises NoCard: the field is empty."""
        ...

    def close(self, ctx: object) -> None:
        """Release the context."""
        ...

    def shutdown(self) -> None:
        """Release whatever outlives contexts (the supervisor is stopping)."""
        ...


@dataclass(frozen=True)
class NfcpyDevice:
    """One reader nfcpy opens by path (from a reader profile of stack ``nfcpy``).

    :ivar path: nfcpy device path: ``tty:USB0:pn532``, ``usb:054c:06c3``, ``udp:127.0.0.1:54321``.
    :ivar caps: capabilities of the channels handed out (``max_frame`` sizes FAST_READ).
    :ivar name_pattern: the opened device's name (``str(device)``) must match it (``re.search``).
    :ivar poll_interval: seconds between presence polls.
    """

    path: str
    caps: ReaderCapabilities
    name_pattern: re.Pattern[str]
    poll_interval: float = 0.1


#: Consecutive empty polls before an nfcpy reader counts as empty: one poll lost to a collision or
#: a garbled answer must not end a presentation (one presentation, one transaction).
ABSENT_POLLS = 3


class _OpenState:
    """One configured nfcpy device: the open reader (or None) and its re-open back-off."""

    def __init__(self, device: NfcpyDevice, first_s: float) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.reader: NfcpyReader | None = None
        self.name: str | None = None
        self.served_uid: bytes | None = None  #: UID of the card last connected to (its presentation)
        self.next_try = 0.0
        self.delay = first_s
        self.warned = False


class NfcpyBackend:
    """The reader calls the supervisor needs, over :mod:`cardlib.transport.nfcpy`.

    There is no service to lose (nothing like pcscd): :meth:`open` never fails. :meth:`readers`
    lists each configured device that is open, opening the others (a device that fails to open is
    tried again after a capped exponential back-off, and its first failure is logged at WARNING).
    A device that fails under a watcher is closed and drops off the list until it opens again.

    :param devices: the devices to drive.
    :param backoff_s: ``(first, max)`` seconds between attempts to open a device that is not there.
    """

    def __init__(self, devices: Sequence[NfcpyDevice], backoff_s: tuple[float, float] = (0.25, 8.0)) -> None:
        self._states = [_OpenState(d, backoff_s[0]) for d in devices]
        self._backoff = backoff_s
        self.opens = 0  #: successful device opens (a re-open after the reader came back counts)

    def open(self) -> object:
        """A context token (nothing to establish)."""
        return self

    def close(self, ctx: object) -> None:
        """Nothing to release per context; devices stay open for their watchers."""

    def shutdown(self) -> None:
        """Close every open device (the daemon is stopping)."""
        for state in self._states:
            with state.lock:
                self._drop(state)

    def readers(self, ctx: object) -> list[str]:
        """The names of the configured devices that are open, after trying to open the others."""
        names = []
        now = time.monotonic()
        for state in self._states:
            with state.lock:
                if state.reader is None and now >= state.next_try:
                    self._try_open(state, now)
                if state.name is not None:
                    names.append(state.name)
        return names

    def _try_open(self, state: _OpenState, now: float) -> None:
        from cardlib.transport.nfcpy import NfcpyReader  # the nfcpy extra, loaded only here

        device = state.device
        reader = NfcpyReader(device.path, device.caps, name_pattern=device.name_pattern)
        try:
            reader.open()
        except TransportError as exc:
            if not state.warned:
                state.warned = True
                log.warning("nfcpy reader on %s not available (%s); retrying with back-off", device.path, exc)
            else:
                log.debug("nfcpy reader on %s still not available (%s)", device.path, exc)
            state.next_try = now + state.delay * (0.5 + random.random())
            state.delay = min(state.delay * 2, self._backoff[1])
            return
        state.reader, state.name = reader, reader.name
        state.delay, state.warned = self._backoff[0], False
        self.opens += 1
        log.info("nfcpy reader %r open on %s", state.name, device.path)

    def _drop(self, state: _OpenState) -> None:
        reader, state.reader, state.name = state.reader, None, None
        if reader is not None:
            with contextlib.suppress(Exception):  # a vanished device may fail any way while closing
                reader.close()

    def _state(self, reader: str) -> _OpenState:
        for state in self._states:
            if state.name == reader:
                return state
        raise ReaderGone(f"nfcpy reader {reader!r} is not open")

    def _call(self, reader: str, call: Callable[[NfcpyReader, _OpenState], _T]) -> _T:
        state = self._state(reader)
        opened = state.reader
        if opened is None:
            raise ReaderGone(f"nfcpy reader {reader!r} is not open")
        try:
            return call(opened, state)
        except ReaderGone:
            with state.lock:
                if state.reader is opened:
                    self._drop(state)
                    state.next_try = time.monotonic() + state.delay
            raise

    def wait(self, ctx: object, reader: str, present: bool, timeout_s: float) -> bool:
        """Poll the field until a card answers (``present``), or until the card last connected to is gone.

        Gone means :data:`ABSENT_POLLS` polls in a row found no card, or a card with another UID
        answered (the served card was swapped for another without an empty poll between).

        :raises ReaderGone: the device stopped answering (it is closed and re-opened later).
        """
        def poll(opened: NfcpyReader, state: _OpenState) -> bool:
            end = time.monotonic() + timeout_s
            empty = 0
            while True:
                uid = opened.poll_uid()
                if present and uid is not None:
                    return True
                if not present and uid is not None and state.served_uid is not None and uid != state.served_uid:
                    return True
                empty = 0 if uid is not None else empty + 1
                if not present and empty >= ABSENT_POLLS:
                    return True
                if time.monotonic() >= end:
                    return False
                time.sleep(state.device.poll_interval)

        return self._call(reader, poll)

    def connect(self, ctx: object, reader: str) -> Connection:
        """The card in the field: a Type 2 tag's frame connection or an ISO-DEP card's APDU connection.

        :raises NoCard: the field is empty. :raises ReaderGone: the device stopped answering.
        :raises cardlib.transport.nfcpy.UnsupportedTarget: a card of another kind answered.
        """
        def poll(opened: NfcpyReader, state: _OpenState) -> Connection:
            conn = opened.poll_card()
            if conn is None:
                raise NoCard(f"no card on {reader!r}")
            state.served_uid = conn.uid
            return conn

        return self._call(reader, poll)


class ReaderWatcher:
    """Watches one reader in its own thread with its own PC/SC context.

    Loop: wait (``SCardGetStatusChange``) for a card → connect → run the tap
    under a deadline → disconnect → wait for the card to *leave* before the
    next tap (one presentation, one transaction; PC-3) → repeat. A card
    already present when the watcher starts is first checked against
    :class:`PresentationMemory` (the same served card is not tapped again).
    Ends on ReaderGone / ServiceUnavailable, leaving :attr:`ended_by` for the
    supervisor.
    """

    def __init__(
        self,
        name: str,
        binding: ReaderSelector,
        backend: ReaderBackend,
        on_tap: TapHandler,
        health: Health,
        stop: threading.Event,
        wait_slice_s: float = 0.5,
        *,
        memory: PresentationMemory | None = None,
        binding_index: int = 0,
        identify: Identify | None = None,
        attached: Callable[[], Sequence[str]] = lambda: (),
        settle_s: float = 3.0,
    ) -> None:
        self.name = name
        self.binding = binding
        self._backend = backend
        self._on_tap = on_tap
        self._health = health
        self._stop = stop
        self._slice = wait_slice_s
        self._memory = memory if memory is not None else PresentationMemory()
        self._binding_index = binding_index
        self._identify = identify
        self._attached = attached
        self._settle_s = settle_s
        self.ended_by: BaseException | None = None
        self.taps = 0
        self.tap_errors = 0
        self.resting_at_attach = 0  #: cards found still resting when the watcher started (not tapped)
        self.thread = threading.Thread(target=self._run, name=f"reader:{name}", daemon=True)

    def start(self) -> ReaderWatcher:
        self.thread.start()
        return self

    def _set(self, status: ReaderStatus) -> None:
        self._health.readers[self.name] = status

    def _run(self) -> None:
        try:
            ctx = self._backend.open()
        except TransportError as exc:
            self.ended_by = exc
            return
        try:
            self._loop(ctx)
        except (ReaderGone, ServiceUnavailable) as exc:
            self.ended_by = exc
            self._set(ReaderStatus.GONE)
            log.warning("reader %r: %s", self.name, exc)
        except Exception as exc:
            self.ended_by = exc
        finally:
            self._backend.close(ctx)

    def _loop(self, ctx: object) -> None:
        self._set(ReaderStatus.WAITING)
        # Right after attach PC/SC may not report the resting card yet (pcscd polls its
        # readers, a vpcd card reconnects): the served card is remembered until the
        # reader has stayed empty for the settle time, or a removal was seen.
        settle_end = time.monotonic() + self._settle_s
        check_memory = True
        while not self._stop.is_set():
            if not self._backend.wait(ctx, self.name, True, self._slice):
                if check_memory and time.monotonic() >= settle_end:
                    self._memory.forget(self.name)
                    check_memory = False
                continue
            if check_memory:
                check_memory = False
                if self._still_resting(ctx):
                    self.resting_at_attach += 1
                    self._set(ReaderStatus.CARD_RESTING)
                    self._wait_removal(ctx)
                    self._set(ReaderStatus.WAITING)
                    continue
            self._set(ReaderStatus.BUSY)
            self._one_presentation(ctx)
            self._set(ReaderStatus.CARD_RESTING)
            # One presentation, one transaction: the next tap needs the card to leave first.
            self._wait_removal(ctx)
            self._set(ReaderStatus.WAITING)

    def _wait_removal(self, ctx: object) -> None:
        while not self._stop.is_set():
            if self._backend.wait(ctx, self.name, False, self._slice):
                self._memory.forget(self.name)
                return

    def _still_resting(self, ctx: object) -> bool:
        """Whether the card present at attach is the one already served here (no new transaction)."""
        candidates = self._memory.candidates(self.name, self._binding_index, self._attached())
        if not candidates:
            return False
        uid: bytes | None = None
        if self._identify is not None:
            try:
                conn = self._backend.connect(ctx, self.name)
            except (NoCard, SessionLost):
                return False
            try:
                uid = self._identify(conn, self.binding)
            except (ReaderGone, ServiceUnavailable):
                raise
            except TransportError as exc:
                log.info("reader %r: could not identify the card present at attach (%s)", self.name, exc)
                return False
            finally:
                with contextlib.suppress(TransportError):
                    conn.close()
        for entry, served_uid in candidates:
            # A card that cannot be told apart (no identify hook, or its UID was not read after
            # the tap) is kept resting: never charge twice; lifting it re-arms the reader.
            if self._identify is None or served_uid is None or served_uid == uid:
                self._memory.claim(self.name, entry)
                log.warning("reader %r: the card served before the re-attach is still on the reader; "
                            "waiting for it to be lifted (one presentation, one transaction)", self.name)
                return True
        return False

    def _one_presentation(self, ctx: object) -> None:
        try:
            raw = self._backend.connect(ctx, self.name)
        except (NoCard, SessionLost) as exc:
            # It left before we connected (or did not answer): wait for the next arrival.
            log.debug("reader %r: no card to connect to (%s)", self.name, exc)
            return
        conn = GuardedConnection(raw)
        served = False
        result: object = None
        try:
            self.taps += 1
            result = self._on_tap(conn, self.binding)
            served = True
        except (ReaderGone, ServiceUnavailable):
            raise
        except SessionLost as exc:
            log.info("reader %r: card session lost (%s); waiting for the card to come back", self.name, exc)
        except TransportError as exc:
            log.warning("reader %r: card error %s", self.name, exc)
        except Exception:
            self.tap_errors += 1
            log.exception("reader %r: the tap failed unexpectedly", self.name)
        finally:
            if served:
                self._remember(conn, getattr(result, "tag_uid", None))
            with contextlib.suppress(TransportError):
                conn.close()

    def _remember(self, conn: Connection, uid: bytes | None) -> None:
        """Record the served card: ``uid`` as the tap read it, else via the identify hook (after the outcome)."""
        if uid is None and self._identify is not None:
            try:
                uid = self._identify(conn, self.binding)
            except TransportError as exc:
                log.debug("reader %r: UID of the served card not read (%s)", self.name, exc)
        self._memory.remember(self.name, self._binding_index, uid)


class Supervisor:
    """Owns the PC/SC service connection and one watcher per configured reader.

    :param bindings: readers wanted (by name pattern).
    :param on_tap: runs one tap on a connected card (see :data:`TapHandler`).
    :param backend: the reader stack (default: :class:`PcscBackend`; :class:`NfcpyBackend` for nfcpy readers).
    :param scan_s: seconds between reader re-listings.
    :param backoff_s: ``(first, max)`` seconds of the reconnect backoff (PC-1).
    :param identify: reads a card's UID (see :data:`Identify`); without it a card
        found on a reader at re-attach after a served tap there is always taken as
        the same card (kept resting until lifted).
    """

    def __init__(
        self,
        bindings: Sequence[ReaderSelector],
        on_tap: TapHandler,
        *,
        backend: ReaderBackend | None = None,
        scan_s: float = 1.0,
        backoff_s: tuple[float, float] = (0.25, 8.0),
        identify: Identify | None = None,
    ) -> None:
        self.bindings = tuple(bindings)
        self._identify = identify
        #: Served cards per reader; survives watcher restarts and PC/SC re-attach.
        self.memory = PresentationMemory()
        #: Watchers re-attached alone because only their own PC/SC connection was dropped.
        self.context_losses = 0
        self._on_tap = on_tap
        self._backend: ReaderBackend = backend or PcscBackend()
        self._unmatched_warned: set[int] = set()  #: entries already logged as matching no reader
        self._scan_s = scan_s
        self._backoff = backoff_s
        self.health = Health()
        self._watchers: dict[str, ReaderWatcher] = {}
        self._names: tuple[str, ...] = ()  #: readers PC/SC listed at the last scan
        self.stop_event = threading.Event()
        self._watch_stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread)."""
        self.stop_event.set()

    def run(self) -> None:
        """Supervise until :meth:`stop`: (re)establish the context, attach readers, restart watchers."""
        delay = self._backoff[0]
        while not self.stop_event.is_set():
            try:
                ctx = self._backend.open()
            except TransportError as exc:  # ServiceUnavailable, or another error of the service's (Access denied)
                self._down(exc)
                self.stop_event.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._backoff[1])
                continue
            if self.health.service is ServiceStatus.DOWN:
                self.health.restarts += 1
                log.warning("PC/SC service is back; re-attaching readers")
            self.health.service = ServiceStatus.UP
            delay = self._backoff[0]
            try:
                self._supervise(ctx)
            except TransportError as exc:
                # pcscd gone (ServiceUnavailable) or answering the listing with another error (seen: Access
                # denied from a busy pcscd): a new context after the back-off, never the thread's end
                self._down(exc)
                if not isinstance(exc, ServiceUnavailable):  # the context opens: no hot loop of failing lists
                    self.stop_event.wait(delay * (0.5 + random.random()))
            finally:
                self._stop_watchers()
                self._backend.close(ctx)
        self._backend.shutdown()

    def _down(self, exc: BaseException) -> None:
        if self.health.service is not ServiceStatus.DOWN:
            log.error("PC/SC service unavailable (%s); retrying with backoff", exc)
        self.health.service = ServiceStatus.DOWN
        self.health.last_error = str(exc)
        for name in self.health.readers:
            self.health.readers[name] = ReaderStatus.GONE

    def _supervise(self, ctx: object) -> None:
        self._watch_stop = threading.Event()
        while not self.stop_event.is_set():
            names = self._backend.readers(ctx)  # raises ServiceUnavailable when pcscd left
            self._names = tuple(names)
            for name in names:
                index = next((i for i, b in enumerate(self.bindings) if b.matches(name)), None)
                if index is None:
                    continue
                w = self._watchers.get(name)
                if w is not None and w.thread.is_alive():
                    continue
                if w is not None:
                    self._reap(w)
                    if isinstance(w.ended_by, ServiceUnavailable):
                        self._probe_service(w)
                self._watchers[name] = ReaderWatcher(
                    name, self.bindings[index], self._backend, self._on_tap, self.health, self._watch_stop,
                    memory=self.memory, binding_index=index, identify=self._identify,
                    attached=lambda: self._names,
                ).start()
                log.info("reader %r attached", name)
            self._log_unmatched(names)
            for name, w in list(self._watchers.items()):
                if name not in names:
                    self.health.readers[name] = ReaderStatus.GONE
                    if not w.thread.is_alive():
                        self._reap(w)
                        del self._watchers[name]
            self.stop_event.wait(self._scan_s)

    def _log_unmatched(self, names: Sequence[str]) -> None:
        """WARNING for each configured entry no listed reader matches: once, until it matches again."""
        for index, binding in enumerate(self.bindings):
            if any(binding.matches(name) for name in names):
                self._unmatched_warned.discard(index)
            elif index not in self._unmatched_warned:
                self._unmatched_warned.add(index)
                log.warning("reader entry %d (%s) matches no reader; listed: %s", index + 1,
                            _describe(binding), ", ".join(repr(n) for n in names) or "none")

    def _probe_service(self, w: ReaderWatcher) -> None:
        """A watcher's context reported the service gone: is pcscd really gone, or only that connection?

        :raises ServiceUnavailable: a fresh context cannot list readers either (PC-1).
        """
        probe = self._backend.open()  # raises ServiceUnavailable when pcscd is really gone
        try:
            self._backend.readers(probe)
        finally:
            self._backend.close(probe)
        self.context_losses += 1
        log.warning("reader %r lost its own PC/SC connection (%s) but the service answers; "
                    "re-attaching only this reader", w.name, w.ended_by)

    def _reap(self, w: ReaderWatcher) -> None:
        exc = w.ended_by
        if exc is None or isinstance(exc, (ReaderGone, ServiceUnavailable)):
            return
        self.health.watcher_restarts += 1
        log.error("watcher of reader %r died (%s: %s); restarting it", w.name, type(exc).__name__, exc)

    def _stop_watchers(self) -> None:
        self._watch_stop.set()
        for w in self._watchers.values():
            w.thread.join(timeout=5.0)
        self._watchers.clear()


class SupervisorGroup:
    """Several :class:`Supervisor` (one per reader stack) run, watched and stopped together.

    :meth:`run` runs each in its own thread and restarts one that died (logged at ERROR);
    :attr:`health` merges theirs. Has the interface of a single :class:`Supervisor` the daemon uses.

    :param supervisors: one per stack, e.g. PC/SC readers and nfcpy readers.
    :param check_s: seconds between liveness checks of the supervisor threads.
    """

    def __init__(self, supervisors: Sequence[Supervisor], check_s: float = 1.0) -> None:
        self.supervisors = tuple(supervisors)
        self.stop_event = threading.Event()
        self._check_s = check_s
        self.restarts = 0  #: supervisor threads restarted after dying

    @property
    def health(self) -> Health:
        """One snapshot of all stacks: readers of every stack; the service DOWN if any stack's is."""
        parts = [s.health for s in self.supervisors]
        merged = Health(restarts=sum(h.restarts for h in parts),
                        watcher_restarts=sum(h.watcher_restarts for h in parts),
                        last_error="; ".join(h.last_error for h in parts if h.last_error))
        services = {h.service for h in parts}
        for status in (ServiceStatus.DOWN, ServiceStatus.STARTING, ServiceStatus.UP):
            if status in services:
                merged.service = status
                break
        for h in parts:
            merged.readers.update(h.readers)
        return merged

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread)."""
        self.stop_event.set()

    def run(self) -> None:
        """Run every supervisor until :meth:`stop`; restart any whose thread died."""
        threads: dict[int, threading.Thread] = {}
        try:
            while not self.stop_event.is_set():
                for index, sup in enumerate(self.supervisors):
                    thread = threads.get(index)
                    if thread is not None and thread.is_alive():
                        continue
                    if thread is not None:
                        self.restarts += 1
                        log.error("reader supervisor %d had died; restarting it", index + 1)
                    sup.stop_event.clear()
                    threads[index] = threading.Thread(target=self._run_one, args=(sup,),
                                                      name=f"supervisor:{index + 1}", daemon=True)
                    threads[index].start()
                self.stop_event.wait(self._check_s)
        finally:
            for sup in self.supervisors:
                sup.stop()
            for thread in threads.values():
                thread.join(timeout=15)

    @staticmethod
    def _run_one(sup: Supervisor) -> None:
        try:
            sup.run()
        except Exception:
            log.exception("reader supervisor crashed")
            raise
