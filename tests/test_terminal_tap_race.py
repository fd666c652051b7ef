"""Two readers, one terminal cap: the decision lock covers exposure -> decision -> PENDING.

In-process (no pcscd): each reader is :class:`simulator.reader.ReaderEmulator` with its
own issued NTAG215, the tap processor is the daemon's real one with a real journal.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.claims import Unit
from cardlib.records.issuance import issue_card_image
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.chip import Ntag21x
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits, cycle_at
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.test_records_support import ISSUER, STATION, TERMINAL, bundle, chip_with, identity

#: How long the first reader waits, after reading the exposure, for the other to read it too.
RACE_WINDOW_S = 0.5


class RacingJournal(JournalStore):
    """The real journal; a terminal-wide exposure read waits for the other reader's one.

    Without a lock spanning exposure read and PENDING append both readers read
    "nothing handed out yet" here, then both append. With the lock the second
    reader cannot get here before the first one's PENDING is journalled: the
    barrier times out and the taps run one after the other.
    """

    barrier = threading.Barrier(2, timeout=RACE_WINDOW_S)

    def exposure(self, card_id: str | None = None, *, open_since: float | None = None) -> dict[Unit, int]:
        result = super().exposure(card_id, open_since=open_since)
        if card_id is None:
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return result


def _chip(uid: bytes, card_id: bytes) -> Ntag21x:
    now = int(time.time())
    card = issue_card_image(identity(uid, card_id=card_id), ISSUER, STATION, cycle=cycle_at(now), now=now - 60)
    return chip_with(card.image, uid)


def test_two_readers_cannot_both_pass_the_terminal_cap(tmp_path: Path) -> None:
    now = int(time.time())  # a bundle of today: a counter refuses to write far past its bundle's time
    trust_bundle = dataclasses.replace(bundle(), programmes=(BundleProgramme(1, "food", "package", 1, 182),),
                                       issued_at=now - 60, expires_at=now + 30 * 86400)
    journal = RacingJournal(tmp_path / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                            clock=Clock(force_synced=True))
    limits = OfflineLimits(terminal_exposure={Unit.PACKAGE: 1})  # room for exactly one package
    tap = TapProcessor(
        CounterConfig("T-6271-0001", CounterMode.MARKET_REDEMPTION, limits, caps={"": ACR122U}),
        journal, TERMINAL, trust=lambda: Trust(trust_bundle, time.time()), request=lambda: ("food", 1, None),
    )
    chips = [_chip(bytes.fromhex("04a1b2c3d4e5f6"), bytes.fromhex("6271000000000001")),
             _chip(bytes.fromhex("04a1b2c3d4e5f7"), bytes.fromhex("6271000000000002"))]
    outcomes = []
    start = threading.Barrier(2)

    def reader(chip: Ntag21x) -> None:
        conn = EmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))
        start.wait()
        outcomes.append(tap(conn, None))

    threads = [threading.Thread(target=reader, args=(c,)) for c in chips]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    journal.close()

    statuses = sorted(o.status.value for o in outcomes)
    assert statuses == [TapStatus.ACCEPTED.value, TapStatus.DECLINED.value], outcomes
    declined = next(o for o in outcomes if o.status is TapStatus.DECLINED)
    assert declined.reason is DeclineReason.OVER_TERMINAL_LIMIT
