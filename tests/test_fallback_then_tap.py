"""A household served by QR fallback, then its card tapped at the same counter (docs/fallback.md).

The fallback writes no card, so the card still shows the units the QR already gave. The counter
knows them from its own journal (FALLBACK entries of this card this cycle): the card tap declines
``already_served_fallback`` (not "offline limit, retry after sync") and shows what is really left.

In-process (no pcscd): the daemon's real :class:`terminal.tap.TapProcessor` and
:class:`terminal.fallback.FallbackDesk` on one real journal, an issued NTAG215 on the reader emulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, decline_message
from terminal.screen.i18n import translations
from tests.fallback_support import card_and_qr, counter_with_desk


def test_card_tap_after_a_qr_payout_is_declined_as_already_served(tmp_path: Path) -> None:
    # The clerk's case: 1 package a cycle, the issuer's offline cap 1, the counter online (all uploaded).
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    card, qr = card_and_qr(packages=1, issuer_cap=1)
    try:
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
        c.upload_confirmed()
        assert c.journal.unsent_count() == 0
        out = c.present(card)
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.ALREADY_SERVED_FALLBACK, out
        assert (out.entitled, out.remaining) == (1, 0)  # not "1 left": the QR gave it
        assert c.last_declined()[1] == "already_served_fallback"  # the signed DECLINED entry says why
    finally:
        c.journal.close()


def test_without_any_cap_a_card_tap_cannot_take_again_what_the_qr_gave(tmp_path: Path) -> None:
    # The attack: caps roomy, so only the entitlement stands between the household and a second payout.
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    card, qr = card_and_qr(packages=1, issuer_cap=10)
    try:
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
        out = c.present(card)
        assert out.reason is DeclineReason.ALREADY_SERVED_FALLBACK, out
        assert out.amount == 0 and out.remaining == 0
    finally:
        c.journal.close()


def test_what_the_qr_left_is_still_served_by_the_card(tmp_path: Path) -> None:
    c, desk = counter_with_desk(tmp_path, {"fallback.qr.food": 1})
    card, qr = card_and_qr(packages=3, issuer_cap=10)
    try:
        assert desk.qr(qr, "food", 1, "clerk-ani").status is TapStatus.ACCEPTED
        three = c.present(card, qty=3)  # the card alone says 3 left; 1 went by QR
        assert (three.reason, three.entitled, three.remaining) == (DeclineReason.ALREADY_SERVED_FALLBACK, 3, 2)
        two = c.present(card, qty=2)
        assert (two.status, two.amount, two.remaining) == (TapStatus.ACCEPTED, 2, 0), two
        assert two.receipt is not None and two.receipt.remaining == 0
        again = c.present(card)  # the card says 1 left: the QR gave it
        assert (again.reason, again.remaining) == (DeclineReason.ALREADY_SERVED_FALLBACK, 0), again
    finally:
        c.journal.close()


@pytest.mark.parametrize(("lang", "start"), [("id", "Rumah tangga ini sudah dilayani"),
                                             ("en", "This household was already served")])
def test_the_reason_reads_plainly_in_both_languages(lang: str, start: str) -> None:
    text = translations(lang).gettext(decline_message(DeclineReason.ALREADY_SERVED_FALLBACK))
    assert text.startswith(start), text
