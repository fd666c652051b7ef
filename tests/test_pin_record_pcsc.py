"""A forgotten NTAG PIN gets a new one at the office (issue 18), through the real pcscd + vpcd.

Format-2 cards issued now carry identity claim 9 version 3 (the scrypt cost, signed) and the
PIN itself in a keyed PIN record on the last two user pages (NTAG215 128-129, private, never
locked; docs/card-format.md §3.2). The office's pin-reset writes a record for a new PIN at the
card's epoch + 1. Someone who sniffed the card's password (PWD_AUTH travels in clear) can write
those pages too, but cannot make a tag for a PIN of their choice without the provincial ring.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.provision.households import Household
from cardlib.provision.pin_reset import PinResetRefused, reset_ntag_pin
from cardlib.records import pin as card_pin
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.claims import PinVerifier
from cardlib.records.cose import Algorithm
from cardlib.records.layout import CardLayout
from cardlib.records.session import CardSession
from cardlib.transport import CountingConnection
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U
from cardlib.type2.errors import Nak
from firmware_config.models import CounterMode
from simulator.chip import ChipVariant, Ntag21x
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.provision_support import Station, tag_on_reader

pytestmark = pytest.mark.pcsc

HOUSEHOLD = Household(line=2, household_ref=bytes.fromhex("9f3c2a1b00000012"), region="62.71", programmes=(1, 2))
CARD_ID = bytes.fromhex("6271000000000180")
UID = bytes.fromhex("04118899445566")
PIN_A = "246810"
PIN_B = "975312"
THIEF_PIN = "111111"
PAYOUT = 50_000
RECORD_PAGE = 128  # NTAG215: the last two user pages, 128-129
FAST_READ = 0x3A


@pytest.fixture(scope="module")
def station() -> Station:
    return Station()


class Counter:
    """A cash counter with its own key and journal, reading cards through pcscd."""

    def __init__(self, tmp: Path, ctx: StationContext, signer: SoftwareSigner, bundle: TrustBundle) -> None:
        self.journal = JournalStore(tmp / "counter.sqlite", terminal_id="T-6271-0009", signer=signer,
                                    clock=Clock(force_synced=True))
        self.pin: str | None = None
        self.commands = 0
        self.tap = TapProcessor(CounterConfig("T-6271-0009", CounterMode.CASH_PAYOUT, OfflineLimits(),
                                              caps={"": ACR122U}, card_passwords=ctx.passwords),
                                self.journal, signer, trust=lambda: Trust(bundle, time.time()),
                                request=lambda: ("cash", PAYOUT, self.pin))

    def present(self, present_card, reader: str, chip: Ntag21x, pin: str | None) -> TapOutcome:  # type: ignore[no-untyped-def]
        self.pin = pin
        with present_card(chip), PcscContext() as pctx:
            conn = CountingConnection(PcscConnection(pctx, reader))
            try:
                return self.tap(conn, None)  # type: ignore[arg-type]
            finally:
                self.commands = conn.commands
                conn.close()


@pytest.fixture
def office(tmp_path: Path, station: Station) -> Iterator[tuple[StationContext, Counter]]:
    signer = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    base = station.bundle()
    bundle = dataclasses.replace(
        base, keys=(*base.keys, BundleKey(signer.kid, KeyRole.TERMINAL, signer.alg, signer.public_key)),
        programmes=(BundleProgramme(1, "food", "package", 1), BundleProgramme(2, "cash", "rupiah", 250_000)),
        policies={"pin.cash": 1, card_pin.MAX_FAILURES_POLICY: 3},
    )
    ctx = dataclasses.replace(station.context(), trust=bundle, card_format=2)
    counter = Counter(tmp_path, ctx, signer, bundle)
    yield ctx, counter
    counter.journal.close()


def _issue(present_card, reader: str, station: Station, ctx: StationContext, uid: bytes = UID,  # type: ignore[no-untyped-def]
           card_id: bytes = CARD_ID, pin: str = PIN_A) -> Ntag21x:
    chip = station.fab.genuine(ChipVariant.NTAG215, uid)
    with tag_on_reader(present_card, reader, chip) as tag:
        personalise(tag, ctx, HOUSEHOLD, card_id, check_chip(tag, ctx), pin=pin)
    return chip


def _office_reset(present_card, reader: str, chip: Ntag21x, ctx: StationContext,  # type: ignore[no-untyped-def]
                  new_pin: str | None, **kw: object):
    with tag_on_reader(present_card, reader, chip) as tag:
        return reset_ntag_pin(tag, ctx.trust, ctx.passwords, int(time.time()),
                              None if new_pin is None else (lambda: new_pin), **kw)  # type: ignore[arg-type]


def _sniffed(present_card, reader: str, chip: Ntag21x, ctx: StationContext):  # type: ignore[no-untyped-def]
    """What a sniffer of one counter tap has: the card's PWD (sent in clear); it opens the chip."""
    pwd = ctx.passwords.password(ctx.password_key_version, chip.uid)
    cm = tag_on_reader(present_card, reader, chip)
    tag = cm.__enter__()
    tag.pwd_auth(pwd.pwd, expected_pack=pwd.pack)
    return cm, tag


def test_a_forgotten_pin_gets_a_new_one_at_the_office(present_card, reader_name, station: Station, office) -> None:
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    with tag_on_reader(present_card, reader, chip) as tag:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
        record = card_pin.read_record(tag)
    claim = state.identity.claims.pin
    assert claim is not None and claim.version == 3 and claim.to_cbor_value() == [3, 14, 8, 1]  # no verifier signed
    assert record is not None and record.epoch == 1
    # a phone (no password) reads nothing of the record
    with tag_on_reader(present_card, reader, chip) as tag, pytest.raises(Nak):
        tag.channel.transceive(bytes((FAST_READ, RECORD_PAGE, RECORD_PAGE + 1)))
    assert counter.present(present_card, reader, chip, PIN_A).status is TapStatus.ACCEPTED
    # the holder forgets it: three wrong tries lock the card
    for _ in range(3):
        assert counter.present(present_card, reader, chip, "135790").reason is DeclineReason.PIN_WRONG
    assert counter.present(present_card, reader, chip, PIN_A).reason is DeclineReason.PIN_LOCKED
    # the office: papers checked, a new PIN typed, no re-issue
    result = _office_reset(present_card, reader, chip, ctx, PIN_B)
    assert (result.pin_changed, result.pin_epoch, result.failures_before) == (True, 2, 3)
    assert counter.present(present_card, reader, chip, PIN_A).reason is DeclineReason.PIN_WRONG
    out = counter.present(present_card, reader, chip, PIN_B)
    assert out.status is TapStatus.ACCEPTED and out.amount == PAYOUT
    # --keep-pin: the count only
    again = _office_reset(present_card, reader, chip, ctx, None)
    assert (again.pin_changed, again.pin_epoch) == (False, 2)
    assert counter.present(present_card, reader, chip, PIN_B).status is TapStatus.ACCEPTED


def test_a_sniffed_password_cannot_write_a_pin_of_ones_choice(
        present_card, reader_name, station: Station, office) -> None:
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    # the thief's own card, issued with a PIN they know: its record does not move to another card
    own = _issue(present_card, reader, station, ctx, uid=bytes.fromhex("04118899440001"),
                 card_id=bytes.fromhex("6271000000000181"), pin=THIEF_PIN)
    cm, tag = _sniffed(present_card, reader, own, ctx)
    own_record = tag.read_pages(RECORD_PAGE, 2)
    cm.__exit__(None, None, None)
    verifier = PinVerifier.v3(log2_n=14)
    forgeries = (
        own_record,  # a genuine record of another card (its tag binds card id, UID and that card's key)
        card_pin.PinRecord(9, os.urandom(6)).encode(),  # a made-up tag at a higher epoch
        # the right construction under a key the thief made up (the PWD is all they have)
        card_pin.make_record(b"\x00" * 32, verifier, THIEF_PIN, CARD_ID, UID, 2).encode(),
    )
    for forged in forgeries:
        cm, tag = _sniffed(present_card, reader, chip, ctx)
        tag.write_pages(RECORD_PAGE, forged)
        card_pin.reset_attempts(tag)  # and the count back to 0 (page after slot B), as they can
        cm.__exit__(None, None, None)
        out = counter.present(present_card, reader, chip, THIEF_PIN)
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.PIN_WRONG
    # a record that is not one (erased, garbage): PIN programmes decline with their own reason, no try spent
    for garbage in (bytes(8), b"\xff" * 8):
        cm, tag = _sniffed(present_card, reader, chip, ctx)
        tag.write_pages(RECORD_PAGE, garbage)
        cm.__exit__(None, None, None)
        out = counter.present(present_card, reader, chip, PIN_A)
        assert out.reason is DeclineReason.PIN_RECORD_INVALID
    notes = [e.note for e in counter.journal.entries() if e.entry.decline_reason == "pin_record_invalid"]
    assert notes == ["pin record missing or garbled"] * 2
    # the office repairs it with a new PIN (the garbled record's epoch is unknown: 1 + the floor given)
    result = _office_reset(present_card, reader, chip, ctx, PIN_B, min_epoch=5)
    assert result.pin_epoch == 5
    assert counter.present(present_card, reader, chip, PIN_B).status is TapStatus.ACCEPTED


def test_rolling_the_record_back_restores_the_old_pin_only(
        present_card, reader_name, station: Station, office) -> None:
    """Accepted (docs/security.md §A PIN that resists a phone): who can roll back must have sniffed
    the password and dumped the record before the reset, and gains only the PIN the holder had."""
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    cm, tag = _sniffed(present_card, reader, chip, ctx)
    epoch1 = tag.read_pages(RECORD_PAGE, 2)
    cm.__exit__(None, None, None)
    assert _office_reset(present_card, reader, chip, ctx, PIN_B).pin_epoch == 2
    cm, tag = _sniffed(present_card, reader, chip, ctx)
    tag.write_pages(RECORD_PAGE, epoch1)
    cm.__exit__(None, None, None)
    assert counter.present(present_card, reader, chip, PIN_B).reason is DeclineReason.PIN_WRONG
    assert counter.present(present_card, reader, chip, PIN_A).status is TapStatus.ACCEPTED
    # the next office reset moves on from the epoch it finds (no reuse of a tag the thief saw)
    assert _office_reset(present_card, reader, chip, ctx, PIN_B).pin_epoch == 2


def test_a_card_with_its_verifier_in_the_identity_keeps_its_pin(
        present_card, reader_name, station: Station, office, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cards issued before issue 18 (claim 9 version 2): the count is cleared, a new PIN refused."""
    import cardlib.provision.card as provision_card

    ctx, counter = office
    reader = reader_name(0)
    real = provision_card.build_identity

    def v2(c, household, card_id, uid, today, pin=None):  # type: ignore[no-untyped-def]
        return real(dataclasses.replace(c, card_format=1), household, card_id, uid, today, pin)

    monkeypatch.setattr(provision_card, "build_identity", v2)
    chip = _issue(present_card, reader, station, ctx)
    monkeypatch.undo()
    # the PIN record costs a PIN check no command: the count page and the record come in one FAST_READ
    # (a wrong PIN: the tap ends after the check, no slot write whose pages depend on the data)
    v3 = _issue(present_card, reader, station, ctx, uid=bytes.fromhex("04118899440002"),
                card_id=bytes.fromhex("6271000000000182"))
    assert counter.present(present_card, reader, chip, THIEF_PIN).reason is DeclineReason.PIN_WRONG
    v2_commands = counter.commands
    assert counter.present(present_card, reader, v3, THIEF_PIN).reason is DeclineReason.PIN_WRONG
    # one fewer, even: the v3 identity is 14 bytes shorter, so this 2-programme card keeps the
    # counter mirror (no READ_CNT), which the v2 card's image leaves no room for
    assert counter.commands == v2_commands - 1
    with tag_on_reader(present_card, reader, chip) as tag:
        CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
        card_pin.reset_attempts(tag)
    for _ in range(3):
        counter.present(present_card, reader, chip, "135790")
    with pytest.raises(PinResetRefused, match="re-issue"):
        _office_reset(present_card, reader, chip, ctx, PIN_B, require_new_pin=True)
    result = _office_reset(present_card, reader, chip, ctx, PIN_B)
    assert (result.pin_changed, result.pin_epoch, result.failures_before) == (False, None, 3)
    assert counter.present(present_card, reader, chip, PIN_B).reason is DeclineReason.PIN_WRONG
    assert counter.present(present_card, reader, chip, PIN_A).status is TapStatus.ACCEPTED


def test_the_pin_record_fits_behind_the_count_and_the_counter_mirror() -> None:
    ntag215, ntag213 = range(4, 130), range(4, 40)
    default = CardLayout(164, 144, 2)  # 3 programmes + PIN: pages 11-124, count 125, mirror 126-127
    assert default.pin_failures_page == 125 and card_pin.pin_record_fits(default, ntag215, 496)
    assert card_pin.pin_record_fits(CardLayout(172, 144, 2), ntag215, 496)  # count on 127, no mirror
    assert not card_pin.pin_record_fits(CardLayout(28, 40, 2), ntag213, 144)  # no page after the CC's area
    assert not card_pin.pin_record_fits(CardLayout(28, 40, 1), ntag215, 496)  # format 1: no private pages
    record = card_pin.PinRecord(3, bytes(range(6)))
    assert card_pin.decode_record(record.encode()) == record
    for raw in (bytes(8), b"\xff" * 8, bytes((3, 0xFD)) + bytes(6), bytes((0, 0xFF)) + bytes(6)):
        assert card_pin.decode_record(raw) is None
