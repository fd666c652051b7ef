"""A PN532 on a UART (HSU), emulated on a pseudo-terminal, fronting a virtual NTAG21x.

nfcpy's ``pn532`` driver (``nfc/clf/pn532.py``, ``pn53x.py``) opens the pty
with pyserial exactly as it opens ``/dev/ttyUSB0``: this module speaks the host
side of the NXP PN532 User Manual UM0701-02 so the driver runs unchanged.

Host link (UM0701-02 §6.2):

- Normal information frame ``00 00 FF LEN LCS TFI PD0 … PDn DCS 00`` with
  ``LEN + LCS ≡ 0`` and ``TFI + ΣPD + DCS ≡ 0 (mod 256)``; TFI ``D4`` host→PN532,
  ``D5`` PN532→host (§6.2.1.1).
- Extended frame ``00 00 FF FF FF LENM LENL LCS TFI … DCS 00`` for more than
  254 data bytes (§6.2.1.2; nfcpy's Diagnose line test uses it both ways).
- ACK ``00 00 FF 00 FF 00`` (§6.2.1.3): sent for every well-formed command
  before its answer; from the host it aborts the current command.
- NACK ``00 00 FF FF 00 00`` from the host: repeat the last answer (§6.2.1.4).
- Error frame ``00 00 FF 01 FF 7F 81 00`` for a syntax error (§6.2.1.5): wrong
  TFI or unknown command.
- A frame with a bad length or data checksum is dropped without ACK; the
  host times out and retries.
- Power down (``PowerDown`` 16h, §7.2.11): the chip sleeps; the HSU wakes it
  only when a frame is preceded by a long preamble (``55 55 00 00 00 …``,
  §7.2.11 / §6.3.2: nfcpy sends ten ``00``). A short-preamble frame sent to a
  sleeping chip is lost (no ACK).

Commands: Diagnose 00h (line test echo), GetFirmwareVersion 02h (IC ``32``,
v1.6, support 07h), GetGeneralStatus 04h, ReadRegister 06h / WriteRegister
08h (a register file; CIU_RxMode bit 7 RxCRCEn decides whether
InCommunicateThru answers carry CRC_A, which nfcpy relies on for Type 2 ACK/NAK),
SetSerialBaudrate 10h, SetParameters 12h, SAMConfiguration 14h, PowerDown 16h,
RFConfiguration 32h (item 01h switches the RF field, ending the tag's RF
session when off), InListPassiveTarget 4Ah (106 kbps type A only; SENS_RES
``00 44``, SEL_RES ``00``, 7-byte NFCID1; with InitiatorData only that UID
answers), InDataExchange 40h, InCommunicateThru 42h (status ``01`` time-out
when the tag is mute), InDeselect 44h, InRelease 52h, InSelect 54h.

Not modelled: I2C/SPI, target mode, FeliCa/Type B/Jewel, timing of the UART.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import threading
import tty
from pathlib import Path
from typing import Final

from cardlib.apdu import TRAFFIC
from cardlib.pn53x import Pn53xCommand, Pn53xStatus, Tfi
from simulator._serving import BackgroundServer
from simulator.chip import ACK, Ntag21x, crc_a
from simulator.errors import ChipLeftField, ChipMute, SimulatorError

__all__ = ["ACK_FRAME", "ERROR_FRAME", "NACK_FRAME", "Pn53xCommand", "Pn532Emulator", "Pn532Pty", "build_frame"]

log = logging.getLogger(__name__)

ACK_FRAME: Final = bytes.fromhex("0000FF00FF00")
NACK_FRAME: Final = bytes.fromhex("0000FFFF0000")
ERROR_FRAME: Final = bytes.fromhex("0000FF01FF7F8100")
#: GetFirmwareVersion answer: IC 32h (PN532), Ver 1, Rev 6, Support 07h (ISO 18092 | ISO/IEC 14443 B | A).
FIRMWARE: Final = bytes((0x32, 0x01, 0x06, 0x07))
#: SENS_RES of NTAG21x as the PN532 reports it (ATQA MSB first), SEL_RES for a Type 2 tag.
SENS_RES: Final = bytes((0x00, 0x44))
SEL_RES: Final = 0x00
#: Bytes in front of a start code that wake a sleeping PN532 (nfcpy sends 10 + the 2 of the preamble).
WAKEUP_MIN_PREAMBLE: Final = 5
_START = b"\x00\xff"
_PREAMBLE_BYTES = (0x00, 0x55)
_MAX_NORMAL_LEN = 255
_CASCADE_TAG = 0x88
#: CIU registers nfcpy uses (PN533/PN532 CIU = PN512, UM0701-02 §8).
CIU_RX_MODE: Final = 0x6303
CIU_TX_MODE: Final = 0x6302
CIU_FIFO_DATA: Final = 0x6339
CIU_TX_CONTROL: Final = 0x6304
RX_CRC_EN: Final = 0x80
#: What the CIU FIFO still holds when nobody answered the REQA nfcpy's sense_tta looks for.
REQA: Final = 0x26


class _RfItem(enum.IntEnum):
    RF_FIELD = 0x01


_RF_ON = 0x01
_BRTY_106A = 0x00


def build_frame(payload: bytes) -> bytes:
    """Wrap ``TFI + data`` in a normal or extended information frame (UM0701-02 §6.2.1.1-2).

    :param payload: TFI byte followed by the command/answer bytes.
    :returns: the complete frame with preamble, start code, lengths, DCS and postamble.
    """
    dcs = (-sum(payload)) & 0xFF
    length = len(payload)
    if length <= _MAX_NORMAL_LEN - 1:
        head = bytes((0x00, 0x00, 0xFF, length, (-length) & 0xFF))
    else:
        lenm, lenl = length >> 8, length & 0xFF
        head = bytes((0x00, 0x00, 0xFF, 0xFF, 0xFF, lenm, lenl, (-(lenm + lenl)) & 0xFF))
    return head + payload + bytes((dcs, 0x00))


class Pn532Emulator:
    """The PN532's host-link state machine: bytes from the host in, bytes to the host out. Pure.

    :param chip: the card in the field, or None.
    :param persist: save the chip to ``chip.path`` after every command that changed it.
    :ivar frames: well-formed command frames received.
    :ivar dropped: frames dropped (bad checksum, or sent to a sleeping chip without wake-up).
    :ivar tag_commands: InCommunicateThru/InDataExchange commands executed.
    """

    def __init__(self, chip: Ntag21x | None = None, *, persist: bool = True) -> None:
        self._chip = chip
        self.persist = persist
        self._buf = bytearray()
        self._preamble = 0
        self._last_answer = b""
        self._asleep = False
        self._target_active = False
        self._registers: dict[int, int] = {CIU_RX_MODE: RX_CRC_EN, CIU_TX_MODE: RX_CRC_EN}
        self.frames = 0
        self.dropped = 0
        self.tag_commands = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ card

    @property
    def chip(self) -> Ntag21x | None:
        """The card in the field, if any."""
        return self._chip

    @property
    def asleep(self) -> bool:
        """True after PowerDown until a long-preamble frame wakes the chip."""
        return self._asleep

    def place(self, chip: Ntag21x) -> None:
        """Put a card in the field."""
        with self._lock:
            self._chip = chip
            self._target_active = False

    def remove(self) -> None:
        """Take the card away (saved first)."""
        with self._lock:
            if self._chip is not None:
                self._chip.field_off()
                self._save()
            self._chip = None
            self._target_active = False

    def _save(self) -> None:
        chip = self._chip
        if self.persist and chip is not None and chip.path is not None and chip.dirty:
            chip.save(durable=False)

    # ------------------------------------------------------------------ host link

    def feed(self, data: bytes) -> bytes:
        """Consume bytes the host wrote; return the bytes the PN532 sends back (ACKs, answers).

        Partial frames are kept until the rest arrives.
        """
        with self._lock:
            self._buf += data
            out = bytearray()
            while True:
                produced = self._next_frame()
                if produced is None:
                    return bytes(out)
                out += produced

    def _next_frame(self) -> bytes | None:
        """Parse one frame off the buffer; None when more bytes are needed."""
        buf = self._buf
        # Skip preamble / wake-up bytes up to the start code 00 FF.
        while buf and not buf.startswith(_START):
            if buf[0] in _PREAMBLE_BYTES:
                self._preamble += 1
            else:
                self._preamble = 0
            if len(buf) == 1 and buf[0] == 0x00:
                return None  # may be the first byte of a start code
            del buf[0]
        if len(buf) < 4:
            return None
        preamble, self._preamble = self._preamble, 0
        length, lcs = buf[2], buf[3]
        if (length, lcs) == (0x00, 0xFF):  # ACK from host: abort
            del buf[:4]
            return b""
        if (length, lcs) == (0xFF, 0x00):  # NACK: send the last answer again
            del buf[:4]
            return self._last_answer
        header = 4
        if (length, lcs) == (0xFF, 0xFF):  # extended frame
            if len(buf) < 7:
                return None
            lenm, lenl, elcs = buf[4], buf[5], buf[6]
            if (lenm + lenl + elcs) & 0xFF:
                return self._drop(7, "extended length checksum")
            length, header = (lenm << 8) | lenl, 7
        elif (length + lcs) & 0xFF:
            return self._drop(4, "length checksum")
        if len(buf) < header + length + 1:
            return None
        payload = bytes(buf[header : header + length])
        dcs = buf[header + length]
        del buf[: header + length + 1]
        if (sum(payload) + dcs) & 0xFF:
            self.dropped += 1
            log.debug("dropping frame: data checksum")
            return b""
        if self._asleep:
            if preamble < WAKEUP_MIN_PREAMBLE:
                self.dropped += 1
                log.debug("asleep: frame without wake-up preamble lost")
                return b""
            self._asleep = False
        self.frames += 1
        log.log(TRAFFIC, "host>> %s", payload.hex())
        if not payload or payload[0] != Tfi.HOST_TO_PN or len(payload) < 2:
            self._last_answer = ERROR_FRAME
            return ACK_FRAME + ERROR_FRAME
        answer = self._command(payload[1], payload[2:])
        frame = ERROR_FRAME if answer is None else build_frame(bytes((Tfi.PN_TO_HOST, payload[1] + 1)) + answer)
        log.log(TRAFFIC, "host<< %s", frame.hex())
        self._last_answer = frame
        return ACK_FRAME + frame

    def _drop(self, consumed: int, why: str) -> bytes:
        del self._buf[:consumed]
        self.dropped += 1
        log.debug("dropping frame: %s", why)
        return b""

    # ------------------------------------------------------------------ commands

    def _command(self, code: int, data: bytes) -> bytes | None:
        """Execute one command; the answer's data after ``D5 <code+1>``, None for a syntax error."""
        try:
            cmd = Pn53xCommand(code)
        except ValueError:
            log.debug("unknown PN532 command %02X", code)
            return None
        if cmd is Pn53xCommand.DIAGNOSE:
            if data[:1] == b"\x00":
                return data  # communication line test: echo NumTst + InParam
            return b"\x00"  # ROM/RAM tests pass
        if cmd is Pn53xCommand.GET_FIRMWARE_VERSION:
            return FIRMWARE
        if cmd is Pn53xCommand.GET_GENERAL_STATUS:
            field = int(self._chip is not None and self._chip.field)
            targets = bytes((1, 0x01, 0x00, 0x00, 0x00)) if self._target_active else b"\x00"
            return bytes((0x00, field)) + targets + b"\x00"
        if cmd is Pn53xCommand.READ_REGISTER:
            addrs = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]
            return bytes(self._registers.get(a, 0) for a in addrs)
        if cmd is Pn53xCommand.WRITE_REGISTER:
            for i in range(0, len(data) - 2, 3):
                self._registers[int.from_bytes(data[i : i + 2], "big")] = data[i + 2]
            return b""
        if cmd in (Pn53xCommand.SET_SERIAL_BAUDRATE, Pn53xCommand.SET_PARAMETERS, Pn53xCommand.SAM_CONFIGURATION):
            return b""
        if cmd is Pn53xCommand.POWER_DOWN:
            self._rf_off()
            self._asleep = True
            return b"\x00"
        if cmd is Pn53xCommand.RF_CONFIGURATION:
            if data[:1] == bytes((_RfItem.RF_FIELD,)) and len(data) >= 2 and not data[1] & _RF_ON:
                self._rf_off()
            return b""
        if cmd is Pn53xCommand.IN_LIST_PASSIVE_TARGET:
            return self._in_list_passive_target(data)
        if cmd is Pn53xCommand.IN_COMMUNICATE_THRU:
            return self._to_tag(data, raw=True)
        if cmd is Pn53xCommand.IN_DATA_EXCHANGE:
            if data[:1] != b"\x01":
                return bytes((Pn53xStatus.INVALID_PARAMETER,))
            return self._to_tag(data[1:], raw=False)
        if cmd in (Pn53xCommand.IN_DESELECT, Pn53xCommand.IN_RELEASE):
            if self._target_active and self._chip is not None:
                self._chip.halt()
            self._target_active = False
            return b"\x00"
        if cmd is Pn53xCommand.IN_SELECT:
            return b"\x00" if self._select() else bytes((Pn53xStatus.TIMEOUT,))
        return None  # pragma: no cover - every enum member is handled above

    def _rf_off(self) -> None:
        if self._chip is not None:
            self._chip.field_off()
            self._save()
        self._target_active = False

    def _select(self, uid_filter: bytes = b"") -> bool:
        chip = self._chip
        if chip is None or chip.removed:
            return False
        if uid_filter:
            wanted = uid_filter[1:] if len(uid_filter) == 8 and uid_filter[0] == _CASCADE_TAG else uid_filter
            if wanted != chip.uid:
                return False
        try:
            if chip.field:
                chip.activate()
            else:
                chip.field_on()
        except (ChipMute, ChipLeftField):
            return False
        self._target_active = True
        self._registers[CIU_RX_MODE] = self._registers.get(CIU_RX_MODE, 0) | RX_CRC_EN
        self._registers[CIU_TX_MODE] = self._registers.get(CIU_TX_MODE, 0) | RX_CRC_EN
        return True

    def _in_list_passive_target(self, data: bytes) -> bytes:
        if len(data) < 2 or data[1] != _BRTY_106A or not self._select(data[2:]):
            self._target_active = False
            self._registers[CIU_FIFO_DATA] = REQA  # nobody answered the REQA
            return b"\x00"
        assert self._chip is not None
        uid = self._chip.uid
        return bytes((1, 1)) + SENS_RES + bytes((SEL_RES, len(uid))) + uid

    def _to_tag(self, frame: bytes, *, raw: bool) -> bytes:
        chip = self._chip
        if chip is None or not self._target_active:
            return bytes((Pn53xStatus.TIMEOUT,))
        self.tag_commands += 1
        try:
            answer = chip.transceive(frame)
        except (ChipMute, ChipLeftField) as exc:
            log.debug("tag silent: %s", exc)
            if chip.removed:
                self._target_active = False
            return bytes((Pn53xStatus.TIMEOUT,))
        finally:
            self._save()
        if raw and len(answer) > 1 and not self._registers.get(CIU_RX_MODE, 0) & RX_CRC_EN:
            answer += crc_a(answer)  # RxCRCEn off: the CIU hands over the CRC bytes too
        if not raw and answer == bytes((ACK,)):
            answer = b""
        return bytes((Pn53xStatus.OK,)) + answer


class Pn532Pty(BackgroundServer):
    """Serve a :class:`Pn532Emulator` on a pseudo-terminal in a background thread.

    The slave side is what the host opens (``/dev/pts/N``); with ``link`` a
    symlink ``/dev/<link>`` is made so nfcpy's ``tty:<link>:pn532`` path finds
    it (nfcpy only looks at names directly under ``/dev``; needs root).

    :param emulator: the PN532 state machine.
    :param link: name for the ``/dev`` symlink (letters, digits and ``-``), or None.
    """

    def __init__(self, emulator: Pn532Emulator, link: str | None = None) -> None:
        super().__init__()
        self.emulator = emulator
        self.link = link
        self._master = -1
        self._slave = -1
        self.device = ""

    @property
    def link_path(self) -> Path | None:
        """``/dev/<link>`` when a link was requested."""
        return Path("/dev") / self.link if self.link else None

    @property
    def nfcpy_path(self) -> str:
        """nfcpy's path for the pty, e.g. ``tty:huma-pn532-1234:pn532``.

        :raises SimulatorError: no ``/dev`` link was requested.
        """
        if not self.link:
            raise SimulatorError("nfcpy tty paths need a /dev link: create Pn532Pty with link=...")
        return f"tty:{self.link}:pn532"

    def start(self) -> Pn532Pty:
        """Open the pty (raw mode), make the link, start serving.

        :raises SimulatorError: the link cannot be created (not root, name taken).
        """
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF mapping: the UART is 8-bit clean
        self.device = os.ttyname(self._slave)
        link = self.link_path
        if link is not None:
            try:
                os.symlink(self.device, link)
            except OSError as exc:
                self._close_fds()
                raise SimulatorError(f"cannot create {link} -> {self.device}: {exc.strerror}") from exc
        self._run_in_thread(self._serve, f"pn532-pty:{self.device}")
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            out = self.emulator.feed(data)
            if out:
                os.write(self._master, out)

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def stop(self) -> None:
        """Stop serving, remove the link, close the pty and save the card. Idempotent."""
        self._join()
        link = self.link_path
        if link is not None and link.is_symlink():
            link.unlink()
        self._close_fds()
        with self.emulator._lock:
            self.emulator._save()
