"""The counter's HTTP client: one bounded request per connection to the server (docs/security.md).

Whatever answers in the server's place (a captive portal, a DNS hijack, a rogue access point)
must not be able to stop the counter: an answer is read in pieces up to
:data:`MAX_ANSWER_BYTES`, and the whole request (connect, send, headers, body) must end within
:data:`DEFAULT_DEADLINE_S` plus one second per :data:`MIN_RATE` bytes of body received, not
only within a per-read socket timeout. So neither a body of a few GB (the daemon's memory, then
the kernel's OOM killer) nor a slow drip (the sync thread held for ever) gets through: a drip
slower than :data:`MIN_RATE` ends after about 300 s, a faster one at the size cap, so no request
lasts longer than 300 s + 16 MiB / 8 KiB/s = 2,348 s (39 min). Both end in
:class:`AnswerTooLarge` / :class:`DeadlinePassed` (a :class:`SyncError`: the sync loop backs off).
A genuine 6.3 MiB bundle needs 8 KiB/s (64 kbit/s) on average to arrive.

The largest legitimate answer is the trust bundle: with a 300,000-card deny list and two
chip UIDs per card it is 6.3 MiB (8-byte card ids, 7-byte UIDs, signed; measured with
``cardlib.records.bundle.sign_bundle``); the cap leaves room for about 10 MB more.

HTTP is the standard library's :mod:`http.client` (the terminal syncs rarely, keep-alive
buys nothing and a stale socket costs a retry).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from terminal.errors import SyncError

#: Largest answer body read, bytes (16 MiB: the largest bundle is 6.3 MiB, module doc).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Time a whole request may take before its body's bytes earn more, seconds.
DEFAULT_DEADLINE_S = 300.0
#: Each this many bytes of body received add one second to the deadline (8 KiB/s = 64 kbit/s:
#: a slow rural link still gets the largest bundle, a slower drip is cut).
MIN_RATE = 8 * 1024
#: Bytes asked of the socket per read.
_CHUNK = 64 * 1024


class AnswerTooLarge(SyncError):
    """The server's answer is larger than :data:`MAX_ANSWER_BYTES` (announced or read); nothing was kept."""


class DeadlinePassed(SyncError):
    """The request did not finish within its overall deadline (a slow drip, a stalled peer)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(url: str) -> None:
    """Refuse a server URL a counter must not use: not http(s), or ``http://`` to a non-loopback host.

    :raises ValueError: one line naming the URL and what to use instead.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must be https://host[:port], got {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"server URL {url!r} is plain http to another host: use https:// "
                         "(http is allowed only to loopback: 127.0.0.0/8, ::1, localhost)")


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (lower-case names), body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpApi:
    """The server's base URL and one-shot, bounded HTTP requests over :mod:`http.client`.

    :param base_url: ``https://host[:port]``, or ``http://`` to loopback only (a path such
        as ``/api/v1`` is ignored: endpoints are absolute).
    :param timeout_s: connect timeout and longest wait for any one read, seconds.
    :param max_bytes: largest answer body read, bytes (default :data:`MAX_ANSWER_BYTES`).
    :param deadline_s: time a whole request may take, seconds, plus 1 s per :data:`MIN_RATE` bytes of
        body received (default :data:`DEFAULT_DEADLINE_S`).
    :raises ValueError: not an http(s) URL, or plain http to another host (:func:`check_server_url`).
    """

    def __init__(self, base_url: str, timeout_s: float = 15.0, *, max_bytes: int = MAX_ANSWER_BYTES,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        check_server_url(base_url)
        url = urlsplit(base_url)
        self.scheme = url.scheme
        self.host = url.hostname or ""  # check_server_url refused a URL without a host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """One request on a fresh connection, its answer read up to :attr:`max_bytes`, within its deadline.

        :raises AnswerTooLarge: the answer announces (``Content-Length``) or sends more than
            :attr:`max_bytes`; the connection is closed without reading the rest.
        :raises DeadlinePassed: the request took longer than :attr:`deadline_s` plus 1 s per
            :data:`MIN_RATE` bytes of body received.
        :raises SyncError: the connection failed, timed out or was dropped before a full answer.
        """
        where = f"{method} {self.scheme}://{self.host}:{self.port}{path}"
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=min(self.timeout_s, self.deadline_s))
        deadline = _Deadline(conn, self.deadline_s)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = self._read(resp, where, deadline)
            if deadline.expired.is_set():
                raise DeadlinePassed(f"{where}: no full answer in time ({deadline})")
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if deadline.expired.is_set():
                raise DeadlinePassed(f"{where}: no full answer in time ({deadline})") from exc
            raise SyncError(f"{where}: {type(exc).__name__}: {exc}") from exc
        finally:
            deadline.stop()
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, where: str, deadline: _Deadline) -> bytes:
        """The body, in pieces, refusing more than :attr:`max_bytes` (announced or received)."""
        announced = resp.getheader("Content-Length")
        if announced is not None and announced.strip().isdigit() and int(announced) > self.max_bytes:
            raise AnswerTooLarge(f"{where}: answer of {int(announced)} bytes refused "
                                 f"(at most {self.max_bytes} read)")
        parts: list[bytes] = []
        size = 0
        start = time.monotonic()
        while True:
            piece = resp.read1(_CHUNK)
            if not piece:
                if resp.length:  # read1 returns what came before a close; read() raised IncompleteRead
                    raise http.client.IncompleteRead(b"".join(parts), resp.length)
                return b"".join(parts)
            size += len(piece)
            deadline.received = size
            if size > self.max_bytes:
                raise AnswerTooLarge(f"{where}: answer longer than {self.max_bytes} bytes refused "
                                     f"(after {time.monotonic() - start:.1f} s)")
            parts.append(piece)


class _Deadline:
    """Shuts a connection's socket once its request is over time (a blocking read cannot see a deadline).

    The time allowed is ``base_s`` plus one second per :data:`MIN_RATE` bytes of body
    received (:attr:`received`, set by the reader); a timer checks it and re-arms while the
    request is within it.

    :ivar expired: set when the socket was shut for being late.
    """

    def __init__(self, conn: http.client.HTTPConnection, base_s: float) -> None:
        self.conn, self.base_s = conn, base_s
        self.received = 0
        self.expired = threading.Event()
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: threading.Timer | None = None
        self._arm(base_s)

    def __str__(self) -> str:
        return (f"{time.monotonic() - self._start:.0f} s, {self.received} bytes: allowed {self.base_s:.0f} s "
                f"+ 1 s per {MIN_RATE} bytes")

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._check)
        self._timer.daemon = True
        self._timer.start()

    def _check(self) -> None:
        with self._lock:
            if self._stopped:
                return
            left = self.base_s + self.received / MIN_RATE - (time.monotonic() - self._start)
            if left > 0:
                self._arm(left)
                return
            self.expired.set()
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def stop(self) -> None:
        """The request is over: no more checks."""
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
