"""The tap transaction through real pcscd + vpcd with issued virtual cards (docs/design.md §Tap sequence)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.keys.signer import cose_key
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.household_label import household_label
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.chip import FaultPlan, Ntag21x
from terminal.clock import Clock
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits, cycle_at
from terminal.supervisor import ReaderNamePattern, Supervisor
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.test_records_support import ISSUER, ROGUE, STATION, TERMINAL, UID, bundle, chip_with, identity

pytestmark = pytest.mark.pcsc

PROGRAMMES = (
    BundleProgramme(1, "food", "package", 1, 182),
    BundleProgramme(2, "cash", "rupiah", 250_000, 182),
    BundleProgramme(3, "health", "visit", 4, 182),
)


def current_cycle() -> int:
    return cycle_at(time.time())


def issued_chip(uid: bytes = UID, **overrides: object) -> Ntag21x:
    now = int(time.time())
    card = issue_card_image(identity(uid, **overrides), ISSUER, STATION, cycle=current_cycle(), now=now - 60)
    return chip_with(card.image, uid)


class Counter:
    """A tap processor on a supervisor, with a place to read outcomes."""

    def __init__(self, tmp: Path, mode: CounterMode, programme: str, qty: int = 1,
                 trust_bundle: object | None = None) -> None:
        now = int(time.time())  # a bundle of today: a counter refuses to write far past its bundle's time
        b = dataclasses.replace(trust_bundle or bundle(), programmes=PROGRAMMES, policies={"pin.cash": 1},
                                issued_at=now - 60, expires_at=now + 30 * 86400)
        self.journal = JournalStore(tmp / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                                    clock=Clock(force_synced=True))
        self.request = [programme, qty, None]
        self.outcomes: list[TapOutcome] = []
        self.cond = threading.Condition()
        self.tap = TapProcessor(
            CounterConfig("T-6271-0001", mode, OfflineLimits(), caps={"": ACR122U}),
            self.journal, TERMINAL, trust=lambda: Trust(b, time.time()),  # type: ignore[arg-type]
            request=lambda: tuple(self.request),  # type: ignore[arg-type, return-value]
            publish=self._publish,
        )
        self.sup = Supervisor([ReaderNamePattern(re.compile("^Virtual PCD"))], self.tap, scan_s=0.3)
        self.thread = threading.Thread(target=self.sup.run)

    def _publish(self, o: TapOutcome) -> None:
        with self.cond:
            self.outcomes.append(o)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> TapOutcome:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.outcomes) >= n, timeout), self.outcomes
            return self.outcomes[n - 1]


@pytest.fixture
def counter_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Counter] = []

    def make(*args: object, **kw: object) -> Counter:
        c = Counter(tmp_path, *args, **kw)  # type: ignore[arg-type]
        c.thread.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.sup.stop()
        c.thread.join(timeout=15)
        c.journal.close()


def test_redemption_balance_and_nothing_left(counter_factory, present_card, tmp_path: Path) -> None:
    c = counter_factory(CounterMode.MARKET_REDEMPTION, "food")
    chip = issued_chip()
    with present_card(chip, slot=0):
        first = c.wait(1)
    assert first.status is TapStatus.ACCEPTED, first
    assert (first.amount, first.entitled, first.remaining) == (1, 1, 0)
    assert first.receipt is not None and re.fullmatch(r"[A-Z2-7]{4}-[A-Z2-7]{4}", first.receipt.code)
    with present_card(chip, slot=1):
        second = c.wait(2)
    assert second.status is TapStatus.DECLINED and second.reason is DeclineReason.NOTHING_LEFT
    c.request[:] = ["food", 1, None]
    c.tap.cfg.mode = CounterMode.BALANCE_CHECK
    with present_card(chip, slot=0):
        third = c.wait(3)
    assert third.status is TapStatus.BALANCE and third.remaining == 0
    kinds = [e.entry.kind for e in c.journal.entries()]
    assert kinds == [EntryKind.BOOT, EntryKind.PENDING, EntryKind.COMMIT, EntryKind.DECLINED, EntryKind.BALANCE]
    # The decline reason is a signed claim, and the slot's terminal id is the key's kid.
    assert c.journal.entries()[3].entry.decline_reason == "nothing_left"
    assert c.journal.entries()[2].entry.slot_seq_after == 1
    assert verify_journal_file(c.journal.path, cose_key(TERMINAL)).entries == 5


def test_denied_card_and_wrong_pin(counter_factory, present_card) -> None:
    denied = bundle(deny_cards=(identity().card_id,))
    c = counter_factory(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=denied)
    with present_card(issued_chip(), slot=0):
        out = c.wait(1)
    assert out.reason is DeclineReason.CARD_DENIED
    # The deny list is checked once the identity verified: the clerk sees whose card is blocked.
    assert out.household_ref == household_label(identity().household_ref)
    # A card whose identity does not verify names no household (it may be anybody's forgery).
    forged = issue_card_image(identity(), ROGUE, STATION, cycle=current_cycle(), now=int(time.time()) - 60)
    with present_card(chip_with(forged.image, UID), slot=0):
        out = c.wait(2)
    assert out.reason is DeclineReason.UNKNOWN_ISSUER and out.household_ref is None, out


def test_cash_needs_the_pin(counter_factory, present_card) -> None:
    c = counter_factory(CounterMode.CASH_PAYOUT, "cash", 100_000)
    chip = issued_chip()
    with present_card(chip, slot=0):
        assert c.wait(1).reason is DeclineReason.PIN_REQUIRED
    c.request[2] = "111111"
    with present_card(chip, slot=0):
        assert c.wait(2).reason is DeclineReason.PIN_WRONG
    c.request[2] = "246810"
    with present_card(chip, slot=0):
        ok = c.wait(3)
    assert ok.status is TapStatus.ACCEPTED and ok.remaining == 150_000


@pytest.mark.parametrize("tear_after_bytes", [0, 9, 60])
def test_card_pulled_mid_write_then_represented(counter_factory, present_card, tear_after_bytes: int) -> None:
    c = counter_factory(CounterMode.MARKET_REDEMPTION, "food")
    chip = issued_chip()
    with present_card(chip, slot=0, faults=FaultPlan(remove_after_write_bytes=tear_after_bytes)):
        first = c.wait(1)
    assert first.status in (TapStatus.UNCERTAIN, TapStatus.RETRY), first
    chip.reinsert()
    with present_card(chip, slot=0):
        second = c.wait(2)
    assert second.status in (TapStatus.RECOVERED, TapStatus.VOIDED, TapStatus.ACCEPTED), second
    with present_card(chip, slot=0):
        third = c.wait(3)
    handed_over = sum(o.amount for o in c.outcomes if o.status in (TapStatus.ACCEPTED, TapStatus.RECOVERED))
    # Never charged twice, never lost: exactly one package went out for the one entitlement.
    if third.status is TapStatus.DECLINED:
        assert third.reason is DeclineReason.NOTHING_LEFT and handed_over == 1
    else:
        assert third.status is TapStatus.ACCEPTED and handed_over == 1
    assert verify_journal_file(c.journal.path, cose_key(TERMINAL)).open_writes == ()
