"""Wire format of the secure card application: AIDs, instructions, status words, signed messages.

Everything here is pure (no I/O) and follows docs/secure-card.md; section
numbers below are that document's. Numbers on the wire are big-endian.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardlib.ber import BerError, parse_objects
from cardlib.secure.errors import CloneSuspected, SecureProtocolError

__all__ = [
    "AID",
    "APP_VERSION",
    "AUTH_TAG",
    "CARD_ID_LEN",
    "CLA_ISO",
    "CLA_PROPRIETARY",
    "COUNTER_MAX",
    "MAX_NDEF",
    "MAX_NONCE",
    "MAX_PIN",
    "MAX_STATE",
    "MIN_NONCE",
    "MIN_PIN",
    "NDEF_AID",
    "PIN_BLOCK_LEN",
    "PIN_MASK_TAG",
    "PIN_RESET_TAG",
    "PIN_TRIES",
    "POINT_LEN",
    "TERMINAL_AUTH_TAG",
    "TERMINAL_KEY_CONTEXT",
    "TERMINAL_MAC_LEN",
    "AuthResponse",
    "CardInfo",
    "CardState",
    "DataObject",
    "Flag",
    "Ins",
    "LifeCycle",
    "PutObject",
    "SecureSW",
    "SelectInfo",
    "auth_message",
    "check_pin_format",
    "compress_point",
    "decompress_point",
    "is_wrong_pin",
    "mask_pin",
    "pin_reset_message",
    "sign_pin_reset",
    "terminal_auth_message",
    "terminal_card_key",
    "terminal_mac",
    "verify_auth_signature",
]

#: Secure card application AID (§1): proprietary, unregistered (ISO/IEC 7816-5 first nibble F).
AID = bytes.fromhex("F048554D41534301")
#: NFC Forum Type 4 Tag 2.0 NDEF Tag Application (§8).
NDEF_AID = bytes.fromhex("D2760000850101")
CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80
#: Domain tags of the two signed messages (§5.1, §5.4).
AUTH_TAG = b"HB-SC/v1/auth"
PIN_RESET_TAG = b"HB-SC/v1/pin-reset"
#: Domain tag of the terminal's proof (EXTERNAL AUTHENTICATE, §5.5).
TERMINAL_AUTH_TAG = b"HB-SC/v1/terminal"
#: Domain tag of the one-time mask over the PIN in EXTERNAL AUTHENTICATE (§5.5).
PIN_MASK_TAG = b"HB-SC/v1/pin-mask"
#: The masked PIN block EXTERNAL AUTHENTICATE carries: the PIN's ASCII digits padded with ``FF`` (§5.5).
PIN_BLOCK_LEN = 8
#: Context of the per-card terminal key derived from the province's card-access key ring (§5.5).
TERMINAL_KEY_CONTEXT = b"HB-SC/v1/terminal-key"
#: HMAC-SHA-256 output and the per-card terminal key, bytes.
TERMINAL_MAC_LEN = 32
MIN_NONCE = 16
MAX_NONCE = 32
#: Largest state record the card stores (§5.2): Lc 4 + 240 ≤ 255 keeps UPDATE a short APDU.
MAX_STATE = 240
MAX_NDEF = 240
CARD_ID_LEN = 8
PIN_TRIES = 3
MIN_PIN = 4
MAX_PIN = 8
COUNTER_MAX = 0xFFFFFFFF
#: P-256 uncompressed point length, ``04 || X || Y`` (SEC 1 §2.3.3).
POINT_LEN = 65
APP_VERSION = 1
CARD_INFO_LEN = 16


class Ins(enum.IntEnum):
    """Instructions of the secure application (§3–§6)."""

    SELECT = 0xA4
    VERIFY = 0x20
    GET_DATA = 0xCA
    INTERNAL_AUTHENTICATE = 0x88
    EXTERNAL_AUTHENTICATE = 0x82
    UPDATE_STATE = 0xDC
    RESET_RETRY_COUNTER = 0x2C
    GENERATE_KEY = 0x46
    PUT_DATA = 0xDA
    LOCK = 0x44
    READ_BINARY = 0xB0


class DataObject(enum.IntEnum):
    """GET DATA P2 (P1 = 01) objects (§4)."""

    STATE = 0x01
    CARD_INFO = 0x02
    PUBLIC_KEY = 0x03
    IDENTITY = 0x04


class PutObject(enum.IntEnum):
    """PUT DATA P2 (P1 = 01) objects (§6.2)."""

    CARD_ID = 0x01
    ISSUER_KEY = 0x02
    PIN = 0x03
    OPTIONS = 0x04
    NDEF = 0x05
    IDENTITY = 0x06
    TERMINAL_KEY = 0x07


class LifeCycle(enum.IntEnum):
    """Life cycle status byte (§2.1, ISO/IEC 7816-4 LCS)."""

    INITIALISATION = 0x03
    OPERATIONAL = 0x07


class Flag(enum.IntFlag):
    """Card info flags (§4)."""

    PIN_REQUIRED = 0x01
    KEY_PRESENT = 0x02
    STATE_PRESENT = 0x04
    ISSUER_KEY_PRESENT = 0x08
    CARD_ID_PRESENT = 0x10
    PIN_SET = 0x20
    IDENTITY_PRESENT = 0x40
    TERMINAL_KEY_PRESENT = 0x80


class SecureSW(enum.IntEnum):
    """Status words of the secure application (§2)."""

    OK = 0x9000
    WRONG_PIN_SW1SW2_BASE = 0x63C0  #: 63Cx, x = tries left
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982
    PIN_BLOCKED = 0x6983
    PIN_NOT_SET = 0x6984
    REFUSED = 0x6985  #: seq not stored + 1, replayed reset, counter exhausted, no authenticate to answer
    LIFE_CYCLE = 0x6986
    WRONG_DATA = 0x6A80
    NOT_FOUND = 0x6A82
    WRONG_P1P2 = 0x6A86
    NO_DATA = 0x6A88
    OFFSET_BEYOND = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


def is_wrong_pin(sw: int) -> bool:
    """True for ``63 Cx`` (VERIFY: x tries left, §5.3)."""
    return sw & 0xFFF0 == SecureSW.WRONG_PIN_SW1SW2_BASE


@dataclass(frozen=True)
class SelectInfo:
    """The FCI a SELECT with P2 = 00 returns (§3).

    :ivar aid: DF name (tag 84).
    :ivar version: application version (tag C0).
    :ivar life_cycle: life cycle status (tag C1).
    :ivar terminal_key_version: version of the card-access key the card's terminal key derives from
        (tag C2, §5.5); None before PUT DATA terminal key.
    """

    aid: bytes
    version: int
    life_cycle: LifeCycle
    terminal_key_version: int | None = None

    @classmethod
    def parse(cls, fci: bytes) -> SelectInfo:
        """Parse ``6F { 84 aid, A5 { C0 version, C1 lcs [, C2 terminal key version] } }``.

        :raises SecureProtocolError: malformed FCI.
        """
        try:
            (tag, body), = parse_objects(fci)
            if tag != 0x6F:
                raise ValueError(f"FCI tag {tag:X}")
            inner = dict(parse_objects(body))
            prop = dict(parse_objects(inner[0xA5]))
            version, lcs = prop[0xC0], prop[0xC1]
            key_version = prop.get(0xC2)
            if len(version) != 1 or len(lcs) != 1 or (key_version is not None and len(key_version) != 1):
                raise ValueError("C0/C1/C2 are one byte")
            return cls(inner[0x84], version[0], LifeCycle(lcs[0]),
                       None if key_version is None else key_version[0])
        except (BerError, KeyError, ValueError) as exc:
            raise SecureProtocolError(0x9000, fci, f"malformed FCI: {exc}") from exc


@dataclass(frozen=True)
class CardState:
    """What GET DATA state returns (§4): the stored record, its seq and the counter.

    :ivar seq: seq the card stored with the state, uint32.
    :ivar counter: transaction counter now (uint32; not moved by reading).
    :ivar state: the exact stored record bytes (0..240).
    """

    seq: int
    counter: int
    state: bytes

    @property
    def state_hash(self) -> bytes:
        """SHA-256 of the state bytes (32)."""
        return hashlib.sha256(self.state).digest()

    @classmethod
    def parse(cls, data: bytes) -> CardState:
        """Parse ``seq (4) || counter (4) || state``.

        :raises SecureProtocolError: shorter than 8 bytes or longer than the card may store.
        """
        if not 8 <= len(data) <= 8 + MAX_STATE:
            raise SecureProtocolError(0x9000, data, f"state response of {len(data)} bytes")
        return cls(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big"), bytes(data[8:]))


@dataclass(frozen=True)
class CardInfo:
    """GET DATA card info (§4).

    :ivar version: data version (1).
    :ivar life_cycle: LCS.
    :ivar flags: :class:`Flag` bits.
    :ivar pin_tries: PIN tries left (0..3).
    :ivar issuer_counter: last issuer counter accepted by RESET RETRY COUNTER (§5.4).
    :ivar card_id: 8 bytes, zeros until personalised.
    """

    version: int
    life_cycle: LifeCycle
    flags: Flag
    pin_tries: int
    issuer_counter: int
    card_id: bytes

    @classmethod
    def parse(cls, data: bytes) -> CardInfo:
        """Parse the 16-byte card info.

        :raises SecureProtocolError: wrong length or unknown life cycle byte.
        """
        if len(data) != CARD_INFO_LEN:
            raise SecureProtocolError(0x9000, data, f"card info of {len(data)} bytes, want {CARD_INFO_LEN}")
        try:
            lcs = LifeCycle(data[1])
        except ValueError as exc:
            raise SecureProtocolError(0x9000, data, f"unknown life cycle {data[1]:02X}") from exc
        return cls(data[0], lcs, Flag(data[2]), data[3], int.from_bytes(data[4:8], "big"), bytes(data[8:16]))


@dataclass(frozen=True)
class AuthResponse:
    """INTERNAL AUTHENTICATE's answer (§5.1), with the nonce it answered.

    :ivar nonce: the terminal's nonce (16..32).
    :ivar counter: the card's counter after incrementing, uint32.
    :ivar seq: stored seq the card signed.
    :ivar signature: DER ECDSA signature (70..72 bytes), kept as read.
    """

    nonce: bytes
    counter: int
    seq: int
    signature: bytes

    @classmethod
    def parse(cls, nonce: bytes, data: bytes) -> AuthResponse:
        """Parse ``counter (4) || seq (4) || DER signature``.

        :raises SecureProtocolError: too short to hold a signature.
        """
        if len(data) < 8 + 8:
            raise SecureProtocolError(0x9000, data, f"authenticate response of {len(data)} bytes")
        return cls(nonce, int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big"), bytes(data[8:]))


def auth_message(card_id: bytes, nonce: bytes, counter: int, seq: int, state_hash: bytes) -> bytes:
    """The message the card signs for INTERNAL AUTHENTICATE (§5.1).

    :param card_id: 8 bytes.
    :param nonce: the terminal's nonce, 16..32 bytes.
    :param counter: counter after increment, uint32.
    :param seq: stored seq (0 without state), uint32.
    :param state_hash: SHA-256 of the stored state (32).
    :raises ValueError: a field out of its range.
    """
    if len(card_id) != CARD_ID_LEN or not MIN_NONCE <= len(nonce) <= MAX_NONCE or len(state_hash) != 32:
        raise ValueError("card id 8, nonce 16..32 and state hash 32 bytes")
    return (AUTH_TAG + card_id + bytes((len(nonce),)) + nonce + counter.to_bytes(4, "big")
            + seq.to_bytes(4, "big") + state_hash)


def verify_auth_signature(public_key: ec.EllipticCurvePublicKey, card_id: bytes, response: AuthResponse,
                          state_hash: bytes) -> None:
    """Verify the card's INTERNAL AUTHENTICATE signature (§5.1).

    :param public_key: the identity's ``card_public_key`` (never the key the card reports).
    :param card_id: the identity's card id, 8 bytes.
    :param response: the parsed answer with the nonce sent.
    :param state_hash: SHA-256 of the state bytes READ STATE returned.
    :raises CloneSuspected: the signature does not verify.
    """
    message = auth_message(card_id, response.nonce, response.counter, response.seq, state_hash)
    try:
        public_key.verify(response.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CloneSuspected("the card's signature does not verify under the identity's card key") from exc


def terminal_card_key(access_key: bytes, card_id: bytes) -> bytes:
    """The card's terminal key (§5.5, §6.2 P2 07): ``HMAC-SHA-256(access key, "HB-SC/v1/terminal-key" || card id)``.

    :param access_key: the province's card-access key of the card's key version (the card-password key
        ring counters and stations hold, ≥ 16 bytes).
    :param card_id: 8 bytes.
    :returns: 32 bytes, stored on the card at personalisation; never read back.
    :raises ValueError: a short access key or a card id that is not 8 bytes.
    """
    if len(access_key) < 16 or len(card_id) != CARD_ID_LEN:
        raise ValueError("access key ≥ 16 bytes and card id 8 bytes")
    return hmac.new(access_key, TERMINAL_KEY_CONTEXT + card_id, hashlib.sha256).digest()


def terminal_auth_message(card_id: bytes, counter: int) -> bytes:
    """What the terminal MACs in EXTERNAL AUTHENTICATE (§5.5): tag || card id (8) || counter (4).

    *counter* is the value the card signed in this session's INTERNAL AUTHENTICATE: the card
    never signs one counter twice, so a proof for one session is worth nothing in another.

    :raises ValueError: a card id that is not 8 bytes or a counter outside uint32.
    """
    if len(card_id) != CARD_ID_LEN or not 0 <= counter <= COUNTER_MAX:
        raise ValueError("card id 8 bytes and counter a uint32")
    return TERMINAL_AUTH_TAG + card_id + counter.to_bytes(4, "big")


def terminal_mac(card_key: bytes, card_id: bytes, counter: int) -> bytes:
    """EXTERNAL AUTHENTICATE's proof: HMAC-SHA-256 (RFC 2104) under the card's terminal key, 32 bytes.

    :param card_key: :func:`terminal_card_key` for this card (32).
    :raises ValueError: as :func:`terminal_auth_message`.
    """
    return hmac.new(card_key, terminal_auth_message(card_id, counter), hashlib.sha256).digest()


def mask_pin(card_key: bytes, card_id: bytes, counter: int, pin: str) -> bytes:
    """EXTERNAL AUTHENTICATE's PIN block (§5.5): the PIN never crosses the air in clear.

    ``(PIN digits || FF … FF to 8 bytes) XOR HMAC-SHA-256(K, "HB-SC/v1/pin-mask" || card id || counter)[:8]``.
    The counter is this session's INTERNAL AUTHENTICATE counter, which the card never signs
    twice, so every mask is used once; without K a recorded block says nothing of the PIN, and
    its length no longer tells the PIN's length.

    :param card_key: :func:`terminal_card_key` for this card (32).
    :param pin: 4..8 ASCII digits.
    :returns: 8 bytes.
    :raises ValueError: a PIN that is not 4..8 digits, or as :func:`terminal_auth_message`.
    """
    digits = check_pin_format(pin)
    if len(card_id) != CARD_ID_LEN or not 0 <= counter <= COUNTER_MAX:
        raise ValueError("card id 8 bytes and counter a uint32")
    mask = hmac.new(card_key, PIN_MASK_TAG + card_id + counter.to_bytes(4, "big"), hashlib.sha256).digest()
    block = digits + b"\xff" * (PIN_BLOCK_LEN - len(digits))
    return bytes(a ^ b for a, b in zip(block, mask[:PIN_BLOCK_LEN], strict=True))


def check_pin_format(pin: str) -> bytes:
    """The PIN as the card takes it: 4..8 ASCII digits (§5.3).

    :raises ValueError: not 4..8 digits.
    """
    if not (MIN_PIN <= len(pin) <= MAX_PIN and pin.isascii() and pin.isdigit()):
        raise ValueError("a PIN is 4..8 digits")
    return pin.encode("ascii")


def pin_reset_message(card_id: bytes, pin: str, issuer_counter: int) -> bytes:
    """The message the issuer signs to set a new PIN (§5.4).

    :param card_id: 8 bytes.
    :param pin: new PIN, 4..8 digits.
    :param issuer_counter: the card's issuer counter + 1 (or more), uint32.
    :raises ValueError: malformed argument.
    """
    if len(card_id) != CARD_ID_LEN:
        raise ValueError("card id is 8 bytes")
    digest = hashlib.sha256(check_pin_format(pin)).digest()
    return PIN_RESET_TAG + card_id + digest + issuer_counter.to_bytes(4, "big")


def sign_pin_reset(issuer_key: ec.EllipticCurvePrivateKey, card_id: bytes, pin: str, issuer_counter: int) -> bytes:
    """RESET RETRY COUNTER command data signed with the issuer key (§5.4).

    For tools holding the key in software (tests, a district office's HSM wrapper signs
    :func:`pin_reset_message` itself).

    :returns: ``issuer counter (4) || len (1) || PIN || DER signature``.
    :raises ValueError: malformed argument.
    """
    signature = issuer_key.sign(pin_reset_message(card_id, pin, issuer_counter), ec.ECDSA(hashes.SHA256()))
    raw = check_pin_format(pin)
    return issuer_counter.to_bytes(4, "big") + bytes((len(raw),)) + raw + signature


def decompress_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a SEC 1 point, compressed (33) or uncompressed (65).

    :raises ValueError: not a point on P-256.
    """
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def compress_point(point: bytes) -> bytes:
    """The 33-byte compressed form (identity claim 10) of a 65-byte uncompressed P-256 point.

    :raises ValueError: not a point on P-256.
    """
    return decompress_point(point).public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
