"""Format-1 cards migrated at their next tap (issue 20), through real pcscd + vpcd.

A format-1 card is issued by the production provisioning steps (PWD/PACK from the office
secret, AUTH0 = the dynamic lock page, PROT = 0: slots writable and readable by anyone). A
counter holding the office secret as the key ring's ``format1`` version opens it with
PWD_AUTH, reads it, and moves AUTH0 to slot A and sets PROT (:mod:`cardlib.records.migration`,
docs/card-format.md §2.3). Then a phone's plain WRITE or READ of a slot page is NAKed, the
card still reads and redeems as format 1, a dump clone is declined, and a tear at every
command of the migrating tap leaves a usable card that the next tap finishes migrating.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from cardlib.keys.signer import cose_key
from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.provision.households import Household
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import BundleKey, KeyRole
from cardlib.records.errors import CardPasswordRefused
from cardlib.records.journal import EntryKind
from cardlib.records.layout import SlotName
from cardlib.records.migration import Format1Protection, MigrationResult, migrate_format1
from cardlib.records.session import CardSession, WriteOutcome
from cardlib.type2.errors import Nak
from firmware_config.models import CounterMode
from simulator.chip import ChipVariant, FaultPlan, Ntag21x, TornFill
from terminal.journal_audit import verify_journal_file
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, decline_reason_of
from tests.provision_support import PASSWORD_SECRET, Station, tag_on_reader
from tests.test_records_support import TERMINAL
from tests.test_terminal_tap import counter_factory  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.pcsc

HOUSEHOLD = Household(line=3, household_ref=bytes.fromhex("9f3c2a1b00000003"), region="62.71", programmes=(1, 2))
CASH = 2
WRITE = 0xA2
READ = 0x30
FAST_READ = 0x3A
CFGLCK = 0x40
AUTHLIM = 0x07
#: The counter's key ring: the office secret under version 1 (format 1), a new key for format 2.
KEYS = CardPasswordKeys({1: PASSWORD_SECRET, 2: b"provincial-card-password-key-02"}, 2, format1=1)


@pytest.fixture(scope="module")
def station() -> Station:
    return Station()


def _issue(present_card, reader: str, station: Station) -> tuple[Ntag21x, StationContext]:  # type: ignore[no-untyped-def]
    ctx = dataclasses.replace(station.context(), card_format=1)
    chip = station.fab.genuine(ChipVariant.NTAG215)
    with tag_on_reader(present_card, reader, chip) as tag:
        personalise(tag, ctx, HOUSEHOLD, bytes.fromhex("6271000000000091"), check_chip(tag, ctx))
    return chip, ctx


def _tap(present_card, reader: str, chip: Ntag21x, ctx: StationContext,  # type: ignore[no-untyped-def]
         faults: FaultPlan | None = None) -> MigrationResult | Exception:
    """A migrating counter's tap: open, read, migrate. Returns the result or the link error."""
    try:
        with tag_on_reader(present_card, reader, chip, faults) as tag:
            session = CardSession(tag, ctx.trust, passwords=KEYS)
            return migrate_format1(session, session.read_state(int(time.time())))
    except Exception as exc:  # a torn tap may fail anywhere; the test checks the card after
        return exc


def _redeem(present_card, reader: str, chip: Ntag21x, ctx: StationContext, amount: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """A migrating counter redeems ``amount`` rupiah; returns (seq, cash left) read back by a fresh tap."""
    now = int(time.time())
    with tag_on_reader(present_card, reader, chip) as tag:
        session = CardSession(tag, ctx.trust, passwords=KEYS)
        state = session.read_state(now)
        pending = session.prepare_redemption(state, signer=ctx.station, cycle=state.current.claims.cycle,
                                             amounts={CASH: amount}, terminal_id=7, terminal_seq=1, now=now)
        assert session.commit(pending).outcome is WriteOutcome.COMMITTED
    with tag_on_reader(present_card, reader, chip) as tag:
        after = CardSession(tag, ctx.trust, passwords=KEYS).read_state(now)
    return after.current.claims.seq, after.current.claims.remaining[CASH]


def _phone(present_card, reader: str, chip: Ntag21x, pages: range) -> tuple[list[bool], list[bool]]:  # type: ignore[no-untyped-def]
    """A phone app, no PWD_AUTH: which plain READs and which plain WRITEs of ``pages`` the chip took."""
    reads, writes = [], []
    with tag_on_reader(present_card, reader, chip) as tag:
        for page in pages:
            for frame, out in ((bytes((READ, page)), reads), (bytes((WRITE, page)) + bytes(4), writes)):
                try:
                    tag.channel.transceive(frame)
                    out.append(True)
                except Nak:
                    out.append(False)
    return reads, writes


def _config(chip: Ntag21x) -> bytes:
    lay = chip.layout
    return chip.page(lay.cfg0_page) + chip.page(lay.cfg1_page)


def test_a_format1_card_is_migrated_and_a_phone_can_neither_read_nor_write_its_slots(
        present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station)
    lay = chip.layout
    assert _config(chip)[3] == lay.dyn_lock_page and _config(chip)[4] & 0x80 == 0  # as format 1 was issued
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        slots = CardSession(tag, ctx.trust).read_state(int(time.time())).layout
    pages = range(slots.slot_first_page(SlotName.A), slots.slot_pages(SlotName.B)[-1] + 1)
    reads, writes = _phone(present_card, reader_name(0), chip, pages[:1])
    assert reads == [True] and writes == [True]  # before: a phone could rewrite a slot
    # (the zero page written above breaks slot A; a genuine card is issued again)
    chip, ctx = _issue(present_card, reader_name(0), station)

    result = _tap(present_card, reader_name(0), chip, ctx)
    assert isinstance(result, MigrationResult), result
    assert (result.before, result.after, result.writes) == (Format1Protection.ORIGINAL, Format1Protection.MIGRATED, 2)
    cfg = _config(chip)
    assert cfg[3] == slots.slot_first_page(SlotName.A) and cfg[4] == 0x90 and not cfg[4] & (CFGLCK | AUTHLIM)
    # a second tap only reads the configuration
    again = _tap(present_card, reader_name(0), chip, ctx)
    assert isinstance(again, MigrationResult) and again.writes == 0 and again.before is Format1Protection.MIGRATED

    reads, writes = _phone(present_card, reader_name(0), chip, pages)
    assert not any(reads) and not any(writes)  # every plain READ and WRITE of a slot page NAKed
    reads, _ = _phone(present_card, reader_name(0), chip, range(4, 6))
    assert all(reads)  # the identity record's first pages still answer a reader
    assert _redeem(present_card, reader_name(0), chip, ctx, 100_000) == (1, 150_000)
    # a counter without the office secret cannot read a migrated card's slots
    with tag_on_reader(present_card, reader_name(0), chip) as tag, pytest.raises(Nak):
        CardSession(tag, ctx.trust).read_state(int(time.time()))


def test_a_format1_dump_clone_is_declined_by_a_migrating_counter(present_card, reader_name, station: Station) -> None:
    chip, ctx = _issue(present_card, reader_name(0), station)
    clone = Ntag21x.blank(ChipVariant.NTAG215, chip.uid)
    for page in range(3, chip.layout.dyn_lock_page):
        clone.poke(page, chip.page(page))  # what a dump holds: the data, never PWD/PACK
    outcome = _tap(present_card, reader_name(0), clone, ctx)
    assert isinstance(outcome, CardPasswordRefused), outcome
    assert decline_reason_of(outcome) is DeclineReason.CLONE_CHECK_FAILED


@pytest.mark.parametrize("fill", [TornFill.OLD, TornFill.GARBAGE])
def test_a_tear_at_every_command_of_the_migration_leaves_a_usable_card(present_card, reader_name,
                                                                       station: Station, fill: TornFill) -> None:
    reader = reader_name(0)
    issued, ctx = _issue(present_card, reader, station)
    seen: set[tuple[Format1Protection, Format1Protection]] = set()
    k = 0
    while True:
        for tear in (None, 0, 2, 4):  # 4: the page programmed, its answer lost
            chip = copy.deepcopy(issued)
            first = _tap(present_card, reader, chip, ctx, FaultPlan(remove_after_commands=k, tear_during_remove=tear,
                                                                    torn_fill=fill, seed=k * 8 + (tear or 0)))
            if chip.removed:
                chip.reinsert(None)
            chip.arm(None)
            cfg = _config(chip)
            if fill is TornFill.OLD:
                assert not cfg[4] & (CFGLCK | AUTHLIM), (k, tear, cfg.hex())  # no password try can brick it
            # the card is usable: the next tap reads it, finishes migrating it, and a redemption lands
            second = _tap(present_card, reader, chip, ctx)
            assert isinstance(second, MigrationResult), (k, tear, second)
            if second.before is not Format1Protection.LOCKED:
                # a configuration byte torn into garbage (ACCESS is byte 0 of CFG1) is rewritten exactly
                assert second.after is Format1Protection.MIGRATED, (k, tear, second)
                assert not _config(chip)[4] & (CFGLCK | AUTHLIM)
            assert _redeem(present_card, reader, chip, ctx, 50_000) == (1, 200_000)
            seen.add((second.before, second.after))
            if isinstance(first, MigrationResult) and first.error is None:
                break
        else:
            k += 1
            continue
        break
    assert k >= 4  # head read, PWD_AUTH, data reads, configuration read came before the WRITEs
    assert (Format1Protection.ORIGINAL, Format1Protection.MIGRATED) in seen
    assert (Format1Protection.HALF_WAY, Format1Protection.MIGRATED) in seen
    assert (Format1Protection.MIGRATED, Format1Protection.MIGRATED) in seen


def test_a_counter_tap_migrates_a_format1_card_once_and_journals_it(
        counter_factory, present_card, reader_name, station: Station) -> None:  # noqa: F811
    """A full TapProcessor tap: the redemption counted once, COMMIT carries ``card_migrated``, a phone is NAKed."""
    chip, _ctx = _issue(present_card, reader_name(0), station)
    base = station.bundle()
    counter_bundle = dataclasses.replace(base, keys=(*base.keys, BundleKey(
        TERMINAL.kid, KeyRole.TERMINAL, TERMINAL.alg, TERMINAL.public_key)))
    c = counter_factory(CounterMode.CASH_PAYOUT, "cash", 100_000, trust_bundle=counter_bundle)
    c.tap.cfg.card_passwords = KEYS
    c.request[:] = ["cash", 100_000, None]
    with present_card(chip, slot=0):
        first = c.wait(1)
    assert first.status is TapStatus.ACCEPTED and first.remaining == 150_000, first
    c.request[:] = ["cash", 1, None]
    c.tap.cfg.mode = CounterMode.BALANCE_CHECK
    with present_card(chip, slot=0):
        second = c.wait(2)
    assert second.status is TapStatus.BALANCE and second.remaining == 150_000, second
    entries = [e.entry for e in c.journal.entries()]
    assert [e.kind for e in entries] == [EntryKind.BOOT, EntryKind.PENDING, EntryKind.COMMIT, EntryKind.BALANCE]
    assert [e.card_migrated for e in entries] == [None, None, True, None]  # only the migrating tap, signed
    assert sum(e.amount or 0 for e in entries if e.kind is EntryKind.COMMIT) == 100_000
    assert verify_journal_file(c.journal.path, cose_key(TERMINAL)).entries == 4
    c.sup.stop()  # the reader is the phone's now
    c.thread.join(timeout=15)
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        slots = CardSession(tag, counter_bundle, passwords=KEYS).read_state(int(time.time())).layout
    assert _config(chip)[3] == slots.slot_first_page(SlotName.A) and _config(chip)[4] == 0x90
    _, writes = _phone(present_card, reader_name(0), chip, range(slots.slot_first_page(SlotName.A),
                                                                 slots.slot_first_page(SlotName.A) + 1))
    assert writes == [False]  # a phone's WRITE to a slot page is NAKed


def test_a_balance_check_migrates_a_format1_card(counter_factory, present_card, reader_name,  # noqa: F811
                                                 station: Station) -> None:
    chip, _ctx = _issue(present_card, reader_name(0), station)
    base = station.bundle()
    c = counter_factory(CounterMode.BALANCE_CHECK, "cash", 1, trust_bundle=base)
    c.tap.cfg.card_passwords = KEYS
    with present_card(chip, slot=0):
        out = c.wait(1)
    assert out.status is TapStatus.BALANCE and out.remaining == 250_000, out
    assert _config(chip)[4] == 0x90
    balance = c.journal.entries()[-1].entry
    assert balance.kind is EntryKind.BALANCE and balance.card_migrated is True
