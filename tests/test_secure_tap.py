"""The `secure` profile at the counter through real pcscd + vpcd (docs/secure-card.md §7).

One :class:`~terminal.tap.TapProcessor` serves NTAG and secure cards; the card type is told
by the ATR. Each presentation costs ~0.5 s of PC/SC presence polling, so the exhaustive tear
sweep runs in-process too (same processor, the virtual card's own connection).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from cardlib.keys.signer import cose_key
from cardlib.records.journal import EntryKind
from cardlib.secure import SecureCardSession, StateRollbackRefused, TerminalAuthRequired, terminal_card_key
from cardlib.transport import Connection, CountingConnection
from cardlib.transport.errors import SessionLost
from firmware_config.models import CounterMode
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard, SecureCardConnection, SecureFaultPlan, TearPoint
from terminal.journal_audit import verify_journal_file
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason
from terminal.secure_tap import is_secure_atr
from terminal.supervisor import ReaderNamePattern, Supervisor
from terminal.tap import TapProcessor
from tests.secure_tap_support import CARD_KEYS, PIN, SecureSlot, issue_secure, processor
from tests.test_records_support import TERMINAL
from tests.test_terminal_tap import issued_chip

ANY_READER = ReaderNamePattern(re.compile("."))
#: APDUs of a redemption with PIN: SELECT, identity, state, INTERNAL AUTHENTICATE, EXTERNAL AUTHENTICATE + PIN,
#: UPDATE, read-back.
REDEMPTION_APDUS = 7


@pytest.fixture
def slot(pcscd_service: PcscdHarness) -> SecureSlot:
    return SecureSlot(pcscd_service, 0)


def tap_over_pcsc(p: TapProcessor, slot: SecureSlot, card: SecureCard) -> tuple[TapOutcome, int]:
    with slot.present(card) as conn:
        assert conn is not None and is_secure_atr(conn.atr)
        counting = CountingConnection(conn)
        return _call(p, counting), counting.commands


def _call(p: TapProcessor, conn: Connection) -> TapOutcome:
    """One tap; the card leaving before anything was journalled is re-raised to the supervisor: RETRY."""
    try:
        return p(conn, ANY_READER)
    except SessionLost as exc:
        return TapOutcome(TapStatus.RETRY, conn.reader_name, p.cfg.mode, "", detail=str(exc))


def tap_in_process(p: TapProcessor, card: SecureCard) -> TapOutcome:
    if card.removed:
        card.reinsert()
    try:
        return _call(p, SecureCardConnection(card))
    finally:
        card.field_off()


def issue_secure_identity(session: SecureCardSession) -> tuple[bytes, bytes]:
    """SELECT and the card id and card key of the identity on the card (claims 1 and 10)."""
    import cbor2

    session.select()
    claims = cbor2.loads(cbor2.loads(session.read_identity()).value[2])
    return claims[1], claims[10]


def kinds(p: TapProcessor) -> list[EntryKind]:
    return [e.entry.kind for e in p.journal.entries()][1:]  # after BOOT


@pytest.mark.pcsc
def test_redemption_and_clone_declined_offline(slot: SecureSlot, tmp_path: Path) -> None:
    card, issued = issue_secure(tmp_path / "c.secure.json")
    p = processor(tmp_path, CounterMode.CASH_PAYOUT, ["cash", 100_000, PIN])
    ok, apdus = tap_over_pcsc(p, slot, card)
    assert ok.status is TapStatus.ACCEPTED and (ok.amount, ok.remaining) == (100_000, 150_000), ok
    assert apdus == REDEMPTION_APDUS and ok.receipt is not None
    clone = card.forge_clone()  # every readable byte, the same identity and state, its own key
    declined, apdus = tap_over_pcsc(p, slot, clone)
    assert declined.status is TapStatus.DECLINED and declined.reason is DeclineReason.CLONE_CHECK_FAILED
    assert apdus == 4 and declined.card_id == issued.card_id.hex()  # nothing written, nothing asked
    entries = p.journal.entries()
    assert [e.entry.kind for e in entries][1:] == [EntryKind.PENDING, EntryKind.COMMIT, EntryKind.DECLINED]
    last = entries[-1].entry
    assert (last.card_id, last.decline_reason, last.ntag_counter) == (issued.card_id.hex(), "clone_check_failed", None)
    # the counter the tap's first INTERNAL AUTHENTICATE signed; the card moved once more signing that it
    # holds the new state (SecureCardSession.confirm_state, red team round 4)
    assert entries[1].entry.tag_uid is None and entries[1].entry.ntag_counter == card.counter - 1
    assert verify_journal_file(p.journal.path, cose_key(TERMINAL)).entries == 4
    p.journal.close()


def test_a_card_memory_restored_from_a_dump_repeats_its_counter(tmp_path: Path) -> None:
    """Even with the real key (a restored EEPROM image), a counter not above the journalled one is declined."""
    card, issued = issue_secure(tmp_path / "c.secure.json")
    dump = tmp_path / "dump.secure.json"
    card.save(dump)
    p = processor(tmp_path, CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    assert tap_in_process(p, card).status is TapStatus.ACCEPTED
    out = tap_in_process(p, SecureCard.load(dump))
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_COUNTER_REPEATED
    assert p.journal.entries()[-1].entry.card_id == issued.card_id.hex()
    p.journal.close()


@pytest.mark.pcsc
def test_restored_old_state_refused_by_the_card_and_the_counter(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    p = processor(tmp_path, CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    genesis = card.state
    assert genesis is not None
    assert tap_over_pcsc(p, slot, card)[0].status is TapStatus.ACCEPTED
    with slot.present(card) as conn:  # a stranger writes the old record back: no proof, refused
        session = SecureCardSession(conn)
        session.select()
        for seq in (0, 1, 7):
            with pytest.raises(StateRollbackRefused):
                session.update_state(seq, genesis)
        with pytest.raises(TerminalAuthRequired):
            session.update_state(2, genesis)
    assert card.seq == 1
    with slot.present(card) as conn:  # an insider with the card-access key: seq + 1 only, and the counter sees it
        session = SecureCardSession(conn)
        identity = issue_secure_identity(session)
        session.verify_card(identity[1], identity[0], select=False)
        session.external_authenticate(terminal_card_key(CARD_KEYS.keys[1], identity[0]), identity[0])
        session.update_state(2, genesis)  # accepted by the card: the explicit seq is not the record's
    out, _ = tap_over_pcsc(p, slot, card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_STATE_INVALID
    p.journal.close()


@pytest.mark.pcsc
def test_pin_blocks_after_three_wrong_tries_at_the_counter(slot: SecureSlot, tmp_path: Path) -> None:
    card, _ = issue_secure()
    request: list[object] = ["cash", 50_000, "111111"]
    p = processor(tmp_path, CounterMode.CASH_PAYOUT, request)
    for tries_left in (2, 1, 0):
        out, _ = tap_over_pcsc(p, slot, card)
        assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.PIN_WRONG
        assert card.pin_tries == tries_left
    request[2] = PIN  # the right PIN no longer helps
    out, _ = tap_over_pcsc(p, slot, card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.PIN_BLOCKED
    assert card.seq == 0 and kinds(p) == [EntryKind.DECLINED] * 4
    p.journal.close()


@pytest.mark.pcsc
@pytest.mark.parametrize("tear", list(TearPoint))
@pytest.mark.parametrize("after", range(REDEMPTION_APDUS))
def test_tear_at_every_apdu_through_pcscd(slot: SecureSlot, tmp_path: Path, after: int, tear: TearPoint) -> None:
    _tear_then_represent(tmp_path, after, tear, lambda p, card: tap_over_pcsc(p, slot, card)[0])


@pytest.mark.parametrize("tear", list(TearPoint))
@pytest.mark.parametrize("after", range(REDEMPTION_APDUS))
def test_tear_at_every_apdu_in_process(tmp_path: Path, after: int, tear: TearPoint) -> None:
    _tear_then_represent(tmp_path, after, tear, tap_in_process)


def _tear_then_represent(tmp_path: Path, after: int, tear: TearPoint, tap: object) -> None:
    card, _ = issue_secure()
    p = processor(tmp_path, CounterMode.CASH_PAYOUT, ["cash", 100_000, PIN])
    card.arm(SecureFaultPlan(after, tear))
    first = tap(p, card)  # type: ignore[operator]
    card.arm(None)
    card.reinsert()
    second = tap(p, card)  # type: ignore[operator]
    third = tap(p, card)  # type: ignore[operator]
    outcomes = [first, second, third]
    paid = sum(o.amount for o in outcomes if o.status in (TapStatus.ACCEPTED, TapStatus.RECOVERED))
    # Never charged twice, never lost: what went out is what the card says was taken.
    assert card.state is not None and card.seq is not None
    taken = 250_000 - _remaining_cash(card)
    assert paid == taken and paid in (100_000, 200_000), outcomes
    assert first.status in (TapStatus.RETRY, TapStatus.UNCERTAIN, TapStatus.ACCEPTED), first
    if first.status is TapStatus.UNCERTAIN:
        assert second.status in (TapStatus.RECOVERED, TapStatus.VOIDED), second
    assert verify_journal_file(p.journal.path, cose_key(TERMINAL)).open_writes == ()
    p.journal.close()


def _remaining_cash(card: SecureCard) -> int:
    import cbor2

    from cardlib.records.claims import SlotClaims

    assert card.state is not None
    return SlotClaims.from_cbor(cbor2.loads(card.state).value[2]).remaining[2]


@pytest.mark.pcsc
def test_one_counter_serves_ntag_and_secure_cards(pcscd_service: PcscdHarness, present_card, tmp_path: Path) -> None:
    """A mixed queue on one supervisor and one tap processor: NTAG on slot 1, secure cards on slot 0."""
    p = processor(tmp_path, CounterMode.MARKET_REDEMPTION, ["food", 1, None])
    outcomes: list[TapOutcome] = []
    cond = threading.Condition()
    inner = p._publish

    def publish(o: TapOutcome) -> None:
        inner(o)
        with cond:
            outcomes.append(o)
            cond.notify_all()

    p._publish = publish
    sup = Supervisor([ReaderNamePattern(re.compile("^Virtual PCD"))], p, scan_s=0.3)
    thread = threading.Thread(target=sup.run)
    thread.start()

    def wait(n: int) -> TapOutcome:
        with cond:
            assert cond.wait_for(lambda: len(outcomes) >= n, 20.0), outcomes
            return outcomes[n - 1]

    secure_slot = SecureSlot(pcscd_service, 0)
    try:
        queue: list[object] = [issued_chip(), issue_secure(card_id=bytes.fromhex("62710000000a0011"))[0],
                               issue_secure(card_id=bytes.fromhex("62710000000a0012"))[0]]
        for n, card in enumerate(queue, start=1):
            if isinstance(card, SecureCard):
                with secure_slot.present(card, connect=False):
                    out = wait(n)
            else:
                with present_card(card, slot=1):
                    out = wait(n)
            assert out.status is TapStatus.ACCEPTED and out.amount == 1, out
        ntag_again = queue[0]
        with present_card(ntag_again, slot=1):
            assert wait(4).reason is DeclineReason.NOTHING_LEFT
        with secure_slot.present(queue[1], connect=False):  # type: ignore[arg-type]
            assert wait(5).reason is DeclineReason.NOTHING_LEFT
    finally:
        sup.stop()
        thread.join(timeout=15)
    entries = p.journal.entries()
    uids = [e.entry.tag_uid for e in entries if e.entry.kind is EntryKind.COMMIT]
    assert uids[0] is not None and uids[1:] == [None, None]  # NTAG carries its UID, secure cards their counter
    p.journal.close()

