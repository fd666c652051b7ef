"""Errors raised by the virtual-card simulator (:mod:`simulator`).

All derive from :class:`SimulatorError`, the package's one error root; the
``huma`` CLI turns it into a one-line message and exit status 2.
"""

from __future__ import annotations

from pathlib import Path


class SimulatorError(Exception):
    """Root of every error raised by :mod:`simulator`."""


class ChipLeftField(SimulatorError):
    """The virtual card has left the field (fault plan fired or card taken away).

    Every command sent to a removed chip raises this until
    :meth:`simulator.chip.Ntag21x.reinsert` is called.
    """


class ChipMute(SimulatorError):
    """The chip sent no answer (unknown command, HALT/IDLE state, field off).

    On the air this is a reader time-out (NTAG213/215/216 datasheet §9.3: an
    invalid command returns the tag to IDLE without a response).
    """


class UnknownChipError(SimulatorError):
    """A chip type name that the simulator does not model."""


class CardFileError(SimulatorError):
    """A virtual-card file (``*.card.json``) that cannot be read or is malformed."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DumpFormatError(SimulatorError):
    """A Flipper ``.nfc`` or Proxmark3 JSON dump that cannot be imported.

    :ivar path: the dump file.
    :ivar line: 1-based line number of the offending line, or ``None`` when the
        problem is not tied to one line (e.g. a missing field).
    """

    def __init__(self, path: Path | str, reason: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


class VpcdError(SimulatorError):
    """The virtual card could not reach vpcd (port refused, busy or closed)."""


class HarnessError(SimulatorError):
    """The private pcscd harness could not start (binary or driver missing, no readers)."""
