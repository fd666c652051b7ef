"""Card connection wrappers for one tap: deadlines on card commands, a handle safe to close under other threads.

:class:`DeadlineConnection` bounds each command and the whole tap
(docs/field-cases.md §PC: a card leaving mid-command must not hang the
counter); :class:`GuardedConnection` is what the supervisor's watcher hands to
the tap, so feedback threads holding it after the watcher disconnected get a
typed error instead of a stale PC/SC handle. Both wrap any
:class:`cardlib.transport.Connection`.

A stack that exchanges Type 2 chip frames itself (nfcpy) hands out a connection with a
``native_channel()`` method; :func:`type2_channel` takes that channel, under the same
deadlines and guard, instead of a PC/SC pass-through channel (docs/readers.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved, SessionLost, TransportError
from cardlib.type2.channel import ReaderCapabilities, Type2Channel, channel_for

_T = TypeVar("_T")


def native_channel(conn: Connection) -> Type2Channel | None:
    """The stack's own Type 2 frame channel on ``conn`` (nfcpy), or None for an APDU-only connection (PC/SC)."""
    method = getattr(conn, "native_channel", None)
    return None if method is None else cast(Callable[[], "Type2Channel | None"], method)()


def stack_uid(conn: Connection) -> bytes | None:
    """The UID the stack read at anticollision (nfcpy's ``sdd_res``), or None (PC/SC: ask the reader, ``FF CA``)."""
    method = getattr(conn, "stack_uid", None)
    if method is not None:
        return cast(Callable[[], "bytes | None"], method)()
    uid = getattr(conn, "uid", None)
    return bytes(uid) if isinstance(uid, bytes | bytearray) else None


def type2_channel(conn: Connection, caps: ReaderCapabilities | None = None) -> Type2Channel:
    """The channel that carries Type 2 chip frames to the tag on ``conn``.

    :param conn: the card connection (wrapped or not in :class:`DeadlineConnection` / :class:`GuardedConnection`).
    :param caps: the reader's capabilities; picks the PC/SC pass-through (``channel_for``) when the
        stack has no frame channel of its own.
    """
    native = native_channel(conn)
    if native is not None:
        return native
    return channel_for(conn, caps) if caps else channel_for(conn)


class _WrappedChannel(Type2Channel):
    """A native frame channel seen through a wrapper: every frame and re-select goes through ``call``."""

    def __init__(self, inner: Type2Channel, call: Callable[[Callable[[], bytes]], bytes]) -> None:
        super().__init__(inner.caps)
        self._inner = inner
        self._call = call

    @property
    def supports_raw(self) -> bool:
        return self._inner.supports_raw

    def _exchange(self, frame: bytes) -> bytes:  # transceive is overridden; kept for the ABC
        return self._call(lambda: self._inner._exchange(frame))

    def transceive(self, frame: bytes) -> bytes:
        self.commands += 1
        answer = self._call(lambda: self._inner.transceive(frame))
        self.air_bytes += len(frame) + len(answer)
        return answer

    def reactivate(self) -> None:
        def reselect() -> bytes:
            self._inner.reactivate()
            return b""
        self.reader_exchanges += 1
        self._call(reselect)

    def reader_uid(self) -> bytes | None:
        """The inner channel's UID from activation (nfcpy: no card command)."""
        self.reader_exchanges += 1
        uid = self._call(lambda: self._inner.reader_uid() or b"")
        return uid or None


class Deadline:
    """A time budget for one tap (seconds, monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (negative when overrun)."""
        return self._end - time.monotonic()

    def check(self, what: str) -> None:
        """:raises DeadlineExceeded: when the budget is spent."""
        if self.left() <= 0:
            raise DeadlineExceeded(f"{what}: tap deadline of {self.seconds:.1f} s exceeded")


#: Seconds the caller waits for an aborted card call's thread to return (it may stay blocked).
_ABORT_GRACE_S = 0.2


def abort_connection(conn: Connection) -> None:
    """End a card call in flight on ``conn`` from another thread: its ``abort()``, else ``close()``.

    Errors are swallowed: the connection is being given up either way.
    """
    abort = getattr(conn, "abort", None)
    with contextlib.suppress(Exception):  # best effort on a connection already failing
        if abort is not None:
            abort()
        else:
            conn.close()


class DeadlineExceeded(SessionLost):
    """A card call ran past its deadline; treated like the card leaving the field."""


class DeadlineConnection(Connection):
    """A connection that enforces a per-call and a per-tap deadline on every card command.

    Each command runs on a short-lived worker thread; the caller waits at most the
    per-call limit (and never past the tap budget). A command still running then is
    ended: the inner connection is aborted (:func:`abort_connection`: ``abort()`` when the
    wrapper has one, else ``close()``, which disconnects the PC/SC card handle with a card
    reset, so a chip the tap authenticated is not left open, since
    pcsc-lite's ``SCardCancel`` does not reach an ``SCardTransmit`` in flight), so a card
    that stops answering frees its reader within the tap budget, not when it is lifted
    (docs/field-cases.md §PC). The call raises :class:`DeadlineExceeded` (a
    :class:`SessionLost`), sending the tap down the torn-write path if it was writing;
    every later call on this connection raises it at once.

    :param inner: the real connection.
    :param deadline: the tap's budget.
    :param per_call_s: most one command may take, seconds.
    """

    def __init__(self, inner: Connection, deadline: Deadline, per_call_s: float = 1.0) -> None:
        self._inner = inner
        self._deadline = deadline
        self._per_call_s = per_call_s
        self._aborted: str | None = None
        self.commands = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return self._timed(lambda: self._inner.send_and_receive(apdu))

    def _timed(self, call: Callable[[], _T]) -> _T:
        if self._aborted is not None:
            raise DeadlineExceeded(self._aborted)
        self._deadline.check("before a card command")
        limit = min(self._per_call_s, max(self._deadline.left(), 0.0))
        box: list[_T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                box.append(call())
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)

        start = time.monotonic()
        worker = threading.Thread(target=run, name="card-call", daemon=True)
        worker.start()
        worker.join(limit)
        took = time.monotonic() - start
        if worker.is_alive():
            self._aborted = f"a card command did not answer within {limit:.2f} s; the card handle was ended"
            # pcsc-lite's client holds the context's mutex for the whole SCardTransmit, so a
            # disconnect may itself wait for the blocked call: it runs on its own thread, and
            # the tap goes on without waiting for more than a moment.
            threading.Thread(target=abort_connection, args=(self._inner,), name="card-abort", daemon=True).start()
            worker.join(_ABORT_GRACE_S)
            raise DeadlineExceeded(self._aborted)
        self.commands += 1
        if failure:
            raise failure[0]
        if took > self._per_call_s:
            raise DeadlineExceeded(f"a card command took {took:.2f} s (limit {self._per_call_s:.2f} s)")
        return box[0]

    def native_channel(self) -> Type2Channel | None:
        """The inner stack's frame channel with the same deadlines on every frame, or None (PC/SC)."""
        inner = native_channel(self._inner)
        return None if inner is None else _WrappedChannel(inner, self._timed)

    def stack_uid(self) -> bytes | None:
        """The inner stack's anticollision UID (see :func:`stack_uid`)."""
        return stack_uid(self._inner)

    def close(self) -> None:
        self._inner.close()

    @property
    def reader_name(self) -> str:
        return self._inner.reader_name

    @property
    def atr(self) -> bytes:
        return self._inner.atr


class GuardedConnection(Connection):
    """A card connection that becomes unusable, race-free, when the watcher closes it.

    The tap hands the connection to other threads (LED/buzzer feedback, AP-3).
    pcsc-lite checks that a card handle belongs to the calling client; a call on
    a handle that another thread is disconnecting at that moment makes pcscd
    drop the client's whole socket (every context then reports
    ``SCARD_E_NO_SERVICE``). Every call and :meth:`close` therefore take one
    lock, and calls after close raise :class:`CardRemoved`.

    :param inner: the connection the watcher owns.
    """

    def __init__(self, inner: Connection) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise CardRemoved(f"connection to {self._inner.reader_name!r} already closed by its watcher")

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        with self._lock:
            self._check()
            return self._inner.send_and_receive(apdu)

    def control(self, code: int, data: bytes) -> bytes:
        """The reader's escape channel (``SCardControl``), if the inner connection has one.

        :raises CardRemoved: the watcher already closed the connection.
        :raises TransportError: the connection has no control channel, or the call failed.
        """
        control = getattr(self._inner, "control", None)
        if control is None:
            raise TransportError(f"reader {self._inner.reader_name!r} has no control channel")
        with self._lock:
            self._check()
            return bytes(control(code, data))

    def native_channel(self) -> Type2Channel | None:
        """The inner stack's frame channel, unusable once the watcher closed the connection; None (PC/SC)."""
        inner = native_channel(self._inner)
        return None if inner is None else _WrappedChannel(inner, self._guarded)

    def stack_uid(self) -> bytes | None:
        """The inner stack's anticollision UID (see :func:`stack_uid`); read at activation, no card command."""
        return stack_uid(self._inner)

    def _guarded(self, call: Callable[[], bytes]) -> bytes:
        with self._lock:
            self._check()
            return call()

    def abort(self) -> None:
        """Close now, without waiting for a call in flight (the deadline ended it): later calls raise.

        Closing ends the card session as any close does (PC/SC: a card reset, nfcpy: field off).

        Disconnecting the card handle under a blocked call is what makes that call return;
        pcscd may then drop this client's socket, which the supervisor already handles as a
        lost service (it reconnects).
        """
        if self._closed:
            return
        self._closed = True
        self._inner.close()

    def close(self) -> None:
        """Close once, after any call in flight on another thread has returned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inner.close()

    @property
    def reader_name(self) -> str:
        return self._inner.reader_name

    @property
    def atr(self) -> bytes:
        return self._inner.atr
