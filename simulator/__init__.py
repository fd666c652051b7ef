"""Virtual cards for simulation below the real PC/SC and nfcpy stacks.

- :mod:`simulator.chip` — NTAG213/215/216 chip model (memory, commands, faults, card files)
- :mod:`simulator.reader` — ACR122U / PC/SC Part 3 reader front end (pure, no sockets)
- :mod:`simulator.vpcd` — virtual card client for vsmartcard's vpcd driver
- :mod:`simulator.dumps` — Flipper Zero ``.nfc`` and Proxmark3 JSON import/export
- :mod:`simulator.harness` — a private ``pcscd`` with vpcd readers (tests, demo, bench)
"""

from simulator.chip import ChipVariant, FaultPlan, Nak, Ntag21x, TornFill
from simulator.errors import ChipLeftField, ChipMute, SimulatorError

__all__ = ["ChipLeftField", "ChipMute", "ChipVariant", "FaultPlan", "Nak", "Ntag21x", "SimulatorError", "TornFill"]
