"""Cards that hold against people (issue 20): private pages behind the NTAG password, through pcscd.

Two attacks, each played on a format-1 card (slots writable by anyone, what cards in the field
carry: the attack works, and this test keeps saying so) and on a format-2 card (private pages,
docs/card-format.md §2.2: the chip refuses it):

* **undo with a phone**: after a counter writes a redemption, the holder's phone app zeroes
  the slot just written with plain WRITEs; the card falls back to its older slot and balance;
* **clone from a dump**: a Flipper/Proxmark-style dump (READ what answers; PWD/PACK read as
  zeros) written onto a chip with the same UID.

Cards are issued by the production provisioning steps onto virtual NTAG215s behind the real
pcscd + vpcd (ACR122U pass-through), as in tests/test_provision.py.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.provision.households import Household
from cardlib.records.errors import CardPasswordRefused, CardPasswordUnavailable
from cardlib.records.layout import PRIVATE_FIRST_PAGE, SlotName
from cardlib.records.session import CardSession, WriteOutcome
from cardlib.type2.errors import Nak
from simulator.chip import ChipVariant, Ntag21x
from terminal.policy import DeclineReason, decline_reason_of
from tests.provision_support import Station, tag_on_reader

pytestmark = pytest.mark.pcsc

HOUSEHOLD = Household(line=2, household_ref=bytes.fromhex("9f3c2a1b00000001"), region="62.71", programmes=(1, 2))
CASH = 2
WRITE = 0xA2
FAST_READ = 0x3A


@pytest.fixture(scope="module")
def station() -> Station:
    return Station()


def _issue(present_card, reader: str, station: Station, card_format: int) -> tuple[Ntag21x, StationContext]:  # type: ignore[no-untyped-def]
    ctx = dataclasses.replace(station.context(), card_format=card_format)
    chip = station.fab.genuine(ChipVariant.NTAG215)
    with tag_on_reader(present_card, reader, chip) as tag:
        check = check_chip(tag, ctx)
        personalise(tag, ctx, HOUSEHOLD, bytes.fromhex("6271000000000077"), check)
    return chip, ctx


def _redeem(present_card, reader: str, chip: Ntag21x, ctx: StationContext, amount: int) -> tuple[int, SlotName]:  # type: ignore[no-untyped-def]
    """A counter redeems ``amount`` rupiah; returns the new seq and the slot it went to."""
    now = int(time.time())
    with tag_on_reader(present_card, reader, chip) as tag:
        session = CardSession(tag, ctx.trust, passwords=ctx.passwords)
        state = session.read_state(now)
        pending = session.prepare_redemption(state, signer=ctx.station, cycle=state.current.claims.cycle,
                                             amounts={CASH: amount}, terminal_id=7, terminal_seq=1, now=now)
        assert session.commit(pending).outcome is WriteOutcome.COMMITTED
    return pending.seq, pending.slot


def _balance(present_card, reader: str, chip: Ntag21x, ctx: StationContext) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """What another counter reads: (seq, cash remaining)."""
    with tag_on_reader(present_card, reader, chip) as tag:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
    return state.current.claims.seq, state.current.claims.remaining[CASH]


def _phone_zeroes(present_card, reader: str, chip: Ntag21x, pages: range) -> list[bool]:  # type: ignore[no-untyped-def]
    """A phone app: plain WRITE A2 of zeros, no PWD_AUTH. Returns which WRITEs the chip took."""
    taken = []
    with tag_on_reader(present_card, reader, chip) as tag:
        for page in pages:
            try:
                tag.channel.transceive(bytes((WRITE, page)) + bytes(4))
                taken.append(True)
            except Nak:
                taken.append(False)
    return taken


def _slot_pages(chip: Ntag21x, ctx: StationContext, slot: SlotName, present_card, reader: str) -> range:  # type: ignore[no-untyped-def]
    with tag_on_reader(present_card, reader, chip) as tag:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
    return state.layout.slot_pages(slot)


def test_format1_undo_with_a_phone_works_and_every_counter_takes_the_old_balance(
        present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station, 1)
    seq, slot = _redeem(present_card, reader_name(0), chip, ctx, 100_000)
    assert _balance(present_card, reader_name(0), chip, ctx) == (1, 150_000)
    pages = _slot_pages(chip, ctx, slot, present_card, reader_name(0))
    assert all(_phone_zeroes(present_card, reader_name(0), chip, pages))
    # the attack: the card is back at its genesis state with the full cash entitlement
    assert _balance(present_card, reader_name(0), chip, ctx) == (0, 250_000)


def test_format2_undo_with_a_phone_is_refused_by_the_chip(present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station, 2)
    seq, slot = _redeem(present_card, reader_name(0), chip, ctx, 100_000)
    pages = _slot_pages(chip, ctx, slot, present_card, reader_name(0))
    assert not any(_phone_zeroes(present_card, reader_name(0), chip, pages))  # every WRITE NAKed
    assert not any(_phone_zeroes(present_card, reader_name(0), chip, range(4, PRIVATE_FIRST_PAGE)))  # public locked
    assert _balance(present_card, reader_name(0), chip, ctx) == (seq, 150_000)


def test_format2_phone_sees_only_the_public_record(present_card, reader_name, station: Station) -> None:
    chip, _ = _issue(present_card, reader_name(0), station, 2)
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        public = tag.channel.transceive(bytes((FAST_READ, 4, PRIVATE_FIRST_PAGE - 1)))
        with pytest.raises(Nak):
            tag.channel.transceive(bytes((FAST_READ, PRIVATE_FIRST_PAGE, PRIVATE_FIRST_PAGE)))
    assert public.startswith(bytes.fromhex("0312d1010e5504")) and b"huma.id/saldo" in public
    assert HOUSEHOLD.household_ref not in public


def _dump_clone(present_card, reader: str, chip: Ntag21x) -> Ntag21x:  # type: ignore[no-untyped-def]
    """What a Flipper/Proxmark makes of ``chip`` without its password, written onto a magic chip."""
    total = chip.layout.total_pages
    dump = bytearray()
    with tag_on_reader(present_card, reader, chip) as tag:
        for page in range(total):
            try:
                dump += tag.channel.transceive(bytes((FAST_READ, page, page)))
            except Nak:
                dump += bytes(4)  # read-protected: the dump holds zeros
    clone = Ntag21x.blank(ChipVariant.NTAG215, chip.uid)
    lay = clone.layout
    for page in range(3, total):
        if page in (lay.pwd_page, lay.pack_page):
            continue  # PWD and PACK read as 00h: the dump never has them
        if page in (lay.cfg0_page, lay.cfg1_page) and not any(dump[page * 4:page * 4 + 4]):
            continue
        clone.poke(page, bytes(dump[page * 4:page * 4 + 4]))
    clone.poke(lay.pwd_page, bytes(4))
    return clone


def test_format1_clone_from_a_dump_is_accepted(present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station, 1)
    clone = _dump_clone(present_card, reader_name(0), chip)
    assert _balance(present_card, reader_name(0), clone, ctx) == (0, 250_000)  # the attack works


def test_format2_clone_from_a_dump_is_declined_as_a_copy(present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station, 2)
    clone = _dump_clone(present_card, reader_name(0), chip)
    with pytest.raises(CardPasswordRefused) as refused:
        _balance(present_card, reader_name(0), clone, ctx)
    assert decline_reason_of(refused.value) is DeclineReason.CLONE_CHECK_FAILED
    # a clone that takes the password but cannot know the PACK (a "magic" chip answering anything)
    clone.poke(clone.layout.pwd_page, ctx.passwords.password(1, clone.uid).pwd)
    with pytest.raises(CardPasswordRefused):
        _balance(present_card, reader_name(0), clone, ctx)


def test_format2_card_needs_the_key_version_it_names(present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station, 2)
    with tag_on_reader(present_card, reader_name(0), chip) as tag, pytest.raises(CardPasswordUnavailable):
        CardSession(tag, ctx.trust).read_state(int(time.time()))
