"""In-process :class:`Connection` over our reader simulator (not a mock: it runs simulator).

``EmulatorConnection(ReaderEmulator(chip, kind))`` gives fast unit tests the
same APDU path the vpcd card serves behind pcscd; every feature is also tested
through real pcscd (tests marked ``pcsc``). It lives in :mod:`simulator.reader`.
"""

from __future__ import annotations

from simulator.reader import EmulatorConnection

__all__ = ["EmulatorConnection"]
