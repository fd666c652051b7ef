"""The signed upload envelope: how a terminal proves it sent a journal batch (docs/api.md "Journal upload").

Shared by the terminal (signs) and the server (verifies), so neither imports
the other. Pure: no I/O, no HTTP.

::

    header Huma-Signature = base64url, no padding (RFC 4648 §5), of a COSE_Sign1
                            (RFC 9052 §4.2) by the terminal key, external_aad
                            b"huma-betang/upload/v1", payload = deterministic CBOR
                            (RFC 8949 §4.2.1) {1: 1 (version), 2: terminal_id,
                            3: SHA-256(exact body bytes)}
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

from cardlib.keys.signer import Signer, sign1_with
from cardlib.records.cose import Algorithm, KeyResolver, sign1, verify1
from cardlib.records.errors import RecordError

__all__ = [
    "SIGNATURE_HEADER",
    "UPLOAD_AAD",
    "UPLOAD_VERSION",
    "EnvelopeClaim",
    "EnvelopeError",
    "VerifiedEnvelope",
    "sign_envelope",
    "verify_envelope",
]

#: COSE external_aad of upload envelopes (domain separation from journal entries and card records).
UPLOAD_AAD = b"huma-betang/upload/v1"
UPLOAD_VERSION = 1
#: HTTP request header carrying the envelope.
SIGNATURE_HEADER = "Huma-Signature"


class EnvelopeClaim(enum.IntEnum):
    """CBOR keys of the upload-envelope signature payload."""

    VERSION = 1
    TERMINAL_ID = 2
    BODY_SHA256 = 3


class EnvelopeError(RecordError):
    """The envelope is not base64url, not CBOR of the right shape/version, or its digest is not the body's."""


@dataclass(frozen=True)
class VerifiedEnvelope:
    """A verified envelope.

    :ivar kid: 4-byte key id of the signing terminal key.
    :ivar terminal_id: the terminal id the envelope names (the caller checks it
        against the key's registered terminal).
    """

    kid: bytes
    terminal_id: str


def _payload(body: bytes, terminal_id: str) -> bytes:
    return cbor2.dumps(
        {
            int(EnvelopeClaim.VERSION): UPLOAD_VERSION,
            int(EnvelopeClaim.TERMINAL_ID): terminal_id,
            int(EnvelopeClaim.BODY_SHA256): hashlib.sha256(body).digest(),
        },
        canonical=True,
    )


def sign_envelope(body: bytes, terminal_id: str, key: Signer | Any, kid: bytes | None = None,
                  alg: Algorithm = Algorithm.EDDSA) -> str:
    """The ``Huma-Signature`` header value for an upload body.

    :param body: the exact request body bytes.
    :param terminal_id: the terminal's registered id.
    :param key: a :class:`~cardlib.keys.signer.Signer` (software or PKCS#11), or a
        raw private key together with ``kid`` and ``alg``.
    :param kid: 4-byte key id; required with a raw private key, ignored with a Signer.
    :returns: base64url (no padding) of the envelope COSE_Sign1.
    :raises ValueError: a raw private key without ``kid``.
    """
    payload = _payload(body, terminal_id)
    if isinstance(key, Signer):
        message = sign1_with(key, payload, UPLOAD_AAD)
    else:
        if kid is None:
            raise ValueError("a raw private key needs its kid")
        message = sign1(payload, key, kid, alg=alg, external_aad=UPLOAD_AAD)
    return base64.urlsafe_b64encode(message).rstrip(b"=").decode("ascii")


def verify_envelope(header: str, body: bytes, keys: KeyResolver) -> VerifiedEnvelope:
    """Verify a ``Huma-Signature`` header against the exact body bytes.

    :param header: the header value.
    :param body: the body bytes as received.
    :param keys: resolves the envelope's kid to the terminal key (may raise
        :class:`~cardlib.records.errors.UnknownKid`).
    :raises EnvelopeError: not base64url, bad payload shape/version, digest mismatch.
    :raises cardlib.records.errors.CoseError: malformed COSE, unknown kid, bad signature.
    """
    try:
        text = header.strip()
        message = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{SIGNATURE_HEADER} is not base64url") from exc
    verified = verify1(message, keys, external_aad=UPLOAD_AAD)
    try:
        claims = cbor2.loads(verified.payload)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise EnvelopeError("envelope payload is not CBOR") from exc
    if not isinstance(claims, dict) or claims.get(EnvelopeClaim.VERSION) != UPLOAD_VERSION:
        raise EnvelopeError("envelope payload: wrong shape or version")
    terminal_id = claims.get(EnvelopeClaim.TERMINAL_ID)
    if not isinstance(terminal_id, str):
        raise EnvelopeError("envelope payload: terminal id missing")
    if claims.get(EnvelopeClaim.BODY_SHA256) != hashlib.sha256(body).digest():
        raise EnvelopeError("envelope digest does not match the body")
    return VerifiedEnvelope(kid=verified.kid, terminal_id=terminal_id)
