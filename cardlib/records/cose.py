"""COSE_Sign1 (RFC 9052 §4.2, §4.4) sign and verify over cbor2 + cryptography.

Only what the card format needs, and strict about it:

- algorithms EdDSA (Ed25519, RFC 9053 §2.2) and ES256 (P-256 + SHA-256, raw
  ``r‖s``, RFC 9053 §2.1); the algorithm must be in the *protected* header
  (RFC 9052 §3.1: "alg" MUST be authenticated where possible) and must equal
  the algorithm whitelisted for the key's ``kid``;
- ``kid`` (label 4) in either header bucket, never in both;
- an attached payload (bstr); detached payloads (nil) are refused;
- the protected header must be in preferred serialization (RFC 8949 §4.1) so a
  duplicate label cannot hide; no ``crit`` (label 2) extensions are understood;
- verification runs over the exact bytes read: ``Sig_structure`` is built from
  the protected bstr as found in the message and the payload bstr as found,
  never from a re-encoding of decoded values.

Wire shape (RFC 9052 §4.2)::

    COSE_Sign1 = #6.18([ protected: bstr .cbor header_map, unprotected: header_map,
                         payload: bstr, signature: bstr ])
    Sig_structure = ["Signature1", protected, external_aad, payload]   (§4.4)
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import TypeAlias

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from cardlib.records.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    CoseError,
    MalformedCose,
    RevokedKid,
    UnknownKid,
)

__all__ = [
    "COSE_SIGN1_TAG",
    "Algorithm",
    "AlgorithmNotAllowed",
    "BadSignature",
    "CoseError",
    "CoseKey",
    "HeaderLabel",
    "KeyResolver",
    "MalformedCose",
    "RevokedKid",
    "UnknownKid",
    "VerifiedSign1",
    "parse_sign1_layout",
    "sig_structure",
    "sign1",
    "verify1",
]

#: CBOR tag of COSE_Sign1 (RFC 9052 §2, IANA CBOR tags registry).
COSE_SIGN1_TAG = 18
#: Context string of the Sig_structure for COSE_Sign1 (RFC 9052 §4.4).
SIGNATURE1_CONTEXT = "Signature1"
#: P-256 field element / scalar size in bytes (raw r‖s halves, RFC 9053 §2.1).
P256_COORDINATE_BYTES = 32
#: Signature length in bytes for both supported algorithms.
SIGNATURE_BYTES = 64


class Algorithm(IntEnum):
    """COSE algorithm identifiers (IANA "COSE Algorithms" registry)."""

    EDDSA = -8
    ES256 = -7


class HeaderLabel(IntEnum):
    """COSE common header parameter labels (RFC 9052 §3.1, Table 3)."""

    ALG = 1
    CRIT = 2
    CONTENT_TYPE = 3
    KID = 4


#: Header labels this verifier understands; anything else is tolerated only
#: in the unprotected bucket and ignored (it is not covered by the signature).
_KNOWN_LABELS = frozenset(int(label) for label in HeaderLabel) - {HeaderLabel.CRIT}

PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CoseKey:
    """A verification key known by ``kid`` with the one algorithm allowed for it.

    :ivar kid: key id as carried in COSE header label 4 (the card format uses
        4 bytes; this layer accepts 1–16 so published vectors can be checked).
    :ivar alg: the only algorithm accepted for this kid.
    :ivar public_key: Ed25519 public key for EdDSA, P-256 public key for ES256.
    :raises ValueError: when the key type does not fit ``alg`` or the kid is empty/too long.
    """

    kid: bytes
    alg: Algorithm
    public_key: PublicKey = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.kid) <= 16:
            raise ValueError(f"kid must be 1..16 bytes, got {len(self.kid)}")
        _check_key_fits(Algorithm(self.alg), self.public_key)


#: Resolves a kid to its key; raises :class:`UnknownKid` / :class:`RevokedKid`.
KeyResolver: TypeAlias = Callable[[bytes], CoseKey] | Mapping[bytes, CoseKey]


@dataclass(frozen=True)
class VerifiedSign1:
    """A COSE_Sign1 whose signature verified; every field keeps the bytes read.

    :ivar message: the whole message exactly as given to :func:`verify1`.
    :ivar protected: the protected header bstr content, exactly as read.
    :ivar kid: the key id used.
    :ivar alg: the algorithm used (equal to the key's whitelisted algorithm).
    :ivar payload: the payload bstr content, exactly as read.
    :ivar signature: the 64-byte signature.
    :ivar key: the key that verified it.
    """

    message: bytes
    protected: bytes
    kid: bytes
    alg: Algorithm
    payload: bytes
    signature: bytes
    key: CoseKey = field(repr=False)


def sig_structure(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """Encode ``Sig_structure`` for COSE_Sign1 (RFC 9052 §4.4).

    :param protected: the protected header bstr *content* (b"" for an empty map).
    :param external_aad: externally supplied authenticated data (bytes).
    :param payload: the payload bstr content.
    :returns: the CBOR bytes that are signed (ToBeSigned).

    Encoded by concatenation (array(4) head, the constant context text string,
    three byte strings with shortest-form heads, RFC 8949 §3.1, §4.2.1): the
    same bytes as ``cbor2.dumps([...])`` without building and walking a list,
    because this runs once per verified entry.
    """
    return b"".join(
        (_SIG1_PREFIX, _bstr_head(len(protected)), protected, _bstr_head(len(external_aad)), external_aad,
         _bstr_head(len(payload)), payload)
    )


#: CBOR major type 2 (byte string) in the initial byte (RFC 8949 §3.1).
_MAJOR_BSTR = 0x40
#: Additional-information values 24..27: argument follows in 1, 2, 4, 8 bytes (RFC 8949 §3).
_AI_UINT8, _AI_UINT16, _AI_UINT32, _AI_UINT64 = 24, 25, 26, 27
#: ``array(4)`` head + ``"Signature1"`` as a CBOR text string: the fixed start of Sig_structure.
_SIG1_PREFIX = bytes([0x80 | 4]) + cbor2.dumps(SIGNATURE1_CONTEXT)


def _bstr_head(length: int) -> bytes:
    """Shortest-form head of a definite-length byte string of ``length`` bytes (RFC 8949 §3.1, §4.2.1)."""
    if length < _AI_UINT8:
        return bytes([_MAJOR_BSTR | length])
    if length <= 0xFF:
        return bytes([_MAJOR_BSTR | _AI_UINT8, length])
    if length <= 0xFFFF:
        return bytes([_MAJOR_BSTR | _AI_UINT16]) + length.to_bytes(2, "big")
    if length <= 0xFFFF_FFFF:
        return bytes([_MAJOR_BSTR | _AI_UINT32]) + length.to_bytes(4, "big")
    return bytes([_MAJOR_BSTR | _AI_UINT64]) + length.to_bytes(8, "big")


def sign1(
    payload: bytes,
    private_key: PrivateKey,
    kid: bytes,
    alg: Algorithm = Algorithm.EDDSA,
    external_aad: bytes = b"",
    tagged: bool = True,
) -> bytes:
    """Build a COSE_Sign1 with ``{1: alg}`` protected and ``{4: kid}`` unprotected.

    ES256 signatures are deterministic (RFC 6979), so terminals need no good RNG;
    Ed25519 is deterministic by construction (RFC 8032 §5.1.6).

    :param payload: the bytes to sign (the card format puts a CBOR claim map here).
    :param private_key: Ed25519 private key for EdDSA, P-256 private key for ES256.
    :param kid: key id (1–16 bytes; 4 in the card format).
    :param alg: :attr:`Algorithm.EDDSA` (default) or :attr:`Algorithm.ES256`.
    :param external_aad: bytes bound into the signature but not carried in the
        message (the card format uses a context string + the tag UID).
    :param tagged: prefix CBOR tag 18 (RFC 9052 §2).
    :returns: the encoded COSE_Sign1 message.
    :raises ValueError: when the key does not fit ``alg`` or the kid length is wrong.
    """
    alg = Algorithm(alg)
    _check_key_fits(alg, private_key.public_key())
    if not 1 <= len(kid) <= 16:
        raise ValueError(f"kid must be 1..16 bytes, got {len(kid)}")
    protected = cbor2.dumps({int(HeaderLabel.ALG): int(alg)})
    to_be_signed = sig_structure(protected, external_aad, payload)
    if alg is Algorithm.EDDSA:
        assert isinstance(private_key, ed25519.Ed25519PrivateKey)
        signature = private_key.sign(to_be_signed)
    else:
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        der = private_key.sign(
            to_be_signed, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        )
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(P256_COORDINATE_BYTES, "big") + s.to_bytes(
            P256_COORDINATE_BYTES, "big"
        )
    body = [protected, {int(HeaderLabel.KID): kid}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body) if tagged else body)


def verify1(
    message: bytes, keys: KeyResolver, external_aad: bytes = b""
) -> VerifiedSign1:
    """Verify a COSE_Sign1 message over the exact bytes given (RFC 9052 §4.4).

    Order of checks: structure → kid lookup (unknown/revoked) → algorithm
    whitelist → signature. A message either comes back verified or raises.

    :param message: the complete message; tagged (18) or untagged; no trailing bytes.
    :param keys: a callable ``kid -> CoseKey`` (which raises :class:`UnknownKid`
        or :class:`RevokedKid`) or a mapping ``kid -> CoseKey``.
    :param external_aad: the external AAD the signer bound (bytes).
    :returns: the verified message with its exact protected bytes and payload.
    :raises MalformedCose: structure or header problems (see module docstring).
    :raises UnknownKid: the resolver knows no key for the kid.
    :raises RevokedKid: the resolver reports the kid revoked.
    :raises AlgorithmNotAllowed: protected alg differs from the key's algorithm.
    :raises BadSignature: the signature does not verify.
    """
    protected, alg_value, kid, payload, signature = parse_sign1_layout(message) or _parse(message)
    key = _resolve(keys, kid)
    if alg_value != int(key.alg):
        raise AlgorithmNotAllowed(
            f"alg {alg_value} not allowed for kid {kid.hex()} (whitelisted: {key.alg.name})"
        )
    to_be_signed = sig_structure(protected, external_aad, payload)
    _verify_signature(key, signature, to_be_signed)
    return VerifiedSign1(
        message=bytes(message),
        protected=protected,
        kid=kid,
        alg=key.alg,
        payload=payload,
        signature=signature,
        key=key,
    )


# ----------------------------------------------------------------------------- internals


def _check_key_fits(alg: Algorithm, public_key: object) -> None:
    if alg is Algorithm.EDDSA:
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise ValueError("EdDSA needs an Ed25519 key")
    elif alg is Algorithm.ES256:
        if not (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)
        ):
            raise ValueError("ES256 needs a P-256 key")
    else:  # pragma: no cover - Algorithm has two members
        raise ValueError(f"unsupported algorithm {alg!r}")


def _decode_exactly_one(data: bytes, what: str) -> object:
    """Decode one CBOR item and refuse trailing bytes."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise MalformedCose(f"{what}: not valid CBOR ({exc})") from exc
    if stream.tell() != len(data):
        raise MalformedCose(f"{what}: {len(data) - stream.tell()} trailing byte(s)")
    return item


#: Initial bytes of a tagged COSE_Sign1: tag 18 (``0xd2``), then ``array(4)`` (RFC 8949 §3.4, §3.1).
_TAGGED_SIGN1_HEAD = bytes([0xC0 | COSE_SIGN1_TAG, 0x80 | 4])
#: CBOR map(1) initial byte and the ``kid`` label (4) as a one-byte unsigned integer.
_MAP1, _KID_LABEL, _ALG_LABEL = 0xA1, int(HeaderLabel.KID), int(HeaderLabel.ALG)
#: ``bstr`` head of a 64-byte signature: major type 2, one-byte length follows (0x58), 64.
_SIG64_HEAD = bytes([_MAJOR_BSTR | _AI_UINT8, SIGNATURE_BYTES])


def parse_sign1_layout(message: bytes) -> tuple[bytes, int, bytes, bytes, bytes] | None:
    """The parts of a COSE_Sign1 in the one layout this project signs, read by offsets; ``None`` otherwise.

    :returns: ``(protected bstr content, alg, kid, payload, signature)`` — what the
        general CBOR parse would return — or ``None`` for any other layout.

    The layout :func:`sign1` writes (tagged, RFC 9052 §4.2)::

        d2 84  <bstr protected, < 24 bytes>  a1 04 <bstr kid, 1..23 bytes>
               <bstr payload, head 0x40..0x57 | 0x58 n | 0x59 nn>  58 40 <64-byte signature>

    Every byte of the message is accounted for (nothing may follow the signature), so
    a message accepted here decodes to exactly the values :func:`_parse` would return;
    anything else (untagged, other header shapes, odd lengths, truncation) returns
    ``None`` and goes through the general CBOR parse, which names the problem. The
    protected header still gets :func:`_protected_map`'s full check. Runs once per
    uploaded journal entry, where the CBOR decode of the envelope was ~4 % of the
    Ed25519 verification's time.
    """
    if type(message) is not bytes or message[:2] != _TAGGED_SIGN1_HEAD:
        return None
    try:
        head = message[2]
        if head & 0xE0 != _MAJOR_BSTR or head & 0x1F >= _AI_UINT8:
            return None
        at = 3 + (head & 0x1F)
        protected = message[3:at]
        if message[at] != _MAP1 or message[at + 1] != _KID_LABEL:
            return None
        head = message[at + 2]
        if head & 0xE0 != _MAJOR_BSTR or not 0 < head & 0x1F < _AI_UINT8:
            return None
        kid_at = at + 3
        at = kid_at + (head & 0x1F)
        kid = message[kid_at:at]
        head = message[at]
        if head == _MAJOR_BSTR | _AI_UINT8:
            length, at = message[at + 1], at + 2
        elif head == _MAJOR_BSTR | _AI_UINT16:
            length, at = int.from_bytes(message[at + 1:at + 3], "big"), at + 3
        elif head & 0xE0 == _MAJOR_BSTR and head & 0x1F < _AI_UINT8:
            length, at = head & 0x1F, at + 1
        else:
            return None
        payload = message[at:at + length]
        at += length
        if message[at:at + 2] != _SIG64_HEAD or len(message) != at + 2 + SIGNATURE_BYTES:
            return None
        signature = message[at + 2:]
    except IndexError:  # truncated inside a head
        return None
    if len(payload) != length:
        return None
    try:
        prot_map = _protected_map(protected)
    except MalformedCose:
        return None
    alg_value = prot_map.get(_ALG_LABEL)
    if _KID_LABEL in prot_map or type(alg_value) is not int:
        return None
    return protected, alg_value, kid, payload, signature


def _parse(message: bytes) -> tuple[bytes, int, bytes, bytes, bytes]:
    """Split a COSE_Sign1 into (protected bytes, alg, kid, payload, signature)."""
    item = _decode_exactly_one(bytes(message), "COSE_Sign1")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise MalformedCose(f"CBOR tag {item.tag} is not COSE_Sign1 ({COSE_SIGN1_TAG})")
        item = item.value
    if not isinstance(item, list) or len(item) != 4:
        raise MalformedCose("COSE_Sign1 must be an array of 4 elements")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes):
        raise MalformedCose("protected header must be a bstr")
    if not isinstance(unprotected, dict):
        raise MalformedCose("unprotected header must be a map")
    if payload is None:
        raise MalformedCose("detached payloads are not supported")
    if not isinstance(payload, bytes):
        raise MalformedCose("payload must be a bstr")
    if not isinstance(signature, bytes):
        raise MalformedCose("signature must be a bstr")

    prot_map = _protected_map(protected)
    if int(HeaderLabel.CRIT) in unprotected:
        raise MalformedCose("critical header parameters are not supported")
    for label in prot_map:
        if label in unprotected:
            raise MalformedCose(f"header label {label!r} in both buckets (RFC 9052 §3)")

    if int(HeaderLabel.ALG) not in prot_map:
        if int(HeaderLabel.ALG) in unprotected:
            raise MalformedCose("alg must be in the protected header (RFC 9052 §3.1)")
        raise MalformedCose("no alg header")
    alg_value = prot_map[int(HeaderLabel.ALG)]
    if isinstance(alg_value, bool) or not isinstance(alg_value, int):
        raise AlgorithmNotAllowed(f"alg {alg_value!r} is not a registered integer algorithm")

    kid = prot_map.get(int(HeaderLabel.KID), unprotected.get(int(HeaderLabel.KID)))
    if kid is None:
        raise MalformedCose("no kid header")
    if not isinstance(kid, bytes) or not kid:
        raise MalformedCose("kid must be a non-empty bstr")
    return protected, alg_value, kid, payload, signature


#: Distinct protected headers remembered by :func:`_protected_map` (a deployment
#: uses one or two: ``{1: -8}`` and ``{1: -7}``; the bound caps memory on hostile input).
_PROTECTED_CACHE_SIZE = 32


@functools.lru_cache(maxsize=_PROTECTED_CACHE_SIZE)
def _protected_map(protected: bytes) -> Mapping[object, object]:
    """Decode and check the protected header bstr content (RFC 9052 §3, RFC 8949 §4.1).

    Pure function of the exact bytes, so its result is cached per distinct
    ``protected`` value: every entry of a batch carries the same few bytes
    (``a1 01 27``) and would otherwise be decoded and re-encoded each time.
    Failures raise and are not cached.

    :returns: a read-only label → value map (empty for an empty bstr).
    :raises MalformedCose: not one CBOR map, not preferred serialization, a repeated
        or unknown label, or ``crit``.
    """
    if not protected:
        return MappingProxyType({})
    decoded = _decode_exactly_one(protected, "protected header")
    if not isinstance(decoded, dict):
        raise MalformedCose("protected header must encode a map")
    # Preferred serialization (RFC 8949 §4.1): re-encoding in the same order
    # must give the same bytes; a duplicate label or a long-form integer
    # would make them differ. Only a check: we sign/verify the bytes read.
    try:
        reencoded = cbor2.dumps(decoded)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        # e.g. a lone "break" byte decodes to a marker object that cannot be encoded
        raise MalformedCose(f"protected header: not a valid CBOR map ({exc})") from exc
    if reencoded != protected:
        raise MalformedCose(
            "protected header is not in preferred serialization or repeats a label"
        )
    if int(HeaderLabel.CRIT) in decoded:
        raise MalformedCose("critical header parameters are not supported")
    for label in decoded:
        if label not in _KNOWN_LABELS:
            raise MalformedCose(f"unknown protected header label {label!r}")
    return MappingProxyType(decoded)


def _resolve(keys: KeyResolver, kid: bytes) -> CoseKey:
    if isinstance(keys, Mapping):
        try:
            key = keys[kid]
        except KeyError:
            raise UnknownKid(kid) from None
    else:
        key = keys(kid)
    if not isinstance(key, CoseKey):
        raise TypeError(f"key resolver returned {type(key).__name__}, expected CoseKey")
    if key.kid != kid:
        raise UnknownKid(kid, f"resolver returned key {key.kid.hex()} for kid {kid.hex()}")
    return key


def _verify_signature(key: CoseKey, signature: bytes, to_be_signed: bytes) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    try:
        if key.alg is Algorithm.EDDSA:
            assert isinstance(key.public_key, ed25519.Ed25519PublicKey)
            key.public_key.verify(signature, to_be_signed)
        else:
            assert isinstance(key.public_key, ec.EllipticCurvePublicKey)
            r = int.from_bytes(signature[:P256_COORDINATE_BYTES], "big")
            s = int.from_bytes(signature[P256_COORDINATE_BYTES:], "big")
            key.public_key.verify(
                encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA256())
            )
    except InvalidSignature:
        raise BadSignature(f"signature does not verify for kid {key.kid.hex()}") from None
