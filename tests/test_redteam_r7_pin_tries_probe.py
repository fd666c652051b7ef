"""Red team round 7, a thief holding a format-2 NTAG card: does the screen's "N tries left" (72291ac) let him probe?

The count is on the card's private page (PWD_AUTH): the thief cannot read it himself. He taps the stolen
card at a cash counter without a PIN, with a PIN of the wrong length, with letters, and at a balance check,
hoping the screen tells him how many guesses he has without spending one, or that a probe costs nothing
and still checks something. Defence holds: none of these shows a count, none spends a try (the next wrong
PIN still says limit - 1), and the count is shown only after a try was spent on the card. Guards.
"""

from __future__ import annotations

from pathlib import Path

from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.provision_support import Station
from tests.test_pin_tries_left import WRONG_PIN, _ntag, station  # noqa: F401 - station: the fixture


def test_probes_that_spend_no_try_show_no_count(tmp_path: Path, station: Station) -> None:  # noqa: F811
    counter, chip = _ntag(tmp_path, station, 3)
    try:
        for probe in (None, "12345", "1234567", "abcdef", ""):
            out = counter.present(chip, probe)
            assert out.status is TapStatus.DECLINED and out.pin_tries_left is None, (probe, out)
        first = counter.present(chip, WRONG_PIN)  # the first real guess: nothing was spent before it
        assert (first.reason, first.pin_tries_left) == (DeclineReason.PIN_WRONG, 2), first
        again = counter.present(chip, None)  # after a spent try: still no count without a guess
        assert again.pin_tries_left is None and again.reason is DeclineReason.PIN_REQUIRED, again
    finally:
        counter.journal.close()
