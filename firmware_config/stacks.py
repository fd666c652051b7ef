"""What the counter's reader stacks can drive: the checks that refuse a profile no backend could open.

The counter drives PC/SC readers through pcscd and nfcpy readers through nfcpy's own
drivers (docs/readers.md). A PC/SC reader is found by name at run time; an nfcpy reader
is opened by a device path, and only paths of the forms nfcpy 1.0.4 parses name a
device it has a driver for (``nfc.clf.ContactlessFrontend.open``; driver tables in
``nfc/clf/device.py``). This module knows those forms without importing nfcpy, so
``huma config check`` refuses, with one message, a profile the daemon could never open,
instead of the daemon polling a path that cannot exist.
"""

from __future__ import annotations

import re
from typing import Final

#: nfcpy's drivers for readers on a serial port (``tty_driver_list``).
NFCPY_TTY_DRIVERS: Final = ("arygon", "pn532")
#: USB readers nfcpy has a driver for, (vendor id, product id) -> driver (``usb_device_map``).
NFCPY_USB_DEVICES: Final = {
    (0x054C, 0x0193): "pn531",
    (0x04CC, 0x0531): "pn531",
    (0x04CC, 0x2533): "pn533",
    (0x04E6, 0x5591): "pn533",
    (0x04E6, 0x5593): "pn533",
    (0x054C, 0x02E1): "rcs956",
    (0x054C, 0x06C1): "rcs380",
    (0x054C, 0x06C3): "rcs380",
    (0x072F, 0x2200): "acr122",
}
#: The line speed nfcpy opens a serial reader at (the PN532's power-on HSU rate, NXP UM0701-02
#: §6.2.3); its drivers switch to a faster rate themselves, so no other setting can be honoured.
NFCPY_SERIAL_BAUD: Final = 115200

#: A serial port name nfcpy can open: directly under /dev, letters, digits and '-' (its path syntax).
_TTY_NAME: Final = re.compile(r"[A-Za-z0-9-]+")
_USB_VID_PID: Final = re.compile(r"usb(?::([0-9a-fA-F]{4}))(?::([0-9a-fA-F]{4}))?")
_USB_BUS_DEV: Final = re.compile(r"usb(?::[0-9]{1,3})(?::[0-9]{1,3})?")
_UDP: Final = re.compile(r"udp(?::([A-Za-z0-9.-]*))?(?::([0-9]+))?")


def _usb_problem(path: str) -> str | None:
    if path == "usb" or _USB_BUS_DEV.fullmatch(path):
        return None
    match = _USB_VID_PID.fullmatch(path)
    if match is None:
        return f"{path!r} is not an nfcpy USB path (usb, usb:VVVV:PPPP or usb:BBB:DDD)"
    vendor = int(match.group(1), 16)
    product = int(match.group(2), 16) if match.group(2) else None
    known = [(v, p) for v, p in NFCPY_USB_DEVICES if v == vendor and product in (None, p)]
    if known:
        return None
    drivers = ", ".join(f"{v:04x}:{p:04x}" for v, p in NFCPY_USB_DEVICES)
    return f"nfcpy has no driver for USB device {path[4:]}; it drives {drivers}"


def nfcpy_path_problem(path: str) -> str | None:
    """Why nfcpy could never open a reader at ``path``, or None when the path can name one.

    Accepts ``usb[:VVVV[:PPPP]]`` of a device nfcpy has a driver for, ``usb:BBB[:DDD]``,
    ``tty:<name>:<driver>`` with a driver of :data:`NFCPY_TTY_DRIVERS` and ``udp[:host][:port]``.
    Whether the device is plugged in is not checked (a reader may be attached later).

    :param path: an nfcpy device path, e.g. ``tty:USB0:pn532``.
    :returns: one sentence naming what is wrong.
    """
    scheme = path.split(":", 1)[0]
    if scheme == "usb":
        return _usb_problem(path)
    if scheme == "tty":
        parts = path.split(":")
        if len(parts) != 3 or not parts[2]:
            return f"{path!r}: nfcpy needs the driver in a serial path, e.g. tty:USB0:pn532"
        name, driver = parts[1], parts[2]
        if driver not in NFCPY_TTY_DRIVERS:
            return f"{path!r}: nfcpy has no serial driver {driver!r} (it has {', '.join(NFCPY_TTY_DRIVERS)})"
        if not _TTY_NAME.fullmatch(name):
            return (f"{path!r}: nfcpy opens only serial ports named directly under /dev with letters, "
                    "digits and '-'")
        return None
    if scheme == "udp":
        match = _UDP.fullmatch(path)
        if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
            return f"{path!r} is not an nfcpy UDP path (udp:<host>:<port>)"
        return None
    if scheme == "com":
        return f"{path!r} is a Windows serial port; on the counter's Linux use tty:<name>:<driver>"
    return f"{path!r}: nfcpy has no {scheme!r} transport (usb, tty, udp)"


def serial_device_problem(device: str, baud: int) -> str | None:
    """Why nfcpy could never drive a serial reader on ``device`` at ``baud``, or None.

    nfcpy finds a port only by a name directly under ``/dev`` (``/dev/ttyUSB0``); a port elsewhere
    (``/dev/serial/by-id/…``, ``/dev/pts/3``) needs a udev or ``ln -s`` link directly under ``/dev``.

    :param device: the device node, e.g. ``/dev/ttyUSB0``.
    :param baud: the configured line speed, bit/s.
    """
    name = device.removeprefix("/dev/")
    if not _TTY_NAME.fullmatch(name):
        return (f"{device!r}: nfcpy opens only serial ports named directly under /dev with letters, digits "
                "and '-'; link the port there (udev SYMLINK+=\"pn532\" gives /dev/pn532)")
    if baud != NFCPY_SERIAL_BAUD:
        return (f"baud {baud}: nfcpy opens a serial reader at {NFCPY_SERIAL_BAUD} and sets a faster "
                "rate itself; no other setting can be honoured")
    return None
