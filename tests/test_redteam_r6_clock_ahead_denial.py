"""Red team r6, a dishonest clerk with the counter's clock: put honest households on every counter's deny list.

``counter_backwards`` (server/reconcile/card_checks.py) orders one chip's taps by the counters' *wall
times* and calls any drop of the NTAG counter "a second chip"; it is one of the ``PROOF_KINDS`` that deny a
card in the next bundle with no human decision (docs/security.md "Deny lists without waiting for a human").
A counter may run ahead of true time (only a clock *behind* its time mark stops it; ahead is allowed up
to the bundle's time in force plus its stale age, docs/security.md §Caps, clocks). So a clerk who sets
his counter's clock two hours ahead (BIOS, ``date -s``) dates every tap there two hours late: a household
that taps at his counter (a balance check is enough) and then, within two hours, at an honest counter
shows its chip counter "falling" (honest tap c+1 dated earlier, his tap c dated later). Reconciliation
records ``counter_backwards`` and the household's card id *and chip UID* go on the next bundle's deny
lists: the genuine card is refused at every counter until an auditor dismisses the finding, for every
household he served. docs/security.md accepted false findings from wrong clocks as "the price of not
waiting"; here they are manufactured on purpose, by anyone at the counter, without a key.

Real stack: Ed25519-signed journals (:class:`simulator.journals.SimTerminal`, its clock set ahead as the
clerk would), the real signed upload, a real reconciliation run and deny-list candidates (SQLite).

The test asserts the DEFENCE: no provisional denial of a card whose only evidence is a drop the card's own
chain does not order (it failed on the old code: 3 of 3 households denied, both variants). Fixed:
``counter_backwards`` is still reported, but denies without an auditor only when the later tap read a state
at least as new as the one the earlier tap wrote (``detail["chain_ordered"]``); the last test checks a clone
that continues the chain is still denied without a human.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from server.extensions import db
from server.reconcile.denylist import deny_list_candidates
from server.reconcile.models import FindingKind
from simulator.journals import District
from tests.reconcile_support import audit_db, findings, install, run, upload_all  # noqa: F401 - audit_db: fixture

pytestmark = [pytest.mark.usefixtures("audit_db"), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

HOUR_MS = 3_600_000


@pytest.mark.parametrize("clerk_tap", ["balance", "redeem"])
def test_a_counter_clock_set_ahead_does_not_deny_the_households_it_served(app: Any, world: Any,
                                                                          clerk_tap: str) -> None:
    now_ms = int(time.time() * 1000)
    start = now_ms - 6 * HOUR_MS  # a morning's taps, uploaded at its end
    d = District.new(2, 3, seed=11, regions=["62.71"])
    honest, clerk = d.terminals
    for t in d.terminals:
        t.boot(start)
    clerk.step_clock(2 * HOUR_MS)  # the clerk's BIOS clock: two hours ahead, no CLOCK_SET entry
    victims = d.cards
    for n, card in enumerate(victims):
        at = start + HOUR_MS + n * 60_000
        if clerk_tap == "balance":
            clerk.balance(card, at)  # the household checks its balance at the clerk's counter ...
        else:
            clerk.redeem(card, at, "food", 1)
        honest.redeem(card, at + 30 * 60_000, "cash", 1)  # ... and is paid at an honest counter half an hour later
    install(app, world, d)
    upload_all(world, d)
    run(app)

    dropped = {f.card_id for f in findings(app, FindingKind.COUNTER_BACKWARDS)}
    with app.app_context():
        denied = {c.card_id for c in deny_list_candidates(db.session) if c.provisional}
    assert not denied, (f"{len(denied)} of {len(victims)} honest households denied at every counter by one clock "
                        f"set ahead (counter_backwards on {sorted(dropped)})")


def test_a_clone_that_continues_the_chain_is_still_denied_without_a_human(app: Any, world: Any) -> None:
    """A copy taken after the genuine card's last write, paid at another counter: its counter falls along the chain."""
    now_ms = int(time.time() * 1000)
    start = now_ms - 6 * HOUR_MS
    d = District.new(2, 1, seed=12, regions=["62.71"])
    home, far = d.terminals
    for t in d.terminals:
        t.boot(start)
    [card] = d.cards
    for _ in range(10):
        card.session()  # the genuine chip has been read before
    home.redeem(card, start + HOUR_MS, "food", 1)
    clone = card.clone(counter=3)  # dumped now, after that write
    far.redeem(clone, start + 2 * HOUR_MS, "cash", 1)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    assert [f.card_id for f in findings(app, FindingKind.COUNTER_BACKWARDS)] == [card.card_id]
    assert not findings(app, FindingKind.CARD_FORK)  # nothing else proves it yet
    with app.app_context():
        denied = [(c.card_id, c.provisional) for c in deny_list_candidates(db.session)]
    assert denied == [(card.card_id, True)]
