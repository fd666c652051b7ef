"""Card session: redemption, outcomes, recovery, and the exhaustive in-process tear sweep.

The sweep tears a redemption's commit at every command index and at every byte
boundary of its page writes, with both torn-page fills the chip model offers,
and checks: the card always verifies (old or new state), the reported outcome
is never wrong, and recovery on the next tap converges to exactly one redemption.
It runs on both card formats: format 1 (records in the open user memory) and format 2
(identity and slots in the private area from page 11, behind PWD_AUTH with PROT = 1 and
AUTH0 = 11, docs/card-format.md §2.2), where each tap authenticates again (a field loss
clears the chip's authentication, NTAG213/215/216 datasheet §8.8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cardlib.records.access import CardPasswordKeys
from cardlib.records.errors import RedemptionRefused, WrongCard
from cardlib.records.layout import PRIVATE_FIRST_PAGE, CardLayout, SlotName, build_private_image, build_public_area
from cardlib.records.session import (
    CardSession,
    CardState,
    PendingWrite,
    RecoveryDecision,
    WriteOutcome,
)
from simulator.chip import ChipVariant, FaultPlan, Ntag21x, TornFill
from tests.test_records_support import (
    CASH,
    CLINIC,
    CYCLE,
    FOOD,
    NOW,
    OTHER_UID,
    TERMINAL,
    UID,
    ChipTag,
    bundle,
    chip_with,
    issue,
)

TRUST = bundle()
KEYS = CardPasswordKeys({1: b"provincial-card-password-key-01"}, 1)
PROT = 0x80
NFC_CNT_EN = 0x10


def format2_chip(uid: bytes = UID) -> Ntag21x:
    """A format-2 card as provisioning leaves it: public pages, private area under PROT=1, AUTH0=11."""
    card = issue(uid)
    layout = CardLayout(card.layout.identity_len, card.layout.slot_len, 2)
    image = build_public_area(KEYS.current) + build_private_image(layout, card.identity_cose, card.genesis_cose,
                                                                  card.genesis_cose)
    chip = Ntag21x.blank(ChipVariant.NTAG215, uid)
    for i in range(0, len(image), 4):
        chip.poke(4 + i // 4, image[i:i + 4])
    pw = KEYS.password(KEYS.current, uid)
    lay = chip.layout
    chip.poke(lay.pwd_page, pw.pwd)
    chip.poke(lay.pack_page, pw.pack + bytes(2))
    chip.poke(lay.cfg1_page, bytes((PROT | NFC_CNT_EN,)) + chip.page(lay.cfg1_page)[1:])
    chip.poke(lay.cfg0_page, chip.page(lay.cfg0_page)[:3] + bytes((PRIVATE_FIRST_PAGE,)))
    chip.field_on()
    return chip


@dataclass(frozen=True)
class CardFormat:
    """How the tests make and open a card of one format.

    :ivar chip: a freshly issued card.
    :ivar passwords: the card-password keys a session needs (format 2), else None.
    :ivar nfc_counter: passed to ``prepare_redemption`` (None: the session reads it).
    """

    version: int
    chip: Callable[[], Ntag21x]
    passwords: CardPasswordKeys | None = None
    nfc_counter: int | None = None


FORMAT1 = CardFormat(1, lambda: chip_with(issue().image))
FORMAT2 = CardFormat(2, format2_chip, KEYS, nfc_counter=0)


def session_on(chip: Ntag21x, fmt: CardFormat = FORMAT1) -> CardSession:
    return CardSession(ChipTag(chip), TRUST, passwords=fmt.passwords)


def fresh(redemptions: int = 0, fmt: CardFormat = FORMAT1) -> tuple[Ntag21x, CardSession, ChipTag]:
    chip = fmt.chip()
    session = session_on(chip, fmt)
    for i in range(redemptions):
        state = session.read_state(NOW)
        pending = prepare(session, state, {CLINIC: 1}, seq=i, fmt=fmt)
        assert session.commit(pending).outcome is WriteOutcome.COMMITTED
    assert isinstance(session.tag, ChipTag)
    return chip, session, session.tag


def prepare(session: CardSession, state: CardState, amounts: dict[int, int], seq: int = 100,
            fmt: CardFormat = FORMAT1) -> PendingWrite:
    return session.prepare_redemption(
        state, signer=TERMINAL, cycle=CYCLE, amounts=amounts, terminal_id=17, terminal_seq=seq, now=NOW,
        nfc_counter=fmt.nfc_counter,
    )


def next_tap(chip: Ntag21x, fmt: CardFormat = FORMAT1) -> CardSession:
    """The card comes back: new RF session (a format-2 card's authentication lost), no faults."""
    if chip.removed:
        chip.reinsert(None)
    chip.arm(None)
    chip.field_off()
    return session_on(chip, fmt)


def test_redemption_commits_and_alternates_slots() -> None:
    chip, session, tag = fresh()
    targets = []
    for n in range(1, 5):
        state = session.read_state(NOW)
        pending = prepare(session, state, {CLINIC: 1})
        targets.append(pending.slot)
        before = tag.commands
        result = session.commit(pending)
        assert result.outcome is WriteOutcome.COMMITTED
        assert tag.commands - before <= 37
        after = session.read_state(NOW)
        assert after.current.claims.seq == n
        assert after.current.claims.remaining[CLINIC] == 4 - n
        assert after.current.claims.prev_hash == state.current.hash
        assert after.other is not None and after.other.cose.message == state.current.cose.message
    assert targets == [SlotName.B, SlotName.A, SlotName.B, SlotName.A]


def test_redemption_command_count_within_target() -> None:
    chip, _, _ = fresh(redemptions=1)
    session = next_tap(chip)
    tag = session.tag
    state = session.read_state(NOW)
    result = session.commit(prepare(session, state, {CASH: 250_000}))
    assert result.outcome is WriteOutcome.COMMITTED
    assert isinstance(tag, ChipTag) and tag.commands <= 40


def test_refusals_write_nothing() -> None:
    chip, session, tag = fresh()
    state = session.read_state(NOW)
    before = chip.memory
    for amounts in ({FOOD: 2}, {9: 1}, {CASH: 0}, {}):
        with pytest.raises(RedemptionRefused):
            prepare(session, state, amounts)
    with pytest.raises(RedemptionRefused):
        session.prepare_redemption(state, signer=TERMINAL, cycle=CYCLE - 1, amounts={FOOD: 1},
                                   terminal_id=1, terminal_seq=1, now=NOW)
    assert chip.memory == before


def test_new_cycle_restores_the_entitlement() -> None:
    chip, session, _ = fresh()
    state = session.read_state(NOW)
    session.commit(prepare(session, state, {CASH: 250_000}))
    state = session.read_state(NOW)
    assert state.remaining_in(CYCLE)[CASH] == 0
    assert state.remaining_in(CYCLE + 1)[CASH] == 250_000
    pending = session.prepare_redemption(state, signer=TERMINAL, cycle=CYCLE + 1, amounts={CASH: 100_000},
                                         terminal_id=17, terminal_seq=9, now=NOW)
    session.commit(pending)
    after = session.read_state(NOW)
    assert after.current.claims.cycle == CYCLE + 1 and after.current.claims.remaining[CASH] == 150_000


def test_recover_on_another_card_is_refused() -> None:
    chip, session, _ = fresh()
    pending = prepare(session, session.read_state(NOW), {FOOD: 1})
    other = CardSession(ChipTag(chip_with(issue(OTHER_UID).image, OTHER_UID)), TRUST)
    with pytest.raises(WrongCard):
        other.recover(pending, NOW)


def test_recover_deferred_when_the_card_moved_on() -> None:
    chip, session, _ = fresh(redemptions=1)
    pending = prepare(session, session.read_state(NOW), {FOOD: 1})
    session.commit(pending)
    for _ in range(2):
        session.commit(prepare(session, session.read_state(NOW), {CLINIC: 1}))
    assert session.recover(pending, NOW).decision is RecoveryDecision.DEFERRED


def test_recover_finished_when_the_next_state_chains_to_it() -> None:
    """Written, then one more redemption elsewhere overwrote nothing of it but chains to it."""
    chip, session, _ = fresh(redemptions=1)
    pending = prepare(session, session.read_state(NOW), {FOOD: 1})
    session.commit(pending)
    session.commit(prepare(session, session.read_state(NOW), {CLINIC: 1}))
    session.commit(prepare(session, session.read_state(NOW), {CLINIC: 1}))
    # now seq = pending.seq + 2 and pending's slot is overwritten: DEFERRED (see above);
    # with exactly one later state the intended one is still visible or chained:
    chip2, session2, _ = fresh(redemptions=1)
    pending2 = prepare(session2, session2.read_state(NOW), {FOOD: 1})
    session2.commit(pending2)
    session2.commit(prepare(session2, session2.read_state(NOW), {CLINIC: 1}))
    result = session2.recover(pending2, NOW)
    assert result.decision is RecoveryDecision.FINISHED
    assert session.recover(pending, NOW).decision is RecoveryDecision.DEFERRED


def _expected_after(base: CardState, amounts: dict[int, int]) -> dict[int, int]:
    out = dict(base.current.claims.remaining)
    for pid, amount in amounts.items():
        out[pid] -= amount
    return out


def _tear_case(plan: FaultPlan, redemptions_before: int,
               fmt: CardFormat) -> tuple[WriteOutcome, RecoveryDecision | None]:
    amounts = {CASH: 50_000}
    chip, session, _ = fresh(redemptions_before, fmt)
    base = session.read_state(NOW)
    pending = prepare(session, base, amounts, fmt=fmt)
    chip.arm(plan)
    result = session.commit(pending)
    chip.arm(None)

    # Next tap: the card always verifies, holding the old or the new state.
    session = next_tap(chip, fmt)
    state = session.read_state(NOW)
    on_card_new = state.current.cose.message == pending.cose
    assert on_card_new or state.current.cose.message == base.current.cose.message
    if result.outcome is WriteOutcome.COMMITTED:
        assert on_card_new
    if result.outcome is WriteOutcome.NOT_WRITTEN:
        assert not on_card_new
    decision = None
    if result.outcome is WriteOutcome.UNCERTAIN:
        recovery = session.recover(pending, NOW)
        decision = recovery.decision
        assert decision is (RecoveryDecision.FINISHED if on_card_new else RecoveryDecision.VOIDED)
        if decision is RecoveryDecision.VOIDED:
            # the clerk redoes it; it must count exactly once
            state = session.read_state(NOW)
            retry = session.commit(prepare(session, state, amounts, fmt=fmt))
            assert retry.outcome is WriteOutcome.COMMITTED
    final = next_tap(chip, fmt).read_state(NOW)
    assert final.current.claims.seq == base.current.claims.seq + 1
    assert dict(final.current.claims.remaining) == _expected_after(base, amounts)
    return result.outcome, decision


def _commit_commands(redemptions_before: int, fmt: CardFormat) -> tuple[int, int]:
    chip, session, tag = fresh(redemptions_before, fmt)
    pending = prepare(session, session.read_state(NOW), {CASH: 50_000}, fmt=fmt)
    before = tag.commands
    result = session.commit(pending)
    return tag.commands - before, result.pages_written


@pytest.mark.parametrize("fmt", [FORMAT1, FORMAT2], ids=["format1", "format2"])
@pytest.mark.parametrize("redemptions_before", [0, 1], ids=["B empty", "both slots full"])
@pytest.mark.parametrize("fill", [TornFill.OLD, TornFill.GARBAGE])
def test_tear_sweep_every_command_and_byte_in_process(redemptions_before: int, fill: TornFill,
                                                      fmt: CardFormat) -> None:
    commands, pages = _commit_commands(redemptions_before, fmt)
    assert pages > 0 and commands >= pages
    seen: dict[object, int] = {}
    for k in range(commands + 1):
        for tear in (None, 0, 1, 2, 3, 4):  # 4: page programmed, card gone before the ACK
            outcome, decision = _tear_case(
                FaultPlan(remove_after_commands=k, tear_during_remove=tear, torn_fill=fill, seed=k),
                redemptions_before, fmt,
            )
            seen[(outcome, decision)] = seen.get((outcome, decision), 0) + 1
    for b in range(pages * 4 + 1):
        outcome, decision = _tear_case(
            FaultPlan(remove_after_write_bytes=b, torn_fill=fill, seed=b), redemptions_before, fmt
        )
        seen[(outcome, decision)] = seen.get((outcome, decision), 0) + 1
    # the sweep must actually reach every interesting outcome
    assert (WriteOutcome.UNCERTAIN, RecoveryDecision.VOIDED) in seen
    assert (WriteOutcome.UNCERTAIN, RecoveryDecision.FINISHED) in seen
    assert (WriteOutcome.COMMITTED, None) in seen


def test_recovery_repairs_a_torn_slot_with_a_copy_of_the_current_state() -> None:
    chip, session, _ = fresh(1)
    base = session.read_state(NOW)
    pending = prepare(session, base, {FOOD: 1})
    chip.arm(FaultPlan(remove_after_commands=10, tear_during_remove=2, torn_fill=TornFill.GARBAGE))
    assert session.commit(pending).outcome is WriteOutcome.UNCERTAIN
    session = next_tap(chip)
    torn = session.read_state(NOW)
    assert torn.problems and torn.problems[0].slot == pending.slot.value
    result = session.recover(pending, NOW)
    assert result.decision is RecoveryDecision.VOIDED and result.repaired
    assert result.state.problems == ()
    assert result.state.other is not None
    assert result.state.other.cose.message == base.current.cose.message
    # the next redemption after a repair still works and goes to a slot that is not current
    state = session.read_state(NOW)
    assert session.commit(prepare(session, state, {FOOD: 1})).outcome is WriteOutcome.COMMITTED
    assert session.read_state(NOW).current.claims.seq == base.current.claims.seq + 1
