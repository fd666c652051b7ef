"""Terminal side of the secure card application (docs/secure-card.md), over any :class:`Connection`.

:class:`SecureCardSession` sends one APDU per method and turns status words
into the typed errors of :mod:`cardlib.secure.errors`. :meth:`SecureCardSession.verify_card`
is the start of every redemption (§7): SELECT, GET DATA state and INTERNAL
AUTHENTICATE, with every check of §5.1 applied; :meth:`SecureCardSession.commit`
is the end for provisioning (UPDATE STATE and an optional read-back); a counter ends
with :meth:`SecureCardSession.commit_signed` (UPDATE STATE and a signed confirmation). With GET DATA identity a
redemption costs at most 7 APDUs (docs/secure-card.md §7).

Usage::

    session = SecureCardSession(connection)
    session.select()
    identity = verify_identity(session.read_identity())          # trust bundle: card key + card id
    verified = session.verify_card(identity.card_public_key, identity.card_id,
                                   last_counter=journal.last_counter(identity.card_id), select=False)
    check_record_seq(verified, record_seq=slot_claims.seq)       # the slot record's own seq (§5.1)
    key = terminal_card_key(card_access_keys[info.terminal_key_version], identity.card_id)
    session.external_authenticate(key, identity.card_id, pin="123456")  # §5.5; pin only when asked
    session.commit_signed(verified.state.seq + 1, new_record_bytes, identity.card_public_key, identity.card_id,
                          counter=verified.counter)
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardlib.apdu import ApduChannel, CommandApdu, ResponseApdu
from cardlib.secure.errors import (
    CloneSuspected,
    CounterNotIncreasing,
    LifeCycleError,
    PinBlocked,
    PinNotSet,
    PinRequired,
    PinWrong,
    SecureProtocolError,
    StateMismatch,
    StateRollbackRefused,
    TerminalAuthFailed,
    TerminalAuthRequired,
    WriteNotConfirmed,
)
from cardlib.secure.protocol import (
    AID,
    CLA_ISO,
    CLA_PROPRIETARY,
    MAX_NDEF,
    MAX_NONCE,
    MAX_STATE,
    MIN_NONCE,
    POINT_LEN,
    TERMINAL_MAC_LEN,
    AuthResponse,
    CardInfo,
    CardState,
    DataObject,
    Ins,
    LifeCycle,
    PutObject,
    SecureSW,
    SelectInfo,
    check_pin_format,
    decompress_point,
    is_wrong_pin,
    mask_pin,
    terminal_mac,
    verify_auth_signature,
)
from cardlib.transport import Connection

__all__ = ["SELECT_FCI", "SecureCardSession", "VerifiedCard", "check_record_seq"]

log = logging.getLogger(__name__)

#: SELECT P2: return the FCI (§3).
SELECT_FCI = 0x00
SELECT_NO_DATA = 0x0C
_P2_PIN = 0x80
_P1_OBJECT = 0x01


@dataclass(frozen=True)
class VerifiedCard:
    """A card that proved its key over the state it holds (docs/secure-card.md §5.1).

    :ivar state: what GET DATA state returned (seq, counter before the authenticate, bytes).
    :ivar auth: the INTERNAL AUTHENTICATE answer (counter after it, signature), verified.
    """

    state: CardState
    auth: AuthResponse

    @property
    def counter(self) -> int:
        """The counter the card signed: the value to remember for this card."""
        return self.auth.counter


def check_record_seq(verified: VerifiedCard, record_seq: int) -> None:
    """Refuse a card whose stored seq is not the ``seq`` claim of the record it holds (§5.2).

    The card binds the seq the terminal sent to the state; a state restored with
    a forged higher explicit seq shows here.

    :param record_seq: the ``seq`` claim of the verified slot record (docs/card-format.md §4).
    :raises StateMismatch: they differ.
    """
    if verified.state.seq != record_seq:
        raise StateMismatch(f"card stores seq {verified.state.seq} with a record whose seq is {record_seq}")


class SecureCardSession:
    """Commands of the secure card application, one method per APDU (docs/secure-card.md).

    :param connection: the card session (PC/SC, nfcpy, a virtual card).
    :param channel: an existing :class:`ApduChannel` on it instead (shares its command count).
    """

    def __init__(self, connection: Connection | None = None, *, channel: ApduChannel | None = None) -> None:
        if channel is None:
            if connection is None:
                raise ValueError("give a connection or a channel")
            channel = ApduChannel(connection)
        self.channel = channel
        #: The FCI of the last SELECT (None before one).
        self.info: SelectInfo | None = None
        #: Counter of this session's last INTERNAL AUTHENTICATE, until EXTERNAL AUTHENTICATE spends it.
        self._auth_counter: int | None = None
        #: Whether the card accepted this terminal's proof in this session (§5.5).
        self.terminal_authenticated = False

    @property
    def commands_sent(self) -> int:
        """APDUs sent on this session's channel."""
        return self.channel.commands_sent

    # ------------------------------------------------------------------ plumbing

    def _exchange(self, command: CommandApdu) -> ResponseApdu:
        return self.channel.exchange(command)

    def _ok(self, command: CommandApdu, what: str) -> bytes:
        resp = self._exchange(command)
        if resp.sw != SecureSW.OK:
            raise _error(resp, what)
        return resp.data

    # ------------------------------------------------------------------ §3, §4

    def select(self) -> SelectInfo:
        """SELECT the application and parse its FCI (§3).

        :raises SecureProtocolError: not found (``6A 82``) or a malformed FCI.
        :raises cardlib.transport.TransportError: the card left.
        """
        self._auth_counter, self.terminal_authenticated, self.info = None, False, None
        data = self._ok(CommandApdu(CLA_ISO, Ins.SELECT, 0x04, SELECT_FCI, AID, le=256), "SELECT")
        info = SelectInfo.parse(data)
        if info.aid != AID:
            raise SecureProtocolError(SecureSW.OK, data, f"FCI names AID {info.aid.hex()}")
        self.info = info
        return info

    def _get(self, obj: DataObject) -> bytes:
        return self._ok(CommandApdu(CLA_PROPRIETARY, Ins.GET_DATA, _P1_OBJECT, obj, le=256), f"GET DATA {obj.name}")

    def read_state(self) -> CardState:
        """GET DATA state (§4): seq, counter and the stored record bytes.

        :raises SecureProtocolError: no state yet (``6A 88``) or malformed answer.
        """
        return CardState.parse(self._get(DataObject.STATE))

    def card_info(self) -> CardInfo:
        """GET DATA card info (§4).

        :raises SecureProtocolError: malformed answer.
        """
        return CardInfo.parse(self._get(DataObject.CARD_INFO))

    def read_identity(self) -> bytes:
        """GET DATA identity (§4): the issuer-signed identity record (COSE_Sign1) stored at personalisation.

        The terminal verifies it with its trust bundle (docs/card-format.md §5) and takes
        ``card_public_key`` and ``card_id`` for :meth:`authenticate` from it.

        :raises SecureProtocolError: no identity stored (``6A 88``).
        """
        return self._get(DataObject.IDENTITY)

    def public_key(self) -> bytes:
        """GET DATA public key (§4): the card's 65-byte uncompressed P-256 point.

        Only for provisioning and diagnostics: a counter verifies with the identity's key.

        :raises SecureProtocolError: no key yet (``6A 88``) or not a 65-byte point.
        """
        point = self._get(DataObject.PUBLIC_KEY)
        if len(point) != POINT_LEN:
            raise SecureProtocolError(SecureSW.OK, point, "public key is not a 65-byte point")
        return point

    # ------------------------------------------------------------------ §5

    def authenticate_raw(self, nonce: bytes) -> AuthResponse:
        """INTERNAL AUTHENTICATE (§5.1) without checking the answer (conformance, diagnostics).

        :param nonce: 16..32 bytes (other lengths are sent as given, to test the card).
        :raises SecureProtocolError: any status other than ``90 00``.
        """
        self._auth_counter, self.terminal_authenticated = None, False  # the card drops both on a new authenticate
        data = self._ok(CommandApdu(CLA_PROPRIETARY, Ins.INTERNAL_AUTHENTICATE, 0, 0, nonce, le=256),
                        "INTERNAL AUTHENTICATE")
        auth = AuthResponse.parse(nonce, data)
        self._auth_counter = auth.counter
        return auth

    def authenticate(self, card_key: ec.EllipticCurvePublicKey | bytes, card_id: bytes, state: CardState,
                     *, last_counter: int | None = None, nonce: bytes | None = None) -> AuthResponse:
        """INTERNAL AUTHENTICATE with a fresh nonce and every check of §5.1.

        :param card_key: the identity's ``card_public_key`` (33-byte compressed point or a key).
        :param card_id: the identity's card id (8).
        :param state: what :meth:`read_state` returned in this session.
        :param last_counter: the last counter this terminal saw for the card, or None.
        :param nonce: 16..32 bytes; default 32 fresh random bytes (tests pass their own).
        :raises CloneSuspected: the signature does not verify under *card_key*.
        :raises CounterNotIncreasing: counter ≤ *last_counter*, or not above the counter read.
        :raises StateMismatch: the card signed another seq or state hash than it let us read.
        :raises SecureProtocolError: unexpected status word.
        """
        key = decompress_point(card_key) if isinstance(card_key, bytes) else card_key
        nonce = secrets.token_bytes(MAX_NONCE) if nonce is None else nonce
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise ValueError("nonce is 16..32 bytes")
        auth = self.authenticate_raw(nonce)
        verify_auth_signature(key, card_id, auth, state.state_hash)
        if auth.seq != state.seq:
            raise StateMismatch(f"card signed seq {auth.seq} but reported {state.seq}")
        if auth.counter <= state.counter:
            raise CounterNotIncreasing(auth.counter, state.counter)
        if last_counter is not None and auth.counter <= last_counter:
            raise CounterNotIncreasing(auth.counter, last_counter)
        return auth

    def verify_card(self, card_key: ec.EllipticCurvePublicKey | bytes, card_id: bytes, *,
                    last_counter: int | None = None, nonce: bytes | None = None,
                    select: bool = True) -> VerifiedCard:
        """[SELECT,] GET DATA state and INTERNAL AUTHENTICATE (§7 steps 1, 3, 4): 3 APDUs, 2 without SELECT.

        :param select: False when the application is already selected (the identity was read first).
        :raises: as :meth:`select`, :meth:`read_state` and :meth:`authenticate`.
        """
        if select:
            self.select()
        state = self.read_state()
        auth = self.authenticate(card_key, card_id, state, last_counter=last_counter, nonce=nonce)
        return VerifiedCard(state, auth)

    def external_authenticate(self, card_key: bytes, card_id: bytes, *, pin: str | None = None,
                              counter: int | None = None) -> None:
        """EXTERNAL AUTHENTICATE (§5.5): prove this terminal to the card, optionally with the PIN in the same APDU.

        Must follow this session's INTERNAL AUTHENTICATE (its counter is what the proof covers);
        the card takes one proof per authenticate. Without it an operational card refuses
        VERIFY and UPDATE STATE.

        :param card_key: the card's terminal key (:func:`~cardlib.secure.protocol.terminal_card_key`), 32 bytes.
        :param card_id: the identity's card id (8).
        :param pin: 4..8 digits to verify with the proof (P2 = 80, sent masked: :func:`mask_pin`), or None (P2 = 00).
        :param counter: the counter to prove (default: this session's last INTERNAL AUTHENTICATE;
            conformance passes others to test the card).
        :raises TerminalAuthFailed: ``69 82``, the card does not take the proof.
        :raises PinWrong, PinBlocked, PinNotSet: the proof was taken (the terminal is authenticated)
            but the PIN was not.
        :raises SecureProtocolError: ``69 85`` no authenticate to answer in this session, other words.
        :raises ValueError: no counter to prove, a key that is not 32 bytes, a PIN that is not 4..8 digits.
        """
        counter = self._auth_counter if counter is None else counter
        if counter is None:
            raise ValueError("EXTERNAL AUTHENTICATE answers this session's INTERNAL AUTHENTICATE: none yet")
        if len(card_key) != TERMINAL_MAC_LEN:
            raise ValueError("the card's terminal key is 32 bytes")
        block = b"" if pin is None else mask_pin(card_key, card_id, counter, pin)  # never the PIN in clear
        self._auth_counter = None
        data = terminal_mac(card_key, card_id, counter) + block
        resp = self._exchange(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0,
                                          _P2_PIN if pin is not None else 0, data))
        if resp.sw == SecureSW.SECURITY_NOT_SATISFIED:
            raise TerminalAuthFailed("the card refused this terminal's proof")
        if resp.sw == SecureSW.OK or is_wrong_pin(resp.sw) or (
                pin is not None and resp.sw in (SecureSW.PIN_BLOCKED, SecureSW.PIN_NOT_SET, SecureSW.WRONG_DATA)):
            self.terminal_authenticated = True  # the proof was taken; only the PIN was not (§5.5 step 6)
        if resp.sw != SecureSW.OK:
            raise _error(resp, "EXTERNAL AUTHENTICATE")

    def update_state(self, seq: int, state: bytes) -> None:
        """UPDATE STATE (§5.2): the card stores *state* with *seq* (operational: stored seq + 1 only).

        :param seq: the new record's ``seq`` claim, uint32.
        :param state: the exact record bytes, 1..240.
        :raises StateRollbackRefused: ``69 85``, seq not the next one (the card kept its state).
        :raises TerminalAuthRequired: ``69 82`` and no EXTERNAL AUTHENTICATE taken in this session.
        :raises PinRequired: ``69 82`` after EXTERNAL AUTHENTICATE: the card wants a verified PIN first.
        :raises SecureProtocolError: another status word.
        :raises cardlib.transport.TransportError: the card left: the state is old or new, read it.
        """
        if not 1 <= len(state) <= MAX_STATE or not 0 <= seq <= 0xFFFFFFFF:
            raise ValueError(f"state is 1..{MAX_STATE} bytes and seq a uint32")
        command = CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, seq.to_bytes(4, "big") + state)
        resp = self._exchange(command)
        if resp.sw == SecureSW.REFUSED:
            raise StateRollbackRefused(seq)
        if resp.sw == SecureSW.SECURITY_NOT_SATISFIED:
            if self.info is not None and self.info.life_cycle is LifeCycle.OPERATIONAL \
                    and not self.terminal_authenticated:
                raise TerminalAuthRequired("the card takes UPDATE STATE only after EXTERNAL AUTHENTICATE")
            raise PinRequired("the card requires a verified PIN before UPDATE STATE")
        if resp.sw != SecureSW.OK:
            raise _error(resp, "UPDATE STATE")
        self.terminal_authenticated = False  # the card takes one update per proof (§5.5)

    def commit(self, seq: int, state: bytes, *, read_back: bool = True) -> CardState | None:
        """UPDATE STATE, then (by default) GET DATA state to confirm it landed (§7 steps 5-6).

        :returns: the state read back, or None without read-back.
        :raises StateMismatch: the read-back differs from what was written.
        :raises: as :meth:`update_state`.
        """
        self.update_state(seq, state)
        if not read_back:
            return None
        after = self.read_state()
        if after.seq != seq or after.state != state:
            raise StateMismatch(f"read-back seq {after.seq} / {len(after.state)} bytes differ from the update")
        return after

    def commit_signed(self, seq: int, state: bytes, card_key: ec.EllipticCurvePublicKey | bytes, card_id: bytes,
                      *, counter: int, nonce: bytes | None = None) -> AuthResponse:
        """UPDATE STATE, then :meth:`confirm_state`: the card *signs* that it now holds the state (§7 steps 5-6).

        Same APDU count as :meth:`commit` with its read-back, which proves nothing to a counter
        (:meth:`confirm_state`).

        :returns: as :meth:`confirm_state`.
        :raises StateRollbackRefused, TerminalAuthRequired, PinRequired: the card refused the update
            (nothing changed), as :meth:`update_state`.
        :raises WriteNotConfirmed: as :meth:`confirm_state`.
        :raises cardlib.transport.TransportError: the card left: the state is old or new, read it.
        """
        self.update_state(seq, state)
        return self.confirm_state(seq, state, card_key, card_id, counter=counter, nonce=nonce)

    def confirm_state(self, seq: int, state: bytes, card_key: ec.EllipticCurvePublicKey | bytes, card_id: bytes,
                      *, counter: int, nonce: bytes | None = None) -> AuthResponse:
        """INTERNAL AUTHENTICATE after an UPDATE STATE: the card signs that it holds ``seq`` and ``state``.

        A read-back with GET DATA state proves nothing: the card does not sign it, so whatever sits
        between reader and card (the holder's relay) can swallow UPDATE STATE, answer ``90 00`` and
        hand back the state just sent (red team round 4). The card's signature over the seq and
        SHA-256 of the state it stores, under the identity's key and a fresh nonce, cannot be had
        without the card holding that state.

        :param seq: the new record's ``seq`` claim, uint32; ``state`` its exact bytes.
        :param card_key: the identity's ``card_public_key`` (33-byte compressed point or a key).
        :param card_id: the identity's card id (8).
        :param counter: the counter this session's first INTERNAL AUTHENTICATE signed (the new one must exceed it).
        :param nonce: 16..32 bytes; default 32 fresh random bytes.
        :returns: the verified answer (its ``counter`` is the card's counter now).
        :raises WriteNotConfirmed: the card does not sign that it holds the state (another seq, another
            state, a signature that does not verify, a counter that did not move, a status word
            other than ``90 00``): old or new, read it at the next presentation.
        :raises cardlib.transport.TransportError: the card left.
        """
        key = decompress_point(card_key) if isinstance(card_key, bytes) else card_key
        nonce = secrets.token_bytes(MAX_NONCE) if nonce is None else nonce
        try:
            auth = self.authenticate_raw(nonce)
        except SecureProtocolError as exc:
            raise WriteNotConfirmed(f"INTERNAL AUTHENTICATE after the update failed: {exc}") from exc
        if auth.seq != seq:
            raise WriteNotConfirmed(f"the card signs seq {auth.seq} after an update to seq {seq}")
        try:
            verify_auth_signature(key, card_id, auth, hashlib.sha256(state).digest())
        except CloneSuspected as exc:
            raise WriteNotConfirmed(f"the card does not sign the state written at seq {seq}") from exc
        if auth.counter <= counter:
            raise WriteNotConfirmed(f"the card's counter {auth.counter} did not move past {counter}")
        return auth

    def verify_pin(self, pin: str) -> None:
        """VERIFY (§5.3); an operational card takes it only after EXTERNAL AUTHENTICATE (§5.5).

        :raises TerminalAuthRequired: ``69 82``, no terminal proved itself in this session (no try spent).
        :raises PinWrong: ``63 Cx`` with the tries left.
        :raises PinBlocked: ``69 83``.
        :raises PinNotSet: ``69 84``.
        :raises ValueError: *pin* is not 4..8 digits (nothing sent).
        """
        resp = self._exchange(CommandApdu(CLA_ISO, Ins.VERIFY, 0, _P2_PIN, check_pin_format(pin)))
        if resp.sw == SecureSW.SECURITY_NOT_SATISFIED:
            raise TerminalAuthRequired("the card takes VERIFY only after EXTERNAL AUTHENTICATE")
        if resp.sw != SecureSW.OK:
            raise _error(resp, "VERIFY")

    def pin_status(self) -> int | None:
        """VERIFY without data (§5.3): None when validated in this session, else the tries left.

        :raises PinBlocked: ``69 83``.
        :raises PinNotSet: ``69 84``.
        """
        resp = self._exchange(CommandApdu(CLA_ISO, Ins.VERIFY, 0, _P2_PIN))
        if resp.sw == SecureSW.OK:
            return None
        if is_wrong_pin(resp.sw):
            return resp.sw & 0x0F
        raise _error(resp, "VERIFY (status)")

    def reset_pin(self, signed_reset: bytes) -> None:
        """RESET RETRY COUNTER (§5.4) with issuer-signed data (:func:`~cardlib.secure.protocol.sign_pin_reset`).

        :param signed_reset: ``issuer counter (4) || len (1) || PIN || DER signature``.
        :raises SecureProtocolError: ``69 82`` bad signature, ``69 85`` replayed counter, other words.
        """
        self._ok(CommandApdu(CLA_PROPRIETARY, Ins.RESET_RETRY_COUNTER, 0, _P2_PIN, signed_reset), "RESET RETRY COUNTER")

    # ------------------------------------------------------------------ §6 personalisation

    def generate_key(self) -> bytes:
        """GENERATE KEY (§6.1): a new on-card P-256 key pair; returns the 65-byte public point.

        :raises LifeCycleError: the card is locked.
        :raises SecureProtocolError: another status or not a point.
        """
        point = self._ok(CommandApdu(CLA_PROPRIETARY, Ins.GENERATE_KEY, 0, 0, le=256), "GENERATE KEY")
        try:
            decompress_point(point)
        except ValueError as exc:
            raise SecureProtocolError(SecureSW.OK, point, "GENERATE KEY returned no P-256 point") from exc
        return point

    def put_data(self, obj: PutObject, data: bytes) -> None:
        """PUT DATA (§6.2).

        :raises LifeCycleError: the card is locked.
        :raises SecureProtocolError: another status word.
        """
        self._ok(CommandApdu(CLA_PROPRIETARY, Ins.PUT_DATA, _P1_OBJECT, obj, data), f"PUT DATA {obj.name}")

    def personalise(self, *, card_id: bytes, issuer_key: bytes, pin: str, pin_required: bool,
                    ndef_message: bytes, identity: bytes, genesis_state: bytes, terminal_key: tuple[int, bytes],
                    genesis_seq: int = 0, lock: bool = True) -> None:
        """Personalise a card whose key was generated (§6): PUT DATA ×7, genesis UPDATE STATE, LOCK.

        :param card_id: 8 bytes (identity claim 1).
        :param issuer_key: the issuer's P-256 public point (65 uncompressed, or 33 compressed).
        :param pin: initial PIN, 4..8 digits.
        :param pin_required: the card refuses UPDATE STATE without a verified PIN.
        :param ndef_message: the public NDEF message for phones, 1..240 bytes (no personal data).
        :param identity: the issuer-signed identity record naming the card's key (claim 10), 1..255 bytes.
        :param genesis_state: the seq-0 slot record bytes.
        :param terminal_key: (card-access key version 1..255, the card's terminal key (32)), §5.5.
        :raises ValueError: an argument out of range (nothing sent).
        :raises: as :meth:`put_data`, :meth:`update_state`, :meth:`lock`.
        """
        point = decompress_point(issuer_key).public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        if len(card_id) != 8 or not 1 <= len(ndef_message) <= MAX_NDEF or not 1 <= len(identity) <= 255:
            raise ValueError("card id is 8 bytes, the NDEF message 1..240, the identity 1..255")
        raw_pin = check_pin_format(pin)
        version, key = terminal_key
        if not 1 <= version <= 255 or len(key) != TERMINAL_MAC_LEN:
            raise ValueError("terminal key version 1..255 and a 32-byte key")
        self.put_data(PutObject.CARD_ID, card_id)
        self.put_data(PutObject.ISSUER_KEY, point)
        self.put_data(PutObject.PIN, raw_pin)
        self.put_data(PutObject.OPTIONS, bytes((1 if pin_required else 0,)))
        self.put_data(PutObject.NDEF, ndef_message)
        self.put_data(PutObject.IDENTITY, identity)
        self.put_data(PutObject.TERMINAL_KEY, bytes((version,)) + key)
        self.update_state(genesis_seq, genesis_state)
        if lock:
            self.lock()

    def lock(self) -> None:
        """LOCK (§6.3): end personalisation for good.

        :raises LifeCycleError: already locked, or personalisation incomplete.
        """
        self._ok(CommandApdu(CLA_PROPRIETARY, Ins.LOCK, 0, 0), "LOCK")


def _error(resp: ResponseApdu, what: str) -> Exception:
    """The typed error for a status word (§2)."""
    sw = resp.sw
    if is_wrong_pin(sw):
        return PinWrong(sw & 0x0F)
    if sw == SecureSW.PIN_BLOCKED:
        return PinBlocked("the PIN is blocked: an issuer-signed reset is needed")
    if sw == SecureSW.PIN_NOT_SET:
        return PinNotSet("the card has no PIN")
    if sw == SecureSW.LIFE_CYCLE:
        return LifeCycleError(f"{what} is not allowed in the card's life cycle state")
    return SecureProtocolError(sw, resp.data, what)
