"""Virtual card client for vsmartcard's vpcd reader driver ("vicc" side).

Protocol (frankmorgner/vsmartcard ``vpcd.c``; docs/chip-facts.md §vpcd): TCP to
127.0.0.1:<port> (35963 slot 0, 35964 slot 1 by default).  Every message is a
2-byte big-endian length and a payload.  A 1-byte payload from vpcd is a control
code (:class:`Control`): ``0`` power off, ``1`` power on, ``2`` reset, ``4`` get
ATR (we answer the ATR; the others get no answer).  Any longer payload is a
C-APDU; we answer with the R-APDU from :class:`~simulator.reader.ReaderEmulator`.
Connecting puts the card on the reader; closing the socket removes it.

Latency: the card side sets ``TCP_NODELAY`` and re-arms ``TCP_QUICKACK`` after
every ``recv()``; without that every APDU stalls ~40 ms on delayed ACKs
(measured: 44 ms → 0.09 ms, docs/chip-facts.md §vpcd).

Only ever connect to loopback: vpcd listens on all interfaces.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol

from simulator.chip import Ntag21x
from simulator.errors import ChipLeftField, VpcdError
from simulator.reader import ReaderEmulator, ReaderKind, ReaderQuirks

__all__ = ["VPCD_BASE_PORT", "VPCD_HOST", "CardFrontend", "Control", "ServedCard", "VpcdCard", "port_in_use",
           "present_for", "slot_port"]

log = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
#: vpcd's default port for slot 0 (``VPCDPORT``, reader.conf CHANNELID 0x8C7B).
VPCD_BASE_PORT = 35963
_LEN_BYTES = 2
_RECONNECT_MIN_S = 0.02
_RECONNECT_MAX_S = 0.5


class Control(enum.IntEnum):
    """vpcd control codes (``vpcd.h``)."""

    POWER_OFF = 0
    POWER_ON = 1
    RESET = 2
    GET_ATR = 4


def slot_port(slot: int, base_port: int = VPCD_BASE_PORT) -> int:
    """TCP port of vpcd reader slot ``slot`` (base port + slot)."""
    if slot < 0:
        raise ValueError("slot must be >= 0")
    return base_port + slot


class ServedCard(Protocol):
    """What :class:`VpcdCard` needs of the card it keeps: its file, its dirty flag and presence."""

    path: Path | None
    dirty: bool

    @property
    def removed(self) -> bool: ...

    def field_off(self) -> None: ...

    def save(self, *, durable: bool = True) -> Path: ...


class CardFrontend(Protocol):
    """What answers vpcd: a reader emulator around a chip, or a card that takes APDUs itself (ISO-DEP)."""

    @property
    def atr(self) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...


class _Disconnected(Exception):
    """vpcd closed the connection (internal)."""


class VpcdCard:
    """A virtual card on a vpcd reader slot, served from a background thread.

    Usage::

        with VpcdCard(Ntag21x.load("card.json"), port=35963) as card:
            card.wait_connected(5.0)
            ...            # PC/SC clients now see the card
        # leaving the block takes the card away and saves it

    :param chip: the chip to present (a :class:`ReaderEmulator` is built around it), or,
        with *frontend*, any card with a file to keep (e.g. :class:`simulator.type4.Type4Card`).
    :param port: vpcd port of the slot.
    :param kind: reader behaviour (``"acr122u"``, ``"part3"``, ``"plain"``).
    :param quirks: injectable reader quirks.
    :param host: vpcd host; must be loopback.
    :param reconnect: reconnect with backoff when vpcd goes away (pcscd restart);
        if ``False`` a refused or closed connection ends the card.
    :param persist: save the chip to its file (``chip.path``) after each APDU that
        changed it and on removal, so the card keeps memory between taps.
    :param tcp_quickack: re-arm TCP_QUICKACK after every recv (leave on; off only to
        measure the ~40 ms delayed-ACK stall in benchmarks).
    :param frontend: what answers the APDUs instead of a :class:`ReaderEmulator` (an
        ISO-DEP card answers them itself); *kind* and *quirks* are then unused.
    :raises VpcdError: if ``host`` is not a loopback address.
    """

    def __init__(
        self,
        chip: ServedCard,
        port: int = VPCD_BASE_PORT,
        *,
        kind: ReaderKind | str = ReaderKind.ACR122U,
        quirks: ReaderQuirks | None = None,
        host: str = VPCD_HOST,
        reconnect: bool = True,
        persist: bool = True,
        tcp_quickack: bool = True,
        frontend: CardFrontend | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise VpcdError(f"refusing to connect a virtual card to {host}: vpcd must be used on loopback only")
        if frontend is None:
            if not isinstance(chip, Ntag21x):
                raise TypeError("a card other than an Ntag21x needs its own frontend")
            frontend = ReaderEmulator(chip, kind=kind, quirks=quirks)
        self.chip: ServedCard = chip
        self.reader: CardFrontend = frontend
        self.host = host
        self.port = port
        self.reconnect = reconnect
        self.persist = persist
        self.tcp_quickack = tcp_quickack
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._polled = threading.Event()
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        #: Number of C-APDUs answered (for benchmarks and tests).
        self.apdus = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VpcdCard:
        """Start serving in a daemon thread; returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("card already started")
        self._thread = threading.Thread(target=self._run, name=f"vpcd-card-{self.port}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 5.0) -> None:
        """Wait until vpcd has talked to the card (first control message or APDU).

        :param timeout: seconds.
        :raises VpcdError: nothing listens on the port, the port is busy (another
            card holds the slot, vpcd never polls us) or the card thread failed.
        """
        if not self._polled.wait(timeout):
            if self.error is not None:
                raise VpcdError(f"virtual card on {self.host}:{self.port} failed: {self.error}") from self.error
            if self._connected.is_set():
                raise VpcdError(
                    f"vpcd port {self.host}:{self.port} accepted the card but never polled it: "
                    "is another virtual card already on this slot?"
                )
            raise VpcdError(
                f"nothing accepts a virtual card on {self.host}:{self.port}: is pcscd running with the "
                "vpcd driver (Debian package vsmartcard-vpcd) configured for this port?"
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Take the card away (close the socket), join the thread and save the chip.

        :raises VpcdError: if the card thread died with an unexpected error.
        """
        self._stop.set()
        self._close_socket()
        if self._thread is not None:
            self._thread.join(timeout)
        self._save()
        if self.error is not None and not isinstance(self.error, (ChipLeftField, VpcdError)):
            raise VpcdError(f"virtual card thread failed: {self.error!r}") from self.error

    @property
    def running(self) -> bool:
        """True while the serving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> VpcdCard:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _run(self) -> None:
        delay = _RECONNECT_MIN_S
        try:
            while not self._stop.is_set():
                try:
                    sock = socket.create_connection((self.host, self.port), timeout=2.0)
                except OSError as exc:
                    if not self.reconnect:
                        raise VpcdError(f"cannot connect to vpcd at {self.host}:{self.port}: {exc.strerror}") from exc
                    self._stop.wait(delay)
                    delay = min(delay * 2, _RECONNECT_MAX_S)
                    continue
                delay = _RECONNECT_MIN_S
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._sock_lock:
                    self._sock = sock
                self._connected.set()
                log.debug("virtual card %s on %s:%d", self.chip, self.host, self.port)
                try:
                    self._serve(sock)
                except _Disconnected:
                    log.debug("vpcd %s:%d closed the connection", self.host, self.port)
                    self.chip.field_off()
                    self._save()
                    if not self.reconnect:
                        return
                finally:
                    self._close_socket()
        except ChipLeftField as exc:
            log.debug("card removed from %s:%d: %s", self.host, self.port, exc)
            self.error = exc
        except BaseException as exc:
            log.exception("virtual card on %s:%d failed", self.host, self.port)
            self.error = exc
        finally:
            self._close_socket()
            self._save()

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            header = self._recv_exact(sock, _LEN_BYTES)
            length = int.from_bytes(header, "big")
            payload = self._recv_exact(sock, length) if length else b""
            self._polled.set()
            if len(payload) == 1:
                log.debug("vpcd control %d", payload[0])
                self._control(sock, payload[0])
                continue
            resp = self.reader.transmit(payload)  # ChipLeftField propagates: socket closes
            self.apdus += 1
            self._send(sock, resp)
            if self.persist and self.chip.dirty:
                self._save()

    def _control(self, sock: socket.socket, code: int) -> None:
        if code == Control.POWER_OFF:
            self.reader.power_off()
        elif code == Control.POWER_ON:
            self.reader.power_on()
        elif code == Control.RESET:
            self.reader.power_off()
            self.reader.power_on()
        elif code == Control.GET_ATR:
            if self.chip.removed:
                raise ChipLeftField("card left the field")
            self._send(sock, self.reader.atr)
        else:
            log.warning("vpcd sent unknown control code %d", code)

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError as exc:
                raise _Disconnected() from exc
            if not chunk:
                raise _Disconnected()
            # Delayed ACKs otherwise cost ~40 ms per APDU (docs/chip-facts.md §vpcd).
            if self.tcp_quickack:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                except OSError as exc:  # stop() closed the socket between recv and here
                    raise _Disconnected() from exc
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        try:
            sock.sendall(len(payload).to_bytes(_LEN_BYTES, "big") + payload)
        except OSError as exc:
            raise _Disconnected() from exc

    def _close_socket(self) -> None:
        with self._sock_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # already disconnected
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _save(self) -> None:
        if self.persist and self.chip.path is not None and self.chip.dirty:
            self.chip.save(durable=False)


def port_in_use(port: int) -> bool:
    """True if some process has TCP ``port`` bound (vpcd binds INADDR_ANY).

    Uses a bind test, so it never connects (a connection would look like a card).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def present_for(
    card_path: Path | str,
    seconds: float,
    *,
    port: int = VPCD_BASE_PORT,
    kind: ReaderKind | str = ReaderKind.ACR122U,
    connect_timeout: float = 5.0,
) -> int:
    """Put the card file on a vpcd slot for ``seconds``, then take it away and save it.

    :returns: the number of APDUs the card answered.
    :raises VpcdError: vpcd not reachable / port busy (see :meth:`VpcdCard.wait_connected`).
    :raises CardFileError: the card file is missing or malformed.
    """
    chip = Ntag21x.load(card_path)
    if not port_in_use(port):
        raise VpcdError(
            f"nothing listens on vpcd port {VPCD_HOST}:{port}: start pcscd with the vpcd driver "
            "(Debian packages pcscd and vsmartcard-vpcd; `make setup` installs them)"
        )
    card = VpcdCard(chip, port, kind=kind)
    card.start()
    try:
        card.wait_connected(connect_timeout)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and card.running:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    finally:
        card.stop()
    return card.apdus
