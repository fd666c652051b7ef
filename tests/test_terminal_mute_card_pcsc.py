"""Issue 20: a card that stops answering through pcscd frees the tap within its budget.

The virtual card's front end answers the first APDUs, then answers nothing (a mute card
behind a reader that does not time out itself): pcscd's SCardTransmit blocks. The tap's
deadline must end the call and the card handle, not wait until the card is lifted.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.issuance import issue_card_image
from cardlib.transport.errors import SessionLost
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.reader import ReaderEmulator, ReaderKind
from simulator.vpcd import VpcdCard
from terminal.clock import Clock
from terminal.connection import GuardedConnection
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import OfflineLimits, cycle_at
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.fixtures.pcsc import wait_for_card
from tests.test_records_support import ISSUER, STATION, TERMINAL, UID, bundle, chip_with, identity

pytestmark = pytest.mark.pcsc


class StallingFrontend:
    """A reader emulator that stops answering after ``answers`` APDUs until released."""

    def __init__(self, emulator: ReaderEmulator, answers: int) -> None:
        self.emulator = emulator
        self.answers = answers
        self.release = threading.Event()

    @property
    def atr(self) -> bytes:
        return self.emulator.atr

    def power_on(self) -> None:
        self.emulator.power_on()

    def power_off(self) -> None:
        self.emulator.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        if self.answers <= 0:
            self.release.wait(60)
        self.answers -= 1
        return self.emulator.transmit(apdu)


@pytest.mark.parametrize("answers", [2, 8])
def test_a_mute_card_through_pcscd_ends_within_the_tap_budget(pcscd_service, reader_name, tmp_path: Path,
                                                              answers: int) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    card = issue_card_image(identity(UID), ISSUER, STATION, cycle=cycle_at(now), now=now - 60)
    chip = chip_with(card.image, UID)
    front = StallingFrontend(ReaderEmulator(chip, ReaderKind.ACR122U), answers)
    b = dataclasses.replace(bundle(), programmes=(BundleProgramme(1, "food", "package", 1, 182),),
                            issued_at=now - 60, expires_at=now + 30 * 86400)
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.MARKET_REDEMPTION, OfflineLimits(),
                                     caps={"": ACR122U}, per_call_s=0.5, tap_budget_s=3.0),
                       journal, TERMINAL, trust=lambda: Trust(b, time.time()),  # type: ignore[arg-type]
                       request=lambda: ("food", 1, None))
    vcard = VpcdCard(chip, pcscd_service.port(0), frontend=front)  # type: ignore[arg-type]
    vcard.start()
    ctx = PcscContext()
    try:
        vcard.wait_connected()
        wait_for_card(reader_name(0), present=True)
        conn = GuardedConnection(PcscConnection(ctx, reader_name(0)))
        start = time.monotonic()
        try:
            out = tap(conn, None)  # type: ignore[arg-type]
            assert out.status in (TapStatus.UNCERTAIN, TapStatus.RETRY), out
        except SessionLost:
            pass  # nothing journalled for the card yet: the supervisor retries
        assert time.monotonic() - start < 3.0, "the tap waited for the mute card"
        assert conn._closed  # the card handle was ended by the deadline
    finally:
        front.release.set()
        vcard.stop()
        journal.close()
        ctx.close()
