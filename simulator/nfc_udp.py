"""A virtual NTAG21x answering nfcpy's ``udp:`` driver (nfcpy ``nfc/clf/udp.py``), unchanged.

nfcpy's UDP "reader" sends one datagram per RF frame, as ASCII text
``"<brty> <hex>"`` (e.g. ``b"106A 3004"``), and ``b"RFOFF"`` when it closes;
a tag answers with a datagram of the same shape to the sender's address and
stays silent when a real tag would (nfcpy then times out). Frames carry no
CRC_A. nfcpy itself only emulates Type 3 tags, so this module is the Type 2
peer (docs/chip-facts.md §nfcpy UDP).

What :class:`NfcUdpPeer` answers, at 106 kbps type A only (ISO/IEC 14443-3 §6):

==========================  ============================================
``26`` REQA / ``52`` WUPA   SENS_RES (ATQA) ``44 00`` (NTAG21x datasheet §9.3, Table 16)
``93 20`` SDD CL1           ``88 UID0 UID1 UID2 BCC0``
``93 70 88 …`` SEL CL1      SAK ``04`` (UID not complete)
``95 20`` SDD CL2           ``UID3 … UID6 BCC1``
``95 70 …`` SEL CL2         SAK ``00`` (Type 2 tag), chip ACTIVE
``50 00`` HLTA              silence, chip HALT
anything else               :meth:`simulator.chip.Ntag21x.transceive`
``RFOFF``                   field off: RF session ends, card file saved
==========================  ============================================

READ, FAST_READ, WRITE (ACK ``0A``), COMPATIBILITY_WRITE, GET_VERSION, READ_SIG,
READ_CNT and PWD_AUTH come from the shared chip model; unknown commands such as
nfcpy's Ultralight-C probe ``1A 00`` get no answer and leave the chip IDLE,
exactly as nfcpy expects. A card that leaves the field (fault plan or
:meth:`NfcUdpPeer.remove`) stays silent.

Timing: nfcpy waits only 5 ms for a READ answer (``Type2Tag.read``) and 10 ms
for GET_VERSION. Under load a peer thread in the same interpreter can miss
that, so :class:`UdpPeerProcess` runs the peer in its own process
(``python -m simulator.nfc_udp``) on a card file.

Only ever bind to 127.0.0.1: the peer has no authentication.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import select
import socket
import subprocess
import sys
import threading
from binascii import hexlify, unhexlify
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from cardlib.apdu import TRAFFIC
from simulator._serving import BackgroundServer
from simulator.chip import CASCADE_TAG, Ntag21x
from simulator.errors import ChipLeftField, ChipMute, SimulatorError

__all__ = ["BRTY_106A", "NfcUdpPeer", "RfCommand", "UdpPeerError", "UdpPeerProcess"]

log = logging.getLogger(__name__)

#: nfcpy's name for 106 kbps type A.
BRTY_106A: Final = "106A"
#: The datagram nfcpy sends when it switches the field off (``udp.Device.mute``).
RFOFF: Final = b"RFOFF"
#: SENS_RES (ATQA) of NTAG21x as sent on air, LSB first (datasheet §9.3: 0x0044).
SENS_RES: Final = bytes((0x44, 0x00))
#: SAK of cascade level 1 for a 7-byte UID: bit 3 (0x04) "UID not complete".
SAK_CASCADE: Final = 0x04
#: SAK of the complete NTAG21x UID: Type 2 tag, no ISO-DEP (datasheet §9.3).
SAK_TYPE2: Final = 0x00
#: NVB of an SDD (anticollision) request with no UID bits / of a full SELECT.
NVB_SDD: Final = 0x20
NVB_SELECT: Final = 0x70
LOCALHOST: Final = "127.0.0.1"
_MAX_DATAGRAM = 1024
_POLL_S = 0.05


class RfCommand(enum.IntEnum):
    """ISO/IEC 14443-3 type A activation commands (§6.3, §6.4)."""

    REQA = 0x26
    WUPA = 0x52
    SEL_CL1 = 0x93
    SEL_CL2 = 0x95
    HLTA = 0x50


class UdpPeerError(SimulatorError):
    """The UDP peer could not start (port in use, child process died)."""


class _Phase(enum.Enum):
    IDLE = "idle"  # powered, waiting for REQA/WUPA
    READY1 = "ready1"  # answered SENS_RES; expecting CL1 anticollision/select
    READY2 = "ready2"  # CL1 selected; expecting CL2
    ACTIVE = "active"  # selected: tag commands go to the chip


class NfcUdpPeer(BackgroundServer):
    """One virtual card in front of nfcpy's ``udp:`` driver.

    Use :meth:`start` for a background thread, or :meth:`serve` in the calling
    thread. Not for production: binds 127.0.0.1 only.

    :param chip: the card in the field, or None for an empty field.
    :param port: UDP port on 127.0.0.1; 0 picks a free one (see :attr:`port`).
    :param persist: save the chip to ``chip.path`` after every command that
        changed it and when the field goes off.
    :ivar commands: tag commands answered or ignored since start (not activation frames).
    :ivar activations: completed REQA→SELECT CL2 sequences.
    """

    def __init__(self, chip: Ntag21x | None, port: int = 0, *, persist: bool = True) -> None:
        super().__init__()
        self._chip = chip
        self.persist = persist
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((LOCALHOST, port))
        except OSError as exc:
            self._sock.close()
            raise UdpPeerError(f"cannot bind UDP {LOCALHOST}:{port}: {exc.strerror}") from exc
        self.port: int = self._sock.getsockname()[1]
        self._phase = _Phase.IDLE
        self._lock = threading.Lock()
        self.commands = 0
        self.activations = 0
        self._warned = False

    # ------------------------------------------------------------------ card handling

    @property
    def path(self) -> str:
        """The nfcpy device path for this peer, e.g. ``udp:127.0.0.1:54321``."""
        return f"udp:{LOCALHOST}:{self.port}"

    @property
    def chip(self) -> Ntag21x | None:
        """The card in the field, if any."""
        return self._chip

    def place(self, chip: Ntag21x) -> None:
        """Put a card in the field (it answers the next REQA)."""
        with self._lock:
            self._chip = chip
            self._phase = _Phase.IDLE

    def remove(self) -> None:
        """Take the card out of the field (saved first); the peer goes silent."""
        with self._lock:
            if self._chip is not None:
                self._chip.field_off()
                self._save()
            self._chip = None
            self._phase = _Phase.IDLE

    def _save(self) -> None:
        chip = self._chip
        if self.persist and chip is not None and chip.path is not None and chip.dirty:
            chip.save(durable=False)

    # ------------------------------------------------------------------ frames

    def handle(self, frame: bytes) -> bytes | None:
        """Answer one RF frame (no CRC) as the card would; None means silence.

        :param frame: the frame nfcpy sent, e.g. ``30 04``.
        :returns: the answer frame, or None when a real tag would not answer.
        """
        with self._lock:
            return self._handle(frame)

    def _handle(self, frame: bytes) -> bytes | None:
        chip = self._chip
        if chip is None or chip.removed or not frame:
            return None
        uid = chip.uid
        cl1 = bytes((CASCADE_TAG,)) + uid[0:3]
        cl2 = uid[3:7]
        cl1 += bytes((cl1[0] ^ cl1[1] ^ cl1[2] ^ cl1[3],))
        cl2 += bytes((cl2[0] ^ cl2[1] ^ cl2[2] ^ cl2[3],))
        try:
            if len(frame) == 1 and frame[0] in (RfCommand.REQA, RfCommand.WUPA):
                if not chip.field:
                    chip.field_on()
                self._phase = _Phase.READY1
                return SENS_RES
            if self._phase is _Phase.READY1 and frame[0] == RfCommand.SEL_CL1:
                if frame[1:] == bytes((NVB_SDD,)):
                    return cl1
                if frame[1:] == bytes((NVB_SELECT,)) + cl1:
                    self._phase = _Phase.READY2
                    return bytes((SAK_CASCADE,))
                self._phase = _Phase.IDLE
                return None
            if self._phase is _Phase.READY2 and frame[0] == RfCommand.SEL_CL2:
                if frame[1:] == bytes((NVB_SDD,)):
                    return cl2
                if frame[1:] == bytes((NVB_SELECT,)) + cl2:
                    chip.activate()
                    self._phase = _Phase.ACTIVE
                    self.activations += 1
                    return bytes((SAK_TYPE2,))
                self._phase = _Phase.IDLE
                return None
            if self._phase is not _Phase.ACTIVE:
                return None
            if frame == bytes((RfCommand.HLTA, 0x00)):
                chip.halt()
                self._phase = _Phase.IDLE
                return None
            self.commands += 1
            try:
                return chip.transceive(frame)
            finally:
                if chip.halted:
                    self._phase = _Phase.IDLE
                self._save()
        except ChipMute:
            self._phase = _Phase.IDLE
            return None
        except ChipLeftField:
            self._phase = _Phase.IDLE
            self._save()
            return None

    def rf_off(self) -> None:
        """The reader switched its field off: the RF session ends, the card file is saved."""
        with self._lock:
            if self._chip is not None:
                self._chip.field_off()
                self._save()
            self._phase = _Phase.IDLE

    # ------------------------------------------------------------------ socket loop

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._warned and log.isEnabledFor(TRAFFIC):
            self._warned = True
            log.warning("RF traffic logging is on: the log may contain secrets (passwords, UIDs, records)")
        log.log(TRAFFIC, "<< %r from %s:%d", data, *addr)
        if data.startswith(RFOFF):
            self.rf_off()
            return
        try:
            brty_raw, hex_frame = data.split()
            frame = unhexlify(hex_frame)
        except ValueError:
            log.debug("ignoring malformed datagram %r", data[:40])
            return
        brty = brty_raw.decode("ascii", "replace")
        if brty != BRTY_106A:
            return  # type B / F polls: there is no such card here
        answer = self.handle(frame)
        if answer is None:
            return
        reply = b"%s %s" % (brty_raw, hexlify(answer))
        log.log(TRAFFIC, ">> %r", reply)
        self._sock.sendto(reply, addr)

    def serve(self) -> None:
        """Answer datagrams until :meth:`stop` (runs in the calling thread)."""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], _POLL_S)
            if not ready:
                continue
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self._datagram(data, addr)

    def start(self) -> NfcUdpPeer:
        """Serve in a daemon thread; returns self."""
        self._run_in_thread(self.serve, f"nfc-udp-peer:{self.port}")
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and save the card."""
        self._join()
        with self._lock:
            self._save()
        self._sock.close()


class UdpPeerProcess:
    """The peer in its own Python process, on a card file (robust against nfcpy's 5 ms timeouts).

    The child saves the card after every change; read the file (``Ntag21x.load``)
    after :meth:`stop` to see the final state.

    :param card: path of a ``huma-sim-ntag21x/1`` card file.
    :param port: UDP port on 127.0.0.1; 0 picks a free one.
    :cvar module: the ``python -m`` module the child runs (:mod:`simulator.type4` serves Type 4 card files).
    """

    module: str = "simulator.nfc_udp"

    def __init__(self, card: Path | str, port: int = 0) -> None:
        self.card = Path(card)
        self._requested_port = port
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def path(self) -> str:
        """The nfcpy device path, e.g. ``udp:127.0.0.1:40123``."""
        return f"udp:{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 10.0) -> UdpPeerProcess:
        """Spawn the child and wait until it listens.

        :raises UdpPeerError: the child exited or did not report its port within ``timeout`` seconds.
        """
        argv = [sys.executable, "-m", self.module,
                "--card", str(self.card), "--port", str(self._requested_port)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise UdpPeerError(f"UDP peer did not start: {line.strip() or 'no answer'}")
        self.port = int(line.split()[1])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to save and exit (SIGTERM), wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> UdpPeerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_card_file(argv: list[str] | None, *, description: str, card_help: str,
                    make_peer: Callable[[Path, int], NfcUdpPeer]) -> int:
    """The ``main`` of a UDP peer module: parse ``--card FILE [--port N]``, serve until SIGTERM or SIGINT.

    Prints ``READY <port>`` on stdout once listening (what :class:`UdpPeerProcess` waits for).

    :param make_peer: builds the peer from the card file path and the requested port (0 = any free port).
    :returns: the process exit status (0).
    """
    import signal

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--card", required=True, type=Path, help=card_help)
    parser.add_argument("--port", type=int, default=0, help="UDP port on 127.0.0.1 (0 = any free port)")
    args = parser.parse_args(argv)
    peer = make_peer(args.card, args.port)

    def _terminate(signum: int, frame: object) -> None:
        peer._stop.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    print(f"READY {peer.port}", flush=True)
    peer.serve()
    peer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.nfc_udp --card FILE [--port N]``: serve one card file until SIGTERM.

    Prints ``READY <port>`` on stdout once listening.
    """
    return serve_card_file(argv, description="Virtual NTAG21x for nfcpy's udp: driver (127.0.0.1 only)",
                           card_help="virtual card file (huma-sim-ntag21x/1)",
                           make_peer=lambda card, port: NfcUdpPeer(Ntag21x.load(card), port))


if __name__ == "__main__":
    sys.exit(main())
