"""Format-2 redemptions under the exhaustive in-process tear sweep (issue 20).

The same sweep as tests/test_session.py (every command index of the commit, every byte
boundary of its page writes, both torn-page fills), on a format-2 card: identity and
slots in the private area from page 11, behind PWD_AUTH with PROT = 1 and AUTH0 = 11
(docs/card-format.md §2.2). Each tap authenticates again (a field loss clears the chip's
authentication, NTAG213/215/216 datasheet §8.8); every torn case resolves FINISHED or
VOIDED on the next tap, never lost or counted twice.
"""

from __future__ import annotations

import pytest

from cardlib.records.access import CardPasswordKeys
from cardlib.records.layout import PRIVATE_FIRST_PAGE, CardLayout, build_private_image, build_public_area
from cardlib.records.session import CardSession, CardState, PendingWrite, RecoveryDecision, WriteOutcome
from cardlib.type2.errors import Nak
from simulator.chip import ChipVariant, FaultPlan, Ntag21x, TornFill
from tests.test_records_support import CASH, CLINIC, CYCLE, NOW, TERMINAL, UID, ChipTag, bundle, issue

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


def session_on(chip: Ntag21x) -> CardSession:
    return CardSession(ChipTag(chip), TRUST, passwords=KEYS)


def fresh(redemptions: int = 0) -> tuple[Ntag21x, CardSession, ChipTag]:
    chip = format2_chip()
    session = session_on(chip)
    for i in range(redemptions):
        state = session.read_state(NOW)
        assert session.commit(prepare(session, state, {CLINIC: 1}, seq=i)).outcome is WriteOutcome.COMMITTED
    assert isinstance(session.tag, ChipTag)
    return chip, session, session.tag


def prepare(session: CardSession, state: CardState, amounts: dict[int, int], seq: int = 100) -> PendingWrite:
    return session.prepare_redemption(state, signer=TERMINAL, cycle=CYCLE, amounts=amounts, terminal_id=17,
                                      terminal_seq=seq, now=NOW, nfc_counter=0)


def next_tap(chip: Ntag21x) -> CardSession:
    """The card comes back: new RF session (authentication lost), no faults."""
    if chip.removed:
        chip.reinsert(None)
    chip.arm(None)
    chip.field_off()
    return session_on(chip)


def test_format2_slots_are_private_and_a_redemption_commits() -> None:
    chip, session, tag = fresh()
    state = session.read_state(NOW)
    assert state.layout.version == 2 and state.current.region.first_page >= PRIVATE_FIRST_PAGE
    assert session.commit(prepare(session, state, {CASH: 50_000})).outcome is WriteOutcome.COMMITTED
    assert next_tap(chip).read_state(NOW).current.claims.remaining[CASH] == 200_000
    # without the password the slot pages neither read nor write (the chip NAKs)
    chip.field_off()
    bare = ChipTag(chip)
    with pytest.raises(Nak):
        bare.read_pages(PRIVATE_FIRST_PAGE, 1)
    chip.field_off()
    with pytest.raises(Nak):
        ChipTag(chip).write_pages(state.current.region.first_page, bytes(4))


def _tear_case(plan: FaultPlan, redemptions_before: int) -> tuple[WriteOutcome, RecoveryDecision | None]:
    amounts = {CASH: 50_000}
    chip, session, _ = fresh(redemptions_before)
    base = session.read_state(NOW)
    pending = prepare(session, base, amounts)
    chip.arm(plan)
    result = session.commit(pending)
    chip.arm(None)

    session = next_tap(chip)
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
            state = session.read_state(NOW)
            assert session.commit(prepare(session, state, amounts)).outcome is WriteOutcome.COMMITTED
    final = next_tap(chip).read_state(NOW)
    assert final.current.claims.seq == base.current.claims.seq + 1
    expected = dict(base.current.claims.remaining)
    expected[CASH] -= amounts[CASH]
    assert dict(final.current.claims.remaining) == expected
    return result.outcome, decision


def _commit_commands(redemptions_before: int) -> tuple[int, int]:
    chip, session, tag = fresh(redemptions_before)
    pending = prepare(session, session.read_state(NOW), {CASH: 50_000})
    before = tag.commands
    result = session.commit(pending)
    return tag.commands - before, result.pages_written


@pytest.mark.parametrize("redemptions_before", [0, 1], ids=["B empty", "both slots full"])
@pytest.mark.parametrize("fill", [TornFill.OLD, TornFill.GARBAGE])
def test_format2_tear_sweep_every_command_and_byte_in_process(redemptions_before: int, fill: TornFill) -> None:
    commands, pages = _commit_commands(redemptions_before)
    assert pages > 0 and commands >= pages
    seen: dict[object, int] = {}
    for k in range(commands + 1):
        for tear in (None, 0, 1, 2, 3, 4):  # 4: the page is programmed, its ACK lost
            case = _tear_case(FaultPlan(remove_after_commands=k, tear_during_remove=tear, torn_fill=fill, seed=k),
                              redemptions_before)
            seen[case] = seen.get(case, 0) + 1
    for b in range(pages * 4 + 1):
        case = _tear_case(FaultPlan(remove_after_write_bytes=b, torn_fill=fill, seed=b), redemptions_before)
        seen[case] = seen.get(case, 0) + 1
    assert (WriteOutcome.UNCERTAIN, RecoveryDecision.VOIDED) in seen
    assert (WriteOutcome.UNCERTAIN, RecoveryDecision.FINISHED) in seen
    assert (WriteOutcome.COMMITTED, None) in seen
