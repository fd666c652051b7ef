"""PC/SC transport via pyscard: the only cardlib module that imports ``smartcard``.

Uses pyscard's thin ``smartcard.scard`` layer so every pcsc-lite return code
reaches us unchanged and becomes a typed error (PC/SC Part 5; pcsc-lite
``pcsclite.h``; field cases PC-1, PC-2, PC-3, AP-1):

=====================================================  ==============================
code                                                   error
=====================================================  ==============================
0x80100069 REMOVED_CARD                                 :class:`CardRemoved`
0x80100068 RESET_CARD, 0x80100066 UNRESPONSIVE_CARD     :class:`SessionLost`
0x80100016 NOT_TRANSACTED                               :class:`SessionLost`, or
                                                        :class:`ReaderGone` if the reader
                                                        is no longer listed
0x80100017 READER_UNAVAILABLE, 0x80100009 UNKNOWN_READER :class:`ReaderGone`
0x8010001D NO_SERVICE, 0x8010001E SERVICE_STOPPED,      :class:`ServiceUnavailable`
0x80100013 COMM_ERROR
0x8010000C NO_SMARTCARD (connect)                       :class:`NoCard`
0x8010000B SHARING_VIOLATION (connect)                  :class:`ReaderBusy`
=====================================================  ==============================

Card sessions are exclusive and end with a card reset (docs/security.md §Card sessions on a
shared PC/SC service). A :class:`PcscConnection` connects ``SCARD_SHARE_EXCLUSIVE``: while it is
open no other PC/SC client gets a handle on the reader, so none can send a frame to a chip this
session authenticated with PWD_AUTH, reset it mid-write or drive the reader. pcsc-lite takes the
reader's lock for an exclusive handle (``winscard.c`` ``SCardConnect`` → ``RFLockSharing``),
which also makes pcscd reset the card if this process dies holding it (``winscard_svc.c``
``MSGRemoveContext``): a separate ``SCardBeginTransaction`` adds nothing. :meth:`PcscConnection.close`
disconnects with ``SCARD_RESET_CARD`` (:data:`END_DISPOSITION`): the reader re-activates the tag
(libccid: ``IFD_RESET`` = ICC power off + on; an ACR122U re-polls it), and an NTAG21x leaves the
AUTHENTICATED state on a field reset or any new activation (NTAG213/215/216 datasheet §8.8,
ISO/IEC 14443-3 state machine), so the next client finds it locked again. pcsc-lite resets the
card before it gives up exclusivity (``SCardDisconnect``), so no client gets in between. The
reset is not a card command of the tap (it is not counted by
:class:`cardlib.transport.CountingConnection`).

Readers are chosen by a configured name pattern, never by index
(:func:`select_reader`). A :class:`PcscContext` is a small handle the
terminal's reader supervisor owns (establish, list, wait for a change,
release); nothing here is global.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from types import TracebackType

from smartcard import scard

from cardlib.apdu import TRAFFIC, split_response
from cardlib.transport import Connection
from cardlib.transport.errors import (
    CardRemoved,
    NoCard,
    ReaderBusy,
    ReaderGone,
    ReaderNotFound,
    ServiceUnavailable,
    SessionLost,
    TransportError,
)

logger = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
#: Prefix of a reader pattern that is a regular expression (``re.search``); otherwise a glob.
REGEX_PREFIX = "re:"


def _u32(code: int) -> int:
    return code & _U32


SCARD_S_SUCCESS = 0
SCARD_W_REMOVED_CARD = 0x80100069
SCARD_W_RESET_CARD = 0x80100068
SCARD_W_UNRESPONSIVE_CARD = 0x80100066
SCARD_E_NOT_TRANSACTED = 0x80100016
SCARD_E_READER_UNAVAILABLE = 0x80100017
SCARD_E_UNKNOWN_READER = 0x80100009
SCARD_E_NO_SERVICE = 0x8010001D
SCARD_E_SERVICE_STOPPED = 0x8010001E
SCARD_F_COMM_ERROR = 0x80100013
SCARD_E_NO_SMARTCARD = 0x8010000C
SCARD_E_NO_READERS_AVAILABLE = 0x8010002E
SCARD_E_TIMEOUT = 0x8010000A
SCARD_E_SHARING_VIOLATION = 0x8010000B

#: How every card session ends (``SCardDisconnect`` disposition): reset the card, so a chip
#: authenticated by PWD_AUTH in the session is not left authenticated for the next PC/SC client.
END_DISPOSITION = scard.SCARD_RESET_CARD
#: Share mode of every card session: no other client has a handle while it is open.
SHARE_MODE = scard.SCARD_SHARE_EXCLUSIVE
#: Seconds :class:`PcscConnection` keeps retrying while another client holds the reader (a
#: middleware probe holds it for milliseconds), and the pause between tries.
BUSY_WAIT_S = 0.5
BUSY_RETRY_S = 0.02

_SESSION_LOST = {SCARD_W_RESET_CARD, SCARD_W_UNRESPONSIVE_CARD}
_READER_GONE = {SCARD_E_READER_UNAVAILABLE, SCARD_E_UNKNOWN_READER}
_SERVICE_GONE = {SCARD_E_NO_SERVICE, SCARD_E_SERVICE_STOPPED, SCARD_F_COMM_ERROR}


def map_pcsc_error(code: int, what: str) -> TransportError:
    """Turn a pcsc-lite return code into the typed error the caller acts on.

    :param code: the ``SCARD_*`` code (signed or unsigned).
    :param what: the operation, for the message.
    """
    code = _u32(code)
    text = f"{what}: {scard.SCardGetErrorMessage(code)}"
    if code == SCARD_W_REMOVED_CARD:
        return CardRemoved(text, code)
    if code in _SESSION_LOST or code == SCARD_E_NOT_TRANSACTED:
        return SessionLost(text, code)
    if code in _READER_GONE:
        return ReaderGone(text, code)
    if code in _SERVICE_GONE:
        return _service_unavailable(code, what)
    if code == SCARD_E_NO_SMARTCARD:
        return NoCard(text, code)
    if code == SCARD_E_SHARING_VIOLATION:
        return ReaderBusy(text, code)
    return TransportError(text, code)


#: What to tell the operator per "service gone" code (PC-1): the action, not only the code.
_SERVICE_HINTS = {
    SCARD_E_NO_SERVICE: "pcscd is not running (PC/SC service unavailable, 0x{code:08X}): "
                        "start it with `pcscd` or `systemctl start pcscd`",
    SCARD_E_SERVICE_STOPPED: "pcscd stopped (PC/SC service stopped, 0x{code:08X}): "
                             "start it again with `pcscd` or `systemctl start pcscd`",
    SCARD_F_COMM_ERROR: "lost contact with pcscd (PC/SC internal communication error, 0x{code:08X}): "
                        "check `systemctl status pcscd` and restart it",
}


#: Environment variable libpcsclite reads for the pcscd socket path (pcsc-lite ``PCSCLITE_CSOCK_NAME``).
CSOCK_ENV = "PCSCLITE_CSOCK_NAME"


def _service_unavailable(code: int, what: str) -> ServiceUnavailable:
    """:class:`ServiceUnavailable` whose message says what to do; ``.code`` keeps the SCARD code.

    The code is already in the hint text, so it is not appended a second time.
    """
    hint = _SERVICE_HINTS[code].format(code=code)
    sock = os.environ.get(CSOCK_ENV)
    if code == SCARD_E_NO_SERVICE and sock:
        # A private pcscd (the demo, the test harness) is reached via this socket, not the system one.
        state = "exists" if os.path.exists(sock) else "does not exist"
        hint += f"; or the pcscd behind {CSOCK_ENV}={sock} (that socket {state}) is not running"
    exc = ServiceUnavailable(f"{what}: {hint}")
    exc.code = code
    return exc


def select_reader(names: list[str], pattern: str | None) -> str:
    """Pick the one reader whose name matches *pattern* - never by index (field case PC-2).

    :param names: reader names as PC/SC lists them.
    :param pattern: a glob matched against the whole name (``"ACS ACR122U*"``), or
        ``"re:<regex>"`` searched in the name; None accepts any name but only when
        exactly one reader exists.
    :returns: the matching reader name.
    :raises ReaderNotFound: no reader, or more than one, matches.
    """
    if pattern is None:
        matches = list(names)
    elif pattern.startswith(REGEX_PREFIX):
        try:
            regex = re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as exc:
            raise ReaderNotFound(f"bad reader regex {pattern!r}: {exc}") from exc
        matches = [n for n in names if regex.search(n)]
    else:
        matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(repr(n) for n in names) or "none"
    if not matches:
        raise ReaderNotFound(f"no reader matches {pattern!r} (readers: {shown})")
    raise ReaderNotFound(f"{len(matches)} readers match {pattern or 'any'!r} ({shown}): configure a --reader pattern")


class PcscContext:
    """One PC/SC context (``SCardEstablishContext``); release it with :meth:`close` or ``with``.

    :raises ServiceUnavailable: pcscd is not running.
    """

    def __init__(self) -> None:
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr != SCARD_S_SUCCESS:
            raise map_pcsc_error(hr, "SCardEstablishContext")
        self._ctx: int | None = ctx

    @property
    def handle(self) -> int:
        """The raw SCARDCONTEXT.

        :raises ServiceUnavailable: the context was released.
        """
        if self._ctx is None:
            raise ServiceUnavailable("PC/SC context already released")
        return self._ctx

    def readers(self) -> list[str]:
        """Reader names (empty when none are attached).

        :raises ServiceUnavailable: pcscd went away.
        """
        hr, names = scard.SCardListReaders(self.handle, [])
        if _u32(hr) == SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hr != SCARD_S_SUCCESS:
            raise map_pcsc_error(hr, "SCardListReaders")
        return list(names)

    def card_present(self, reader: str) -> bool:
        """True when PC/SC reports a card in *reader* right now (``SCardGetStatusChange``, timeout 0)."""
        hr, states = scard.SCardGetStatusChange(self.handle, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if hr != SCARD_S_SUCCESS and _u32(hr) != SCARD_E_TIMEOUT:
            raise map_pcsc_error(hr, f"SCardGetStatusChange({reader})")
        return bool(states[0][1] & scard.SCARD_STATE_PRESENT)

    def wait_for_card(self, reader: str, present: bool = True, timeout_s: float = 5.0) -> bool:
        """Block until a card is present (or absent) in *reader* or *timeout_s* seconds pass.

        :returns: True when the state was reached, False on timeout.
        :raises ReaderGone, ServiceUnavailable: the reader or pcscd vanished.
        """
        state = scard.SCARD_STATE_UNAWARE
        budget_ms = int(timeout_s * 1000)
        hr, states = scard.SCardGetStatusChange(self.handle, 0, [(reader, state)])
        while True:
            if hr != SCARD_S_SUCCESS and _u32(hr) != SCARD_E_TIMEOUT:
                raise map_pcsc_error(hr, f"SCardGetStatusChange({reader})")
            event = states[0][1]
            if bool(event & scard.SCARD_STATE_PRESENT) == present and not event & scard.SCARD_STATE_UNKNOWN:
                return True
            if budget_ms <= 0 or _u32(hr) == SCARD_E_TIMEOUT:
                return False
            hr, states = scard.SCardGetStatusChange(
                self.handle, budget_ms, [(reader, event & ~scard.SCARD_STATE_CHANGED)]
            )
            if _u32(hr) == SCARD_E_TIMEOUT:
                budget_ms = 0

    def connect(self, pattern: str | None = None) -> PcscConnection:
        """Connect to the card in the one reader matching *pattern* (see :func:`select_reader`)."""
        return PcscConnection(self, select_reader(self.readers(), pattern))

    def close(self) -> None:
        """Release the context. Idempotent."""
        if self._ctx is not None:
            scard.SCardReleaseContext(self._ctx)
            self._ctx = None

    def __enter__(self) -> PcscContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PcscConnection(Connection):
    """An exclusive card session on one PC/SC reader (``SCardConnect`` exclusive, T=0 or T=1).

    No other PC/SC client can reach the reader until :meth:`close`, which resets the card
    (module docstring; docs/security.md §Card sessions on a shared PC/SC service).

    :param context: the PC/SC context (not released by :meth:`close` unless *owns_context*).
    :param reader: the exact reader name (choose it with :func:`select_reader`).
    :param owns_context: release *context* on :meth:`close`.
    :param busy_wait_s: seconds to keep retrying while another client has a handle on the reader.
    :raises NoCard: no card in the reader.
    :raises ReaderBusy: another PC/SC client still had a handle on the reader after *busy_wait_s*.
    :raises ReaderGone, ServiceUnavailable, TransportError: see the module table.
    """

    def __init__(self, context: PcscContext, reader: str, owns_context: bool = False,
                 busy_wait_s: float = BUSY_WAIT_S) -> None:
        self._context = context
        self._reader = reader
        self._owns_context = owns_context
        self._hcard: int | None = None
        end = time.monotonic() + busy_wait_s
        while True:
            hr, hcard, protocol = scard.SCardConnect(
                context.handle, reader, SHARE_MODE, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
            if _u32(hr) != SCARD_E_SHARING_VIOLATION or time.monotonic() >= end:
                break
            time.sleep(BUSY_RETRY_S)
        if hr != SCARD_S_SUCCESS:
            if _u32(hr) in (SCARD_W_REMOVED_CARD, SCARD_E_NO_SMARTCARD):
                raise NoCard(f"no card in {reader!r}", _u32(hr))
            if _u32(hr) == SCARD_E_SHARING_VIOLATION:
                logger.warning("reader %r: another PC/SC client holds the reader; the card is not served "
                               "(only the counter's own account should reach pcscd: docs/operations.md)", reader)
            raise map_pcsc_error(hr, f"SCardConnect({reader})")
        self._hcard = hcard
        self._protocol = protocol
        try:
            self._atr = self._read_atr()
        except BaseException:
            self.close()
            raise

    def _read_atr(self) -> bytes:
        hr, _reader, _state, _protocol, atr = scard.SCardStatus(self._handle())
        if hr != SCARD_S_SUCCESS:
            raise self._error(hr, "SCardStatus")
        return bytes(atr)

    def _handle(self) -> int:
        if self._hcard is None:
            raise SessionLost("connection already closed")
        return self._hcard

    def _error(self, hr: int, what: str) -> TransportError:
        err = map_pcsc_error(hr, f"{what} on {self._reader!r}")
        if _u32(hr) == SCARD_E_NOT_TRANSACTED:
            try:
                listed = self._reader in self._context.readers()
            except TransportError:
                listed = True
            if not listed:
                return ReaderGone(str(err), _u32(hr))
        return err

    @property
    def reader_name(self) -> str:
        return self._reader

    @property
    def atr(self) -> bytes:
        return self._atr

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """SCardTransmit one APDU.

        :raises TagMute: the reader returned fewer than 2 bytes (AP-1).
        :raises SessionLost, CardRemoved, ReaderGone, ServiceUnavailable: see the module table.
        """
        logger.log(TRAFFIC, "pcsc %s > %s", self._reader, apdu.hex())
        hr, response = scard.SCardTransmit(self._handle(), self._protocol, list(apdu))
        if hr != SCARD_S_SUCCESS:
            raise self._error(hr, "SCardTransmit")
        raw = bytes(response)
        logger.log(TRAFFIC, "pcsc %s < %s", self._reader, raw.hex())
        return split_response(raw)

    def control(self, code: int, data: bytes) -> bytes:
        """``SCardControl``: a reader escape command on this connection (e.g. LED/buzzer).

        PC/SC v2 Part 10 / pcsc-lite ``SCARD_CTL_CODE(3500)`` = 0x42000DAC for
        CCID escape; the CCID driver refuses it (0x80100016) unless escape
        commands are enabled in its Info.plist (field case AP-3).

        :param code: the control code (``escape_control_code`` of the reader profile).
        :param data: the command bytes.
        :returns: the reader's answer.
        :raises TransportError: (and subclasses, see the module table) when the call fails.
        """
        logger.log(TRAFFIC, "pcsc %s control %#x > %s", self._reader, code, data.hex())
        hr, response = scard.SCardControl(self._handle(), code, list(data))
        if hr != SCARD_S_SUCCESS:
            raise self._error(hr, f"SCardControl({code:#x})")
        raw = bytes(response)
        logger.log(TRAFFIC, "pcsc %s control < %s", self._reader, raw.hex())
        return raw

    def reconnect(self, unpower: bool = False) -> None:
        """``SCardReconnect`` with a card reset (or power cycle): re-polls the tag on the same session.

        The session stays exclusive (reconnecting shared would give up pcsc-lite's reader lock).

        :raises SessionLost, CardRemoved: the card is gone.
        """
        disposition = scard.SCARD_UNPOWER_CARD if unpower else scard.SCARD_RESET_CARD
        hr, protocol = scard.SCardReconnect(
            self._handle(), SHARE_MODE, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1, disposition
        )
        if hr != SCARD_S_SUCCESS:
            raise self._error(hr, "SCardReconnect")
        self._protocol = protocol

    def close(self) -> None:
        """Disconnect with a card reset (:data:`END_DISPOSITION`), after a tap and after an error alike.

        The reset ends the chip's RF session, and with it any PWD_AUTH this session did, before
        pcsc-lite lets another client connect. A failed disconnect is logged, not raised: the
        handle is given up either way (when pcscd lost this client it cleaned the handle up
        itself, resetting the card this exclusive handle held). Idempotent.
        """
        if self._hcard is not None:
            hcard, self._hcard = self._hcard, None
            hr = scard.SCardDisconnect(hcard, END_DISPOSITION)
            if hr != SCARD_S_SUCCESS:
                logger.info("reader %r: SCardDisconnect with a card reset failed: %s",
                            self._reader, scard.SCardGetErrorMessage(_u32(hr)))
        if self._owns_context:
            self._context.close()


def connect(pattern: str | None = None) -> PcscConnection:
    """Open a context and connect to the card in the reader matching *pattern*; closing releases both.

    :raises ReaderNotFound: no reader, or several, match.
    :raises NoCard: the reader is empty.
    """
    ctx = PcscContext()
    try:
        return PcscConnection(ctx, select_reader(ctx.readers(), pattern), owns_context=True)
    except BaseException:
        ctx.close()
        raise
