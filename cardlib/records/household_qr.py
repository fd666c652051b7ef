"""The household QR printed on the card body: a MOSIP Claim 169 credential signed by the issuer.

When the chip cannot be read (or the card is at home), the counter scans this QR and serves
a conservative fallback redemption (docs/fallback.md). The QR follows the MOSIP "Claim 169"
QR code specification so any Claim 169 verifier can read it:

    QR text = Base45( zlib( COSE_Sign1( CWT claims ) ) )       (RFC 9285, RFC 1950, RFC 9052)

- COSE_Sign1 (tag 18) by the **issuer key** (the key that signs the card's identity record,
  EdDSA or ES256), ``{1: alg}`` protected, ``{4: kid}`` unprotected (:func:`sign1_with`);
- CWT claims (RFC 8392 §3.1): ``1 iss`` :data:`ISSUER`, ``2 sub`` the household's
  pseudonymous reference (16 hex digits), ``4 exp`` end of the card's validity, ``5 nbf``
  its start, ``6 iat`` when the QR was made (UNIX seconds);
- claim ``169`` (the Claim 169 map): ``1 id`` the card id (16 hex digits), ``2 version``
  :data:`QR_VERSION` as text, ``21 locationCode`` the region (Kemendagri code),
  ``23 countryOfIssuance`` ``"IDN"``. No name, date of birth, photo or biometrics: the QR
  identifies a card and its household, never a person (docs/card-format.md §Household QR).

Verification raises; it never returns a flag to check.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from typing import Any

import cbor2

from cardlib.keys.signer import Signer, sign1_with
from cardlib.records.bundle import KeyRole, TrustBundle
from cardlib.records.claims import IdentityClaims
from cardlib.records.cose import verify1
from cardlib.records.errors import DeniedCard, RecordError

__all__ = [
    "ISSUER",
    "QR_VERSION",
    "HouseholdQr",
    "HouseholdQrError",
    "b45decode",
    "b45encode",
    "household_qr_text",
    "verify_household_qr",
]

#: CWT ``iss`` of our QR codes.
ISSUER = "huma-betang"
#: Our QR content version, carried as Claim 169 ``version`` (text).
QR_VERSION = 1
#: CWT claim keys (RFC 8392 §3.1) and the Claim 169 key (IANA CWT Claims registry).
CWT_ISS, CWT_SUB, CWT_EXP, CWT_NBF, CWT_IAT, CWT_CLAIM169 = 1, 2, 4, 5, 6, 169
#: Claim 169 map keys used (MOSIP Claim 169 specification, "Claim 169 fields").
C169_ID, C169_VERSION, C169_LOCATION_CODE, C169_COUNTRY = 1, 2, 21, 23
COUNTRY = "IDN"
#: Longest QR text accepted (a version-40 QR in alphanumeric mode holds 4,296 characters).
MAX_QR_CHARS = 4296
#: Largest decompressed COSE message accepted, bytes (ours are ~200).
MAX_INFLATED = 4096
_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(_B45)}


class HouseholdQrError(RecordError):
    """A QR that is not a valid household QR of ours (bad encoding, signature, claims or validity)."""


def b45encode(data: bytes) -> str:
    """Base45-encode bytes (RFC 9285 §4): two bytes → three characters, a last byte → two."""
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = divmod(n, 45)[::-1]
        d, e = divmod(n, 45)[::-1]
        out += [_B45[c], _B45[d], _B45[e]]
    if len(data) % 2:
        c, d = divmod(data[-1], 45)[::-1]
        out += [_B45[c], _B45[d]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Decode Base45 text (RFC 9285 §4.2).

    :raises HouseholdQrError: a character outside the alphabet, a dangling character or an
        out-of-range group.
    """
    if len(text) % 3 == 1:
        raise HouseholdQrError("Base45: length leaves one character over")
    try:
        values = [_B45_INDEX[c] for c in text]
    except KeyError as exc:
        raise HouseholdQrError(f"Base45: character {exc.args[0]!r} is not in the alphabet") from None
    out = bytearray()
    for i in range(0, len(values), 3):
        group = values[i:i + 3]
        if len(group) == 3:
            n = group[0] + group[1] * 45 + group[2] * 45 * 45
            if n > 0xFFFF:
                raise HouseholdQrError("Base45: a group exceeds two bytes")
            out += n.to_bytes(2, "big")
        else:
            n = group[0] + group[1] * 45
            if n > 0xFF:
                raise HouseholdQrError("Base45: the last group exceeds one byte")
            out.append(n)
    return bytes(out)


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def household_qr_text(identity: IdentityClaims, issuer: Signer, issued_at: int) -> str:
    """The QR text for a card: Claim 169 claims in a CWT, signed, compressed, Base45.

    :param identity: the card's identity claims (card id, household ref, region, validity).
    :param issuer: the issuer key that signed the card's identity record.
    :param issued_at: UNIX seconds (CWT ``iat``).
    :returns: uppercase alphanumeric text for a QR code in alphanumeric mode.
    """
    claims: dict[int, Any] = {
        CWT_ISS: ISSUER,
        CWT_SUB: identity.household_ref.hex(),
        CWT_EXP: _epoch(identity.valid_to + dt.timedelta(days=1)),
        CWT_NBF: _epoch(identity.valid_from),
        CWT_IAT: issued_at,
        CWT_CLAIM169: {
            C169_ID: identity.card_id.hex(),
            C169_VERSION: str(QR_VERSION),
            C169_LOCATION_CODE: identity.region,
            C169_COUNTRY: COUNTRY,
        },
    }
    return b45encode(zlib.compress(sign1_with(issuer, cbor2.dumps(claims)), 9))


@dataclass(frozen=True)
class HouseholdQr:
    """A verified household QR.

    :ivar card_id: 8 bytes. :ivar household_ref: 8 bytes (pseudonymous).
    :ivar region: Kemendagri code. :ivar not_before, expires_at, issued_at: UNIX seconds.
    :ivar issuer_kid: kid of the issuer key that signed it.
    """

    card_id: bytes
    household_ref: bytes
    region: str
    not_before: int
    expires_at: int
    issued_at: int
    issuer_kid: bytes


def _hex8(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 16:
        raise HouseholdQrError(f"{what}: 16 hex digits expected")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise HouseholdQrError(f"{what}: 16 hex digits expected") from None


def verify_household_qr(text: str, trust: TrustBundle, now: int) -> HouseholdQr:
    """Decode and verify a scanned household QR against the trust bundle.

    Checks in order: Base45, zlib (bounded), COSE_Sign1 by an issuer key of the bundle
    (revoked keys refused), the CWT and Claim 169 claims, validity (``nbf`` ≤ now < ``exp``)
    and the bundle's card deny list.

    :param text: the text the scanner typed (surrounding whitespace ignored).
    :param trust: the counter's verified trust bundle.
    :param now: UNIX seconds.
    :returns: the verified QR.
    :raises HouseholdQrError: anything wrong with the QR.
    :raises DeniedCard: the card is on the bundle's deny list; raised only once everything above
        verified, it carries the QR's card id, household reference and issuer kid (``uid`` None).
    """
    text = text.strip()
    if not text or len(text) > MAX_QR_CHARS:
        raise HouseholdQrError(f"QR text must be 1..{MAX_QR_CHARS} characters")
    packed = b45decode(text)
    inflater = zlib.decompressobj()
    try:
        message = inflater.decompress(packed, MAX_INFLATED)
    except zlib.error as exc:
        raise HouseholdQrError(f"not zlib data ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise HouseholdQrError("zlib data truncated or larger than a household QR")
    try:
        verified = verify1(message, trust.resolver(KeyRole.ISSUER))
    except RecordError as exc:
        raise HouseholdQrError(f"signature not valid: {exc}") from exc
    try:
        claims = cbor2.loads(verified.payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
        raise HouseholdQrError(f"CWT claims are not CBOR ({exc})") from None
    if not isinstance(claims, dict) or not isinstance(claims.get(CWT_CLAIM169), dict):
        raise HouseholdQrError("no Claim 169 map in the CWT")
    c169 = claims[CWT_CLAIM169]
    if claims.get(CWT_ISS) != ISSUER or c169.get(C169_VERSION) != str(QR_VERSION):
        raise HouseholdQrError("not a household QR of this issuer and version")
    times = [claims.get(k) for k in (CWT_NBF, CWT_EXP, CWT_IAT)]
    if not all(type(t) is int for t in times):
        raise HouseholdQrError("nbf, exp and iat must be integers")
    nbf, exp, iat = (int(t) for t in times)  # type: ignore[arg-type]  # checked just above
    region = c169.get(C169_LOCATION_CODE)
    if not isinstance(region, str) or not region:
        raise HouseholdQrError("no locationCode (region)")
    qr = HouseholdQr(card_id=_hex8(c169.get(C169_ID), "id"), household_ref=_hex8(claims.get(CWT_SUB), "sub"),
                     region=region, not_before=nbf, expires_at=exp, issued_at=iat, issuer_kid=verified.kid)
    if not nbf <= now < exp:
        raise HouseholdQrError("the QR is outside its validity (the card's validity)")
    if qr.card_id in trust.deny_cards:  # last: the DeniedCard carries the QR's verified claims
        raise DeniedCard(card_id=qr.card_id, household_ref=qr.household_ref, kid=qr.issuer_kid, uid=None,
                         listed="card_id", bundle_version=trust.version)
    return qr
