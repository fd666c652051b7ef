"""Red team round 4, a thief with a phone against a `secure` card the station never locked.

Personalisation ends with LOCK (docs/secure-card.md §6.3: LCS 03 -> 07). A card pulled from the station
between its genesis UPDATE STATE and LOCK (or handed out after the station reported the error) holds a
valid identity, key and state, so counters served it like any other: nothing at the counter looked at
the life cycle byte the FCI reports. In LCS 03 the card still takes personalisation commands from
anybody: PUT DATA PIN (a new PIN with fresh tries), PUT DATA options, GENERATE KEY. So whoever holds
such a card (a thief) sets a PIN of their choice with two APDUs and draws the household's cash at a
PIN counter; a stranger's phone can also replace the key (the card is then dead).

The test asserts the DEFENCE: a counter does not pay a card that is not operational (LCS 07), even
when a relay rewrites the (unsigned) life cycle byte of the FCI: the card signs nothing before LOCK
(docs/secure-card.md §5.1), so no counter gets its INTERNAL AUTHENTICATE.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cardlib.provision.secure import personalise_secure, pin_reset_point
from cardlib.secure import LifeCycle, SecureCardSession
from cardlib.secure.protocol import CLA_PROPRIETARY, Ins, PutObject
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard, SecureCardConnection
from terminal.outcome import TapStatus
from tests.secure_tap_support import HOUSEHOLD, PIN, PIN_RESET_KEY, SecureSlot, processor, station
from tests.test_secure_tap import tap_over_pcsc

THIEFS_PIN = "0000"


class PulledBeforeLock(SecureCardConnection):
    """The station's link to the card; the card leaves the field when LOCK is sent."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if bytes(apdu[:2]) == bytes((CLA_PROPRIETARY, Ins.LOCK)):
            self.card.removed = True
        return super().send_and_receive(apdu)


class FciLiar(SecureCard):
    """The thief's relay: forwards everything to ``genuine`` but reports life cycle 07 in the FCI."""

    def __init__(self, genuine: SecureCard) -> None:
        super().__init__()
        self.genuine = genuine

    def field_on(self) -> None:
        self.genuine.field_on()

    def field_off(self) -> None:
        self.genuine.field_off()

    def transmit(self, apdu: bytes) -> bytes:
        return self.genuine.transmit(apdu).replace(b"\xc1\x01\x03", b"\xc1\x01\x07", 1)


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


@pytest.mark.pcsc
@pytest.mark.parametrize("relay", [False, True], ids=["bare", "fci-rewritten"])
def test_a_card_left_unlocked_is_not_paid_on_a_pin_its_holder_chose(slot: SecureSlot, tmp_path: Path,
                                                                     relay: bool) -> None:
    card = SecureCard()
    ctx = station()
    with pytest.raises(Exception):  # noqa: B017 - whatever the station reports, the card left before LOCK
        personalise_secure(SecureCardSession(PulledBeforeLock(card)), ctx, HOUSEHOLD, bytes.fromhex("62710000000a0002"),
                           pin=PIN, pin_reset_key=pin_reset_point(ctx, PIN_RESET_KEY.public_key()),
                           pin_required=False, now=int(time.time()) - 60)
    card.reinsert()
    assert card.state is not None

    with slot.present(card) as conn:  # the thief's phone: two APDUs, no key of any kind
        assert conn is not None
        phone = SecureCardSession(conn)
        info = phone.select()
        assert info.life_cycle is LifeCycle.INITIALISATION
        phone.put_data(PutObject.PIN, THIEFS_PIN.encode())  # fresh tries too

    counter = processor(tmp_path, CounterMode.CASH_PAYOUT, ["cash", 250_000, THIEFS_PIN])
    out, _ = tap_over_pcsc(counter, slot, FciLiar(card) if relay else card)
    counter.journal.close()
    assert out.status is not TapStatus.ACCEPTED, (
        f"an unlocked card whose PIN a thief set to {THIEFS_PIN} was paid {out.amount} at a PIN counter")
    assert out.status is TapStatus.DECLINED and out.reason is not None
