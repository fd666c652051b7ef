"""In-process :class:`Connection` over our reader simulator (not a mock: it runs cardlib.sim).

``EmulatorConnection(ReaderEmulator(chip, kind))`` gives fast unit tests the
same APDU path the vpcd card serves behind pcscd; every feature is also tested
through real pcscd (tests marked ``pcsc``). It lives in :mod:`cardlib.sim.reader`.
"""

from __future__ import annotations

from cardlib.sim.reader import EmulatorConnection

__all__ = ["EmulatorConnection"]
