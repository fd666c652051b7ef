"""A counter's clock set back or far ahead (docs/security.md §Caps, clocks and unsettled writes).

The counter keeps a never-lowered high-water mark of trusted time (the trust store's persisted
mark, the journal's newest wall time): a clock more than :data:`terminal.tap.CLOCK_BACK_TOLERANCE_S`
below it is ``counter_clock_wrong`` for card taps and the fallback desk alike, and bundle age and
expiry are counted from it, so ``date -s`` back neither revives an expired bundle nor resets a
per-cycle fallback limit. Red team round 2.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cardlib.records.claims import cycle_bounds
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock, Stamp
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits, cycle_at
from terminal.tap import CLOCK_BACK_TOLERANCE_S, CounterConfig, TapProcessor, clock_wrong
from terminal.trust import TrustStore
from tests.test_records_support import ISSUER, STATION, TERMINAL, bundle, identity
from tests.test_terminal_caps_and_declines import PROGRAMMES, Counter, chip, fresh_bundle
from tests.test_terminal_support import TrustKit

DAY = 86_400
PW = "kunci-sri-77"


class SetClock(Clock):
    """The counter's system clock, which root on the counter can set (``date -s``)."""

    def __init__(self, offset: float) -> None:
        super().__init__(force_synced=True)
        self.offset = offset

    def now(self) -> Stamp:
        s = super().now()
        return Stamp(wall=s.wall + self.offset, mono=s.mono, synced=s.synced)


def _cash_counter(tmp_path: Path, clock: list[float],
                  kit: TrustKit | None = None) -> tuple[TrustStore, JournalStore, TapProcessor]:
    kit = kit or TrustKit()
    _b, data = kit.bundle(1, issuers=(ISSUER,), terminals=(STATION, TERMINAL), programmes=PROGRAMMES,
                          issued_at=int(clock[0]) - 60)  # valid 30 days
    store = TrustStore(tmp_path / "bundle.cose", kit.root.public_key, clock=lambda: clock[0])
    assert store.install(data, None)
    journal = JournalStore(tmp_path / "j.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.CASH_PAYOUT, OfflineLimits(), caps={"": ACR122U}),
                       journal, TERMINAL, trust=lambda: store.current(),
                       request=lambda: ("cash", 50_000, None), clock=lambda: clock[0])
    return store, journal, tap


def _present(tap: TapProcessor, card: object) -> TapOutcome:
    return tap(EmulatorConnection(ReaderEmulator(card, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]


def test_setting_the_clock_back_does_not_revive_an_expired_bundle_for_cash(tmp_path: Path) -> None:
    t0 = time.time()
    clock = [t0]
    store, journal, tap = _cash_counter(tmp_path, clock)
    card = chip()
    try:
        clock[0] = t0 + 40 * DAY  # offline 40 days: the bundle (30 days) has expired
        assert store.current().expired
        # (counter_clock_wrong when t0 + 40 days is in the next cycle: clock_wrong's ahead rule)
        assert _present(tap, card).reason in (DeclineReason.BUNDLE_EXPIRED, DeclineReason.COUNTER_CLOCK_WRONG)
        clock[0] = t0 + 1 * DAY  # the clerk: date -s back to the day after the last sync
        trust = store.current()
        assert trust.expired and trust.age_days(clock[0]) > 39.9  # age and expiry from the mark, not the clock
        out = _present(tap, card)
        assert out.status is TapStatus.DECLINED
        assert out.reason in (DeclineReason.COUNTER_CLOCK_WRONG, DeclineReason.BUNDLE_EXPIRED), out
    finally:
        journal.close()


def test_the_mark_survives_a_restart_of_the_trust_store(tmp_path: Path) -> None:
    t0 = time.time()
    clock = [t0]
    kit = TrustKit()
    store, journal, _tap = _cash_counter(tmp_path, clock, kit)
    journal.close()
    clock[0] = t0 + 40 * DAY
    assert store.current().expired
    clock[0] = t0 + DAY  # set back, then the daemon restarts
    trust = TrustStore(store.path, kit.root.public_key, clock=lambda: clock[0]).current()
    assert trust.expired and trust.mark >= t0 + 40 * DAY - 120
    assert clock_wrong(trust.bundle, clock[0], 30.0, trust.mark)


def test_a_clock_a_few_minutes_behind_the_mark_is_tolerated(tmp_path: Path) -> None:
    b = fresh_bundle()
    now = time.time()
    assert not clock_wrong(b, now - CLOCK_BACK_TOLERANCE_S + 5, 30.0, now)  # type: ignore[arg-type]
    assert clock_wrong(b, now - CLOCK_BACK_TOLERANCE_S - 5, 30.0, now)  # type: ignore[arg-type]


def test_clock_set_back_a_cycle_does_not_serve_the_fallback_allowance_again(tmp_path: Path) -> None:
    policies = {"fallback.qr.food": 1, "fallback.manual.food": 1, "cap.per_card_cycle.package": 1}
    b = fresh_bundle(policies)
    clock = SetClock(0.0)
    journal = JournalStore(tmp_path / "j.sqlite", terminal_id="T-6271-0001", signer=TERMINAL, clock=clock)
    try:
        desk = FallbackDesk(journal, lambda: b, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                            {"sri": supervisor_hash(PW)}, clock=lambda: time.time() + clock.offset)
        card = identity().card_id.hex()
        assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.ACCEPTED
        assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.DECLINED  # limit 1 per cycle
        clock.offset = -200 * DAY  # the clerk: `date -s` half a year back, into the previous cycle
        again = desk.manual(card, "food", 1, "sri", PW)
        assert again.status is TapStatus.DECLINED and again.reason is DeclineReason.COUNTER_CLOCK_WRONG, again
        clock.offset = 0.0  # the clock put right: the desk serves again (and still counts the first)
        assert desk.manual(card, "food", 1, "sri", PW).reason is DeclineReason.FALLBACK_USED_UP
    finally:
        journal.close()


def test_card_tap_at_a_clock_set_back_behind_the_journal_is_declined(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    c = Counter(tmp_path / "c", CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle(),
                clock=time.time() - 2 * 3600)  # within a day of issued_at, but 2 h behind the journal
    try:
        out = c.present(chip())
        assert out.reason is DeclineReason.COUNTER_CLOCK_WRONG, out
    finally:
        c.journal.close()


def test_a_clock_ahead_past_the_bundle_writes_no_state_in_the_next_cycle(tmp_path: Path) -> None:
    # the next half-year boundary at least 4 days away (the journals' wall clocks are the real time)
    boundary = cycle_bounds(cycle_at(time.time() + 4 * DAY))[1].timestamp()
    honest_now = boundary - 3 * DAY
    issued = int(boundary - 4 * DAY)
    b = dataclasses.replace(bundle(), programmes=PROGRAMMES, policies={}, issued_at=issued,
                            expires_at=issued + 14 * DAY)
    assert clock_wrong(b, boundary + 20 * DAY, 30.0)  # past the bundle's time in force, in the next cycle
    assert not clock_wrong(b, boundary + 5 * DAY, 30.0)  # in force: an offline counter serves the new cycle
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    card = chip(at=int(honest_now - DAY), cycle=cycle_at(honest_now))
    honest = Counter(tmp_path / "a", CounterMode.MARKET_REDEMPTION, "food", trust_bundle=b, clock=honest_now)
    rogue = Counter(tmp_path / "b", CounterMode.MARKET_REDEMPTION, "food", trust_bundle=b,
                    clock=boundary + 20 * DAY)
    try:
        got = rogue.present(card)
        assert got.reason is DeclineReason.COUNTER_CLOCK_WRONG, got
        assert honest.present(card).status is TapStatus.ACCEPTED  # the household keeps its cycle
    finally:
        honest.journal.close()
        rogue.journal.close()


def test_a_clock_glitch_far_ahead_does_not_stop_the_counter_once_put_right(tmp_path: Path) -> None:
    """Readings past the bundle's time in force + stale age (already clock_wrong) raise no mark."""
    t0 = time.time()
    clock = [t0]
    store, journal, _tap = _cash_counter(tmp_path, clock)
    journal.close()
    clock[0] = t0 + 400 * DAY  # an RTC or NTP glitch, far past what the bundle allows
    store.current()
    clock[0] = t0 + DAY  # put right
    trust = store.current()
    assert not trust.expired and trust.mark < t0 + 2 * DAY
    assert not clock_wrong(trust.bundle, clock[0], 30.0, trust.mark)

    b = fresh_bundle({"fallback.manual.food": 1})
    glitch = SetClock(400 * DAY)
    j = JournalStore(tmp_path / "j2.sqlite", terminal_id="T-6271-0001", signer=TERMINAL, clock=glitch)
    try:  # the journal's BOOT entry is stamped 400 days ahead; then the clock is put right
        glitch.offset = 0.0
        desk = FallbackDesk(j, lambda: b, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                            {"sri": supervisor_hash(PW)})
        assert desk.manual(identity().card_id.hex(), "food", 1, "sri", PW).status is TapStatus.ACCEPTED
    finally:
        j.close()
