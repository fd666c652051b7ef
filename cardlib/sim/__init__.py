"""Virtual cards for simulation below the real PC/SC and nfcpy stacks.

- :mod:`cardlib.sim.chip` — NTAG213/215/216 chip model (memory, commands, faults, card files)
- :mod:`cardlib.sim.reader` — ACR122U / PC/SC Part 3 reader front end (pure, no sockets)
- :mod:`cardlib.sim.vpcd` — virtual card client for vsmartcard's vpcd driver
- :mod:`cardlib.sim.dumps` — Flipper Zero ``.nfc`` and Proxmark3 JSON import/export
- :mod:`cardlib.sim.harness` — a private ``pcscd`` with vpcd readers (tests, demo, bench)
"""

from cardlib.sim.chip import ChipVariant, FaultPlan, Nak, Ntag21x, TornFill
from cardlib.sim.errors import CardRemoved, ChipMute, SimError

__all__ = ["CardRemoved", "ChipMute", "ChipVariant", "FaultPlan", "Nak", "Ntag21x", "SimError", "TornFill"]
