"""The secure card protocol in-process: cardlib.secure against the virtual card of simulator/secure_card.py.

Fast (no pcscd): every tear of a redemption, clones, rollback, PIN, the NDEF
view and the conformance suite. tests/test_secure_pcsc.py runs the same card
through real pcscd + vpcd.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.records.claims import SlotClaims
from cardlib.secure import (
    CloneSuspected,
    CounterNotIncreasing,
    LifeCycleError,
    PinBlocked,
    PinRequired,
    PinWrong,
    SecureCardSession,
    SecureProtocolError,
    StateMismatch,
    StateRollbackRefused,
    TerminalAuthFailed,
    TerminalAuthRequired,
    check_record_seq,
    sign_pin_reset,
)
from cardlib.secure.conformance import CheckOutcome, run_conformance
from cardlib.secure.protocol import auth_message
from cardlib.transport import Connection, CountingConnection
from cardlib.transport.errors import CardRemoved
from simulator.errors import CardFileError
from simulator.secure_card import SecureCard, SecureCardConnection, SecureFaultPlan, TearPoint
from tests.test_secure_support import (
    CARD_ID,
    CARD_TERMINAL_KEY,
    ISSUER_KEY,
    NDEF_MESSAGE,
    PIN,
    InProcessTear,
    personalised_card,
    prove,
    slot_record,
)

NONCE = bytes(range(32))


class Recorder(Connection):
    """Records every exchange (command, response data, SW) for transcript assertions."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.log: list[tuple[bytes, bytes, int]] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = self.inner.send_and_receive(apdu)
        self.log.append((bytes(apdu), data, sw))
        return data, sw

    def close(self) -> None:
        self.inner.close()

    @property
    def reader_name(self) -> str:
        return self.inner.reader_name


def _payload(record: bytes) -> bytes:
    """The claims of a slot record (the terminal verifies its signature first; tests need only the seq)."""
    return bytes(cbor2.loads(record).value[2])


def test_verify_card_transcript_asserts_every_command_byte() -> None:
    card, key = personalised_card()
    rec = Recorder(SecureCardConnection(card))
    verified = SecureCardSession(rec).verify_card(key, CARD_ID, nonce=NONCE)
    sent = [apdu.hex().upper() for apdu, _, _ in rec.log]
    assert sent == [
        "00A4040008F048554D4153430100",
        "80CA010100",
        "80880000" + "20" + NONCE.hex().upper() + "00",
    ]
    fci, state, auth = (entry[1] for entry in rec.log)
    assert fci.hex().upper() == "6F158408F048554D41534301A509C00101C10107C20101"  # C2: card-access key version 1
    record = slot_record(0)
    assert state == bytes(4) + bytes(4) + record
    assert auth[:8] == (1).to_bytes(4, "big") + (0).to_bytes(4, "big")
    # the signature is over exactly the message of docs/secure-card.md §5.1
    message = (b"HB-SC/v1/auth" + CARD_ID + b"\x20" + NONCE + (1).to_bytes(4, "big") + bytes(4)
               + hashlib.sha256(record).digest())
    assert message == auth_message(CARD_ID, NONCE, 1, 0, hashlib.sha256(record).digest())
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    public.verify(auth[8:], message, ec.ECDSA(hashes.SHA256()))
    assert all(sw == 0x9000 for _, _, sw in rec.log)
    assert verified.counter == 1 and verified.state.state == record


def identity_claims(record: bytes) -> dict[int, object]:
    """The claims of the identity record (the terminal verifies it with its trust bundle first)."""
    return dict(cbor2.loads(_payload(record)))


def test_redemption_with_identity_pin_and_read_back_is_seven_apdus() -> None:
    card, key = personalised_card(pin_required=True)
    conn = CountingConnection(SecureCardConnection(card))
    session = SecureCardSession(conn)
    session.select()
    claims = identity_claims(session.read_identity())
    card_key, card_id = claims[10], claims[1]
    assert isinstance(card_key, bytes) and isinstance(card_id, bytes) and card_key == key
    verified = session.verify_card(card_key, card_id, select=False)
    check_record_seq(verified, _seq(verified.state.state))
    session.external_authenticate(CARD_TERMINAL_KEY, card_id, pin=PIN)  # the terminal's proof and the PIN: one APDU
    after = session.commit(1, slot_record(1, remaining=100_000))
    assert conn.commands == 7 <= 8
    assert after is not None and after.seq == 1 and card.seq == 1


def _seq(record: bytes) -> int:
    return SlotClaims.from_cbor(_payload(record)).seq


def test_clone_with_same_state_and_reported_key_fails_authentication() -> None:
    card, key = personalised_card()
    clone = card.forge_clone()
    session = SecureCardSession(SecureCardConnection(clone))
    assert session.select().aid == bytes.fromhex("F048554D41534301")
    assert session.public_key() == card.public_point  # a cloner copies the public key too
    state = session.read_state()
    assert state.state == card.state
    with pytest.raises(CloneSuspected):
        session.authenticate(key, CARD_ID, state)
    # the genuine card passes with the same identity key
    SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID)


def test_counter_must_exceed_the_last_value_seen() -> None:
    card, key = personalised_card()
    first = SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID)
    second = SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID, last_counter=first.counter)
    assert second.counter == first.counter + 1
    with pytest.raises(CounterNotIncreasing) as info:
        SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID, last_counter=second.counter + 5)
    assert isinstance(info.value, CloneSuspected) and info.value.last_seen == second.counter + 5


@pytest.mark.parametrize("seq", [3, 4])
def test_restored_old_state_is_refused_by_the_card(seq: int) -> None:
    card, key = personalised_card(seq=4)
    session = SecureCardSession(SecureCardConnection(card))
    session.select()
    with pytest.raises(StateRollbackRefused) as info:
        session.update_state(seq, slot_record(seq))
    assert info.value.seq == seq and card.seq == 4 and card.state == slot_record(4)


def test_old_record_with_forged_higher_seq_is_caught_by_the_record_seq() -> None:
    card, key = personalised_card(seq=4)
    session = SecureCardSession(SecureCardConnection(card))
    prove(session, key)  # a terminal holding the card-access key, writing an old record as seq 5
    session.update_state(5, slot_record(2))  # the card cannot parse CBOR: it takes the explicit seq
    verified = SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID)
    with pytest.raises(StateMismatch):
        check_record_seq(verified, _seq(verified.state.state))


def test_pin_blocks_after_three_wrong_tries_and_only_the_issuer_unblocks() -> None:
    card, key = personalised_card()
    session = SecureCardSession(SecureCardConnection(card))
    prove(session, key)
    assert session.pin_status() == 3
    for left in (2, 1, 0):
        with pytest.raises(PinWrong) as info:
            session.verify_pin("000000")
        assert info.value.tries_left == left
    with pytest.raises(PinBlocked):
        session.verify_pin(PIN)
    with pytest.raises(PinBlocked):
        session.pin_status()
    forged = sign_pin_reset(ec.generate_private_key(ec.SECP256R1()), CARD_ID, "1357", 1)
    with pytest.raises(SecureProtocolError) as bad:
        session.reset_pin(forged)
    assert bad.value.sw == 0x6982
    session.reset_pin(sign_pin_reset(ISSUER_KEY, CARD_ID, "1357", 1))
    with pytest.raises(SecureProtocolError) as replay:
        session.reset_pin(sign_pin_reset(ISSUER_KEY, CARD_ID, "9999", 1))
    assert replay.value.sw == 0x6985
    prove(session, key)
    session.verify_pin("1357")
    assert session.pin_status() is None


def test_card_requiring_a_pin_refuses_update_without_it() -> None:
    card, key = personalised_card(pin_required=True)
    session = SecureCardSession(SecureCardConnection(card))
    prove(session, key)
    with pytest.raises(PinRequired):
        session.update_state(1, slot_record(1))
    prove(session, key, PIN)
    session.select()  # SELECT clears the validation and the terminal's proof (docs/secure-card.md §3)
    with pytest.raises(TerminalAuthRequired):
        session.update_state(1, slot_record(1))
    assert card.seq == 0


def test_tear_during_verify_never_returns_a_try() -> None:
    card, key = personalised_card()
    for tear in TearPoint:
        card.reinsert()
        session = SecureCardSession(SecureCardConnection(card))
        prove(session, key)
        before = card.pin_tries
        card.arm(SecureFaultPlan(0, tear))
        with pytest.raises(CardRemoved):
            session.verify_pin("000000")
        assert card.pin_tries == before - 1


def test_a_stranger_cannot_spend_pin_tries() -> None:
    """Red team round 3 #5 at the APDU level: SELECT (and even INTERNAL AUTHENTICATE) then wrong VERIFYs."""
    card, key = personalised_card()
    session = SecureCardSession(SecureCardConnection(card))
    session.select()
    for _ in range(5):
        with pytest.raises(TerminalAuthRequired):
            session.verify_pin("000000")
    session.verify_card(key, CARD_ID, select=False)  # anybody can make the card sign
    with pytest.raises(TerminalAuthRequired):
        session.verify_pin("000000")
    with pytest.raises(TerminalAuthFailed):  # a guessed proof
        session.external_authenticate(bytes(32), CARD_ID, pin="000000")
    assert card.pin_tries == 3 and session.pin_status() == 3
    prove(session, key, PIN)  # the holder at a counter
    assert session.pin_status() is None and card.pin_tries == 3


def test_a_stranger_cannot_push_the_seq_out_of_reach() -> None:
    """Red team round 3 #4 at the APDU level: UPDATE STATE 0xFFFFFFFF, with or without the terminal's proof."""
    card, key = personalised_card(seq=4)
    session = SecureCardSession(SecureCardConnection(card))
    session.select()
    for seq in (0xFFFFFFFF, 6):
        with pytest.raises(StateRollbackRefused):
            session.update_state(seq, b"\x00")
    with pytest.raises(TerminalAuthRequired):  # the next seq, but no proof
        session.update_state(5, b"\x00")
    prove(session, key)
    for seq in (0xFFFFFFFF, 6, 4):  # even a terminal moves the seq by one only
        with pytest.raises(StateRollbackRefused):
            session.update_state(seq, slot_record(seq & 0xFFFF))
    assert (card.seq, card.state) == (4, slot_record(4))
    session.commit(5, slot_record(5))
    with pytest.raises(TerminalAuthRequired):  # one update per proof
        session.update_state(6, slot_record(6))
    assert card.seq == 5


def test_one_proof_per_authenticate_and_never_an_old_counter() -> None:
    card, key = personalised_card()
    session = SecureCardSession(SecureCardConnection(card))
    verified = session.verify_card(key, CARD_ID)
    with pytest.raises(TerminalAuthFailed):
        session.external_authenticate(bytes(32), CARD_ID)
    # the right proof for that counter comes too late: the card took one try for this authenticate
    with pytest.raises(SecureProtocolError) as spent:
        session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, counter=verified.counter)
    assert spent.value.sw == 0x6985
    session.verify_card(key, CARD_ID)
    with pytest.raises(TerminalAuthFailed):  # a proof recorded in an earlier session
        session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, counter=verified.counter)
    assert not session.terminal_authenticated


REDEMPTION_APDUS = 6  # select, state, authenticate, external authenticate + PIN, update, read-back (+ identity)


@pytest.mark.parametrize("tear", list(TearPoint))
@pytest.mark.parametrize("after", range(REDEMPTION_APDUS))
def test_tear_at_every_apdu_of_a_redemption_leaves_old_or_new(after: int, tear: TearPoint) -> None:
    card, key = personalised_card(seq=7)
    old, new = slot_record(7), slot_record(8, remaining=50_000)
    card.arm(SecureFaultPlan(after, tear))
    session = SecureCardSession(SecureCardConnection(card))
    with pytest.raises(CardRemoved):
        session.verify_card(key, CARD_ID)
        session.external_authenticate(CARD_TERMINAL_KEY, CARD_ID, pin=PIN)
        session.commit(8, new)
    card.reinsert()
    verified = SecureCardSession(SecureCardConnection(card)).verify_card(key, CARD_ID)
    landed = (verified.state.seq, verified.state.state)
    assert landed in ((7, old), (8, new))
    torn_update = after == 4
    assert landed == ((8, new) if (after > 4 or (torn_update and tear is TearPoint.AFTER_COMMIT)) else (7, old))


def test_personalisation_rules() -> None:
    card = SecureCard()
    session = SecureCardSession(SecureCardConnection(card))
    session.select()
    with pytest.raises(SecureProtocolError) as no_key:
        session.public_key()
    assert no_key.value.sw == 0x6A88
    session.generate_key()
    with pytest.raises(LifeCycleError):
        session.lock()  # incomplete
    card2, _ = personalised_card()
    locked = SecureCardSession(SecureCardConnection(card2))
    locked.select()
    with pytest.raises(LifeCycleError):
        locked.generate_key()
    with pytest.raises(LifeCycleError):
        locked.lock()


def test_ndef_view_is_public_and_read_only() -> None:
    card, _ = personalised_card()
    conn = SecureCardConnection(card)
    assert conn.send_and_receive(bytes.fromhex("00A4040007D276000085010100")) == (b"", 0x9000)
    assert conn.send_and_receive(bytes.fromhex("00A4000C02E103")) == (b"", 0x9000)
    cc, sw = conn.send_and_receive(bytes.fromhex("00B000000F"))
    assert (cc.hex().upper(), sw) == ("000F2000FF00FF0406E10400F200FF", 0x9000)
    assert conn.send_and_receive(bytes.fromhex("00A4000C02E104")) == (b"", 0x9000)
    nlen, _ = conn.send_and_receive(bytes.fromhex("00B0000002"))
    body, sw = conn.send_and_receive(bytes.fromhex("00B00002") + bytes((int.from_bytes(nlen, "big"),)))
    assert body == NDEF_MESSAGE and sw == 0x9000
    assert CARD_ID not in body
    assert conn.send_and_receive(bytes.fromhex("00D6000001AA"))[1] == 0x6982
    assert conn.send_and_receive(bytes.fromhex("00A4000C02E105"))[1] == 0x6A82


def test_card_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.secure.json"
    card, key = personalised_card(path, seq=2)
    loaded = SecureCard.load(path)
    SecureCardSession(SecureCardConnection(loaded)).verify_card(key, CARD_ID)
    assert loaded.seq == 2 and loaded.counter == 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CardFileError):
        SecureCard.load(tmp_path / "bad.json")


def test_conformance_passes_on_the_virtual_card_with_every_check() -> None:
    card, key = personalised_card(pin_required=True)
    report = run_conformance(SecureCardConnection(card), pin=PIN, card_key=key, card_id=CARD_ID, destructive=True,
                             issuer_key=ISSUER_KEY, tear=InProcessTear(card), terminal_key=CARD_TERMINAL_KEY)
    assert report.ok, report.to_dict()
    assert all(r.outcome is CheckOutcome.PASS for r in report.results), report.to_dict()


def test_conformance_non_destructive_leaves_the_state_and_pin() -> None:
    card, key = personalised_card()
    before = (card.seq, card.state, card.pin_tries)
    report = run_conformance(SecureCardConnection(card), pin=PIN, terminal_key=CARD_TERMINAL_KEY)
    assert report.ok, report.to_dict()
    assert (card.seq, card.state, card.pin_tries) == before
    assert report.outcome_of("pin_blocks") is CheckOutcome.SKIP
    assert report.outcome_of("tear_atomicity") is CheckOutcome.SKIP
    assert report.outcome_of("verify_needs_terminal") is CheckOutcome.PASS
    assert report.outcome_of("external_authenticate") is CheckOutcome.PASS


class _RollbackCard(SecureCard):
    """A broken card that accepts any seq: the conformance suite must say so."""

    def _update(self, cmd, p):  # untyped on purpose: overrides a private hook
        saved = p.seq
        if saved is not None and len(cmd.data) >= 4:
            p.seq = int.from_bytes(cmd.data[:4], "big") - 1  # whatever seq comes is "the next one"
        resp = super()._update(cmd, p)
        if resp[-2:] != b"\x90\x00":
            p.seq = saved
        return resp


def test_conformance_catches_a_card_that_accepts_rollback() -> None:
    good, _ = personalised_card()
    bad = _RollbackCard()
    bad._p = good._p  # same personalisation, broken update rule
    report = run_conformance(SecureCardConnection(bad), terminal_key=CARD_TERMINAL_KEY)
    assert not report.ok
    assert report.outcome_of("rollback_refused") is CheckOutcome.FAIL


class _OpenVerifyCard(SecureCard):
    """The card of red team round 3 #5: VERIFY from anybody after a SELECT."""

    def _verify(self, cmd, p):  # untyped on purpose: overrides a private hook
        self._t.terminal_ok = True
        return super()._verify(cmd, p)


class _UnboundSeqCard(SecureCard):
    """The card of red team round 3 #4: any higher seq, from anybody."""

    def _update(self, cmd, p):  # untyped on purpose: overrides a private hook
        if p.seq is not None and len(cmd.data) >= 4 and int.from_bytes(cmd.data[:4], "big") > p.seq:
            p.seq = int.from_bytes(cmd.data[:4], "big") - 1
            self._t.terminal_ok = True
        return super()._update(cmd, p)


@pytest.mark.parametrize(("broken", "check", "destructive"), [
    (_OpenVerifyCard, "verify_needs_terminal", False),
    (_UnboundSeqCard, "update_seq_bound", True),
    (_UnboundSeqCard, "update_needs_terminal", True),
])
def test_conformance_catches_the_round_3_cards(broken: type[SecureCard], check: str, destructive: bool) -> None:
    good, key = personalised_card()
    bad = broken()
    bad._p = good._p
    report = run_conformance(SecureCardConnection(bad), pin=PIN, card_key=key, destructive=destructive,
                             terminal_key=CARD_TERMINAL_KEY)
    assert report.outcome_of(check) is CheckOutcome.FAIL, report.to_dict()
    assert not report.ok


def test_cardlib_type4_reader_reads_the_ndef_view() -> None:
    """The NDEF view of the secure card reads with the Type 4 tag layer (written separately from the same spec)."""
    from cardlib.type4.tag import Type4Tag

    card, _ = personalised_card()
    tag = Type4Tag(SecureCardConnection(card))
    ndef_file = tag.read_ndef()
    assert ndef_file.message == NDEF_MESSAGE
    assert not ndef_file.writable
