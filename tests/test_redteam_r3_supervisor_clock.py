"""Red team round 3, dishonest clerk with the counter's clock: the supervisor lock-out is counted in wall time.

Round 2 bounded supervisor-password guessing at the manual desk: 3 wrong passwords for an id, then
back-off; 5 lock it; 15 over all ids lock the desk — all counted from journal entries whose *wall
time* lies within 30 minutes of the counter's clock. The clock may not go back (time mark), but it
may go forward (up to the bundle's time in force plus its stale age). A clerk who moves the RTC
forward by 31 minutes (BIOS, a reboot) gets a fresh set of guesses each time; with a 30-day bundle
that is ~1,400 jumps × 15 guesses, and the clock is put right by the next sync (the server's signed
time lowers the mark). Each guess is a journalled DECLINED, so this is noisy, but the desk itself does
not stop it.

The test asserts the DEFENCE (no more than the round-2 budget of checked passwords however the wall
clock moves within a few real seconds); it fails while the attack works.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import COUNTER_LOCK_AFTER, SUPERVISOR_WINDOW_S, FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.policy import DeclineReason
from tests.test_records_support import TERMINAL, identity
from tests.test_terminal_caps_and_declines import fresh_bundle


def test_moving_the_clock_forward_does_not_buy_more_supervisor_guesses(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])  # the counter's system clock (RTC)
    bundle = fresh_bundle({"fallback.manual.food": 5})
    journal = JournalStore(tmp_path / "j.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    desk = FallbackDesk(journal, lambda: bundle, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                        {"sri": supervisor_hash("kunci-sri-77")}, clock=lambda: time.time())
    card = identity().card_id.hex()
    checked = 0
    try:
        for jump in range(6):
            offset[0] = jump * (SUPERVISOR_WINDOW_S + 60)
            for n in range(5):
                out = desk.manual(card, "food", 1, "sri", f"guess-{jump}-{n}")
                checked += out.reason is DeclineReason.SUPERVISOR_REFUSED
    finally:
        journal.close()
    assert checked <= COUNTER_LOCK_AFTER, (
        f"{checked} supervisor passwords checked within seconds of real time by moving the clock forward "
        f"{SUPERVISOR_WINDOW_S // 60 + 1} min at a time")
