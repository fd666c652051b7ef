"""The server's household balance statement: what a re-issued card may carry (docs/keys-and-provisioning.md).

A lost card is re-issued with the household's remaining entitlement of the current cycle,
computed by the server from every uploaded journal of every card the household has had,
never typed by the technician. The server signs it with its receipt key (the key counters
pin at enrolment, :mod:`cardlib.records.statements`); the provisioning station verifies it
offline under that pinned public key and writes exactly that balance (or less).

COSE_Sign1 (RFC 9052 §4.2) over deterministic CBOR (RFC 8949 §4.2.1), external_aad
``b"huma-betang/household-balance/v1"`` (no other statement verifies as one):
``{1: 1, 2: household_ref (8 bytes), 3: cycle id (e.g. 20261), 4: {programme id: remaining},
5: time (POSIX s), 6: valid until (POSIX s), 7: card id replaced (8 bytes) or null,
8: [card ids the server knows for the household (8 bytes each)]}``.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from cardlib.keys.signer import PublicKey, Signer, cose_key, sign1_with
from cardlib.records.cose import verify1
from cardlib.records.errors import RecordError

__all__ = ["BALANCE_AAD", "BalanceStatement", "BalanceStatementError", "sign_balance", "verify_balance"]

BALANCE_AAD = b"huma-betang/household-balance/v1"
_VERSION = 1


class BalanceStatementError(RecordError):
    """Not a balance statement of the right shape or version (a bad signature raises :class:`CoseError`)."""


class _Claim(enum.IntEnum):
    VERSION = 1
    HOUSEHOLD = 2
    CYCLE = 3
    REMAINING = 4
    TIME = 5
    VALID_UNTIL = 6
    REISSUE_OF = 7
    CARDS = 8


@dataclass(frozen=True)
class BalanceStatement:
    """A verified household balance. ``remaining`` maps programme id → amount in its unit; ``message`` the bytes."""

    household_ref: bytes
    cycle: int
    remaining: dict[int, int]
    time: int
    valid_until: int
    reissue_of: bytes | None
    cards: tuple[bytes, ...]
    message: bytes


def sign_balance(signer: Signer, household_ref: bytes, cycle: int, remaining: Mapping[int, int], now: float,
                 valid_s: int, reissue_of: bytes | None, cards: Sequence[bytes]) -> bytes:
    """Sign a household balance statement.

    :param signer: the server receipt key (Ed25519).
    :param household_ref: 8 bytes. :param cycle: cycle id (:func:`cardlib.records.claims.cycle_of`).
    :param remaining: programme id → remaining amount ≥ 0 (packages, rupiah or visits).
    :param now: POSIX seconds. :param valid_s: seconds the statement may be used for, > 0.
    :param reissue_of: the 8-byte card id the re-issue replaces, or None.
    :param cards: card ids (8 bytes) of the household's cards.
    :returns: the COSE_Sign1 bytes.
    :raises ValueError: a negative amount, a household ref or card id of the wrong length.
    """
    if len(household_ref) != 8 or any(len(c) != 8 for c in cards) or (reissue_of is not None
                                                                       and len(reissue_of) != 8):
        raise ValueError("household ref and card ids are 8 bytes")
    if any(v < 0 for v in remaining.values()) or valid_s <= 0:
        raise ValueError("remaining amounts are ≥ 0 and validity > 0 s")
    return sign1_with(signer, cbor2.dumps({
        _Claim.VERSION: _VERSION,
        _Claim.HOUSEHOLD: household_ref,
        _Claim.CYCLE: cycle,
        _Claim.REMAINING: {int(k): int(v) for k, v in sorted(remaining.items())},
        _Claim.TIME: int(now),
        _Claim.VALID_UNTIL: int(now) + valid_s,
        _Claim.REISSUE_OF: reissue_of,
        _Claim.CARDS: list(cards),
    }, canonical=True), BALANCE_AAD)


def _typed(claims: Mapping[Any, Any], key: int, kind: type | tuple[type, ...]) -> Any:
    value = claims.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BalanceStatementError(f"balance statement: claim {key} missing or of the wrong type")
    return value


def verify_balance(message: bytes, key: PublicKey) -> BalanceStatement:
    """Verify a balance statement under the server's (pinned) receipt key.

    The caller checks household, card replaced, validity against its clock and the cycle.

    :raises cardlib.records.errors.CoseError: malformed, another key, bad signature.
    :raises BalanceStatementError: wrong shape or version.
    """
    k = cose_key(key)
    verified = verify1(message, {k.kid: k}, external_aad=BALANCE_AAD)
    try:
        claims = cbor2.loads(verified.payload)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise BalanceStatementError("balance statement: payload is not CBOR") from exc
    if not isinstance(claims, dict) or claims.get(_Claim.VERSION) != _VERSION:
        raise BalanceStatementError("balance statement: wrong shape or version")
    remaining = _typed(claims, _Claim.REMAINING, dict)
    if not all(isinstance(p, int) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for p, v in remaining.items()):
        raise BalanceStatementError("balance statement: remaining is not {programme id: amount ≥ 0}")
    reissue_of = claims.get(_Claim.REISSUE_OF)
    if reissue_of is not None and not (isinstance(reissue_of, bytes) and len(reissue_of) == 8):
        raise BalanceStatementError("balance statement: card replaced is not 8 bytes")
    cards = _typed(claims, _Claim.CARDS, list)
    household = _typed(claims, _Claim.HOUSEHOLD, bytes)
    if len(household) != 8 or not all(isinstance(c, bytes) and len(c) == 8 for c in cards):
        raise BalanceStatementError("balance statement: household ref and card ids are 8 bytes")
    return BalanceStatement(household, _typed(claims, _Claim.CYCLE, int), dict(remaining),
                            _typed(claims, _Claim.TIME, int), _typed(claims, _Claim.VALID_UNTIL, int),
                            reissue_of, tuple(cards), message)
