"""Red team round 4, the holder against their own `secure` card: drop the counter's UPDATE STATE.

The secure card is meant to make "undo a redemption" impossible: it keeps its own state and takes
only stored seq + 1 from a terminal that proved the card-access key (docs/secure-card.md §5.2, §5.5).
But the counter learnt that its write landed from GET DATA state, which the card does not sign. A
holder with something in the RF field between reader and card (two phones relaying, a Proxmark or a
ChameleonUltra in relay mode: the card's UID is not bound, docs/secure-card.md §6.4) forwards every
APDU but UPDATE STATE, answers that one ``90 00`` itself, and answers the read-back with the state
the counter just sent. The counter journals COMMIT and hands the package over; the card still says
nothing was taken, so the next counter serves it again. Only the counter that wrote it (card_forked)
and, after the upload, reconciliation (card_fork) see it.

Modelled below the real stack: the relay is a card object on the vpcd slot whose transmit forwards
to the genuine virtual card; the counter runs its real tap through pcscd.

The test asserts the DEFENCE: the household entitled to 1 package gets at most 1 over two
counters, and the counter never journals COMMIT for a state the card does not hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard
from terminal.outcome import TapStatus
from tests.secure_tap_support import SecureSlot, issue_secure, processor
from tests.test_secure_tap import tap_over_pcsc


class DroppingRelay(SecureCard):
    """The holder's relay: forwards every APDU to ``genuine`` but swallows UPDATE STATE and fakes its read-back."""

    def __init__(self, genuine: SecureCard) -> None:
        super().__init__()
        self.genuine = genuine
        self.dropped: tuple[int, bytes] | None = None

    def field_on(self) -> None:
        self.genuine.field_on()

    def field_off(self) -> None:
        self.genuine.field_off()

    def transmit(self, apdu: bytes) -> bytes:
        apdu = bytes(apdu)
        if apdu[:4] == bytes.fromhex("80DC0000"):  # UPDATE STATE: keep it from the card, say it worked
            lc = apdu[4]
            data = apdu[5:5 + lc]
            self.dropped = (int.from_bytes(data[:4], "big"), data[4:])
            return b"\x90\x00"
        if apdu[:4] == bytes.fromhex("80CA0101") and self.dropped is not None:  # the read-back: what it wrote
            real = self.genuine.transmit(apdu)
            seq, state = self.dropped
            return seq.to_bytes(4, "big") + real[4:8] + state + b"\x90\x00"
        return self.genuine.transmit(apdu)


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


@pytest.mark.pcsc
def test_a_relay_dropping_update_state_does_not_undo_a_redemption(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    genesis_seq = card.seq
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    counter_a = processor(tmp_path / "a", CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    counter_b = processor(tmp_path / "b", CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    relay = DroppingRelay(card)

    first, _ = tap_over_pcsc(counter_a, slot, relay)  # the holder's relay in the field at counter A
    assert relay.dropped is not None, "the counter never sent UPDATE STATE"
    kinds_a = [s.entry.kind for s in counter_a.journal.entries()]
    second, _ = tap_over_pcsc(counter_b, slot, card)  # the bare card at counter B
    counter_a.journal.close()
    counter_b.journal.close()

    handed = [o for o in (first, second) if o.status is TapStatus.ACCEPTED]
    assert card.seq == genesis_seq + (1 if second.status is TapStatus.ACCEPTED else 0)
    assert EntryKind.COMMIT not in kinds_a, (
        f"counter A journalled COMMIT for a write the card never got (card still at seq {genesis_seq})")
    assert len(handed) <= 1, (
        f"1 package entitled, {len(handed)} handed out: A {first.status.value}, B {second.status.value}")
