"""Red team round 3, a stranger's phone against a `secure` card: one UPDATE STATE at seq 2^32 - 1.

docs/secure-card.md §5.2 accepts that anybody can write unsigned bytes with a higher seq ("a nuisance,
not a fraud ... the district office re-issues the state"). But the seq is a uint32 and the card refuses
every seq not above the stored one: one UPDATE STATE with seq 0xFFFFFFFF (SELECT, then one APDU; cards
are issued with ``pin_required = False`` by default, so no PIN is needed) leaves nothing any counter or
office can ever write again. Every counter declines the card (``card_state_invalid``) for good: the
household needs a new (the expensive kind of) card, and a phone held near a queue does it to every
card in reach. The same works from a clerk's PC/SC client after the counter's own VERIFY on a
``pin_required`` card (the connection is shared and left powered, see test_redteam_r3_piggyback_pcsc.py).

The test asserts the DEFENCE (after the phone's write the card can still be given a valid state, or
the write is refused); it fails while the attack works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.secure import SecureCardSession, StateRollbackRefused
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from terminal.outcome import TapStatus
from tests.secure_tap_support import SecureSlot, issue_secure, processor
from tests.test_secure_tap import tap_over_pcsc


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


@pytest.mark.pcsc
def test_a_phone_cannot_exhaust_a_secure_cards_state_seq(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    p = processor(tmp_path, CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    genesis = card.state
    assert genesis is not None
    phone_refused = False
    with slot.present(card) as conn:  # a stranger's phone, a second in reach of the card
        session = SecureCardSession(conn)
        session.select()
        try:
            session.update_state(0xFFFFFFFF, b"\x00")
        except StateRollbackRefused:
            phone_refused = True
    if phone_refused:
        return
    recoverable = True
    with slot.present(card) as conn:  # the office (or any counter) tries to put a state back
        session = SecureCardSession(conn)
        session.select()
        try:
            session.update_state(0xFFFFFFFF, genesis)
        except StateRollbackRefused:
            recoverable = False
    out, _ = tap_over_pcsc(p, slot, card)
    p.journal.close()
    assert recoverable and out.status is TapStatus.ACCEPTED, (
        f"one APDU from a phone bricked the secure card: no state can be written again "
        f"(recoverable={recoverable}); the household's next tap: {out.status.value} "
        f"{out.reason.value if out.reason else ''}")
