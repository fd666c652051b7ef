"""Red team, round 2: attacks on the PIN record, the office PIN reset, the fallback desk and the
journal that the system defends (docs/security.md, docs/fallback.md). Each test performs the
attack and asserts the defence.

PIN record and reset through the real pcscd + vpcd (cards issued by the production steps, as in
tests/test_pin_record_pcsc.py); the counter's fallback desk and journal in-process, as in
tests/test_redteam_counter.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from cardlib.provision.pin_reset import PinResetRefused
from cardlib.records import pin as card_pin
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from cardlib.records.layout import private_layout
from cardlib.records.session import CardSession
from cardlib.transport.errors import ReaderGone, ServiceUnavailable, SessionLost
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.errors import Nak
from firmware_config.models import CounterMode
from simulator.chip import FaultPlan
from terminal.clock import Clock
from terminal.errors import JournalVerifyError
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_audit import verify_journal_file
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason
from tests.provision_support import Station, tag_on_reader
from tests.test_card_protection_pcsc import _dump_clone
from tests.test_pin_record_pcsc import (  # noqa: F401 - office and station are fixtures
    CARD_ID,
    PAYOUT,
    PIN_A,
    PIN_B,
    RECORD_PAGE,
    THIEF_PIN,
    _issue,
    _office_reset,
    office,
    station,
)
from tests.test_records_support import TERMINAL, identity
from tests.test_terminal_caps_and_declines import fresh_bundle

WRITE = 0xA2
SUPERVISOR_PW = "kunci-sri-77"


def _phone_write(present_card, reader: str, chip, page: int, data: bytes) -> bool:  # type: ignore[no-untyped-def]
    """One plain WRITE as a phone app sends it (fresh activation, no PWD_AUTH); True when taken."""
    with tag_on_reader(present_card, reader, chip) as tag:
        try:
            tag.channel.transceive(bytes((WRITE, page)) + data)
            return True
        except Nak:
            return False


# ---------------------------------------------------------------- holder with a phone: the PIN record


@pytest.mark.pcsc
def test_phone_cannot_rewrite_the_pin_record_or_its_count(present_card, reader_name, station: Station,  # noqa: F811
                                                          office) -> None:  # noqa: F811
    """The holder's phone writes a record page (own epoch, erased) and the count: all NAKed, PIN intact."""
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    record = chip.page(RECORD_PAGE) + chip.page(RECORD_PAGE + 1)
    count_page = private_layout(chip.page(11)).pin_failures_page
    assert counter.present(present_card, reader, chip, THIEF_PIN).reason is DeclineReason.PIN_WRONG
    count = chip.page(count_page)
    for page, data in ((RECORD_PAGE, bytes((9, 9 ^ 0xFF, 0, 0))), (RECORD_PAGE + 1, bytes(4)),
                       (RECORD_PAGE, bytes(4)), (count_page, card_pin.encode_failures(0))):
        assert not _phone_write(present_card, reader, chip, page, data), f"page {page} took a phone's WRITE"
    assert chip.page(RECORD_PAGE) + chip.page(RECORD_PAGE + 1) == record and chip.page(count_page) == count
    assert card_pin.decode_failures(count) == 1
    assert counter.present(present_card, reader, chip, PIN_A).status is TapStatus.ACCEPTED


def _tap_pulled(counter, present_card, reader: str, chip, pin: str,  # type: ignore[no-untyped-def]
                faults: FaultPlan | None = None) -> TapOutcome:
    counter.pin = pin
    with present_card(chip, faults=faults), PcscContext() as pctx:
        conn = PcscConnection(pctx, reader)
        try:
            return counter.tap(conn, None)  # type: ignore[no-any-return]
        except (SessionLost, ReaderGone, ServiceUnavailable):  # published RETRY, re-raised for the reader supervisor
            return TapOutcome(TapStatus.RETRY, reader, counter.tap.cfg.mode, "cash")
        finally:
            conn.close()


@pytest.mark.pcsc
@pytest.mark.parametrize("pulled_after", [4, 8, 20])
def test_a_card_pulled_mid_pin_tap_is_paid_exactly_what_it_was_debited(
        present_card, reader_name, station: Station, office, pulled_after: int) -> None:  # noqa: F811
    """The holder pulls the card during the PIN check (4), the slot write (8, 20), then taps twice more:
    every tap ends in a typed outcome, and the cash the clerk is told to hand over equals the card's debit."""
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)

    def remaining() -> int:
        with tag_on_reader(present_card, reader, chip) as tag:
            state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
        return state.current.claims.remaining[2]

    start = remaining()
    outs = [_tap_pulled(counter, present_card, reader, chip, PIN_A, FaultPlan(remove_after_commands=pulled_after)),
            _tap_pulled(counter, present_card, reader, chip, PIN_A),
            _tap_pulled(counter, present_card, reader, chip, PIN_A)]
    paid = sum(o.amount or 0 for o in outs if o.status in (TapStatus.ACCEPTED, TapStatus.RECOVERED))
    assert outs[0].status is not TapStatus.ACCEPTED
    assert paid == start - remaining() >= PAYOUT, outs


# ---------------------------------------------------------------- the office PIN reset


@pytest.mark.pcsc
def test_office_reset_refuses_a_card_on_the_deny_list(present_card, reader_name, station: Station,  # noqa: F811
                                                      office) -> None:  # noqa: F811
    """A clerk cannot give a denied card (a proven clone or restored dump) a new PIN of their choice."""
    ctx, _counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    before = chip.page(RECORD_PAGE) + chip.page(RECORD_PAGE + 1)
    denied = dataclasses.replace(ctx, trust=dataclasses.replace(ctx.trust, deny_cards=frozenset({CARD_ID})))
    with pytest.raises(PinResetRefused):
        _office_reset(present_card, reader, chip, denied, PIN_B)
    assert chip.page(RECORD_PAGE) + chip.page(RECORD_PAGE + 1) == before


@pytest.mark.pcsc
def test_office_reset_refuses_a_dump_clone(present_card, reader_name, station: Station,  # noqa: F811
                                           office) -> None:  # noqa: F811
    """A blank chip with the card's UID and its phone-readable pages: no PWD/PACK, so no reset."""
    ctx, _counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    clone = _dump_clone(present_card, reader, chip)
    with pytest.raises(PinResetRefused):
        _office_reset(present_card, reader, clone, ctx, PIN_B)
    assert card_pin.decode_record(clone.page(RECORD_PAGE) + clone.page(RECORD_PAGE + 1)) is None


# ---------------------------------------------------------------- dishonest clerk: fallback and journal


@pytest.fixture
def desk_journal(tmp_path: Path):  # type: ignore[no-untyped-def]
    j = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-6271-0001", signer=TERMINAL,
                     clock=Clock(force_synced=True))
    yield j
    j.close()


def test_a_clerk_cannot_approve_a_manual_entry_with_an_approver_name_the_desk_rewrites(desk_journal) -> None:  # type: ignore[no-untyped-def]
    """Supervisor ids with control characters or padding (to pass as someone else in the audit view) are refused."""
    bundle = fresh_bundle({"fallback.manual.food": 2})
    desk = FallbackDesk(desk_journal, lambda: bundle, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                        {"sri": supervisor_hash(SUPERVISOR_PW)})
    card = identity().card_id.hex()
    for name in ("sri\u202e", "s\u200bri", "x" * 65, "", "sri\x1b[2K"):
        with pytest.raises(ValueError):
            desk.manual(card, "food", 1, name, SUPERVISOR_PW)
    # padding is stripped, so " sri " is the supervisor sri, checked with sri's password
    assert desk.manual(card, "food", 1, " sri ", "not-sri").reason is DeclineReason.SUPERVISOR_REFUSED
    out = desk.manual(card, "food", 1, " sri ", SUPERVISOR_PW)
    assert out.status is TapStatus.ACCEPTED
    assert [s.entry.approved_by for s in desk_journal.entries() if s.entry.kind is EntryKind.FALLBACK] == ["sri"]


def test_a_denied_card_gets_nothing_through_the_fallback_ladder(desk_journal) -> None:  # type: ignore[no-untyped-def]
    """A cloner whose card id is on the published deny list goes to the clerk's manual entry: refused."""
    card = identity().card_id
    bundle = fresh_bundle({"fallback.manual.food": 5}, deny_cards=frozenset({card}))
    desk = FallbackDesk(desk_journal, lambda: bundle, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                        {"sri": supervisor_hash(SUPERVISOR_PW)})
    out = desk.manual(card.hex(), "food", 1, "sri", SUPERVISOR_PW)
    assert out.reason is DeclineReason.CARD_DENIED
    assert desk_journal.card_cycle_exposure(card.hex(), 0, 4e9) == {}


def test_a_fallback_entry_inserted_into_the_journal_file_fails_verify(tmp_path: Path) -> None:
    """The clerk copies a genuine FALLBACK row under a new seq (a second package 'on the record'): verify catches it."""
    path = tmp_path / "journal.sqlite"
    j = JournalStore(path, terminal_id="T-6271-0001", signer=TERMINAL, clock=Clock(force_synced=True))
    bundle = fresh_bundle({"fallback.manual.food": 1})
    try:
        desk = FallbackDesk(j, lambda: bundle, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                            {"sri": supervisor_hash(SUPERVISOR_PW)})
        assert desk.manual(identity().card_id.hex(), "food", 1, "sri", SUPERVISOR_PW).status is TapStatus.ACCEPTED
        last = j.entries()[-1]
    finally:
        j.close()
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(entries)")]
    row = dict(zip(cols, db.execute("SELECT * FROM entries WHERE seq=?", (last.seq,)).fetchone(), strict=True))
    row["seq"] = last.seq + 1
    row["entry_id"] = bytes(16)
    row["entry_hash"] = b"\x01" * 32  # UNIQUE: a copy needs a hash of its own, which its signature does not cover
    db.execute(f"INSERT INTO entries ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
               [row[c] for c in cols])
    db.commit()
    db.close()
    with pytest.raises(JournalVerifyError):
        verify_journal_file(path, None)


def test_the_terminal_exposure_is_not_reset_by_a_fallback_under_another_unit_name(desk_journal) -> None:  # type: ignore[no-untyped-def]
    """Fallbacks count in the programme's unit: a clerk cannot pass the package exposure by naming another programme."""
    bundle = fresh_bundle({"fallback.manual.food": 5, "fallback.manual.cash": 100_000,
                           "cap.terminal_exposure.package": 2})
    desk = FallbackDesk(desk_journal, lambda: bundle, CounterMode.MARKET_REDEMPTION,  # type: ignore[arg-type, return-value]
                        {"sri": supervisor_hash(SUPERVISOR_PW)})
    served = 0
    for n in range(4):
        out = desk.manual(f"62710000000000{n:02x}", "food", 1, "sri", SUPERVISOR_PW)
        served += out.status is TapStatus.ACCEPTED
    assert served == 2
    assert desk_journal.exposure() == {Unit.PACKAGE: 2}
