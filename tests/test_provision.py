"""Provisioning virtual NTAG215/216 cards through the real pcscd + vpcd stack.

Covers: a batch that yields cards a terminal accepts; a counterfeit chip; a card removed at
every stage of provisioning and then finished under the same card id; an interrupted card
that never comes back (abandoned → deny list); quota; re-issue of a lost card; a chip that
already carries a card; the resulting locks and password protection on the chip.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from cardlib.keys.signer import cose_key
from cardlib.provision.batch import batch_key, provision_card, run_batch
from cardlib.provision.card import Step
from cardlib.provision.errors import IssuanceInterrupted, QuotaExceeded
from cardlib.provision.households import Household, parse_households
from cardlib.provision.password import derive_password
from cardlib.provision.session import (
    IssuanceStatus,
    grant_session,
    static_keys,
    verify_grant,
    verify_issuance_file,
)
from cardlib.provision.state import BatchState, Event
from cardlib.records.claims import cycle_of
from cardlib.records.layout import SlotName
from cardlib.records.session import CardSession
from cardlib.type2.errors import Nak
from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from tests.provision_support import COMMAND_LOG, PASSWORD_SECRET, Station, VirtualCardSource, tag_on_reader

pytestmark = pytest.mark.pcsc

CSV = """household_ref,region,programmes
9f3c2a1b00000001,62.71,1;2
9f3c2a1b00000002,62.03,2
9f3c2a1b00000003,62.13,
"""


@pytest.fixture()
def station() -> Station:
    return Station()


@pytest.fixture()
def rows() -> list[Household]:
    return parse_households(CSV, [1, 2])


def _results(state: BatchState) -> list[dict[str, str]]:
    with open(state.results_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _issuance_file(station: Station, state: BatchState):  # type: ignore[no-untyped-def]
    return verify_issuance_file((state.directory / "issuances.cose").read_bytes(),
                                static_keys(cose_key(station.technician)), static_keys(cose_key(station.issuer)))


def test_batch_issues_cards_a_terminal_accepts(present_card, reader_name, tmp_path: Path, station: Station,
                                               rows: list[Household]) -> None:
    chips = [station.fab.genuine(ChipVariant.NTAG215), station.fab.genuine(ChipVariant.NTAG216),
             station.fab.genuine(ChipVariant.NTAG215)]
    state = BatchState(tmp_path / "batch", batch_key(rows))
    outcomes = run_batch(rows, VirtualCardSource(present_card, reader_name(0), chips), station.context(), state,
                         technician=station.technician, technician_name="tech-07")
    assert [o.status for o in outcomes] == [Event.ISSUED] * 3
    assert [r["status"] for r in _results(state)] == ["issued"] * 3
    issued = _issuance_file(station, state)
    assert [i.status for i in issued.issuances] == [IssuanceStatus.ISSUED] * 3
    assert {i.uid for i in issued.issuances} == {c.uid for c in chips}
    assert issued.technician == "tech-07" and issued.deny_list_additions() == []

    bundle = station.bundle()
    for chip, outcome, row in zip(chips, outcomes, rows):
        with tag_on_reader(present_card, reader_name(0), chip) as tag:
            state_read = CardSession(tag, bundle).read_state(outcome.card.card_id and 1_800_000_000)  # type: ignore[union-attr]
            claims = state_read.identity.claims
            assert claims.household_ref == row.household_ref and claims.region == row.region
            assert sorted(claims.programmes) == list(row.programmes)
            assert state_read.current.claims.seq == 0
            # conventions: the station's kid as slot terminal id, the province cycle of the issue day
            assert state_read.current.claims.terminal_id == int.from_bytes(station.station.kid, "big")
            assert state_read.current.claims.cycle == cycle_of(
                dt.datetime.fromtimestamp(state_read.current.claims.time, dt.timezone.utc))
            assert state_read.current.claims.remaining == {p: station.context().profile.programmes[p].per_cycle
                                                           for p in row.programmes}
            layout = state_read.image.layout
            # a terminal writes slot B without any password ...
            slot_b = layout.slot_first_page(SlotName.B)
            tag.write_pages(slot_b, b"\x00\x00\x00\x00")
            # ... but cannot touch the identity or the dynamic lock bytes / configuration
            # (raw WRITE A2 via direct transmit, so the chip's NAK reaches us as such)
            with pytest.raises(Nak):
                tag.channel.transceive(bytes((0xA2, layout.identity_pages[0])) + b"\xff" * 4)
            with pytest.raises(Nak):
                tag.channel.transceive(bytes((0xA2, tag.identify().dynamic_lock_page)) + b"\xff\xff\x00\x00")
            # the NFC counter is enabled
            assert tag.read_counter() >= 1
        # chip-level facts (datasheet §8.5.7): AUTHLIM 0, PROT 0, AUTH0 = dynamic lock page
        cfg0 = chip.layout.cfg0_page
        assert chip.page(cfg0)[3] == chip.layout.dyn_lock_page
        assert chip.page(cfg0 + 1)[0] & 0x87 == 0
        assert chip.page(chip.layout.pwd_page) == derive_password(PASSWORD_SECRET, chip.uid).pwd


def test_counterfeit_chip_is_rejected_and_nothing_is_written(present_card, reader_name, tmp_path: Path,
                                                             station: Station, rows: list[Household]) -> None:
    fake = Ntag21x.blank(ChipVariant.NTAG215)  # never signed by the fab: all-zero READ_SIG
    cloned_sig = station.fab.genuine()
    wrong_uid = Ntag21x.blank(ChipVariant.NTAG215)
    wrong_uid.signature = cloned_sig.signature  # a real signature, for another UID
    before = (fake.memory, wrong_uid.memory)
    good = station.fab.genuine()
    state = BatchState(tmp_path / "batch", batch_key(rows[:1]))
    outcomes = run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [fake, wrong_uid, good]),
                         station.context(), state, technician=station.technician, technician_name="t")
    assert [o.status for o in outcomes] == [Event.REJECTED, Event.REJECTED, Event.ISSUED]
    assert "originality" in outcomes[0].detail and "originality" in outcomes[1].detail
    assert (fake.memory, wrong_uid.memory) == before
    assert [r["status"] for r in _results(state)] == ["rejected", "rejected", "issued"]
    assert len(_issuance_file(station, state).issuances) == 1


@pytest.mark.parametrize(("remove_after", "step"), [
    (3, Step.CHECK), (20, Step.WRITE), (60, Step.WRITE), (90, Step.WRITE),
    (96, Step.LOCK), (103, Step.PROTECT), (108, Step.VERIFY),
])
def test_card_removed_mid_provisioning_is_recorded_and_finished_later(
        present_card, reader_name, tmp_path: Path, station: Station, rows: list[Household], remove_after: int,
        step: Step) -> None:
    chip = station.fab.genuine()
    state = BatchState(tmp_path / "batch", batch_key(rows[:1]))
    ctx = station.context()
    steps: list[Step] = []
    with pytest.raises(IssuanceInterrupted) as info:
        run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [(chip, FaultPlan(remove_after_commands=remove_after))]),
                  ctx, state, technician=station.technician, technician_name="t", on_step=steps.append)
    chip.reinsert()
    assert info.value.step == step.value  # every stage of provisioning is covered
    unfinished = state.unfinished()
    if info.value.card_id:
        # a card id was journalled before the first write: nothing half-issued goes unrecorded
        assert [(u.uid, u.card_id) for u in unfinished] == [(chip.uid.hex(), info.value.card_id.hex())]
        assert _results(state)[-1]["status"] == "interrupted"
    else:
        assert not unfinished and steps == []
    # the next run (a fresh process would replay the journal) finishes the same chip
    state2 = BatchState(tmp_path / "batch", batch_key(rows[:1]))
    outcomes = run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [chip]), ctx, state2,
                         technician=station.technician, technician_name="t")
    assert [o.status for o in outcomes] == [Event.ISSUED]
    if info.value.card_id:
        assert outcomes[0].card.card_id == info.value.card_id  # type: ignore[union-attr]
    issued = _issuance_file(station, state2)
    assert [(i.status, i.uid) for i in issued.issuances] == [(IssuanceStatus.ISSUED, chip.uid)]


def test_interrupted_card_that_never_returns_is_abandoned_and_deny_listed(
        present_card, reader_name, tmp_path: Path, station: Station, rows: list[Household]) -> None:
    lost = station.fab.genuine()
    state = BatchState(tmp_path / "batch", batch_key(rows[:1]))
    ctx = station.context()
    with pytest.raises(IssuanceInterrupted) as info:
        run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [(lost, FaultPlan(remove_after_commands=60))]),
                  ctx, state, technician=station.technician, technician_name="t")
    replacement = station.fab.genuine()
    outcomes = run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [replacement]), ctx, state,
                         technician=station.technician, technician_name="t")
    assert outcomes[0].card.card_id != info.value.card_id  # type: ignore[union-attr]
    issued = _issuance_file(station, state)
    assert issued.deny_list_additions() == [info.value.card_id]
    assert sorted(i.status.value for i in issued.issuances) == ["abandoned", "issued"]


def test_quota_stops_the_session(present_card, reader_name, tmp_path: Path, station: Station,
                                 rows: list[Household]) -> None:
    grant = verify_grant(grant_session(station.issuer, station.technician.kid, 2, 2_000_000_000),
                         static_keys(cose_key(station.issuer)), station.technician.kid)
    state = BatchState(tmp_path / "batch", batch_key(rows))
    chips = [station.fab.genuine() for _ in range(3)]
    with pytest.raises(QuotaExceeded):
        run_batch(rows, VirtualCardSource(present_card, reader_name(0), chips), station.context(), state,
                  technician=station.technician, technician_name="t", grant=grant)
    issued = _issuance_file(station, state)
    assert len(issued.issuances) == 2 and issued.grant == grant.message
    assert chips[2].memory == Ntag21x.blank(ChipVariant.NTAG215, chips[2].uid).memory  # never written


def test_reissue_of_a_lost_card_carries_remaining_entitlement(present_card, reader_name, tmp_path: Path,
                                                               station: Station, rows: list[Household]) -> None:
    old_card_id = bytes.fromhex("1122334455667788")
    state = BatchState(tmp_path / "reissue", batch_key(rows[:1]))
    chip = station.fab.genuine()
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        outcome = provision_card(tag, station.context(), rows[0], state, reissue_of=old_card_id,
                                 remaining={1: 0, 2: 100_000})
    assert outcome.status is Event.ISSUED and outcome.card.card_id != old_card_id  # type: ignore[union-attr]
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        card_state = CardSession(tag, station.bundle()).read_state(1_800_000_000)
    assert card_state.current.claims.remaining == {1: 0, 2: 100_000}
    from cardlib.provision.batch import write_issuance_file

    write_issuance_file(state, station.technician, "t")
    assert _issuance_file(station, state).deny_list_additions() == [old_card_id]


def test_chip_with_a_finished_card_is_not_reissued(present_card, reader_name, tmp_path: Path, station: Station,
                                                    rows: list[Household]) -> None:
    chip = station.fab.genuine()
    state = BatchState(tmp_path / "b1", batch_key(rows[:1]))
    run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [chip]), station.context(), state,
              technician=station.technician, technician_name="t")
    other = BatchState(tmp_path / "b2", batch_key(rows[1:2]))
    outcomes = run_batch(rows[1:2], VirtualCardSource(present_card, reader_name(0), [chip]), station.context(), other,
                         technician=station.technician, technician_name="t")
    assert [o.status for o in outcomes] == [Event.REJECTED]
    assert "already carries" in outcomes[0].detail


def test_commands_per_card_are_counted(present_card, reader_name, tmp_path: Path, station: Station,
                                       rows: list[Household]) -> None:
    COMMAND_LOG.clear()
    state = BatchState(tmp_path / "batch", batch_key(rows[:1]))
    run_batch(rows[:1], VirtualCardSource(present_card, reader_name(0), [station.fab.genuine()]), station.context(),
              state, technician=station.technician, technician_name="t")
    # ~75 page writes dominate (zero pages of a blank chip are skipped); the rest is check,
    # locks, config and read-back. bench/bench_provision.py reports the exact figure.
    assert 90 <= COMMAND_LOG[0] <= 125
