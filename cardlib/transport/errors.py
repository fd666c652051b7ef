"""Typed transport errors: what went wrong between us and the card, by cause.

The terminal reacts differently to each cause (PC/SC Part 5 / pcsc-lite
``SCARD_*`` codes, field cases PC-1, PC-2, PC-3, AP-1):

- :class:`SessionLost` - the card left the field, was reset or stopped
  answering: disconnect, wait for a presence change, re-read everything.
- :class:`ReaderBusy` - another program holds the reader: this presentation is not served.
- :class:`ReaderGone` - the reader was unplugged or its slot vanished.
- :class:`ServiceUnavailable` - pcscd (or the nfcpy device) is gone: the
  supervisor re-establishes the context with backoff.
"""

from __future__ import annotations

from cardlib.errors import CardlibError


class TransportError(CardlibError):
    """Root of every error between the host and the card.

    :ivar code: the stack's own error code when it has one (for PC/SC the
        ``SCARD_*`` HRESULT as an unsigned 32-bit int, e.g. ``0x80100069``), else None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{message} (0x{code:08X})")
        self.code = code


class SessionLost(TransportError):
    """The card session is gone: card removed, reset or unresponsive (field case PC-3).

    Callers must not retry on the same session: disconnect, confirm presence
    by a status change, reconnect and re-read (no cached memory). A write in
    progress goes to the torn-write recovery path.
    """


class CardRemoved(SessionLost):
    """The card left the field (``SCARD_W_REMOVED_CARD`` and kin)."""


class TagMute(SessionLost):
    """The transmit "succeeded" but returned fewer than 2 bytes, or the tag did not answer.

    Field case AP-1: an ACR122U answers a command the NTAG does not know with a
    0-byte response. Treated like the card leaving the field.
    """


class ReaderBusy(SessionLost):
    """Another PC/SC client holds the reader (``SCARD_E_SHARING_VIOLATION``): no card session was opened.

    Card sessions are exclusive (:mod:`cardlib.transport.pcsc`); this presentation is not served,
    as if the card had left: the caller waits for the next one.
    """


class TagLost(SessionLost):
    """A reader pseudo-APDU kept failing after one re-poll (field case AP-2)."""


class ReaderGone(TransportError):
    """The reader (or its slot) disappeared (``SCARD_E_READER_UNAVAILABLE`` and kin, PC-2)."""


class ReaderNotFound(TransportError):
    """No reader, or more than one, matches the configured name pattern."""


class NoCard(TransportError):
    """The reader is present but no card is in its field."""


class ServiceUnavailable(TransportError):
    """The reader service (pcscd) is not running or stopped (PC-1)."""
