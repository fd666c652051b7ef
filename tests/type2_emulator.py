"""In-process :class:`Connection` over our reader simulator (not a mock: it runs cardlib.sim).

``EmulatorConnection(ReaderEmulator(chip, kind))`` gives fast unit tests the
same APDU path the vpcd card serves behind pcscd; every feature is also tested
through real pcscd (tests marked ``pcsc``).
"""

from __future__ import annotations

from cardlib.apdu import split_response
from cardlib.sim.errors import CardRemoved as SimCardRemoved
from cardlib.sim.reader import ReaderEmulator
from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved


class EmulatorConnection(Connection):
    """APDUs straight into a :class:`ReaderEmulator`; the chip's removal becomes :class:`CardRemoved`."""

    def __init__(self, reader: ReaderEmulator) -> None:
        self.reader = reader
        self.apdus: list[bytes] = []
        reader.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.apdus.append(bytes(apdu))
        try:
            raw = self.reader.transmit(apdu)
        except SimCardRemoved as exc:
            raise CardRemoved(f"virtual card left the field: {exc}") from exc
        return split_response(raw)

    def reconnect(self) -> None:
        self.reader.power_off()
        self.reader.power_on()

    def close(self) -> None:
        self.reader.power_off()

    @property
    def reader_name(self) -> str:
        return f"emulator {self.reader.kind.value}"

    @property
    def atr(self) -> bytes:
        return self.reader.atr
