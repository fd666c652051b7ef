"""Technician accountability: session grants (quota) and signed issuance files.

- A **session grant** is a COSE_Sign1 by an *issuer* key (the office that owns the cards)
  authorising one technician key to issue at most ``max_cards`` cards until ``not_after``.
  The station enforces it; the server checks every uploaded issuance file against it, which is
  the control that matters (a station that holds the issuer key could forge its own grant, but
  not one the server accepts beyond the registry's records).
- An **issuance file** is a COSE_Sign1 by the technician key over every card the session
  touched: issued cards, and card ids abandoned half-way (their ids must go to the deny list,
  because an unlocked card may still carry a valid identity record).
- A **PIN-reset record** is a COSE_Sign1 by the same technician key over one office PIN reset
  (the ``pin_reset`` journal event itself, CBOR-encoded); ``pin-resets.cose`` is a CBOR
  sequence (RFC 8742) of them, one appended per reset (:func:`sign_pin_reset_record`,
  :func:`verify_pin_reset_records`).

Payloads are CBOR maps with text keys; context strings as external_aad keep each signed
object type apart (RFC 9052 §4.3).
"""

from __future__ import annotations

import enum
import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from cardlib.keys.signer import Signer, sign1_with
from cardlib.provision.errors import QuotaExceeded, SessionError
from cardlib.records.cose import CoseError, CoseKey, KeyResolver, verify1

GRANT_AAD = b"huma-betang/session-grant/v1"
ISSUANCE_AAD = b"huma-betang/issuance-file/v1"
ISSUANCE_FORMAT = 1
PIN_RESET_AAD = b"huma-betang/pin-reset/v1"
SESSION_ID_BYTES = 8


class IssuanceStatus(str, enum.Enum):
    """Outcome of one card id."""

    ISSUED = "issued"
    ABANDONED = "abandoned"  # written partly, never finished: deny-list the card id


@dataclass(frozen=True)
class Issuance:
    """One card id the session used.

    :ivar card_id: 8 bytes. :ivar uid: 7-byte chip UID. :ivar household_ref: 8 bytes.
    :ivar issuer_kid: kid of the key that signed the identity record.
    :ivar time: UNIX seconds. :ivar identity_hash: 8-byte state_hash of the identity COSE.
    :ivar reissue_of: card id this card replaces (lost card), else None.
    :ivar identity: the card's identity record exactly as written (issuer-signed COSE_Sign1,
        external_aad = identity context ‖ UID, docs/card-format.md §5), for issued cards of
        stations that carry it; None in older files and for abandoned card ids. The server
        verifies it and takes the card's region and entitlements from it.
    :ivar genesis: the card's genesis state exactly as written (seq 0, signed by the station's terminal key,
        docs/card-format.md §4), for issued cards of stations that carry it; None in older files. The server
        checks that its ``terminal_id`` is its signing key's (a station cannot claim another's id).
    """

    card_id: bytes
    uid: bytes
    household_ref: bytes
    region: str
    issuer_kid: bytes
    time: int
    status: IssuanceStatus
    identity_hash: bytes = b""
    reissue_of: bytes | None = None
    identity: bytes | None = None
    genesis: bytes | None = None

    def to_cbor(self) -> dict[str, Any]:
        """The record as a CBOR map (text keys); ``identity`` and ``genesis`` only when present (older readers
        ignore them)."""
        out: dict[str, Any] = {
            "card_id": self.card_id, "uid": self.uid, "household_ref": self.household_ref,
            "region": self.region, "issuer_kid": self.issuer_kid, "time": self.time,
            "status": self.status.value, "identity_hash": self.identity_hash, "reissue_of": self.reissue_of,
        }
        if self.identity is not None:
            out["identity"] = self.identity
        if self.genesis is not None:
            out["genesis"] = self.genesis
        return out

    @classmethod
    def from_cbor(cls, m: Mapping[str, Any]) -> Issuance:
        """Decode one record; ``identity`` and ``genesis`` are optional (files of older stations lack them).

        :raises KeyError, TypeError, ValueError: malformed (the caller turns these into SessionError).
        """
        identity, genesis = m.get("identity"), m.get("genesis")
        if identity is not None and not isinstance(identity, bytes):
            raise TypeError("issuance identity must be a byte string")
        if genesis is not None and not isinstance(genesis, bytes):
            raise TypeError("issuance genesis must be a byte string")
        return cls(m["card_id"], m["uid"], m["household_ref"], m["region"], m["issuer_kid"], m["time"],
                   IssuanceStatus(m["status"]), m["identity_hash"], m["reissue_of"], identity, genesis)


@dataclass(frozen=True)
class SessionGrant:
    """A verified quota grant. :ivar not_after: UNIX seconds."""

    grant_id: bytes
    technician_kid: bytes
    max_cards: int
    not_after: int
    issuer_kid: bytes
    message: bytes = field(repr=False, default=b"")


def grant_session(issuer: Signer, technician_kid: bytes, max_cards: int, not_after: int) -> bytes:
    """Sign a session grant (issuer key).

    :param max_cards: card ids the session may use (issued + abandoned), ≥ 1.
    :raises SessionError: when ``max_cards`` < 1.
    """
    if max_cards < 1:
        raise SessionError("a grant must allow at least one card")
    payload = {"grant_id": os.urandom(SESSION_ID_BYTES), "technician_kid": technician_kid,
               "max_cards": max_cards, "not_after": not_after}
    return sign1_with(issuer, cbor2.dumps(payload), GRANT_AAD)


def verify_grant(message: bytes, issuer_keys: KeyResolver, technician_kid: bytes | None = None,
                 now: int | None = None) -> SessionGrant:
    """Verify a session grant.

    :param issuer_keys: resolver of issuer keys (e.g. ``bundle.resolver(KeyRole.ISSUER)`` or a mapping).
    :raises SessionError: bad signature, another technician, or expired.
    """
    try:
        v = verify1(message, issuer_keys, GRANT_AAD)
        m = cbor2.loads(v.payload)
        grant = SessionGrant(m["grant_id"], m["technician_kid"], int(m["max_cards"]), int(m["not_after"]),
                             v.kid, message)
    except CoseError as exc:
        raise SessionError(f"session grant does not verify: {exc}") from exc
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as exc:
        raise SessionError(f"malformed session grant: {exc!r}") from exc
    if technician_kid is not None and grant.technician_kid != technician_kid:
        raise SessionError(f"grant is for technician {grant.technician_kid.hex()}, not {technician_kid.hex()}")
    if (int(time.time()) if now is None else now) > grant.not_after:
        raise SessionError("session grant has expired")
    return grant


def check_quota(grant: SessionGrant | None, used: int) -> None:
    """Refuse a new card id when ``used`` already reaches the grant's quota.

    :raises QuotaExceeded: when the grant is exhausted.
    """
    if grant is not None and used >= grant.max_cards:
        raise QuotaExceeded(f"session grant allows {grant.max_cards} card(s); {used} used")


@dataclass(frozen=True)
class IssuanceFile:
    """A verified issuance file. :ivar issuances: in order."""

    session_id: bytes
    technician_kid: bytes
    technician: str
    created: int
    grant: bytes | None
    issuances: tuple[Issuance, ...]

    def deny_list_additions(self) -> list[bytes]:
        """Card ids that must be denied: abandoned ones and the cards re-issued cards replace."""
        out = [i.card_id for i in self.issuances if i.status is IssuanceStatus.ABANDONED]
        out += [i.reissue_of for i in self.issuances if i.status is IssuanceStatus.ISSUED and i.reissue_of]
        return out


def sign_issuance_file(technician: Signer, technician_name: str, session_id: bytes,
                       issuances: Sequence[Issuance], grant: bytes | None = None, now: int | None = None) -> bytes:
    """Sign the session's issuance records with the technician key (for upload to the server).

    :raises QuotaExceeded: when the records exceed the grant (the station must never produce one).
    """
    payload = {
        "format": ISSUANCE_FORMAT, "session_id": session_id, "technician_kid": technician.kid,
        "technician": technician_name, "created": int(time.time()) if now is None else now,
        "grant": grant, "issuances": [i.to_cbor() for i in issuances],
    }
    return sign1_with(technician, cbor2.dumps(payload), ISSUANCE_AAD)


def verify_issuance_file(message: bytes, technician_keys: KeyResolver,
                         issuer_keys: KeyResolver | None = None) -> IssuanceFile:
    """Verify an issuance file (server side); with ``issuer_keys`` also check its grant and quota.

    :raises SessionError: bad signature, malformed, or a grant for another technician.
    :raises QuotaExceeded: more card ids than the grant allows.
    """
    try:
        v = verify1(message, technician_keys, ISSUANCE_AAD)
        m = cbor2.loads(v.payload)
        if m["format"] != ISSUANCE_FORMAT:
            raise SessionError(f"unknown issuance file format {m['format']!r}")
        f = IssuanceFile(m["session_id"], m["technician_kid"], m["technician"], m["created"], m["grant"],
                         tuple(Issuance.from_cbor(i) for i in m["issuances"]))
    except CoseError as exc:
        raise SessionError(f"issuance file does not verify: {exc}") from exc
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as exc:
        raise SessionError(f"malformed issuance file: {exc!r}") from exc
    if f.technician_kid != v.kid:
        raise SessionError("issuance file names another technician than its signer")
    if issuer_keys is not None and f.grant is not None:
        grant = verify_grant(f.grant, issuer_keys, f.technician_kid, now=f.created)
        check_quota(grant, len(f.issuances) - 1)
    return f


def sign_pin_reset_record(technician: Signer, event: Mapping[str, Any]) -> bytes:
    """Sign one office PIN reset for ``pin-resets.cose`` (technician key, as the issuance file).

    :param event: the ``pin_reset`` journal event (text keys; str, int, bool or None values), signed
        as canonical CBOR; its ``technician_kid`` must be the signer's kid (hex).
    :returns: one tagged COSE_Sign1 (external_aad :data:`PIN_RESET_AAD`).
    :raises SessionError: the event names another technician key than the signer's.
    """
    if event.get("technician_kid") != technician.kid.hex():
        raise SessionError(f"a PIN reset of technician key {event.get('technician_kid')} cannot be signed "
                           f"with key {technician.kid.hex()}")
    return sign1_with(technician, cbor2.dumps(dict(event), canonical=True), PIN_RESET_AAD)


def split_cbor_sequence(data: bytes) -> list[bytes]:
    """The items of a CBOR sequence (RFC 8742) as their exact bytes, in order.

    :raises SessionError: an item is not valid CBOR or is cut off (a torn last append).
    """
    stream, start = io.BytesIO(data), 0
    out: list[bytes] = []
    while start < len(data):
        try:
            cbor2.CBORDecoder(stream).decode()
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
            raise SessionError(f"record {len(out) + 1} (byte {start}): not complete CBOR ({exc})") from exc
        end = stream.tell()
        out.append(data[start:end])
        start = end
    return out


def verify_pin_reset_records(data: bytes, technician_keys: KeyResolver) -> list[tuple[dict[str, Any], bytes]]:
    """Verify every record of a ``pin-resets.cose`` file (server side), all or nothing.

    :param technician_keys: resolver of technician keys (the same as for issuance files:
        ``bundle.resolver(KeyRole.TECHNICIAN)``, or a mapping).
    :returns: each reset as ``(event, signer kid)``, in file order; the event as journalled (text
        keys, hex strings), for the caller's own shape checks.
    :raises SessionError: a record cut off, not a COSE_Sign1 of a known, unrevoked technician key,
        altered after signing, not a map, or naming another technician key than its signer.
    """
    out: list[tuple[dict[str, Any], bytes]] = []
    for n, message in enumerate(split_cbor_sequence(data), start=1):
        try:
            v = verify1(message, technician_keys, PIN_RESET_AAD)
            event = cbor2.loads(v.payload)
        except CoseError as exc:
            raise SessionError(f"record {n}: does not verify: {exc}") from exc
        except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
            raise SessionError(f"record {n}: malformed payload: {exc!r}") from exc
        if not isinstance(event, dict) or not all(isinstance(k, str) for k in event):
            raise SessionError(f"record {n}: the payload is not a map with text keys")
        if event.get("technician_kid") != v.kid.hex():
            raise SessionError(f"record {n}: names technician key {event.get('technician_kid')!r}, "
                               f"signed by {v.kid.hex()}")
        out.append((event, v.kid))
    return out


def static_keys(*keys: CoseKey) -> dict[bytes, CoseKey]:
    """A resolver mapping for a few known keys."""
    return {k.kid: k for k in keys}
