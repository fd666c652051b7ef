"""Red team round 4, a thief with an antenna near a counter against `secure` cards: the PIN on the air.

A `secure` card's PIN is checked on the card (docs/secure-card.md §5.3), and the counter sends it inside
EXTERNAL AUTHENTICATE (§5.5, P2 ``80``) right after its 32-byte proof, as ASCII digits. The reader-to-card
direction of ISO/IEC 14443 can be received metres away with a passive antenna; whoever records one
cash tap learns the household's PIN (and the card id, in the same APDU's proof input and in GET DATA
identity). Stealing that card afterwards then defeats the PIN the programme relies on (``pin.cash`` = 1).
An NTAG card's PIN never goes to the card (checked at the counter against the PIN record), so the
`secure` card, the profile meant to be the strong one, was the one leaking it.

Modelled below the real stack: the sniffer is a card object on the vpcd slot that records every
command APDU and forwards it to the genuine virtual card; the counter runs its real tap through pcscd.

The test asserts the DEFENCE: the PIN's digits appear in no command APDU of an accepted PIN tap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard
from terminal.outcome import TapStatus
from tests.secure_tap_support import PIN, SecureSlot, issue_secure, processor
from tests.test_secure_tap import tap_over_pcsc


class Sniffer(SecureCard):
    """An antenna in the field: records every command APDU and passes it to ``genuine`` unchanged."""

    def __init__(self, genuine: SecureCard) -> None:
        super().__init__()
        self.genuine = genuine
        self.heard: list[bytes] = []

    def field_on(self) -> None:
        self.genuine.field_on()

    def field_off(self) -> None:
        self.genuine.field_off()

    def transmit(self, apdu: bytes) -> bytes:
        self.heard.append(bytes(apdu))
        return self.genuine.transmit(apdu)


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


@pytest.mark.pcsc
def test_a_cash_tap_does_not_put_the_pin_on_the_air(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    counter = processor(tmp_path, CounterMode.CASH_PAYOUT, ["cash", 100_000, PIN])
    antenna = Sniffer(card)
    out, _ = tap_over_pcsc(counter, slot, antenna)
    counter.journal.close()
    assert out.status is TapStatus.ACCEPTED, out  # the PIN was checked (pin.cash = 1) and right
    leaked = [a.hex() for a in antenna.heard if PIN.encode() in a]
    assert not leaked, f"the PIN {PIN} travels in clear in {len(leaked)} command APDU(s): {leaked}"
