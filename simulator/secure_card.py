"""A virtual `secure` card: the card application of docs/secure-card.md answering APDUs.

Written from docs/secure-card.md alone (its own constants, not cardlib's), so a
misreading on one side shows as a failing test instead of passing twice.
Section numbers below are that document's.

:class:`SecureCard` is pure (no sockets): ``transmit(C-APDU) -> R-APDU``. It
models what a JavaCard applet pair (secure application + NDEF Tag
Application, one package) keeps:

* persistent memory (:class:`_Persistent`) — life cycle, key pair, card id,
  issuer key, PIN and try counter, options, transaction counter, issuer
  counter, seq + state + state hash, identity record, NDEF message — saved to a JSON card file
  (``*.secure.json``) after every change, like the other virtual cards;
* transient memory — selected application and file, *PIN validated* —
  cleared on power-off.

Every command runs on a copy of persistent memory that replaces it at the end
(the JavaCard transaction, JavaCard 3.0.4 RE §7): a tear before that commit
leaves everything as before, except the PIN try counter, which VERIFY
decrements *before* comparing and outside any transaction (``OwnerPIN``).

Tears (:class:`SecureFaultPlan`): after ``remove_after_apdus`` answered APDUs
the next one takes the card out of the field; its transaction is rolled back
(:attr:`TearPoint.BEFORE_COMMIT`) or committed with the answer lost
(:attr:`TearPoint.AFTER_COMMIT`). Either way :class:`ChipLeftField` is raised
and the card stays removed until :meth:`SecureCard.reinsert`.

:class:`SecureVpcdCard` puts the card on a vpcd reader slot (simulator/vpcd.py
protocol: 2-byte length + payload, 1-byte control codes) so pcscd and any PC/SC
client see an ISO 14443-4 card. :class:`SecureCardConnection` is the in-process
:class:`~cardlib.transport.Connection` for tests without pcscd.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardlib.fsutil import atomic_write
from cardlib.transport import Connection
from cardlib.transport.errors import CardRemoved as TransportCardRemoved
from simulator.errors import CardFileError, ChipLeftField, VpcdError

__all__ = [
    "SECURE_CARD_FORMAT",
    "SecureCard",
    "SecureCardConnection",
    "SecureFaultPlan",
    "SecureVpcdCard",
    "TearPoint",
]

log = logging.getLogger(__name__)

#: Version of the ``*.secure.json`` card file.
SECURE_CARD_FORMAT = 1

# --- §1 AIDs, §2 status words (literals from docs/secure-card.md) -----------------------------
_AID_SECURE = bytes.fromhex("F048554D41534301")
_AID_NDEF = bytes.fromhex("D2760000850101")
_LCS_INIT = 0x03
_LCS_OPERATIONAL = 0x07

_OK = 0x9000
_WRONG_LENGTH = 0x6700
_SECURITY = 0x6982
_BLOCKED = 0x6983
_NO_PIN = 0x6984
_REFUSED = 0x6985
_NOT_ALLOWED = 0x6986
_WRONG_DATA = 0x6A80
_NOT_FOUND = 0x6A82
_WRONG_P1P2 = 0x6A86
_NO_DATA = 0x6A88
_OFFSET = 0x6B00
_NO_INS = 0x6D00
_NO_CLA = 0x6E00

_AUTH_TAG = b"HB-SC/v1/auth"
_RESET_TAG = b"HB-SC/v1/pin-reset"
_TERMINAL_TAG = b"HB-SC/v1/terminal"
_MAC_LEN = 32
#: EXTERNAL AUTHENTICATE's masked PIN block (§5.5) and its mask's domain tag.
_PIN_BLOCK = 8
_PIN_MASK_TAG = b"HB-SC/v1/pin-mask"
_MAX_STATE = 240
_MAX_NDEF = 240
_PIN_TRIES = 3
_U32_MAX = 0xFFFFFFFF
#: ATR of an ISO 14443-4 Type A card through a PC/SC reader (PC/SC Part 3 §3.1.3.2.3.1):
#: 3B 8n 80 01, the ATS historical bytes, TCK.
_HISTORICAL = b"HUMASC01"
#: NDEF view, T4T 2.0 §5.1: CC file (15 bytes) and file ids.
_CC = bytes.fromhex("000F2000FF00FF0406E10400F200FF")
_FILE_CC = 0xE103
_FILE_NDEF = 0xE104


def _sw(sw: int, data: bytes = b"") -> bytes:
    return data + sw.to_bytes(2, "big")


def _atr() -> bytes:
    body = bytes((0x8F & (0x80 | len(_HISTORICAL)), 0x80, 0x01)) + _HISTORICAL
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes((tck,))


class TearPoint(enum.Enum):
    """Where a tear falls in the command that the card leaves during."""

    BEFORE_COMMIT = "before_commit"  #: transaction rolled back: old state
    AFTER_COMMIT = "after_commit"  #: transaction committed, answer lost: new state


@dataclass(frozen=True)
class SecureFaultPlan:
    """Take the card out of the field during APDU number ``remove_after_apdus + 1``.

    :ivar remove_after_apdus: APDUs answered normally first (0 = the next APDU tears).
    :ivar tear: whether the torn command's transaction committed.
    """

    remove_after_apdus: int
    tear: TearPoint = TearPoint.BEFORE_COMMIT


@dataclass
class _Persistent:
    """Everything the applets keep in EEPROM (hex strings in the card file)."""

    life_cycle: int = _LCS_INIT
    private_key: int | None = None  # P-256 scalar
    #: Public point GET DATA reports; differs from the private key's only on a forged clone.
    reported_public_key: bytes | None = None
    card_id: bytes | None = None
    issuer_key: bytes | None = None
    pin: bytes | None = None
    pin_tries: int = _PIN_TRIES
    options: int = 0
    counter: int = 0
    issuer_counter: int = 0
    seq: int | None = None
    state: bytes | None = None
    state_hash: bytes | None = None
    ndef: bytes = b""
    identity: bytes | None = None
    #: §5.5: card-access key version (reported in the FCI) and the card's 32-byte terminal key.
    terminal_key_version: int | None = None
    terminal_key: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = value.hex() if isinstance(value, bytes) else value
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> _Persistent:
        fields_bytes = {"reported_public_key", "card_id", "issuer_key", "pin", "state", "state_hash", "ndef",
                        "identity", "terminal_key"}
        kwargs: dict[str, Any] = {}
        for key in cls.__dataclass_fields__:
            if key not in doc:
                continue
            value = doc[key]
            kwargs[key] = bytes.fromhex(value) if key in fields_bytes and value is not None else value
        return cls(**kwargs)


@dataclass
class _Transient:
    """CLEAR_ON_RESET memory: selection, the PIN-validated flag and the terminal authentication (§5.5)."""

    selected: bytes | None = None
    ndef_file: int | None = None
    pin_validated: bool = False
    #: counter of this session's INTERNAL AUTHENTICATE, until one EXTERNAL AUTHENTICATE spends it
    auth_counter: int | None = None
    #: a terminal proved itself in this session; spent by UPDATE STATE
    terminal_ok: bool = False


@dataclass
class _Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    has_lc: bool = field(default=False)


def _parse(apdu: bytes) -> _Apdu | None:
    """Short APDU cases 1-4 (ISO/IEC 7816-4 §5.1), or None when malformed."""
    if len(apdu) < 4:
        return None
    head = _Apdu(apdu[0], apdu[1], apdu[2], apdu[3])
    body = apdu[4:]
    if not body:
        return head
    if len(body) == 1:
        head.le = body[0] or 256
        return head
    lc = body[0]
    if lc == 0 or len(body) not in (1 + lc, 2 + lc):
        return None
    head.data = bytes(body[1:1 + lc])
    head.has_lc = True
    if len(body) == 2 + lc:
        head.le = body[-1] or 256
    return head


def _point(private_value: int) -> bytes:
    key = ec.derive_private_key(private_value, ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _pin_ok(pin: bytes) -> bool:
    return 4 <= len(pin) <= 8 and all(0x30 <= b <= 0x39 for b in pin)


class _Torn(Exception):
    """Internal: the fault plan fires during this command."""


class SecureCard:
    """The secure card application pair as a virtual ISO 14443-4 card (docs/secure-card.md).

    :param path: card file to save to (None: memory only).
    """

    def __init__(self, path: Path | str | None = None, *, uid: bytes | None = None) -> None:
        self.path = Path(path) if path is not None else None
        #: 7-byte anticollision UID (not stored in the card file: a Type 4 card's UID may be random,
        #: docs/card-format.md §Conventions); random unless given.
        self.uid = bytes(uid) if uid is not None else bytes((0x08,)) + os.urandom(6)
        self._p = _Persistent()
        self._t = _Transient()
        self.removed = False
        self.dirty = False
        self.faults: SecureFaultPlan | None = None
        #: C-APDUs seen since the fault plan was armed.
        self.apdus_since_armed = 0

    def __repr__(self) -> str:
        return f"SecureCard(lcs={self._p.life_cycle:02X}, seq={self._p.seq}, counter={self._p.counter})"

    # ------------------------------------------------------------------ files

    def save(self, path: Path | str | None = None, *, durable: bool = True) -> Path:
        """Write the persistent memory as JSON (atomically).

        :raises CardFileError: no path, or the file cannot be written.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise CardFileError("<memory>", "this virtual card has no file")
        doc = {"format": SECURE_CARD_FORMAT, "chip": "secure", **self._p.to_json()}
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            raise CardFileError(target, f"cannot write: {exc.strerror}") from exc
        self.dirty = False
        return target

    @classmethod
    def load(cls, path: Path | str) -> SecureCard:
        """Read a card file written by :meth:`save`.

        :raises CardFileError: missing, unreadable or not a secure card file.
        """
        target = Path(path)
        try:
            doc = json.loads(target.read_text(encoding="utf-8"))
            if doc.get("format") != SECURE_CARD_FORMAT or doc.get("chip") != "secure":
                raise ValueError("not a secure card file of format 1")
            persistent = _Persistent.from_json(doc)
        except OSError as exc:
            raise CardFileError(target, f"cannot read: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise CardFileError(target, f"malformed: {exc}") from exc
        card = cls(target)
        card._p = persistent
        return card

    def forge_clone(self, path: Path | str | None = None) -> SecureCard:
        """An attacker's copy: every readable byte of this card, its own private key.

        The clone reports this card's public key (a cloner can copy that) and
        holds this card's state, counter and identity data, but signs with a key
        it made itself: the private key never left the original.
        """
        clone = SecureCard(path)
        clone._p = copy.deepcopy(self._p)
        clone._p.reported_public_key = self.public_point
        clone._p.private_key = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        clone.dirty = True
        return clone

    @property
    def public_point(self) -> bytes | None:
        """The 65-byte public point GET DATA reports (None before GENERATE KEY)."""
        return _reported(self._p)

    @property
    def seq(self) -> int | None:
        """Stored seq (tests look without APDUs)."""
        return self._p.seq

    @property
    def state(self) -> bytes | None:
        """Stored state bytes."""
        return self._p.state

    @property
    def counter(self) -> int:
        """Transaction counter."""
        return self._p.counter

    @property
    def pin_tries(self) -> int:
        """PIN tries left."""
        return self._p.pin_tries

    # ------------------------------------------------------------------ field

    @property
    def atr(self) -> bytes:
        """ATR a PC/SC reader builds for this ISO 14443-4 card."""
        return _atr()

    def field_on(self) -> None:
        """Power-up: transient memory cleared.

        :raises ChipLeftField: the card has left.
        """
        if self.removed:
            raise ChipLeftField("the card has left the reader")
        self._t = _Transient()

    def field_off(self) -> None:
        """Power-down: transient memory cleared (the session's PIN validation is lost)."""
        self._t = _Transient()

    def power_on(self) -> None:
        """vpcd power-on / reset (the name :class:`simulator.vpcd.VpcdCard` front ends use): :meth:`field_on`."""
        self.field_on()

    def power_off(self) -> None:
        """vpcd power-off: :meth:`field_off`."""
        self.field_off()

    def arm(self, faults: SecureFaultPlan | None) -> None:
        """Arm (or with None disarm) a tear; counting starts now."""
        self.faults = faults
        self.apdus_since_armed = 0

    def reinsert(self, faults: SecureFaultPlan | None = None) -> None:
        """Put a removed card back in a field (fresh session), optionally arming a new plan."""
        self.removed = False
        self._t = _Transient()
        self.arm(faults)

    # ------------------------------------------------------------------ APDUs

    def transmit(self, apdu: bytes) -> bytes:
        """Answer one C-APDU with its R-APDU (data + SW1 SW2).

        :raises ChipLeftField: the card is out of the field, or leaves during this APDU.
        """
        if self.removed:
            raise ChipLeftField("the card has left the reader")
        plan = self.faults
        tear_now = plan is not None and self.apdus_since_armed >= plan.remove_after_apdus
        self.apdus_since_armed += 1
        work = copy.deepcopy(self._p)
        resp = self._dispatch(bytes(apdu), work)
        if tear_now:
            assert plan is not None
            if plan.tear is TearPoint.AFTER_COMMIT:
                self._commit(work)
            self.removed = True
            self._t = _Transient()
            log.debug("secure card torn during %s (%s)", bytes(apdu[:4]).hex(), plan.tear.value)
            raise ChipLeftField("the card left the field during the command")
        self._commit(work)
        return resp

    def _commit(self, work: _Persistent) -> None:
        if work != self._p:
            self._p = work
            self.dirty = True

    def _dispatch(self, apdu: bytes, p: _Persistent) -> bytes:
        cmd = _parse(apdu)
        if cmd is None:
            return _sw(_WRONG_LENGTH)
        if (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == (0xFF, 0xCA, 0x00, 0x00):
            # GET DATA UID: a PC/SC contactless reader answers it for any card (PC/SC Part 3 §3.2.2.1.3);
            # behind vpcd the card stands in for the reader.
            return _sw(_OK, self.uid)
        if cmd.cla not in (0x00, 0x80):
            return _sw(_NO_CLA)
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            return self._select(cmd, p)
        if self._t.selected == _AID_SECURE:
            return self._secure(cmd, p)
        if self._t.selected == _AID_NDEF:
            return self._ndef(cmd, p)
        return _sw(_NO_INS)

    # ------------------------------------------------------------------ §3 SELECT

    def _select(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 == 0x04:
            if cmd.data == _AID_SECURE:
                if cmd.p2 not in (0x00, 0x0C):
                    return _sw(_WRONG_P1P2)
                self._t = _Transient(selected=_AID_SECURE)
                if cmd.p2 == 0x0C:
                    return _sw(_OK)
                prop = bytes((0xC0, 1, 1, 0xC1, 1, p.life_cycle))
                if p.terminal_key_version is not None:
                    prop += bytes((0xC2, 1, p.terminal_key_version))
                body = bytes((0x84, len(_AID_SECURE))) + _AID_SECURE + bytes((0xA5, len(prop))) + prop
                return _sw(_OK, bytes((0x6F, len(body))) + body)
            if cmd.data == _AID_NDEF:
                self._t = _Transient(selected=_AID_NDEF)
                return _sw(_OK)
            return _sw(_NOT_FOUND)
        if cmd.p1 == 0x00 and self._t.selected == _AID_NDEF:
            if cmd.p2 != 0x0C or len(cmd.data) != 2:
                return _sw(_WRONG_P1P2)
            fid = int.from_bytes(cmd.data, "big")
            if fid not in (_FILE_CC, _FILE_NDEF):
                return _sw(_NOT_FOUND)
            self._t.ndef_file = fid
            return _sw(_OK)
        return _sw(_WRONG_P1P2)

    # ------------------------------------------------------------------ §8 NDEF view

    def _ndef(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.cla != 0x00:
            return _sw(_NO_INS)
        if cmd.ins == 0xD6:
            return _sw(_SECURITY)
        if cmd.ins != 0xB0:
            return _sw(_NO_INS)
        if self._t.ndef_file is None:
            return _sw(_NOT_ALLOWED)
        content = _CC if self._t.ndef_file == _FILE_CC else len(p.ndef).to_bytes(2, "big") + p.ndef
        offset = (cmd.p1 << 8) | cmd.p2
        if offset > len(content):
            return _sw(_OFFSET)
        return _sw(_OK, content[offset:offset + (cmd.le or 256)])

    # ------------------------------------------------------------------ secure application

    def _secure(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.cla == 0x00:
            if cmd.ins == 0x20:
                return self._verify(cmd, p)
            return _sw(_NO_INS)
        handler = {
            0xCA: self._get_data,
            0x88: self._authenticate,
            0x82: self._external,
            0xDC: self._update,
            0x2C: self._reset_pin,
            0x46: self._generate,
            0xDA: self._put_data,
            0x44: self._lock,
        }.get(cmd.ins)
        if handler is None:
            return _sw(_NO_INS)
        return handler(cmd, p)

    def _get_data(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 != 0x01 or cmd.has_lc:
            return _sw(_WRONG_P1P2 if cmd.p1 != 0x01 else _WRONG_LENGTH)
        if cmd.p2 == 0x01:
            if p.state is None or p.seq is None:
                return _sw(_NO_DATA)
            return _sw(_OK, p.seq.to_bytes(4, "big") + p.counter.to_bytes(4, "big") + p.state)
        if cmd.p2 == 0x02:
            flags = ((p.options & 1) | (0x02 if p.private_key is not None else 0)
                     | (0x04 if p.state is not None else 0) | (0x08 if p.issuer_key is not None else 0)
                     | (0x10 if p.card_id is not None else 0) | (0x20 if p.pin is not None else 0)
                     | (0x40 if p.identity is not None else 0) | (0x80 if p.terminal_key is not None else 0))
            info = (bytes((1, p.life_cycle, flags, p.pin_tries)) + p.issuer_counter.to_bytes(4, "big")
                    + (p.card_id or bytes(8)))
            return _sw(_OK, info)
        if cmd.p2 == 0x03:
            point = _reported(p)
            return _sw(_NO_DATA) if point is None else _sw(_OK, point)
        if cmd.p2 == 0x04:
            return _sw(_NO_DATA) if p.identity is None else _sw(_OK, p.identity)
        return _sw(_WRONG_P1P2)

    def _authenticate(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 or cmd.p2:
            return _sw(_WRONG_P1P2)
        if not 16 <= len(cmd.data) <= 32:
            return _sw(_WRONG_LENGTH)
        if p.private_key is None:
            return _sw(_NO_DATA)
        if p.life_cycle != _LCS_OPERATIONAL:
            # §5.1: the card signs nothing before LOCK; an unlocked card (PIN and key still open to PUT DATA
            # and GENERATE KEY) must not pass a counter, whatever a relay says its FCI holds (red team r4)
            return _sw(_NOT_ALLOWED)
        if p.counter >= _U32_MAX:
            return _sw(_REFUSED)
        p.counter += 1  # committed with the command (the transaction of step 1)
        seq = p.seq if p.seq is not None else 0
        state_hash = p.state_hash if p.state_hash is not None else hashlib.sha256(b"").digest()
        message = (_AUTH_TAG + (p.card_id or bytes(8)) + bytes((len(cmd.data),)) + cmd.data
                   + p.counter.to_bytes(4, "big") + seq.to_bytes(4, "big") + state_hash)
        key = ec.derive_private_key(p.private_key, ec.SECP256R1())
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
        self._t.auth_counter = p.counter  # what EXTERNAL AUTHENTICATE must prove (§5.5)
        self._t.terminal_ok = False
        return _sw(_OK, p.counter.to_bytes(4, "big") + seq.to_bytes(4, "big") + signature)

    def _update(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 or cmd.p2:
            return _sw(_WRONG_P1P2)
        if not 5 <= len(cmd.data) <= 4 + _MAX_STATE:
            return _sw(_WRONG_LENGTH)
        seq = int.from_bytes(cmd.data[:4], "big")
        if p.life_cycle == _LCS_OPERATIONAL:
            # §5.2: the next seq only, and only for a terminal that proved itself in this session (§5.5)
            if p.seq is None or seq != p.seq + 1:
                return _sw(_REFUSED)
            if not self._t.terminal_ok:
                return _sw(_SECURITY)
            if p.options & 1 and not self._t.pin_validated:
                return _sw(_SECURITY)
            self._t.terminal_ok = False  # one update per proof
            self._t.pin_validated = False
        elif p.seq is not None and seq <= p.seq:
            return _sw(_REFUSED)
        p.seq = seq
        p.state = cmd.data[4:]
        p.state_hash = hashlib.sha256(p.state).digest()
        return _sw(_OK)

    def _verify(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x80:
            return _sw(_WRONG_P1P2)
        if p.pin is None:
            return _sw(_NO_PIN)
        if p.pin_tries == 0:
            return _sw(_BLOCKED)
        if not cmd.has_lc:
            return _sw(_OK) if self._t.pin_validated else _sw(0x63C0 | p.pin_tries)
        if p.life_cycle == _LCS_OPERATIONAL and not self._t.terminal_ok:
            return _sw(_SECURITY)  # §5.3: no try is spent for a terminal that did not prove itself
        return self._check_pin(cmd.data, p)

    def _check_pin(self, pin: bytes, p: _Persistent) -> bytes:
        if p.pin is None:
            return _sw(_NO_PIN)
        if p.pin_tries == 0:
            return _sw(_BLOCKED)
        if not _pin_ok(pin):
            return _sw(_WRONG_DATA)
        # OwnerPIN.check: the try counter drops first, outside the transaction, so a tear keeps it.
        p.pin_tries -= 1
        self._p.pin_tries = p.pin_tries
        self.dirty = True
        self._t.pin_validated = False
        if pin != p.pin:
            return _sw(0x63C0 | p.pin_tries)
        p.pin_tries = _PIN_TRIES
        self._t.pin_validated = True
        return _sw(_OK)

    def _external(self, cmd: _Apdu, p: _Persistent) -> bytes:
        """§5.5 EXTERNAL AUTHENTICATE: HMAC-SHA-256 over this session's counter, optionally + PIN."""
        if cmd.p1 != 0x00 or cmd.p2 not in (0x00, 0x80):
            return _sw(_WRONG_P1P2)
        n = len(cmd.data)
        if (cmd.p2 == 0x00 and n != _MAC_LEN) or (cmd.p2 == 0x80 and n != _MAC_LEN + _PIN_BLOCK):
            return _sw(_WRONG_LENGTH)
        if p.terminal_key is None or p.card_id is None:
            return _sw(_NO_DATA)
        counter = self._t.auth_counter
        if counter is None:
            return _sw(_REFUSED)
        self._t.auth_counter = None  # one proof per INTERNAL AUTHENTICATE
        self._t.terminal_ok = False
        expected = hmac.new(p.terminal_key, _TERMINAL_TAG + p.card_id + counter.to_bytes(4, "big"),
                            hashlib.sha256).digest()
        if not hmac.compare_digest(expected, cmd.data[:_MAC_LEN]):
            return _sw(_SECURITY)
        self._t.terminal_ok = True
        if cmd.p2 == 0x80:  # the PIN block, unmasked with this session's one-time mask
            mask = hmac.new(p.terminal_key, _PIN_MASK_TAG + p.card_id + counter.to_bytes(4, "big"),
                            hashlib.sha256).digest()
            block = bytes(a ^ b for a, b in zip(cmd.data[_MAC_LEN:], mask, strict=False))
            return self._check_pin(block.rstrip(b"\xff"), p)
        return _sw(_OK)

    def _reset_pin(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x80:
            return _sw(_WRONG_P1P2)
        if p.issuer_key is None or p.card_id is None:
            return _sw(_NO_DATA)
        data = cmd.data
        if len(data) < 5 or len(data) < 5 + data[4] + 8:
            return _sw(_WRONG_DATA)
        counter = int.from_bytes(data[:4], "big")
        pin = data[5:5 + data[4]]
        signature = data[5 + data[4]:]
        if not _pin_ok(pin):
            return _sw(_WRONG_DATA)
        if counter <= p.issuer_counter:
            return _sw(_REFUSED)
        message = _RESET_TAG + p.card_id + hashlib.sha256(pin).digest() + counter.to_bytes(4, "big")
        try:
            issuer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p.issuer_key)
            issuer.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return _sw(_SECURITY)
        p.issuer_counter = counter
        p.pin = pin
        p.pin_tries = _PIN_TRIES
        self._t.pin_validated = False
        return _sw(_OK)

    # ------------------------------------------------------------------ §6 personalisation

    def _generate(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if p.life_cycle != _LCS_INIT:
            return _sw(_NOT_ALLOWED)
        if cmd.p1 or cmd.p2:
            return _sw(_WRONG_P1P2)
        p.private_key = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        p.reported_public_key = None
        return _sw(_OK, _point(p.private_key))

    def _put_data(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if p.life_cycle != _LCS_INIT:
            return _sw(_NOT_ALLOWED)
        if cmd.p1 != 0x01 or not 1 <= cmd.p2 <= 7:
            return _sw(_WRONG_P1P2)
        data = cmd.data
        if cmd.p2 == 0x01:
            if len(data) != 8:
                return _sw(_WRONG_LENGTH)
            p.card_id = data
        elif cmd.p2 == 0x02:
            if len(data) != 65:
                return _sw(_WRONG_LENGTH)
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
            except ValueError:
                return _sw(_WRONG_DATA)
            p.issuer_key = data
        elif cmd.p2 == 0x03:
            if not 4 <= len(data) <= 8:
                return _sw(_WRONG_LENGTH)
            if not _pin_ok(data):
                return _sw(_WRONG_DATA)
            p.pin = data
            p.pin_tries = _PIN_TRIES
        elif cmd.p2 == 0x04:
            if len(data) != 1:
                return _sw(_WRONG_LENGTH)
            if data[0] & 0xFE:
                return _sw(_WRONG_DATA)
            p.options = data[0]
        elif cmd.p2 == 0x05:
            if not 1 <= len(data) <= _MAX_NDEF:
                return _sw(_WRONG_LENGTH)
            p.ndef = data
        elif cmd.p2 == 0x06:
            if not data:
                return _sw(_WRONG_LENGTH)
            p.identity = data
        else:
            if len(data) != 1 + _MAC_LEN:
                return _sw(_WRONG_LENGTH)
            if data[0] == 0:
                return _sw(_WRONG_DATA)
            p.terminal_key_version, p.terminal_key = data[0], data[1:]
        return _sw(_OK)

    def _lock(self, cmd: _Apdu, p: _Persistent) -> bytes:
        if cmd.p1 or cmd.p2:
            return _sw(_WRONG_P1P2)
        complete = (p.private_key is not None and p.card_id is not None and p.issuer_key is not None
                    and p.pin is not None and p.state is not None and p.identity is not None
                    and p.terminal_key is not None)
        if p.life_cycle != _LCS_INIT or not complete:
            return _sw(_NOT_ALLOWED)
        p.life_cycle = _LCS_OPERATIONAL
        return _sw(_OK)


def _reported(p: _Persistent) -> bytes | None:
    if p.reported_public_key is not None:
        return p.reported_public_key
    return None if p.private_key is None else _point(p.private_key)


class SecureCardConnection(Connection):
    """An in-process :class:`Connection` to a :class:`SecureCard` (tests without pcscd).

    A card that left the field raises :class:`cardlib.transport.CardRemoved`, as a reader reports it.
    """

    def __init__(self, card: SecureCard) -> None:
        self.card = card
        card.field_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            raw = self.card.transmit(apdu)
        except ChipLeftField as exc:
            raise TransportCardRemoved(str(exc)) from exc
        return raw[:-2], int.from_bytes(raw[-2:], "big")

    def close(self) -> None:
        self.card.field_off()

    @property
    def reader_name(self) -> str:
        return "in-process secure card"

    @property
    def atr(self) -> bytes:
        return self.card.atr


_CONTROL_POWER_OFF, _CONTROL_POWER_ON, _CONTROL_RESET, _CONTROL_ATR = 0, 1, 2, 4


class SecureVpcdCard:
    """Serve a :class:`SecureCard` on a vpcd reader slot from a background thread.

    Same wire protocol as :class:`simulator.vpcd.VpcdCard` (vsmartcard ``vpcd.c``):
    connecting puts the card on the reader, closing the socket takes it away; a
    tear (the card leaving during an APDU) closes the socket without an answer.

    :param card: the card.
    :param port: vpcd port of the slot (loopback only).
    :param persist: save the card file after each APDU that changed it.
    """

    def __init__(self, card: SecureCard, port: int, *, host: str = "127.0.0.1", persist: bool = True) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise VpcdError(f"refusing to connect a virtual card to {host}: vpcd must be used on loopback only")
        self.card = card
        self.host = host
        self.port = port
        self.persist = persist
        self.apdus = 0
        self.error: BaseException | None = None
        self._polled = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> SecureVpcdCard:
        """Connect to vpcd and serve in a daemon thread.

        :raises VpcdError: nothing listens on the port.
        """
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2.0)
        except OSError as exc:
            raise VpcdError(f"cannot connect to vpcd at {self.host}:{self.port}: {exc.strerror}") from exc
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"secure-card-{self.port}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 5.0) -> None:
        """Wait until vpcd has polled the card.

        :raises VpcdError: no poll within *timeout* seconds (another card on the slot?).
        """
        if not self._polled.wait(timeout):
            raise VpcdError(f"vpcd at {self.host}:{self.port} never polled the card: another card on the slot?")

    @property
    def running(self) -> bool:
        """True while the card is on the reader."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Take the card away and save it (idempotent)."""
        self._stop.set()
        self._close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._save()

    def __enter__(self) -> SecureVpcdCard:
        return self.start() if self._thread is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                header = self._recv(sock, 2)
                payload = self._recv(sock, int.from_bytes(header, "big"))
                self._polled.set()
                if len(payload) == 1:
                    self._control(sock, payload[0])
                    continue
                resp = self.card.transmit(payload)
                self.apdus += 1
                self._send(sock, resp)
                self._save()
        except (ConnectionError, OSError, ChipLeftField) as exc:
            log.debug("secure card on %s:%d off the reader: %s", self.host, self.port, exc)
        except BaseException as exc:  # the thread must not die silently: stop() re-raises
            log.exception("secure card on %s:%d failed", self.host, self.port)
            self.error = exc
        finally:
            self.card.field_off()
            self._close()
            self._save()

    def _control(self, sock: socket.socket, code: int) -> None:
        if code == _CONTROL_POWER_OFF:
            self.card.field_off()
        elif code in (_CONTROL_POWER_ON, _CONTROL_RESET):
            self.card.field_on()
        elif code == _CONTROL_ATR:
            if self.card.removed:
                raise ChipLeftField("card left the field")
            self._send(sock, self.card.atr)

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("vpcd closed the connection")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # ~40 ms per APDU otherwise
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def _close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _save(self) -> None:
        if self.persist and self.card.path is not None and self.card.dirty:
            self.card.save()
