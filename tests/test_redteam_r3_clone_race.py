"""Red team round 3, cloner with two chips at one counter with two readers, at the same moment.

A perfect copy (sniffed password, or a format-1 card: the same image on a second chip with the same
UID) goes on the counter's second reader while the counter is writing the genuine card on the first:
the second tap finds the first one's PENDING still open and runs the torn-write recovery on the copy
(which still holds the old state). The attack: get two payouts, or make the counter's journal say the
genuine redemption was voided while the goods went out. Defended (regression test): exactly one payout
over both chips and every later tap, and the journal's redemptions (COMMIT + FINISHED, what the server
counts) say one. What the journal holds then: PENDING, VOIDED (the copy's recovery), COMMIT (the
genuine write), then ``card_forked`` for the copy and ``nothing_left`` for the genuine card; it verifies
offline with no write left open.

In-process (no pcscd), as tests/test_terminal_tap_race.py: the daemon's real tap processor and journal,
each reader a :class:`simulator.reader.ReaderEmulator`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from cardlib.keys.signer import cose_key
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import OfflineLimits, cycle_at
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.test_records_support import ISSUER, STATION, TERMINAL, UID, bundle, chip_with, identity

IN_WRITE = b"\xd4\x42\xa2"  # PN533 InCommunicateThru carrying an NTAG WRITE


class PausedAtFirstWrite(EmulatorConnection):
    """The genuine card's reader: stops before the first WRITE until the copy's tap is over."""

    def __init__(self, reader: ReaderEmulator, writing: threading.Event, resume: threading.Event) -> None:
        super().__init__(reader)
        self._writing, self._resume = writing, resume

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if IN_WRITE in apdu and not self._writing.is_set():
            self._writing.set()
            self._resume.wait(10)
        return super().send_and_receive(apdu)


def test_a_copy_on_the_second_reader_during_the_genuine_write_gets_nothing(tmp_path: Path) -> None:
    now = int(time.time())
    trust_bundle = dataclasses.replace(bundle(), programmes=(BundleProgramme(1, "food", "package", 1, 182),),
                                       issued_at=now - 60, expires_at=now + 30 * 86400)
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.MARKET_REDEMPTION, OfflineLimits(),
                                     caps={"": ACR122U}),
                       journal, TERMINAL, trust=lambda: Trust(trust_bundle, time.time()),
                       request=lambda: ("food", 1, None))
    image = issue_card_image(identity(), ISSUER, STATION, cycle=cycle_at(now), now=now - 60).image
    genuine, copy = chip_with(image, UID), chip_with(image, UID)
    writing, resume = threading.Event(), threading.Event()
    first: list[TapOutcome] = []
    t = threading.Thread(target=lambda: first.append(
        tap(PausedAtFirstWrite(ReaderEmulator(genuine, ReaderKind.ACR122U), writing, resume), None)))
    t.start()
    try:
        assert writing.wait(10), "the genuine tap never reached its slot write"
        during = tap(EmulatorConnection(ReaderEmulator(copy, ReaderKind.ACR122U)), None)
    finally:
        resume.set()
        t.join(30)
    later = [tap(EmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U)), None)
             for chip in (copy, genuine, copy)]
    kinds = [s.entry.kind for s in journal.entries()]
    taken = sum(s.entry.amount or 0 for s in journal.entries()
                if s.entry.kind in (EntryKind.COMMIT, EntryKind.FINISHED))
    journal.close()
    report = verify_journal_file(tmp_path / "journal.sqlite", cose_key(TERMINAL))  # the auditor's offline check
    outcomes = [*first, during, *later]
    paid = sum(o.amount or 0 for o in outcomes if o.status in (TapStatus.ACCEPTED, TapStatus.RECOVERED))
    assert not report.open_writes  # the genuine write is closed (COMMIT), not left open by the copy's VOIDED
    assert paid == 1 and taken == 1, (
        [(o.status.value, o.reason.value if o.reason else None, o.amount) for o in outcomes], kinds)
