"""The nfcpy transport: Type 2 tags through nfcpy's own reader drivers.

This is the only module that imports :mod:`nfc` (nfcpy 1.0.4, EUPL-1.1; a
dependency, never vendored). It gives :class:`~cardlib.type2.tag.Type2Tag`
and everything above it (NDEF area, card session) the same raw-frame
:class:`~cardlib.type2.channel.Type2Channel` that the PC/SC pass-through
channels give, so card code runs unchanged on:

- ``usb:054c:06c3`` — Sony RC-S380 (nfcpy ``rcs380`` driver, libusb);
- ``tty:USB0:pn532`` — a PN532 module on a serial port (nfcpy ``pn532``
  driver over pyserial; the name must be a node directly under ``/dev``);
- ``udp:127.0.0.1:<port>`` — nfcpy's simulated link, answered by
  :mod:`simulator.nfc_udp` (tests, demo, benchmarks).

Frames are NTAG21x commands without CRC_A, as in NFC Forum Digital 1.0 §9
and the NTAG213/215/216 datasheet §10; nfcpy's drivers add and check CRC_A and
return the 4-bit ACK/NAK as one byte, exactly as ``Type2Channel`` expects.

Only ISO/IEC 14443-3 type A at 106 kbps is polled. :meth:`NfcpyReader.connect`
wants SAK bits 6..5 = 00 (a Type 2 tag); :meth:`NfcpyReader.connect_iso_dep`
wants SAK bit 6 set (ISO-DEP: a Type 4A tag), activates it with RATS and returns
an APDU :class:`~cardlib.transport.Connection` (:class:`NfcpyIsoDepConnection`,
ISO/IEC 14443-4 blocks by :mod:`cardlib.transport.isodep`) for
:class:`cardlib.type4.Type4Tag`. A card of the other kind raises :class:`UnsupportedTarget`.
:meth:`NfcpyReader.poll_card` takes whichever kind answers (:class:`NfcpyType2Connection` for a
Type 2 tag, whose ``native_channel`` carries its frames); the counter's supervisor uses it with
:meth:`NfcpyReader.poll_uid` for presence.

Every session ends with the RF field off (``close`` of each connection, also after an error or a
deadline: nfcpy ``device.mute()``, i.e. PN53x RFConfiguration field off, RC-S380
``switch_rf("off")``, the ``udp`` driver's RFOFF): the chip loses power, and with it the
AUTHENTICATED state a PWD_AUTH of the session gave it (NTAG213/215/216 datasheet §8.8), before
anything else can talk to it; :meth:`NfcpyReader.poll_uid` mutes too. No other program shares the
reader meanwhile: the process holds the device (libusb claims the USB interface; a serial port is
guarded by its file permissions, docs/operations.md §Who may reach the card readers). Tested in
tests/test_nfcpy_session_end.py.

Frame traffic is logged at :data:`cardlib.apdu.TRAFFIC` (below DEBUG) and may
contain secrets (PWD_AUTH passwords, UIDs, record contents).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import termios
import time
from types import TracebackType
from typing import Final

import nfc
import nfc.clf

from cardlib.apdu import TRAFFIC, split_response
from cardlib.transport import Connection
from cardlib.transport.errors import (
    CardRemoved,
    NoCard,
    ReaderGone,
    ReaderNotFound,
    TagMute,
    TransportError,
)
from cardlib.transport.isodep import Ats, IsoDepLink, rats_command
from cardlib.type2.channel import ReaderCapabilities, Type2Channel

__all__ = ["NFCPY_TYPE2", "NfcpyIsoDepConnection", "NfcpyReader", "NfcpyType2Channel", "NfcpyType2Connection",
           "UnsupportedTarget"]

logger = logging.getLogger(__name__)

#: nfcpy's name for ISO/IEC 14443-3 type A at 106 kbps.
BRTY_106A: Final = "106A"
#: SAK bits 6..5 (0x60): 00 = Type 2 tag, 01 = ISO-DEP (Type 4), 10 = NFC-DEP (NFC Forum Digital 1.0 §4.8.2).
SAK_PROTOCOL_MASK: Final = 0x60
SAK_TYPE2: Final = 0x00
SAK_ISO_DEP: Final = 0x20
#: Default time to wait for a chip answer, seconds (NTAG WRITE programming ≤ 10 ms; nfcpy's own default).
DEFAULT_TIMEOUT_S: Final = 0.1
#: What a reader device that vanished raises through nfcpy: an I/O error, or (pyserial on a serial
#: port whose device went away) ``termios.error``, which is not an OSError.
DEVICE_ERRORS: Final = (OSError, termios.error)
#: nfcpy receive limit of its pn53x/rcs380/udp drivers minus CRC_A, whole pages.
NFCPY_TYPE2: Final = ReaderCapabilities("nfcpy", "none", 252)


class UnsupportedTarget(TransportError):
    """A card answered the poll but is not of the kind asked for (a Type 2 tag, or an ISO-DEP card)."""


def _error_text(exc: BaseException) -> str:
    """The OS's words for a device error (``Input/output error``), else the exception's text."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        return str(strerror)
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    return str(args[1]) if len(args) == 2 else str(exc)  # termios.error(errno, text)


def _is_type2(target: nfc.clf.RemoteTarget) -> bool:
    sel_res = getattr(target, "sel_res", None)
    if not sel_res:
        return False
    return (sel_res[0] & SAK_PROTOCOL_MASK) == SAK_TYPE2


def _is_iso_dep(target: nfc.clf.RemoteTarget) -> bool:
    sel_res = getattr(target, "sel_res", None)
    if not sel_res:
        return False
    return bool(sel_res[0] & SAK_ISO_DEP)


def _exchange_frame(clf: nfc.ContactlessFrontend, frame: bytes, timeout: float) -> bytes:
    """One frame through ``ContactlessFrontend.exchange`` with nfcpy's errors mapped to transport errors.

    :raises TagMute: no answer within *timeout* seconds, or a CRC/parity/framing error.
    :raises CardRemoved: the link broke (nfcpy ``BrokenLinkError``) or nfcpy returned nothing.
    :raises ReaderGone: the reader device stopped answering (I/O error).
    """
    logger.log(TRAFFIC, "SEND: %s", bytes(frame).hex())
    try:
        answer = clf.exchange(bytearray(frame), timeout)
    except nfc.clf.TimeoutError as exc:
        raise TagMute(f"no answer to command {bytes(frame[:1]).hex()} within {timeout} s") from exc
    except nfc.clf.BrokenLinkError as exc:
        raise CardRemoved(f"link broken during command {bytes(frame[:1]).hex()}") from exc
    except nfc.clf.CommunicationError as exc:
        raise TagMute(f"{type(exc).__name__} on command {bytes(frame[:1]).hex()}: {exc}") from exc
    except DEVICE_ERRORS as exc:
        raise ReaderGone(f"reader I/O error: {_error_text(exc)}") from exc
    if answer is None:
        raise CardRemoved("nfcpy returned no target answer")
    logger.log(TRAFFIC, "RECV: %s", bytes(answer).hex())
    return bytes(answer)


class NfcpyType2Channel(Type2Channel):
    """Raw NTAG21x frames through an activated nfcpy target (``ContactlessFrontend.exchange``).

    Obtained from :meth:`NfcpyReader.connect`; valid until the card leaves or
    :meth:`close`. One attempt per command (no blind retries: a repeated
    WRITE after a lost answer is the caller's decision).

    :param clf: an open ``nfc.ContactlessFrontend`` whose last sense found ``target``.
    :param target: the activated 106A target.
    :param caps: reader capabilities (``max_frame`` sizes FAST_READ ranges).
    :param timeout: seconds to wait for each chip answer.
    """

    def __init__(
        self,
        clf: nfc.ContactlessFrontend,
        target: nfc.clf.RemoteTarget,
        caps: ReaderCapabilities = NFCPY_TYPE2,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(caps)
        self._clf = clf
        self._target = target
        self.timeout = timeout
        self._closed = False
        self._warned = False

    @property
    def supports_raw(self) -> bool:
        """Always True: nfcpy carries any chip command."""
        return True

    @property
    def uid(self) -> bytes:
        """The UID from anticollision (7 bytes for NTAG21x), as nfcpy's ``sdd_res``."""
        return bytes(self._target.sdd_res)

    def reader_uid(self) -> bytes | None:
        """The UID nfcpy read at activation (:attr:`uid`): known without a card command."""
        return self.uid or None

    @property
    def reader_name(self) -> str:
        """``str(nfcpy device)``, e.g. ``Linux IP-Stack UDP at udp:127.0.0.1:54321``."""
        return str(self._clf.device)

    def _exchange(self, frame: bytes) -> bytes:
        """Send one frame with ``ContactlessFrontend.exchange``.

        :raises TagMute: no answer within :attr:`timeout`, or a CRC/parity/framing error.
        :raises CardRemoved: the link broke (nfcpy ``BrokenLinkError``) or the channel is closed.
        :raises ReaderGone: the reader device stopped answering (I/O error).
        """
        if self._closed:
            raise CardRemoved("the nfcpy channel is closed")
        if not self._warned and logger.isEnabledFor(TRAFFIC):
            self._warned = True
            logger.warning("frame traffic logging is on: the log may contain secrets (passwords, UIDs, records)")
        return _exchange_frame(self._clf, frame, self.timeout)

    def reactivate(self) -> None:
        """Re-select the same tag (REQA + SELECT by UID) after a NAK or mute left it IDLE (datasheet §9.1).

        :raises CardRemoved: the tag no longer answers (left the field).
        :raises ReaderGone: the reader device stopped answering.
        """
        target = nfc.clf.RemoteTarget(BRTY_106A)
        target.sel_req = bytearray(self._target.sdd_res)
        try:
            found = self._clf.sense(target, iterations=1, interval=0.0)
        except nfc.clf.CommunicationError as exc:
            raise CardRemoved(f"re-select failed: {exc}") from exc
        except DEVICE_ERRORS as exc:
            raise ReaderGone(f"reader I/O error: {_error_text(exc)}") from exc
        if found is None:
            raise CardRemoved("the tag did not answer the re-select")
        self._target = found

    def close(self) -> None:
        """Switch the field off: the tag's RF session ends, and any PWD_AUTH of it with it. Idempotent.

        A device error here is logged, not raised: the device is gone, and its field with it.
        """
        if self._closed:
            return
        self._closed = True
        device = self._clf.device
        if device is not None:
            try:
                device.mute()
            except DEVICE_ERRORS as exc:
                logger.debug("field off failed: %s", exc)

    def __enter__(self) -> NfcpyType2Channel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NfcpyType2Connection(Connection):
    """A Type 2 tag activated through nfcpy, for code that takes a :class:`~cardlib.transport.Connection`.

    A Type 2 tag answers chip frames, not APDUs (NFC Forum T2T 1.0 §5): :meth:`native_channel`
    hands out the frame channel, and :meth:`send_and_receive` refuses. The counter's supervisor
    hands this to the tap like a PC/SC card connection; ``terminal.connection.type2_channel``
    takes the frame channel from it instead of wrapping a PC/SC pass-through around it.

    :param channel: the channel :meth:`NfcpyReader.poll` returned for the tag.
    """

    def __init__(self, channel: NfcpyType2Channel) -> None:
        self._channel = channel

    def native_channel(self) -> NfcpyType2Channel:
        """The tag's frame channel (the same one for the life of the connection)."""
        return self._channel

    @property
    def uid(self) -> bytes:
        """The UID from anticollision (7 bytes for NTAG21x)."""
        return self._channel.uid

    @property
    def reader_name(self) -> str:
        """``str(nfcpy device)``, e.g. ``PN532v1.6 at /dev/ttyUSB0``."""
        return self._channel.reader_name

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Refused: a Type 2 tag has no APDU interface.

        :raises UnsupportedTarget: always.
        """
        raise UnsupportedTarget(f"a Type 2 tag takes chip frames, not APDUs (got {bytes(apdu[:4]).hex()})")

    def close(self) -> None:
        """Field off (the tag's RF session ends). Idempotent."""
        self._channel.close()


class NfcpyIsoDepConnection(Connection):
    """An ISO-DEP card (Type 4A tag) activated through nfcpy: APDUs in ISO/IEC 14443-4 blocks.

    Obtained from :meth:`NfcpyReader.connect_iso_dep`; valid until the card leaves or :meth:`close`
    (S(DESELECT), then field off).

    :param clf: an open ``nfc.ContactlessFrontend`` whose last sense found *target*.
    :param target: the 106A target with SAK bit 6 set.
    :param timeout: seconds to wait for the ATS, and the floor for every block wait.
    :raises TagMute: the card did not answer RATS.
    :raises cardlib.transport.isodep.IsoDepProtocolError: the ATS is malformed.
    """

    def __init__(self, clf: nfc.ContactlessFrontend, target: nfc.clf.RemoteTarget,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._clf = clf
        self._target = target
        self._closed = False
        fsd = min(clf.max_recv_data_size, 256)
        ats = Ats.parse(_exchange_frame(clf, rats_command(fsd), timeout))
        self.link = IsoDepLink(self._frame, ats, max_send=clf.max_send_data_size, min_timeout_s=timeout)

    def _frame(self, frame: bytes, timeout: float) -> bytes:
        if self._closed:
            raise CardRemoved("the nfcpy ISO-DEP connection is closed")
        return _exchange_frame(self._clf, frame, timeout)

    @property
    def uid(self) -> bytes:
        """The UID from anticollision (nfcpy's ``sdd_res``)."""
        return bytes(self._target.sdd_res)

    @property
    def ats(self) -> bytes:
        """The ATS the card answered to RATS."""
        return self.link.ats.raw

    @property
    def atr(self) -> bytes:
        """The ATR a PC/SC reader would report for this card, built from the ATS historical bytes.

        PC/SC Part 3 §3.1.3.2.3.2 (ISO/IEC 14443-4 type A): ``3B 8n 80 01 <n historical bytes> TCK``,
        TCK the XOR of every byte after TS; so code that tells card kinds apart by ATR does the
        same on both stacks.
        """
        historical = self.link.ats.historical[:15]
        body = bytes((0x80 | len(historical), 0x80, 0x01)) + historical
        tck = 0
        for byte in body:
            tck ^= byte
        return b"\x3b" + body + bytes((tck,))

    @property
    def reader_name(self) -> str:
        """``str(nfcpy device)``."""
        return str(self._clf.device)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one APDU in I-blocks and split the response into ``(data, SW1SW2)``.

        :raises TagMute: the card stopped answering, or the response has no status word.
        :raises CardRemoved, ReaderGone: see :func:`_exchange_frame`.
        :raises cardlib.transport.isodep.IsoDepProtocolError: the card broke the block protocol.
        """
        return split_response(self.link.transceive(bytes(apdu)))

    def close(self) -> None:
        """S(DESELECT), then the field off. Idempotent."""
        if self._closed:
            return
        self.link.deselect()
        self._closed = True
        device = self._clf.device
        if device is not None:
            try:
                device.mute()
            except DEVICE_ERRORS as exc:
                logger.debug("field off failed: %s", exc)


class NfcpyReader:
    """One reader opened with nfcpy on a device path; hands out a channel per tap.

    :param path: nfcpy device path (``usb:054c:06c3``, ``tty:USB0:pn532``,
        ``udp:127.0.0.1:54321``).
    :param caps: capabilities to give each channel (from the reader profile).
    :param name_pattern: when set, the opened device's name (``str(device)``)
        must match it (``re.search``), so a profile never drives the wrong reader.
    :param timeout: seconds to wait for each chip answer.
    """

    def __init__(
        self,
        path: str,
        caps: ReaderCapabilities = NFCPY_TYPE2,
        *,
        name_pattern: re.Pattern[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.caps = caps
        self.timeout = timeout
        self._pattern = re.compile(name_pattern) if isinstance(name_pattern, str) else name_pattern
        self._clf: nfc.ContactlessFrontend | None = None

    @property
    def name(self) -> str:
        """The device name nfcpy reports (``PN532v1.6 at /dev/ttyUSB0``).

        :raises ReaderNotFound: the reader is not open.
        """
        return str(self._frontend().device)

    def open(self) -> NfcpyReader:
        """Open the device (idempotent).

        :raises ReaderNotFound: nothing answers on the path, or the device name
            does not match the configured pattern.
        """
        if self._clf is not None:
            return self
        clf = nfc.ContactlessFrontend()
        try:
            found = clf.open(self.path)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise ReaderNotFound(f"nfcpy cannot open {self.path!r}: {_error_text(exc)} ({code})") from exc
        if not found:
            raise ReaderNotFound(f"no nfcpy reader on {self.path!r}")
        name = str(clf.device)
        if self._pattern is not None and not self._pattern.search(name):
            clf.close()
            raise ReaderNotFound(f"reader {name!r} on {self.path!r} does not match {self._pattern.pattern!r}")
        logger.info("nfcpy reader open: %s", name)
        self._clf = clf
        return self

    def _frontend(self) -> nfc.ContactlessFrontend:
        if self._clf is None:
            raise ReaderNotFound(f"nfcpy reader {self.path!r} is not open")
        return self._clf

    def _sense(self) -> nfc.clf.RemoteTarget | None:
        """One 106A poll (REQA, anticollision, SELECT); None for an empty field.

        :raises ReaderGone: the device stopped answering.
        """
        clf = self._frontend()
        try:
            target = clf.sense(nfc.clf.RemoteTarget(BRTY_106A), iterations=1, interval=0.0)
        except nfc.clf.CommunicationError as exc:
            logger.debug("poll: %s", exc)
            return None
        except DEVICE_ERRORS as exc:
            raise ReaderGone(f"reader {self.path!r} I/O error: {_error_text(exc)}") from exc
        return target

    def poll(self) -> NfcpyType2Channel | None:
        """One 106A poll (REQA, anticollision, SELECT).

        :returns: a channel to the Type 2 tag in the field, or None when the field is empty.
        :raises UnsupportedTarget: a card answered that is not a Type 2 tag.
        :raises ReaderGone: the device stopped answering.
        """
        clf = self._frontend()
        target = self._sense()
        if target is None:
            return None
        if not _is_type2(target):
            raise UnsupportedTarget(f"the card in the field is not a Type 2 tag (SAK {bytes(target.sel_res).hex()})")
        return NfcpyType2Channel(clf, target, self.caps, self.timeout)

    def connect(self, timeout: float = 5.0, interval: float = 0.1) -> NfcpyType2Channel:
        """Poll until a Type 2 tag is in the field.

        :param timeout: give up after this many seconds.
        :param interval: pause between empty polls, seconds (the profile's ``poll_interval``).
        :raises NoCard: no tag appeared within ``timeout``.
        :raises UnsupportedTarget, ReaderGone: see :meth:`poll`.
        """
        self.open()
        deadline = time.monotonic() + timeout
        while True:
            channel = self.poll()
            if channel is not None:
                return channel
            if time.monotonic() >= deadline:
                raise NoCard(f"no Type 2 tag on {self.path!r} within {timeout} s")
            time.sleep(interval)

    def poll_iso_dep(self) -> NfcpyIsoDepConnection | None:
        """One 106A poll; an ISO-DEP card in the field is activated with RATS.

        :returns: an APDU connection to the card, or None when the field is empty.
        :raises UnsupportedTarget: a card answered without ISO-DEP (e.g. a Type 2 tag).
        :raises TagMute: the card did not answer RATS. :raises ReaderGone: see :meth:`poll`.
        """
        target = self._sense()
        if target is None:
            return None
        if not _is_iso_dep(target):
            raise UnsupportedTarget(f"the card in the field is not ISO-DEP (SAK {bytes(target.sel_res or b'').hex()})")
        return NfcpyIsoDepConnection(self._frontend(), target, self.timeout)

    def connect_iso_dep(self, timeout: float = 5.0, interval: float = 0.1) -> NfcpyIsoDepConnection:
        """Poll until an ISO-DEP card (Type 4A tag) is in the field; see :meth:`connect`.

        :raises NoCard: no card appeared within *timeout* seconds.
        :raises UnsupportedTarget, TagMute, ReaderGone: see :meth:`poll_iso_dep`.
        """
        self.open()
        deadline = time.monotonic() + timeout
        while True:
            connection = self.poll_iso_dep()
            if connection is not None:
                return connection
            if time.monotonic() >= deadline:
                raise NoCard(f"no ISO-DEP card on {self.path!r} within {timeout} s")
            time.sleep(interval)

    def poll_uid(self) -> bytes | None:
        """One 106A poll: the UID of the card that answers in the field, or None.

        A collision or a garbled answer counts as no card; callers that act on absence
        confirm it over several polls. A card found is left unpowered (field off): a tag the
        poll selected stays ACTIVE and ignores the next REQA (ISO/IEC 14443-3 §6.3), so the next
        poll or :meth:`poll_card` must find it powered up afresh.

        :returns: the anticollision UID (``sdd_res``; 7 bytes for NTAG21x).
        :raises ReaderNotFound: the reader is not open. :raises ReaderGone: the device stopped answering.
        """
        target = self._sense()
        if target is None:
            return None
        device = self._frontend().device
        try:
            device.mute()
        except DEVICE_ERRORS as exc:
            raise ReaderGone(f"reader {self.path!r} I/O error: {_error_text(exc)}") from exc
        return bytes(target.sdd_res or b"")

    def poll_card(self) -> NfcpyType2Connection | NfcpyIsoDepConnection | None:
        """One 106A poll; the card in the field as a connection of its kind.

        :returns: :class:`NfcpyType2Connection` for a Type 2 tag (SAK bits 6..5 = 00),
            :class:`NfcpyIsoDepConnection` (activated with RATS) for an ISO-DEP card, or None
            when the field is empty.
        :raises UnsupportedTarget: a card of another kind (e.g. NFC-DEP) answered.
        :raises TagMute: an ISO-DEP card did not answer RATS. :raises ReaderGone: see :meth:`poll`.
        """
        target = self._sense()
        if target is None:
            return None
        if _is_type2(target):
            return NfcpyType2Connection(NfcpyType2Channel(self._frontend(), target, self.caps, self.timeout))
        if _is_iso_dep(target):
            return NfcpyIsoDepConnection(self._frontend(), target, self.timeout)
        raise UnsupportedTarget(f"the card in the field is neither a Type 2 tag nor ISO-DEP "
                                f"(SAK {bytes(target.sel_res or b'').hex()})")

    def close(self) -> None:
        """Close the device (field off). Idempotent."""
        clf, self._clf = self._clf, None
        if clf is None:
            return
        try:
            clf.close()
        except DEVICE_ERRORS as exc:
            # The device is gone (nfcpy's close lets termios.error through): close the port itself.
            logger.debug("closing %s: %s", self.path, exc)
            transport = getattr(getattr(clf.device, "chipset", None), "transport", None)
            if transport is not None:
                with contextlib.suppress(*DEVICE_ERRORS):
                    transport.close()
            clf.device = None

    def __enter__(self) -> NfcpyReader:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
