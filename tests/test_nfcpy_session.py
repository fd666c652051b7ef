"""The same card-session tests over three stacks: PC/SC (pcscd + vpcd, ACR122U pass-through),
nfcpy over UDP, and nfcpy's pn532 driver over a pty. Card logic is identical; only the tap differs.

Card data and keys come from helper C's tests/test_records_support.py (issuer, terminal,
bundle, an issued NTAG215 image), so a change to the record format is exercised here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from cardlib.records.session import CardSession, RecoveryDecision, WriteOutcome
from simulator.chip import FaultPlan, Ntag21x, TornFill
from simulator.nfc_udp import NfcUdpPeer
from simulator.pn532 import Pn532Emulator, Pn532Pty
from cardlib.transport.nfcpy import NfcpyReader
from cardlib.type2.channel import Type2Channel
from cardlib.type2.tag import Type2Tag
from firmware_config.loader import find_reader_profile
from tests.test_records_support import (
    CASH, CYCLE, NOW, SAMPLED_TEARS, TERMINAL, bundle, chip_with, issue,
)

TRUST = bundle()

Tap = Callable[[Ntag21x], AbstractContextManager[tuple[CardSession, Type2Channel]]]


def _pcsc_tap(request: pytest.FixtureRequest) -> Iterator[Tap]:
    from cardlib.transport.pcsc import connect
    from cardlib.type2.channel import channel_for

    present_card = request.getfixturevalue("present_card")
    reader_name = request.getfixturevalue("reader_name")
    caps = find_reader_profile("acr122u").capabilities()

    @contextmanager
    def tap(chip: Ntag21x) -> Iterator[tuple[CardSession, Type2Channel]]:
        if chip.removed:
            chip.reinsert(None)
        with present_card(chip, kind="acr122u"), connect(reader_name(0)) as conn:
            channel = channel_for(conn, caps)
            yield CardSession(Type2Tag(channel, atr=conn.atr), TRUST), channel

    yield tap


def _nfcpy_tap(reader: NfcpyReader, place: Callable[[Ntag21x], None], remove: Callable[[], None]) -> Tap:
    @contextmanager
    def tap(chip: Ntag21x) -> Iterator[tuple[CardSession, Type2Channel]]:
        if chip.removed:
            chip.reinsert(None)
        place(chip)
        try:
            with reader.connect(timeout=3.0) as channel:
                yield CardSession(Type2Tag(channel), TRUST), channel
        finally:
            remove()

    return tap


def _udp_tap() -> Iterator[Tap]:
    profile = find_reader_profile("nfcpy-udp-sim")
    with NfcUdpPeer(None, persist=False) as peer:
        with NfcpyReader(peer.path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
            yield _nfcpy_tap(reader, peer.place, peer.remove)


def _pn532_tap() -> Iterator[Tap]:
    profile = find_reader_profile("pn532-uart")
    emulator = Pn532Emulator(None, persist=False)
    with Pn532Pty(emulator, link=f"huma-pn532-s{os.getpid()}") as pty:
        with NfcpyReader(pty.nfcpy_path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
            yield _nfcpy_tap(reader, emulator.place, emulator.remove)


@pytest.fixture(
    params=[
        pytest.param("pcsc", marks=pytest.mark.pcsc),
        "nfcpy-udp",
        "nfcpy-pn532",
    ]
)
def tap(request: pytest.FixtureRequest) -> Iterator[Tap]:
    """``with tap(chip) as (session, channel):`` — the card on a reader of the given stack."""
    factories = {"pcsc": lambda: _pcsc_tap(request), "nfcpy-udp": _udp_tap, "nfcpy-pn532": _pn532_tap}
    yield from factories[request.param]()


def test_verify_and_redeem_command_counts(tap: Tap) -> None:
    chip = chip_with(issue().image)
    with tap(chip) as (session, channel):
        state = session.read_state(NOW)
        verify_commands = channel.commands
        pending = session.prepare_redemption(state, signer=TERMINAL, cycle=CYCLE, amounts={CASH: 100_000},
                                             terminal_id=17, terminal_seq=1, now=NOW)
        result = session.commit(pending)
        redeem_commands = channel.commands
    assert result.outcome is WriteOutcome.COMMITTED
    assert verify_commands <= 6  # docs/design.md §Performance targets
    assert redeem_commands <= 40
    with tap(chip) as (session, _):
        after = session.read_state(NOW)
    assert after.current.claims.seq == 1 and after.current.claims.remaining[CASH] == 150_000




@pytest.mark.parametrize(("after", "tear", "fill"), SAMPLED_TEARS)
def test_torn_redemption_recovers_exactly_once(tap: Tap, after: int, tear: int | None, fill: TornFill) -> None:
    chip = chip_with(issue().image)
    amounts = {CASH: 50_000}
    with tap(chip) as (session, _):
        base = session.read_state(NOW)
        pending = session.prepare_redemption(base, signer=TERMINAL, cycle=CYCLE, amounts=amounts,
                                             terminal_id=17, terminal_seq=1, now=NOW)
        chip.arm(FaultPlan(remove_after_commands=after, tear_during_remove=tear, torn_fill=fill, seed=after))
        result = session.commit(pending)
        chip.arm(None)
    assert result.outcome is not WriteOutcome.COMMITTED
    with tap(chip) as (session, _):
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
    with tap(chip) as (session, _):
        final = session.read_state(NOW)
    assert final.current.claims.seq == 1
    assert final.current.claims.remaining[CASH] == 200_000
