"""NXP PN532/PN533 host-interface constants (NXP UM0701-02 "PN532 User Manual" §6-§7).

Shared by the host side (:mod:`cardlib.type2.channel`, ACR122U direct transmit) and
the simulators (:mod:`simulator.reader`, :mod:`simulator.pn532`), so both speak
one table.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["STATUS_MASK", "Pn53xCommand", "Pn53xStatus", "Tfi"]


class Tfi(enum.IntEnum):
    """Frame identifier byte of normal information frames (§6.2.1.1)."""

    HOST_TO_PN = 0xD4
    PN_TO_HOST = 0xD5


class Pn53xCommand(enum.IntEnum):
    """Host commands (§7, Table 5); the answer code is the command + 1."""

    DIAGNOSE = 0x00
    GET_FIRMWARE_VERSION = 0x02
    GET_GENERAL_STATUS = 0x04
    READ_REGISTER = 0x06
    WRITE_REGISTER = 0x08
    SET_SERIAL_BAUDRATE = 0x10
    SET_PARAMETERS = 0x12
    SAM_CONFIGURATION = 0x14
    POWER_DOWN = 0x16
    RF_CONFIGURATION = 0x32
    IN_DATA_EXCHANGE = 0x40
    IN_COMMUNICATE_THRU = 0x42
    IN_DESELECT = 0x44
    IN_LIST_PASSIVE_TARGET = 0x4A
    IN_RELEASE = 0x52
    IN_SELECT = 0x54


class Pn53xStatus(enum.IntEnum):
    """Error byte of In* answers (§7.1, Table 4), low 6 bits (see :data:`STATUS_MASK`)."""

    OK = 0x00
    TIMEOUT = 0x01
    CRC_ERROR = 0x02
    PARITY_ERROR = 0x03
    INVALID_PARAMETER = 0x10
    NOT_ACCEPTABLE = 0x27


#: The error code's bits of the status byte (bit 6 = NAD present, bit 7 = MI chaining).
STATUS_MASK: Final = 0x3F
