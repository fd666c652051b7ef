"""Identity and slot claim sets: typed dataclasses <-> CBOR maps with small integer keys.

Spec: docs/card-format.md §3 (identity) and §4 (slot). Every claim set carries
its format version under key 0. Decoding is strict: the payload must be one
CBOR map, every required key present, no unknown key, every value of the
right CBOR type and range; anything else raises :class:`ClaimsError`.

Units: amounts are integers in the programme's unit (:class:`Unit`): food
packages, rupiah (no sub-rupiah amounts) or visits. Dates are days since
1970-01-01 (UTC); times are POSIX seconds (UTC).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

import cbor2

from cardlib.keys.signer import KID_LENGTH
from cardlib.records.errors import ClaimsError, RecordError
from cardlib.records.slot_encoding import (
    FIXED_VERSIONS,
    SLOT_FIXED_VERSION,
    SLOT_PACKED_VERSION,
    decode_fixed,
    encode_fixed,
    is_fixed,
)

__all__ = [
    "FORMAT_VERSION",
    "HASH_BYTES",
    "WIB",
    "Entitlement",
    "IdentityClaims",
    "IdentityKey",
    "PinMismatch",
    "PinVerifier",
    "SlotClaims",
    "SlotKey",
    "Unit",
    "check_pin_digits",
    "cycle_bounds",
    "cycle_of",
    "state_hash",
    "terminal_id_of",
]

#: Card format version written under key 0 of every claim set (docs/card-format.md).
FORMAT_VERSION = 1
CARD_ID_BYTES = 8
HOUSEHOLD_REF_BYTES = 8
UID_BYTES = 7
#: Length of the truncated SHA-256 that chains states (prev_hash), bytes.
HASH_BYTES = 8
#: Version 1 PIN verifier (cards issued before issue 20): 2 bytes, 1 PIN in 65,536 collides with it.
PIN_VERIFIER_BYTES = 2
PIN_DIGITS = 6
#: Compressed SEC1 P-256 point (``02|03 ‖ x``), bytes.
CARD_PUBLIC_KEY_BYTES = 33
UINT32_MAX = 0xFFFF_FFFF
UINT24_MAX = 0xFF_FFFF
UINT16_MAX = 0xFFFF
#: PBKDF2 work factor bounds, as log2(iterations).
PIN_LOG2_ITERATIONS_MIN = 10
PIN_LOG2_ITERATIONS_MAX = 20
PIN_SALT_CONTEXT = b"HB1pin"
#: Version 2 PIN verifier (docs/card-format.md §3.2): scrypt (RFC 7914) with its cost in the signed claim;
#: 6-byte salt and verifier keep a PIN card with two programmes inside an NTAG215 in format 2.
PIN_V2 = 2
PIN_V2_VERIFIER_BYTES = 6
PIN_V2_SALT_BYTES = 6
PIN_V2_SALT_CONTEXT = b"HB2pin"
#: Version 3 (docs/card-format.md §3.2): only the scrypt cost is signed; the PIN lives in a keyed PIN
#: record on the card's private pages (cardlib.records.pin), so an office can change it.
PIN_V3 = 3
PIN_V3_SALT_CONTEXT = b"HB3pin"
#: scrypt output a version-3 PIN record's tag is keyed over, bytes.
PIN_V3_DIGEST_BYTES = 32
#: scrypt cost bounds: log2(N), block size r, parallelism p; memory 128·r·N bytes at most 64 MiB.
PIN_LOG2_N_MIN = 10
PIN_LOG2_N_MAX = 18
PIN_SCRYPT_R_MAX = 16
PIN_SCRYPT_P_MAX = 4
PIN_SCRYPT_MAXMEM = 64 * 1024 * 1024
#: Kemendagri region code: province, optional regency, district, village (e.g. "62.71").
_REGION_RE = re.compile(r"^\d{2}(\.\d{2}(\.\d{2}(\.\d{4})?)?)?$")
_EPOCH = dt.date(1970, 1, 1)
#: Western Indonesia Time (UTC+7, no daylight saving): the local time of Central
#: Kalimantan, in which the province's half-year cycles start and end.
WIB = dt.timezone(dt.timedelta(hours=7), "WIB")
#: Half-years per year; cycle id = year * CYCLE_YEAR_FACTOR + half (1 = Jan-Jun, 2 = Jul-Dec).
CYCLE_YEAR_FACTOR = 10
_HALF_START_MONTH = {1: 1, 2: 7}


def cycle_of(when: dt.datetime) -> int:
    """The province-wide entitlement cycle containing ``when`` (docs/card-format.md §conventions).

    One calendar for every programme: cycle id = year * 10 + half, half 1 =
    1 Jan - 30 Jun and half 2 = 1 Jul - 31 Dec, by the local date in WIB (UTC+7).
    E.g. 2026-03-01 -> 20261, 2026-12-31T17:30Z (= 1 Jan 2027 00:30 WIB) -> 20271.
    A card slot holds one cycle for all its programmes; a newer cycle resets
    every programme's remaining amount to the identity's ``per_cycle``.

    :param when: an aware datetime.
    :returns: the cycle id (fits the slot's uint32 ``cycle`` claim).
    :raises ValueError: for a naive datetime.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("cycle_of needs a timezone-aware datetime")
    local = when.astimezone(WIB)
    return local.year * CYCLE_YEAR_FACTOR + (1 if local.month <= 6 else 2)


def terminal_id_of(kid: bytes) -> int:
    """The uint32 slot ``terminal_id`` of a signing key: its 4-byte kid read big-endian.

    docs/card-format.md §conventions: terminals *and* the issuing station write
    their key's kid, so the server maps a slot back to the enrolled key without a
    second numbering.

    :param kid: the 4-byte key id.
    :raises ValueError: ``kid`` is not 4 bytes.
    """
    if len(kid) != KID_LENGTH:
        raise ValueError(f"a kid is {KID_LENGTH} bytes, got {len(kid)}")
    return int.from_bytes(kid, "big")


def cycle_bounds(cycle: int) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` of a cycle id as aware datetimes in WIB.

    :param cycle: year * 10 + half (half 1 or 2), e.g. 20262.
    :raises ValueError: not a valid cycle id.
    """
    year, half = divmod(cycle, CYCLE_YEAR_FACTOR)
    if half not in _HALF_START_MONTH or not 1 <= year <= 9999:
        raise ValueError(f"not a cycle id: {cycle!r} (expected year*10 + 1 or 2)")
    start = dt.datetime(year, _HALF_START_MONTH[half], 1, tzinfo=WIB)
    end = dt.datetime(year, 7, 1, tzinfo=WIB) if half == 1 else dt.datetime(year + 1, 1, 1, tzinfo=WIB)
    return start, end


class Unit(IntEnum):
    """What a programme's amounts count (CBOR uint on the card)."""

    PACKAGE = 1  #: food packages handed over (e.g. 5 kg rice + 1 L oil + 1 kg sugar)
    RUPIAH = 2  #: cash, whole rupiah
    VISIT = 3  #: services delivered (clinic visits), a count


class IdentityKey(IntEnum):
    """CBOR map keys of the identity claim set (docs/card-format.md §3)."""

    VERSION = 0
    CARD_ID = 1
    HOUSEHOLD_REF = 2
    REGION = 3
    PROGRAMMES = 4
    VALID_FROM = 5
    VALID_TO = 6
    OFFLINE_CAP = 7
    UID = 8
    PIN = 9
    CARD_PUBLIC_KEY = 10


class SlotKey(IntEnum):
    """CBOR map keys of the slot (state) claim set (docs/card-format.md §4)."""

    VERSION = 0
    SEQ = 1
    CYCLE = 2
    REMAINING = 3
    TERMINAL_ID = 4
    TERMINAL_SEQ = 5
    TIME = 6
    NFC_COUNTER = 7
    PREV_HASH = 8


class PinMismatch(RecordError):
    """The PIN entered does not match the card's PIN verifier."""


def state_hash(cose_bytes: bytes) -> bytes:
    """The short hash that chains states: SHA-256 over the exact COSE bytes, first 8 bytes.

    :param cose_bytes: a whole COSE_Sign1 message (identity or slot), as on the card.
    :returns: 8 bytes.
    """
    return hashlib.sha256(cose_bytes).digest()[:HASH_BYTES]


@dataclass(frozen=True)
class Entitlement:
    """A programme's entitlement per cycle.

    :ivar unit: what the amount counts.
    :ivar per_cycle: amount per cycle in ``unit`` (packages, rupiah, visits), 1..2^32-1.
    """

    unit: Unit
    per_cycle: int

    def __post_init__(self) -> None:
        _check_uint("per_cycle", self.per_cycle, 1, UINT32_MAX)
        if not isinstance(self.unit, Unit):
            raise ClaimsError(f"unit must be a Unit, got {self.unit!r}")


@dataclass(frozen=True)
class PinVerifier:
    """PIN verifier parameters (docs/card-format.md §3.2), versioned so cards in the field still verify.

    Version 1 (cards issued before issue 20, read-only here)::

        verifier = PBKDF2-HMAC-SHA256(PIN, "HB1pin" ‖ card_id ‖ UID, 2^log2_iterations)[:2]

    Two bytes: any phone that reads the identity finds a colliding PIN in seconds.

    Version 2 (issued from issue 20 on)::

        verifier = scrypt(PIN, "HB2pin" ‖ card_id ‖ UID ‖ salt, N = 2^log2_iterations, r, p)[:6]

    (RFC 7914). Six bytes leave no colliding PIN (10^6 PINs against 2^48 values); the cost is in
    the signed claim, so the province can raise it for new cards while the old ones still verify.

    Version 3 (format-2 cards from issue 18 on): the claim holds the scrypt cost only; the
    verifier is a PIN record on the card's private pages, keyed per card
    (:mod:`cardlib.records.pin`), which an office can rewrite with a new PIN. :meth:`digest`
    gives the 32-byte ``scrypt(PIN, "HB3pin" ‖ card_id ‖ UID, N, r, p)`` the record's tag is
    computed over; :meth:`check` refuses (the PIN cannot be checked without the record).

    :ivar log2_iterations: version 1: log2 of the PBKDF2 iterations (10..20); version 2: log2 of
        scrypt's N (10..18).
    :ivar verifier: 2 bytes (version 1) or 6 bytes (version 2); empty for version 3 (on the card).
    :ivar version: 1, 2 or 3.
    :ivar r: scrypt block size (versions 2 and 3, 1..16; 0 for version 1).
    :ivar p: scrypt parallelism (versions 2 and 3, 1..4; 0 for version 1).
    :ivar salt: 6 random bytes per card (version 2; empty for version 1).
    """

    log2_iterations: int
    verifier: bytes
    version: int = 1
    r: int = 0
    p: int = 0
    salt: bytes = b""

    def __post_init__(self) -> None:
        if self.version == 1:
            _check_uint("log2_iterations", self.log2_iterations, PIN_LOG2_ITERATIONS_MIN, PIN_LOG2_ITERATIONS_MAX)
            _check_bytes("pin verifier", self.verifier, PIN_VERIFIER_BYTES)
            if self.r or self.p or self.salt:
                raise ClaimsError("a version-1 PIN verifier has no scrypt parameters")
        elif self.version in (PIN_V2, PIN_V3):
            _check_uint("log2 N", self.log2_iterations, PIN_LOG2_N_MIN, PIN_LOG2_N_MAX)
            _check_uint("scrypt r", self.r, 1, PIN_SCRYPT_R_MAX)
            _check_uint("scrypt p", self.p, 1, PIN_SCRYPT_P_MAX)
            if 128 * self.r * (1 << self.log2_iterations) > PIN_SCRYPT_MAXMEM:
                raise ClaimsError("scrypt parameters need more than 64 MiB")
            if self.version == PIN_V3:
                if self.salt or self.verifier:
                    raise ClaimsError("a version-3 PIN claim carries no salt and no verifier (they are on the card)")
            else:
                _check_bytes("pin salt", self.salt, PIN_V2_SALT_BYTES)
                _check_bytes("pin verifier", self.verifier, PIN_V2_VERIFIER_BYTES)
        else:
            raise ClaimsError(f"unknown PIN verifier version {self.version!r}")

    @staticmethod
    def derive(pin: str, card_id: bytes, uid: bytes, log2_iterations: int) -> PinVerifier:
        """Compute a version-1 verifier (2 bytes): only to test cards issued before issue 20.

        :raises ClaimsError: PIN not 6 ASCII digits, or a work factor out of range.
        """
        return PinVerifier(log2_iterations, _pin_digest(pin, card_id, uid, log2_iterations))

    @staticmethod
    def derive_v2(pin: str, card_id: bytes, uid: bytes, salt: bytes, *, log2_n: int, r: int = 8,
                  p: int = 1) -> PinVerifier:
        """Compute a version-2 (scrypt) verifier at issuance.

        :param salt: 6 random bytes, new for every card (``secrets.token_bytes(6)``).
        :param log2_n: log2 of scrypt's N; one check costs about 2^log2_n · r · 0.5 µs here
            (docs/security.md §PIN).
        :raises ClaimsError: PIN not 6 ASCII digits, or parameters out of range.
        """
        params = PinVerifier(log2_n, bytes(PIN_V2_VERIFIER_BYTES), PIN_V2, r, p, salt)
        return dataclasses.replace(params, verifier=params.digest(pin, card_id, uid))

    @staticmethod
    def v3(*, log2_n: int, r: int = 8, p: int = 1) -> PinVerifier:
        """The version-3 claim: scrypt cost only (the PIN goes into the card's PIN record).

        :raises ClaimsError: parameters out of range.
        """
        return PinVerifier(log2_n, b"", PIN_V3, r, p)

    @property
    def on_card(self) -> bool:
        """True for version 3: the verifier is the card's keyed PIN record, not this claim."""
        return self.version == PIN_V3

    def digest(self, pin: str, card_id: bytes, uid: bytes) -> bytes:
        """The verifier bytes a PIN gives under these parameters (one guess's whole cost).

        :raises ClaimsError: PIN not 6 ASCII digits.
        """
        if self.version == 1:
            return _pin_digest(pin, card_id, uid, self.log2_iterations)
        check_pin_digits(pin)
        if self.version == PIN_V3:
            return hashlib.scrypt(pin.encode(), salt=PIN_V3_SALT_CONTEXT + bytes(card_id) + bytes(uid),
                                  n=1 << self.log2_iterations, r=self.r, p=self.p,
                                  maxmem=2 * PIN_SCRYPT_MAXMEM, dklen=PIN_V3_DIGEST_BYTES)
        salt = PIN_V2_SALT_CONTEXT + bytes(card_id) + bytes(uid) + self.salt
        return hashlib.scrypt(pin.encode(), salt=salt, n=1 << self.log2_iterations, r=self.r, p=self.p,
                              maxmem=2 * PIN_SCRYPT_MAXMEM, dklen=PIN_V2_VERIFIER_BYTES)

    def check(self, pin: str, card_id: bytes, uid: bytes) -> None:
        """Check a PIN entered at the counter (constant-time compare).

        :raises PinMismatch: the PIN does not match.
        :raises ClaimsError: PIN not 6 ASCII digits, or a version-3 claim (check the card's PIN
            record instead: :func:`cardlib.records.pin.check_pin`).
        """
        if self.on_card:
            raise ClaimsError("a version-3 PIN is checked against the card's PIN record, not the claim")
        if not hmac.compare_digest(self.digest(pin, card_id, uid), self.verifier):
            raise PinMismatch("PIN does not match")

    def to_cbor_value(self) -> list[Any]:
        """Claim 9's value: ``[log2_iterations, verifier]`` (v1), ``[2, log2_n, r, p, salt, verifier]`` (v2)
        or ``[3, log2_n, r, p]`` (v3)."""
        if self.version == 1:
            return [self.log2_iterations, self.verifier]
        if self.version == PIN_V3:
            return [PIN_V3, self.log2_iterations, self.r, self.p]
        return [PIN_V2, self.log2_iterations, self.r, self.p, self.salt, self.verifier]

    @staticmethod
    def from_cbor_value(raw: list[Any]) -> PinVerifier:
        """Strictly decode claim 9 (either version).

        :raises ClaimsError: neither shape, or values out of range.
        """
        if len(raw) == 2 and _is_uint(raw[0]) and isinstance(raw[1], bytes):
            return PinVerifier(raw[0], raw[1])
        if (len(raw) == 6 and raw[0] == PIN_V2 and all(_is_uint(v) for v in raw[1:4])
                and isinstance(raw[4], bytes) and isinstance(raw[5], bytes)):
            return PinVerifier(raw[1], raw[5], PIN_V2, raw[2], raw[3], raw[4])
        if len(raw) == 4 and raw[0] == PIN_V3 and all(_is_uint(v) for v in raw[1:4]):
            return PinVerifier(raw[1], b"", PIN_V3, raw[2], raw[3])
        raise ClaimsError("pin: expected [log2_iterations, verifier], [2, log2_n, r, p, salt, verifier] "
                          "or [3, log2_n, r, p]")


def check_pin_digits(pin: str) -> None:
    """:raises ClaimsError: ``pin`` is not 6 ASCII digits (what a counter accepts as an entry)."""
    if len(pin) != PIN_DIGITS or not pin.isascii() or not pin.isdigit():
        raise ClaimsError(f"PIN must be {PIN_DIGITS} digits")


def _pin_digest(pin: str, card_id: bytes, uid: bytes, log2_iterations: int) -> bytes:
    check_pin_digits(pin)
    salt = PIN_SALT_CONTEXT + bytes(card_id) + bytes(uid)
    return hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, 1 << log2_iterations)[
        :PIN_VERIFIER_BYTES
    ]


@dataclass(frozen=True)
class IdentityClaims:
    """Issuer-signed identity of one card (docs/card-format.md §3).

    :ivar card_id: 8 bytes, the card number (printed as 16 hex digits).
    :ivar household_ref: 8 bytes, pseudonymous household reference (no name, no NIK).
    :ivar region: Kemendagri region code, e.g. ``"62.71"`` (Palangka Raya).
    :ivar programmes: programme id -> :class:`Entitlement` (entitlement per cycle).
    :ivar valid_from: first valid day (UTC date), inclusive.
    :ivar valid_to: last valid day (UTC date), inclusive.
    :ivar offline_cap: programme id -> the most (in the programme's unit) that
        terminals may hand out per cycle without an online confirmation.
    :ivar uid: the 7-byte chip UID the card was issued on (also bound via external_aad).
    :ivar pin: PIN verifier parameters, or None when the card has no PIN.
    :ivar card_public_key: 33-byte compressed P-256 key of a ``secure`` card, else None.
    :ivar version: format version (1).
    """

    card_id: bytes
    household_ref: bytes
    region: str
    programmes: Mapping[int, Entitlement]
    valid_from: dt.date
    valid_to: dt.date
    offline_cap: Mapping[int, int]
    uid: bytes
    pin: PinVerifier | None = None
    card_public_key: bytes | None = None
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ClaimsError(f"unsupported identity format version {self.version!r}")
        _check_bytes("card_id", self.card_id, CARD_ID_BYTES)
        _check_bytes("household_ref", self.household_ref, HOUSEHOLD_REF_BYTES)
        _check_bytes("uid", self.uid, UID_BYTES)
        if not isinstance(self.region, str) or not _REGION_RE.match(self.region):
            raise ClaimsError(f"region {self.region!r} is not a Kemendagri code like '62.71'")
        if not self.programmes:
            raise ClaimsError("at least one programme")
        for pid, prog in self.programmes.items():
            _check_uint("programme id", pid, 1, 23)
            if not isinstance(prog, Entitlement):
                raise ClaimsError(f"programme {pid}: not an Entitlement")
        for pid, cap in self.offline_cap.items():
            if pid not in self.programmes:
                raise ClaimsError(f"offline cap for programme {pid} the card is not in")
            _check_uint(f"offline cap {pid}", cap, 0, UINT32_MAX)
        for name in ("valid_from", "valid_to"):
            value = getattr(self, name)
            if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
                raise ClaimsError(f"{name} must be a date")
            _check_uint(name, (value - _EPOCH).days, 0, UINT16_MAX)
        if self.valid_to < self.valid_from:
            raise ClaimsError("valid_to before valid_from")
        if self.pin is not None and not isinstance(self.pin, PinVerifier):
            raise ClaimsError("pin must be a PinVerifier")
        if self.card_public_key is not None:
            _check_bytes("card_public_key", self.card_public_key, CARD_PUBLIC_KEY_BYTES)
            if self.card_public_key[0] not in (2, 3):
                raise ClaimsError("card_public_key must be a compressed SEC1 point")
        object.__setattr__(self, "programmes", MappingProxyType(dict(sorted(self.programmes.items()))))
        object.__setattr__(self, "offline_cap", MappingProxyType(dict(sorted(self.offline_cap.items()))))

    def to_cbor(self) -> bytes:
        """Encode as a CBOR map with integer keys in ascending order (RFC 8949 §4.2.1)."""
        claims: dict[int, Any] = {
            IdentityKey.VERSION: self.version,
            IdentityKey.CARD_ID: self.card_id,
            IdentityKey.HOUSEHOLD_REF: self.household_ref,
            IdentityKey.REGION: self.region,
            IdentityKey.PROGRAMMES: {
                pid: [int(p.unit), p.per_cycle] for pid, p in self.programmes.items()
            },
            IdentityKey.VALID_FROM: (self.valid_from - _EPOCH).days,
            IdentityKey.VALID_TO: (self.valid_to - _EPOCH).days,
            IdentityKey.OFFLINE_CAP: dict(self.offline_cap),
            IdentityKey.UID: self.uid,
        }
        if self.pin is not None:
            claims[IdentityKey.PIN] = self.pin.to_cbor_value()
        if self.card_public_key is not None:
            claims[IdentityKey.CARD_PUBLIC_KEY] = self.card_public_key
        return cbor2.dumps({int(k): v for k, v in claims.items()})

    @classmethod
    def from_cbor(cls, payload: bytes) -> IdentityClaims:
        """Strictly decode an identity claim set.

        :raises ClaimsError: not a map, missing/extra keys, wrong types or ranges,
            unknown version.
        """
        claims = _decode_map(payload, "identity")
        _check_version(claims, "identity")
        required = {
            IdentityKey.VERSION, IdentityKey.CARD_ID, IdentityKey.HOUSEHOLD_REF,
            IdentityKey.REGION, IdentityKey.PROGRAMMES, IdentityKey.VALID_FROM,
            IdentityKey.VALID_TO, IdentityKey.OFFLINE_CAP, IdentityKey.UID,
        }
        optional = {IdentityKey.PIN, IdentityKey.CARD_PUBLIC_KEY}
        _check_keys(claims, required, optional, "identity")
        programmes: dict[int, Entitlement] = {}
        raw_programmes = _want(claims, IdentityKey.PROGRAMMES, dict, "programmes")
        for pid, spec in raw_programmes.items():
            if (
                not isinstance(spec, list)
                or len(spec) != 2
                or not _is_uint(spec[0])
                or not _is_uint(spec[1])
            ):
                raise ClaimsError(f"programme {pid!r}: expected [unit, per_cycle]")
            try:
                unit = Unit(spec[0])
            except ValueError:
                raise ClaimsError(f"programme {pid!r}: unknown unit {spec[0]}") from None
            _check_uint("programme id", pid, 1, 23)
            programmes[pid] = Entitlement(unit, spec[1])
        offline_cap = _uint_map(_want(claims, IdentityKey.OFFLINE_CAP, dict, "offline_cap"), "offline_cap")
        pin = None
        if IdentityKey.PIN in claims:
            pin = PinVerifier.from_cbor_value(_want(claims, IdentityKey.PIN, list, "pin"))
        card_public_key = None
        if IdentityKey.CARD_PUBLIC_KEY in claims:
            card_public_key = _want(claims, IdentityKey.CARD_PUBLIC_KEY, bytes, "card_public_key")
        return cls(
            card_id=_want(claims, IdentityKey.CARD_ID, bytes, "card_id"),
            household_ref=_want(claims, IdentityKey.HOUSEHOLD_REF, bytes, "household_ref"),
            region=_want(claims, IdentityKey.REGION, str, "region"),
            programmes=programmes,
            valid_from=_day(claims, IdentityKey.VALID_FROM, "valid_from"),
            valid_to=_day(claims, IdentityKey.VALID_TO, "valid_to"),
            offline_cap=offline_cap,
            uid=_want(claims, IdentityKey.UID, bytes, "uid"),
            pin=pin,
            card_public_key=card_public_key,
        )


@dataclass(frozen=True)
class SlotClaims:
    """Terminal-signed card state (docs/card-format.md §4).

    :ivar seq: state sequence number, 0 (issuance) .. 2^32-1, +1 per write.
    :ivar cycle: entitlement cycle id the ``remaining`` amounts belong to (uint32).
    :ivar remaining: programme id -> amount left in this cycle (programme unit).
    :ivar terminal_id: id of the terminal that wrote the state (0 = issuance station), uint32.
    :ivar terminal_seq: that terminal's journal sequence number of the entry, uint32.
    :ivar time: terminal RTC at write, POSIX seconds UTC, uint32.
    :ivar nfc_counter: NTAG NFC counter read in the writing session (24 bit).
    :ivar prev_hash: :func:`state_hash` of the previous state's COSE bytes (8 bytes);
        for seq 0 the hash of the identity record's COSE bytes.
    :ivar version: slot format version: 3 (packed, docs/card-format.md §4.2) for every new state;
        2 (fixed-width, §4.1) and 1 (preferred serialization) are still read.
    """

    seq: int
    cycle: int
    remaining: Mapping[int, int]
    terminal_id: int
    terminal_seq: int
    time: int
    nfc_counter: int
    prev_hash: bytes
    version: int = SLOT_PACKED_VERSION

    def __post_init__(self) -> None:
        if self.version not in (FORMAT_VERSION, *FIXED_VERSIONS):
            raise ClaimsError(f"unsupported slot format version {self.version!r}")
        _check_uint("seq", self.seq, 0, UINT32_MAX)
        _check_uint("cycle", self.cycle, 0, UINT32_MAX)
        _check_uint("terminal_id", self.terminal_id, 0, UINT32_MAX)
        _check_uint("terminal_seq", self.terminal_seq, 0, UINT32_MAX)
        _check_uint("time", self.time, 0, UINT32_MAX)
        _check_uint("nfc_counter", self.nfc_counter, 0, UINT24_MAX)
        _check_bytes("prev_hash", self.prev_hash, HASH_BYTES)
        for pid, amount in self.remaining.items():
            _check_uint("programme id", pid, 1, 23)
            _check_uint(f"remaining {pid}", amount, 0, UINT32_MAX)
        object.__setattr__(self, "remaining", MappingProxyType(dict(sorted(self.remaining.items()))))

    def to_cbor(self) -> bytes:
        """Encode as a CBOR map with integer keys in ascending order (version 2: fixed widths, §4.1)."""
        if self.version in FIXED_VERSIONS:
            return encode_fixed(seq=self.seq, cycle=self.cycle, remaining=self.remaining,
                                terminal_id=self.terminal_id, terminal_seq=self.terminal_seq, time=self.time,
                                nfc_counter=self.nfc_counter, prev_hash=self.prev_hash, version=self.version)
        return cbor2.dumps(
            {
                int(SlotKey.VERSION): self.version,
                int(SlotKey.SEQ): self.seq,
                int(SlotKey.CYCLE): self.cycle,
                int(SlotKey.REMAINING): dict(self.remaining),
                int(SlotKey.TERMINAL_ID): self.terminal_id,
                int(SlotKey.TERMINAL_SEQ): self.terminal_seq,
                int(SlotKey.TIME): self.time,
                int(SlotKey.NFC_COUNTER): self.nfc_counter,
                int(SlotKey.PREV_HASH): self.prev_hash,
            }
        )

    @classmethod
    def from_cbor(cls, payload: bytes) -> SlotClaims:
        """Strictly decode a slot claim set.

        :raises ClaimsError: not a map, missing/extra keys, wrong types or ranges.
        """
        fixed = is_fixed(payload)
        claims = decode_fixed(payload) if fixed else _decode_map(payload, "slot")
        if not fixed:
            _check_version(claims, "slot")
        _check_keys(claims, set(SlotKey), set(), "slot")
        return cls(
            version=claims[SlotKey.VERSION],
            seq=_want_uint(claims, SlotKey.SEQ, "seq"),
            cycle=_want_uint(claims, SlotKey.CYCLE, "cycle"),
            remaining=_uint_map(_want(claims, SlotKey.REMAINING, dict, "remaining"), "remaining"),
            terminal_id=_want_uint(claims, SlotKey.TERMINAL_ID, "terminal_id"),
            terminal_seq=_want_uint(claims, SlotKey.TERMINAL_SEQ, "terminal_seq"),
            time=_want_uint(claims, SlotKey.TIME, "time"),
            nfc_counter=_want_uint(claims, SlotKey.NFC_COUNTER, "nfc_counter"),
            prev_hash=_want(claims, SlotKey.PREV_HASH, bytes, "prev_hash"),
        )

    @staticmethod
    def max_encoded_size(programme_ids: list[int] | tuple[int, ...], per_cycle: Mapping[int, int]) -> int:
        """Largest possible :meth:`to_cbor` size for a card's programmes, bytes.

        Every uint claim at its maximum and every remaining amount at its
        per-cycle entitlement (remaining never exceeds it). Used to size the
        fixed slot (docs/card-format.md §2). Version 2's, the longer encoding, so a counter that still
        writes version 2 can redeem a card issued now (version 3 is shorter, docs/card-format.md §4.2).
        """
        worst = SlotClaims(
            seq=UINT32_MAX,
            cycle=UINT32_MAX,
            remaining={pid: per_cycle[pid] for pid in programme_ids},
            terminal_id=UINT32_MAX,
            terminal_seq=UINT32_MAX,
            time=UINT32_MAX,
            nfc_counter=UINT24_MAX,
            prev_hash=bytes(HASH_BYTES),
            version=SLOT_FIXED_VERSION,
        )
        return len(worst.to_cbor())


# ----------------------------------------------------------------------------- helpers


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_uint(name: str, value: object, low: int, high: int) -> None:
    if not _is_uint(value) or not low <= value <= high:  # type: ignore[operator]
        raise ClaimsError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ClaimsError(f"{name} must be {length} bytes, got {value!r}")


def _decode_map(payload: bytes, what: str) -> dict[Any, Any]:
    try:
        claims = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise ClaimsError(f"{what} claims: not CBOR ({exc})") from exc
    if not isinstance(claims, dict):
        raise ClaimsError(f"{what} claims must be a CBOR map")
    if cbor2.dumps(claims) != bytes(payload):
        raise ClaimsError(f"{what} claims: trailing bytes, repeated key or non-preferred encoding")
    return claims


def _check_version(claims: dict[Any, Any], what: str) -> None:
    version = claims.get(0)
    if version != FORMAT_VERSION or not _is_uint(version):
        raise ClaimsError(f"{what} claims: unsupported format version {version!r}")


def _check_keys(claims: dict[Any, Any], required: set[Any], optional: set[Any], what: str) -> None:
    keys = set(claims)
    missing = {int(k) for k in required} - keys
    extra = keys - {int(k) for k in required | optional}
    if missing:
        raise ClaimsError(f"{what} claims: missing key(s) {sorted(missing)}")
    if extra:
        raise ClaimsError(f"{what} claims: unknown key(s) {sorted(map(repr, extra))}")


def _want(claims: dict[Any, Any], key: int, typ: type, name: str) -> Any:
    value = claims[int(key)]
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ClaimsError(f"{name} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _want_uint(claims: dict[Any, Any], key: int, name: str) -> int:
    value = claims[int(key)]
    if not _is_uint(value):
        raise ClaimsError(f"{name} must be an unsigned integer, got {value!r}")
    return int(value)


def _uint_map(raw: dict[Any, Any], name: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, value in raw.items():
        if not _is_uint(key) or not _is_uint(value):
            raise ClaimsError(f"{name}: keys and values must be unsigned integers")
        out[key] = value
    return out


def _day(claims: dict[Any, Any], key: int, name: str) -> dt.date:
    days = _want_uint(claims, key, name)
    if days > UINT16_MAX:
        raise ClaimsError(f"{name} out of range")
    return _EPOCH + dt.timedelta(days=days)
