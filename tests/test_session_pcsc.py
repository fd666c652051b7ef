"""Card session through the real stack: pcscd + vpcd + virtual NTAG215, pyscard, ACR122U pass-through.

The exhaustive tear sweep runs in-process (tests/test_session.py, ~8 s); here a
sampled subset of the same tears goes through pcscd, where each tap costs
about half a second of PC/SC presence polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from cardlib.records.session import CardSession, RecoveryDecision, WriteOutcome
from simulator.chip import FaultPlan, Ntag21x, TornFill
from cardlib.type2.channel import Acr122uChannel
from cardlib.type2.tag import Type2Tag
from tests.test_records_support import (
    CASH, CYCLE, NOW, SAMPLED_TEARS, TERMINAL, bundle, chip_with, issue,
)

pytestmark = pytest.mark.pcsc
TRUST = bundle()


@contextmanager
def tap(present_card: Callable, reader_name: Callable[[int], str], chip: Ntag21x,
        faults: FaultPlan | None = None) -> Iterator[tuple[CardSession, Acr122uChannel]]:
    from cardlib.transport.pcsc import connect

    if chip.removed:
        chip.reinsert(None)
    with present_card(chip, kind="acr122u") as _card:
        with connect(reader_name(0)) as conn:
            channel = Acr122uChannel(conn)
            session = CardSession(Type2Tag(channel, atr=conn.atr), TRUST)
            if faults is not None:
                chip.arm(faults)
            try:
                yield session, channel
            finally:
                chip.arm(None)


def test_verify_and_redeem_command_counts_through_pcscd(present_card, reader_name) -> None:
    chip = chip_with(issue().image)
    with tap(present_card, reader_name, chip) as (session, channel):
        state = session.read_state(NOW)
        verify_commands = channel.commands
        pending = session.prepare_redemption(state, signer=TERMINAL, cycle=CYCLE, amounts={CASH: 100_000},
                                             terminal_id=17, terminal_seq=1, now=NOW)
        result = session.commit(pending)
        redeem_commands = channel.commands
    assert result.outcome is WriteOutcome.COMMITTED
    assert verify_commands <= 6
    assert redeem_commands <= 41  # first write into the empty slot B: all 36 pages of a slot-v2 state (docs/card-format.md §7)
    with tap(present_card, reader_name, chip) as (session, _):
        after = session.read_state(NOW)
    assert after.current.claims.seq == 1 and after.current.claims.remaining[CASH] == 150_000




@pytest.mark.parametrize("after, tear, fill", SAMPLED_TEARS)
def test_torn_redemption_through_pcscd_recovers_exactly_once(
    present_card, reader_name, after: int, tear: int | None, fill: TornFill
) -> None:
    chip = chip_with(issue().image)
    amounts = {CASH: 50_000}
    with tap(present_card, reader_name, chip) as (session, _):
        base = session.read_state(NOW)
        pending = session.prepare_redemption(base, signer=TERMINAL, cycle=CYCLE, amounts=amounts,
                                             terminal_id=17, terminal_seq=1, now=NOW)
        chip.arm(FaultPlan(remove_after_commands=after, tear_during_remove=tear, torn_fill=fill, seed=after))
        result = session.commit(pending)
    assert result.outcome is not WriteOutcome.COMMITTED
    with tap(present_card, reader_name, chip) as (session, _):
        state = session.read_state(NOW)
        landed = state.current.cose.message == pending.cose
        assert landed or state.current.cose.message == base.current.cose.message
        if result.outcome is WriteOutcome.NOT_WRITTEN:
            assert not landed
        recovery = session.recover(pending, NOW)
        assert recovery.decision is (RecoveryDecision.FINISHED if landed else RecoveryDecision.VOIDED)
        if recovery.decision is RecoveryDecision.VOIDED:
            again = session.prepare_redemption(session.read_state(NOW), signer=TERMINAL, cycle=CYCLE,
                                               amounts=amounts, terminal_id=17, terminal_seq=2, now=NOW)
            assert session.commit(again).outcome is WriteOutcome.COMMITTED
    with tap(present_card, reader_name, chip) as (session, _):
        final = session.read_state(NOW)
    assert final.current.claims.seq == 1
    assert final.current.claims.remaining[CASH] == 200_000
