"""The hardware seam: one small connection interface every reader stack implements.

Protocol code (APDU layer, tag classes, card session) takes a :class:`Connection`
in its constructor and never imports a vendor library; the only modules that do
are :mod:`cardlib.transport.pcsc` (pyscard) and :mod:`cardlib.transport.nfcpy` (nfcpy).
Follows the shape of Yubico's ``SmartCardConnection``.
"""

from __future__ import annotations

import abc
from types import TracebackType

from cardlib.transport.errors import (
    CardRemoved,
    NoCard,
    ReaderGone,
    ReaderNotFound,
    ServiceUnavailable,
    SessionLost,
    TagLost,
    TagMute,
    TransportError,
)

__all__ = [
    "CardRemoved",
    "Connection",
    "CountingConnection",
    "NoCard",
    "ReaderGone",
    "ReaderNotFound",
    "ServiceUnavailable",
    "SessionLost",
    "TagLost",
    "TagMute",
    "TransportError",
]


class Connection(abc.ABC):
    """A session with one card on one reader, exchanging ISO 7816-4 APDUs.

    Use as a context manager; :meth:`close` is idempotent.
    """

    @abc.abstractmethod
    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one command APDU and return ``(response data, SW1SW2 as int)``.

        :param apdu: the whole command APDU (CLA INS P1 P2 [Lc data] [Le]), bytes.
        :returns: the response data without the status word, and the status word
            as a 16-bit integer (e.g. ``0x9000``).
        :raises cardlib.transport.TransportError: (subclasses) when the card left
            the field, the reader is gone or the response is shorter than 2 bytes.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the card (power off / disconnect). Idempotent."""

    @property
    @abc.abstractmethod
    def reader_name(self) -> str:
        """The reader's name as the stack reports it."""

    @property
    def atr(self) -> bytes:
        """The card's ATR (PC/SC) or an empty bytes object when the stack has none."""
        return b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CountingConnection(Connection):
    """Wraps a connection and counts what crosses the host-reader link (benchmarks, command budgets).

    docs/design.md §Performance targets budgets taps in card commands: each :meth:`send_and_receive` is one.

    :param inner: the connection doing the work (closed with this one).
    :ivar commands: APDUs sent.
    :ivar apdu_bytes: command plus response bytes, status words included.
    """

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.commands = 0
        self.apdu_bytes = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.commands += 1
        data, sw = self.inner.send_and_receive(apdu)
        self.apdu_bytes += len(apdu) + len(data) + 2
        return data, sw

    def close(self) -> None:
        self.inner.close()

    @property
    def reader_name(self) -> str:
        return self.inner.reader_name

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def reconnect(self, unpower: bool = False) -> None:
        """The inner connection's ``reconnect`` (PC/SC re-poll), for vendor-word retries.

        :raises AttributeError: the inner connection cannot reconnect.
        """
        self.inner.reconnect(unpower)  # type: ignore[attr-defined]
