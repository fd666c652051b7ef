"""Helpers shared by the benchmarks: a timed in-process card link and the report writer.

Run the benchmarks from the repository root (``python -m bench.<name>``), so this
module imports as ``bench._common``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from simulator.reader import EmulatorConnection, ReaderEmulator

__all__ = ["MS", "TimedEmulatorConnection", "load_average", "write_report"]

#: Milliseconds per second (report scaling).
MS = 1e3


class TimedEmulatorConnection(EmulatorConnection):
    """:class:`simulator.reader.EmulatorConnection` that sums the seconds spent in this 'card link'.

    Benchmarks subtract :attr:`link_seconds` to report software time per tap excluding
    the card link (docs/design.md §Performance targets).
    """

    def __init__(self, reader: ReaderEmulator) -> None:
        super().__init__(reader)
        self.link_seconds = 0.0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        start = time.perf_counter()
        try:
            return super().send_and_receive(apdu)
        finally:
            self.link_seconds += time.perf_counter() - start


def load_average() -> str:
    """``"1.20 0.95 0.80"``: the 1/5/15-minute load averages, for the machine line of a report."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_report(text: str, out: Path | None) -> None:
    """Print a report and, when ``out`` is given, write it there (UTF-8, parent directories made)."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
