"""Journal exposure and open time with verified upload receipts (docs/security.md "What an insider with
write access to the journal file cannot fake").

A journal of N redemptions, uploaded in 500-entry batches, each confirmed by a receipt the pinned server
key signed (stored and verified again at open), then 20 redemptions not uploaded. Measured: reopening
the journal (integrity check, every stored receipt verified), the whole-terminal and one card's exposure
(read on every tap).

    .venv/bin/python -m bench.bench_journal_receipts [--entries 20000] [--out bench/results/journal_receipts.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from terminal.clock import Clock
from terminal.journal_store import CardWrite, JournalStore
from tests.fixtures.receipts import SERVER, receipt
from tests.test_terminal_support import new_signer


def _ms(fn: object, n: int) -> float:
    """Median milliseconds of ``n`` calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    """Build the journal, measure, print (and write ``--out``) a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    signer = new_signer()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite"

        def open_store() -> JournalStore:
            return JournalStore(path, terminal_id="T-BENCH", signer=signer, clock=Clock(force_synced=True),
                                receipt_key=SERVER.public_key)

        j = open_store()
        for i in range(args.entries):
            j.append(EntryKind.COMMIT, CardWrite(card_id=f"6271{i % 5000:012d}", programme="cash",
                                                 unit=Unit.RUPIAH, amount=1))
        receipts = 0
        while batch := j.unsent(500):
            j.record_receipt(receipt(j, batch))
            receipts += 1
        for i in range(20):
            j.append(EntryKind.COMMIT, CardWrite(card_id=f"6271{i:012d}", programme="cash", unit=Unit.RUPIAH,
                                                 amount=1))
        j.close()
        t = time.perf_counter()
        j = open_store()
        reopen = (time.perf_counter() - t) * 1000
        terminal = _ms(j.exposure, 200)
        card = _ms(lambda: j.exposure("6271000000000003"), 200)
        j.close()
    load = os.getloadavg()
    text = (f"# Journal exposure with verified upload receipts\n\n"
            f"`.venv/bin/python -m bench.bench_journal_receipts --entries {args.entries}`, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores shared)\n\n"
            "| entries | stored receipts | reopen (ms) | exposure, whole terminal (ms, median) | "
            "exposure, one card (ms, median) |\n|---|---|---|---|---|\n"
            f"| {args.entries} | {receipts} | {reopen:.0f} | {terminal:.2f} | {card:.3f} |\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
