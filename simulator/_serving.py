"""A simulator that serves its host link from one background daemon thread.

Common part of :class:`simulator.nfc_udp.NfcUdpPeer` and :class:`simulator.pn532.Pn532Pty`:
the stop event, the thread's start and join, and ``with`` support (start on enter,
stop on exit).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

#: Seconds :meth:`BackgroundServer._join` waits for the serving thread (its loop polls every ≤ 50 ms).
JOIN_TIMEOUT_S = 2.0


class BackgroundServer(abc.ABC):
    """Start/stop plumbing for a simulator serving in a daemon thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run_in_thread(self, target: Callable[[], None], name: str) -> None:
        """Serve ``target`` in a daemon thread called ``name`` until :meth:`_join`."""
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def _join(self) -> None:
        """Ask the serving loop to end and wait for it (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
            self._thread = None

    @abc.abstractmethod
    def start(self) -> Self:
        """Begin serving; returns self."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop serving and release everything (idempotent)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
