"""The secure card through the real stack: pcscd + vpcd + the virtual secure card, pyscard.

Each presentation costs about half a second of PC/SC presence polling, so the
exhaustive tear sweep of a redemption runs once per APDU and tear point here,
and the rest (every rule of the spec) in-process in tests/test_secure_session.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from cardlib.secure import (
    CloneSuspected,
    PinBlocked,
    PinWrong,
    SecureCardSession,
    StateRollbackRefused,
    check_record_seq,
)
from cardlib.secure.conformance import CheckOutcome, run_conformance
from cardlib.transport import Connection, CountingConnection
from cardlib.transport.errors import TransportError
from simulator.harness import PcscdHarness, reader_name
from simulator.secure_card import SecureCard, SecureFaultPlan, SecureVpcdCard, TearPoint
from tests.fixtures.pcsc import wait_for_card
from tests.test_secure_session import REDEMPTION_APDUS, _seq, identity_claims
from tests.test_secure_support import (
    CARD_ID,
    CARD_TERMINAL_KEY,
    ISSUER_KEY,
    PIN,
    personalised_card,
    prove,
    slot_record,
)

pytestmark = pytest.mark.pcsc
SLOT = 0


class Reader:
    """Puts a virtual secure card on the private pcscd's slot 0 and connects to it through PC/SC."""

    def __init__(self, harness: PcscdHarness) -> None:
        self.harness = harness
        self.server: SecureVpcdCard | None = None
        self.conn: Connection | None = None
        self._removals = 0

    def put(self, card: SecureCard) -> Connection:
        from cardlib.transport.pcsc import connect

        if card.removed:
            card.reinsert()
        self._removals = self.harness.removal_events(SLOT)
        self.server = SecureVpcdCard(card, self.harness.port(SLOT)).start()
        self.server.wait_connected()
        wait_for_card(reader_name(SLOT), present=True)
        self.conn = connect(reader_name(SLOT))
        return self.conn

    def take(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.server is not None:
            self.server.stop()
            self.server = None
            wait_for_card(reader_name(SLOT), present=False)
            self.harness.wait_removal_seen(SLOT, self._removals)

    @contextmanager
    def tap(self, card: SecureCard) -> Iterator[Connection]:
        try:
            yield self.put(card)
        finally:
            self.take()


class PcscTear:
    """:class:`cardlib.secure.conformance.TearInjector` through pcscd: the card leaves the vpcd slot."""

    def __init__(self, reader: Reader, card: SecureCard) -> None:
        self.reader = reader
        self.card = card

    def arm(self, after: int, commit: bool) -> None:
        self.card.arm(SecureFaultPlan(after, TearPoint.AFTER_COMMIT if commit else TearPoint.BEFORE_COMMIT))

    def reconnect(self) -> Connection:
        self.reader.take()
        return self.reader.put(self.card)


@pytest.fixture
def reader(pcscd_service: PcscdHarness) -> Iterator[Reader]:
    r = Reader(pcscd_service)
    yield r
    r.take()


def test_redemption_through_pcscd_is_seven_apdus(reader: Reader, tmp_path: Path) -> None:
    card, key = personalised_card(tmp_path / "c.secure.json", pin_required=True, seq=3)
    with reader.tap(card) as conn:
        counting = CountingConnection(conn)
        session = SecureCardSession(counting)
        session.select()
        claims = identity_claims(session.read_identity())
        assert claims[10] == key and claims[1] == CARD_ID
        verified = session.verify_card(key, CARD_ID, select=False)
        check_record_seq(verified, _seq(verified.state.state))
        session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, pin=PIN)
        session.commit(4, slot_record(4, remaining=90_000))
        assert counting.commands == 7
    assert SecureCard.load(tmp_path / "c.secure.json").seq == 4  # persisted like the other virtual cards


def test_clone_fails_authentication_through_pcscd(reader: Reader) -> None:
    card, key = personalised_card(seq=5)
    clone = card.forge_clone()
    with reader.tap(clone) as conn:
        session = SecureCardSession(conn)
        session.select()
        state = session.read_state()
        assert state.state == card.state and session.public_key() == card.public_point
        with pytest.raises(CloneSuspected):
            session.authenticate(key, CARD_ID, state)
    with reader.tap(card) as conn:
        SecureCardSession(conn).verify_card(key, CARD_ID)


def test_restored_old_state_is_refused_through_pcscd(reader: Reader) -> None:
    card, key = personalised_card(seq=6)
    with reader.tap(card) as conn:
        session = SecureCardSession(conn)
        session.select()
        for seq in (5, 6):
            with pytest.raises(StateRollbackRefused):
                session.update_state(seq, slot_record(seq))
        assert session.read_state().state == slot_record(6)


def test_pin_blocks_after_three_wrong_tries_through_pcscd(reader: Reader) -> None:
    card, key = personalised_card()
    with reader.tap(card) as conn:
        session = SecureCardSession(conn)
        prove(session, key)
        for left in (2, 1, 0):
            with pytest.raises(PinWrong) as info:
                session.verify_pin("111111")
            assert info.value.tries_left == left
        with pytest.raises(PinBlocked):
            session.verify_pin(PIN)
    with reader.tap(card) as conn:  # still blocked on the next tap
        session = SecureCardSession(conn)
        session.verify_card(key, CARD_ID)
        with pytest.raises(PinBlocked):
            session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, pin=PIN)


@pytest.mark.parametrize("tear", list(TearPoint))
@pytest.mark.parametrize("after", range(REDEMPTION_APDUS))
def test_tear_at_every_apdu_through_pcscd_leaves_old_or_new(reader: Reader, after: int, tear: TearPoint) -> None:
    card, key = personalised_card(seq=1)
    old, new = slot_record(1), slot_record(2, remaining=10_000)
    with reader.tap(card) as conn:
        card.arm(SecureFaultPlan(after, tear))
        session = SecureCardSession(conn)
        with pytest.raises(TransportError):
            session.verify_card(key, CARD_ID)
            session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, pin=PIN)
            session.commit(2, new)
    card.arm(None)
    with reader.tap(card) as conn:
        verified = SecureCardSession(conn).verify_card(key, CARD_ID)
    assert (verified.state.seq, verified.state.state) in ((1, old), (2, new))


def test_conformance_through_pcscd(reader: Reader) -> None:
    card, key = personalised_card(pin_required=True)
    conn = reader.put(card)
    report = run_conformance(conn, pin=PIN, card_key=key, card_id=CARD_ID, destructive=True, issuer_key=ISSUER_KEY,
                             tear=PcscTear(reader, card), terminal_key=CARD_TERMINAL_KEY)
    assert report.ok, report.to_dict()
    assert all(r.outcome is CheckOutcome.PASS for r in report.results), report.to_dict()


def test_card_conformance_cli_through_pcscd(reader: Reader) -> None:
    from huma.cli import cli

    card, key = personalised_card()
    reader.put(card).close()  # the card stays on the reader; the CLI opens its own connection
    reader.conn = None
    result = CliRunner().invoke(cli, ["card", "conformance", "--reader", reader_name(SLOT), "--pin", PIN,
                                      "--card-key", key.hex(), "--terminal-key", CARD_TERMINAL_KEY.hex(), "--json"])
    assert result.exit_code == 0, result.output
    assert '"ok": true' in result.output and '"rollback_refused"' in result.output
    assert '"verify_needs_terminal"' in result.output
