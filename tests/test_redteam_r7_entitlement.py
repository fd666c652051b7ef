"""Red team round 7: the counter's min(card, bundle) entitlement (terminal.policy.card_facts) must not harm a household.

c6dd094 made every counter take the smaller of the card's signed ``per_cycle`` and the bundle's programme
figure. Attacks tried on the real TapProcessor (a simulated NTAG215, the counter's own journal): a bundle
that lowers the figure mid-cycle and raises it again must not make the household lose what the lowering
only held back (the card's remaining amounts are written in the card's own terms, so what was spent is
measured against the card's figure and nothing of the ceiling is ever written); a bundle figure above the
card's never pays more than the card's; a programme the card holds but the bundle no longer lists is not
served. Defences hold: these are guards.
"""

from __future__ import annotations

import dataclasses

from firmware_config.models import CounterMode
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_terminal_caps_and_declines import (
    PROGRAMMES,
    chip,
    counter,  # noqa: F401 - the fixture
    fresh_bundle,
)


def _food(per_cycle: int) -> object:
    """A bundle of today whose food programme gives ``per_cycle`` packages (the card's own figure is 10)."""
    programmes = tuple(dataclasses.replace(p, per_cycle=per_cycle) if p.name == "food" else p for p in PROGRAMMES)
    return dataclasses.replace(fresh_bundle(), programmes=programmes)  # type: ignore[type-var]


def test_a_figure_lowered_then_raised_mid_cycle_gives_back_what_it_held(counter) -> None:  # noqa: F811
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=_food(10))
    card = chip()  # food: 10 packages a cycle on the card
    first = c.present(card, qty=3)
    assert (first.status, first.remaining) == (TapStatus.ACCEPTED, 7), first
    c.bundle = _food(5)  # the province lowers food to 5 a cycle: 2 more this cycle
    low = c.present(card, qty=2)
    assert (low.status, low.entitled, low.remaining) == (TapStatus.ACCEPTED, 5, 0), low
    none = c.present(card, qty=1)
    assert none.status is TapStatus.DECLINED and none.reason is DeclineReason.NOTHING_LEFT, none
    c.bundle = _food(10)  # raised back within the cycle: the household gets the rest of its 10
    back = c.present(card, qty=5)
    assert (back.status, back.entitled, back.remaining) == (TapStatus.ACCEPTED, 10, 0), back
    assert c.present(card, qty=1).reason is DeclineReason.NOTHING_LEFT


def test_a_bundle_figure_above_the_cards_pays_the_cards(counter) -> None:  # noqa: F811
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=_food(50))
    out = c.present(chip(), qty=11)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.NOT_ENOUGH_LEFT, out
    assert c.present(chip(), qty=10).status is TapStatus.ACCEPTED


def test_a_programme_the_bundle_no_longer_lists_is_not_served(counter) -> None:  # noqa: F811
    only_cash = tuple(p for p in PROGRAMMES if p.name != "food")
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=dataclasses.replace(
        fresh_bundle(), programmes=only_cash))  # type: ignore[type-var]
    out = c.present(chip(), qty=1)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.PROGRAMME_NOT_AT_COUNTER, out
