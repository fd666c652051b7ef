"""Red team round 3, a stranger's phone against a `secure` card's PIN: three VERIFYs block it.

The NTAG profile keeps AUTHLIM = 0 and the failed-PIN count behind the card password precisely so a
stranger cannot lock someone else's card (docs/security.md; the design's "a retry limit lets anyone
brick a stranger's card"). The secure card's PIN (docs/secure-card.md §5.3, ``OwnerPIN(3, 8)``) takes
VERIFY from anybody after a plain SELECT: no terminal authentication, no secure channel. A phone held
near a wallet for a second sends SELECT and three wrong VERIFYs; the holder's PIN is then blocked
and every PIN programme (cash) is declined ``pin_blocked`` at every counter until the district office
runs ``huma provision pin-reset --card-profile secure``. Nothing in the journal says who did it.

The test asserts the DEFENCE (after the phone the holder's right PIN still pays); it fails while the
attack works. Fix: accept VERIFY only inside a session opened by a terminal the card can authenticate
(e.g. bound to INTERNAL AUTHENTICATE's terminal nonce with a terminal signature the card checks against
a key installed at personalisation), or count tries per authenticated session only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from cardlib.errors import CardlibError
from cardlib.secure import SecureCardSession
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from terminal.outcome import TapStatus
from tests.secure_tap_support import PIN, SecureSlot, issue_secure, processor
from tests.test_secure_tap import tap_over_pcsc


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


@pytest.mark.pcsc
def test_a_phone_cannot_block_a_strangers_secure_card_pin(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    with slot.present(card) as conn:  # the phone: SELECT and three wrong PINs, nothing else
        session = SecureCardSession(conn)
        session.select()
        for guess in ("000000", "111111", "222222"):
            with contextlib.suppress(CardlibError):  # wrong or blocked: the phone does not care
                session.verify_pin(guess)
    p = processor(tmp_path, CounterMode.CASH_PAYOUT, ["cash", 250_000, PIN])
    out, _ = tap_over_pcsc(p, slot, card)
    p.journal.close()
    assert out.status is TapStatus.ACCEPTED, (
        f"three VERIFYs from a phone blocked the holder's PIN: the right PIN at a cash counter is "
        f"{out.status.value} {out.reason.value if out.reason else ''}")
