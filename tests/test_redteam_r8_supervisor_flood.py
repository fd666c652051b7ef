"""Red team r8, a dishonest clerk at the manual fallback desk: supervisor lock-out washed out by journal entries.

The desk counts wrong supervisor passwords from the journal's signed entries of the last 30 minutes
(docs/fallback.md §Step 2; red team round 2: "neither a daemon restart nor a clock moved either way forgets or
revives anything"). It reads at most ``SUPERVISOR_SCAN_ENTRIES`` (5,000) entries back, and stops there as if it
had reached the window's end. The clerk at the counter needs nothing but the screen: a scan of any text that is
not a household QR is journalled (``DECLINED not_a_household_qr``, one fsync, no card, no supervisor). 5,000 of
them between guesses and the desk sees no failure at all: the per-id back-off (after 3) and lock (after 5) and the
counter's lock (15 over all ids) are gone, and he guesses a supervisor's password at the speed of the flood
(seconds per 5,000 entries) instead of 5 per half hour.

The test asserts the DEFENCE: after 3 wrong guesses and the flood, the next guess is still declined
``supervisor_locked`` (not checked). It failed on the code before this round (``supervisor_refused``: checked).
An honest counter never writes 5,000 entries in 30 minutes (a tap takes seconds); a desk that cannot read the
whole window back is held, as the attack's journal shows.
"""

from __future__ import annotations

from pathlib import Path

from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_records_support import identity
from tests.test_redteam_round2_fixes import PW, _desk


def test_a_flood_of_junk_scans_does_not_wash_out_the_supervisor_lock(tmp_path: Path) -> None:
    from terminal import fallback

    journal, desk = _desk(tmp_path / "j.sqlite")
    card = identity().card_id.hex()
    try:
        assert [desk.manual(card, "food", 1, "sri", f"guess-{n}").reason for n in range(4)] == [
            DeclineReason.SUPERVISOR_REFUSED] * 3 + [DeclineReason.SUPERVISOR_LOCKED]
        for _ in range(fallback.SUPERVISOR_SCAN_ENTRIES):  # the clerk scans junk at the QR desk
            junk = desk.qr("not a household QR", "food", 1, "clerk-ani")
            assert junk.reason is DeclineReason.NOT_A_HOUSEHOLD_QR
        guess = desk.manual(card, "food", 1, "sri", PW)  # the right password: would it even be checked?
        assert guess.status is TapStatus.DECLINED and guess.reason is DeclineReason.SUPERVISOR_LOCKED, guess
    finally:
        journal.close()
