"""Red team round 2, the clerk at the counter and the office station: the attacks as regression tests.

1. Supervisor passwords at the manual fallback desk cannot be guessed without limit: back-off
   and lock-out per supervisor id and per counter, counted from the signed journal (a restart
   forgets nothing) and declined ``supervisor_locked`` without checking (docs/fallback.md §Step 2).
2. An office PIN reset journals its intent (card, technician, approver, new epoch) durably before
   any chip write; a station that cannot journal refuses before touching the card (docs/fallback.md §Step 3).
3. A settlement row written straight into the counter's journal file is reported by
   ``huma journal verify`` (docs/reconciliation.md §Settling torn writes).
"""

from __future__ import annotations

import time
from pathlib import Path

from firmware_config.models import CounterMode
from terminal.clock import Clock
from terminal.fallback import SUPERVISOR_WINDOW_S, FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_records_support import TERMINAL, identity
from tests.test_terminal_caps_and_declines import fresh_bundle

PW = "kunci-sri-77"
SUPERVISORS = {"sri": supervisor_hash(PW), "budi": supervisor_hash("budi-pw-55")}


def _desk(path: Path, clock=time.time) -> tuple[JournalStore, FallbackDesk]:  # type: ignore[no-untyped-def]
    bundle = fresh_bundle({"fallback.manual.food": 5})
    journal = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    desk = FallbackDesk(journal, lambda: bundle, CounterMode.MARKET_REDEMPTION, SUPERVISORS,  # type: ignore[arg-type, return-value]
                        clock=clock)
    return journal, desk


def test_supervisor_password_guessing_is_backed_off_and_locked(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        reasons = [desk.manual(card, "food", 1, "sri", f"guess-{n:04d}").reason for n in range(30)]
        assert reasons[:3] == [DeclineReason.SUPERVISOR_REFUSED] * 3
        assert set(reasons[3:]) == {DeclineReason.SUPERVISOR_LOCKED}  # not checked: no scrypt, no oracle
        out = desk.manual(card, "food", 1, "sri", PW)  # the 31st guess is the right one
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.SUPERVISOR_LOCKED
        assert "next try in" in (out.detail or "")
        # another supervisor at the same counter is not held back by sri's failures
        assert desk.manual(card, "food", 1, "budi", "budi-pw-55").status is TapStatus.ACCEPTED
    finally:
        journal.close()


def test_the_lock_out_survives_a_daemon_restart_and_ages_out(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    card = identity().card_id.hex()
    start = time.time()
    clock = [start]
    journal, desk = _desk(path, lambda: clock[0])
    try:
        for n in range(5):  # the desk's clock jumps past each back-off (the journal dates them now): 5 checked
            clock[0] += 1000 if n else 0
            desk.manual(card, "food", 1, "sri", f"guess-{n}")
    finally:
        journal.close()
    journal, desk = _desk(path, lambda: clock[0])  # the daemon restarts
    try:
        clock[0] = start + 10  # all five are within the window of this moment
        held = desk.manual(card, "food", 1, "sri", PW)
        assert held.reason is DeclineReason.SUPERVISOR_LOCKED and "locked" in (held.detail or "")
        clock[0] = time.time() + SUPERVISOR_WINDOW_S + 5000  # every failure aged out of the window
        assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.ACCEPTED
    finally:
        journal.close()


def test_the_counter_locks_manual_entry_when_guesses_spread_over_ids(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        for n in range(15):  # ids nobody has: each fails once, the counter counts them all
            assert desk.manual(card, "food", 1, f"x{n}", "guess").reason is DeclineReason.SUPERVISOR_REFUSED
        out = desk.manual(card, "food", 1, "budi", "budi-pw-55")
        assert out.reason is DeclineReason.SUPERVISOR_LOCKED and "at this counter" in (out.detail or "")
    finally:
        journal.close()


def test_a_right_password_ends_the_run_of_wrong_ones(tmp_path: Path) -> None:
    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        for _ in range(2):
            assert desk.manual(card, "food", 1, "sri", "typo").reason is DeclineReason.SUPERVISOR_REFUSED
            assert desk.manual(card, "food", 1, "sri", PW).status is TapStatus.ACCEPTED
        assert desk.manual(card, "food", 1, "sri", "typo").reason is DeclineReason.SUPERVISOR_REFUSED
    finally:
        journal.close()
