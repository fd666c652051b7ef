"""The ``Signer`` seam: one interface for every place a private key can live.

A signer produces signatures in the encoding COSE uses (RFC 9053 §2.1 for ECDSA:
``r || s``, each 32 bytes for P-256; RFC 8032 §5.1.6 for Ed25519: 64 bytes), so the
output drops straight into a COSE_Sign1 (RFC 9052 §4.4). Two implementations:
:class:`SoftwareSigner` (a ``cryptography`` private key, e.g. decrypted from an
encrypted PKCS#8 file) and :class:`cardlib.keys.pkcs11.Pkcs11Signer` (a key that never
leaves a PKCS#11 token).

Key identifiers: ``kid = SHA-256(SubjectPublicKeyInfo DER)[:4]`` (:func:`derive_kid`).
Four bytes keep the on-card records small (docs/design.md §What is on the card); the keystore refuses to
create a second key whose kid collides with one it already lists.
"""

from __future__ import annotations

import abc
import hashlib

import cbor2
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cardlib.keys.errors import UnsupportedAlgorithmError
from cardlib.records.cose import (
    COSE_SIGN1_TAG,
    Algorithm,
    CoseKey,
    HeaderLabel,
    PrivateKey,
    PublicKey,
    sig_structure,
)

KID_LENGTH = 4
"""Bytes in a key id (docs/design.md §What is on the card: a 4-byte ``kid``, no certificates)."""

_P256_COORD = 32
"""Bytes per coordinate / per signature half on P-256 (RFC 9053 §2.1)."""


def spki_der(public_key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) of ``public_key``."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_spki(der: bytes) -> PublicKey:
    """Load a SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7) as one of our key types.

    :raises UnsupportedAlgorithmError: undecodable, or not Ed25519 / P-256.
    """
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UnsupportedAlgorithmError(f"not a SubjectPublicKeyInfo of ours: {exc}") from exc
    algorithm_of(key)  # type: ignore[arg-type]
    return key  # type: ignore[return-value]


def derive_kid(public_key: PublicKey) -> bytes:
    """Derive the 4-byte key id: the first 4 bytes of SHA-256 over the DER SPKI.

    :param public_key: an Ed25519 or P-256 public key.
    :returns: 4 bytes.
    """
    return hashlib.sha256(spki_der(public_key)).digest()[:KID_LENGTH]


def algorithm_of(key: PublicKey | PrivateKey) -> Algorithm:
    """The COSE algorithm a key is used with: EdDSA for Ed25519, ES256 for P-256.

    :raises UnsupportedAlgorithmError: for any other key type or curve.
    """
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return Algorithm.EDDSA
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(key.curve, ec.SECP256R1):
        return Algorithm.ES256
    raise UnsupportedAlgorithmError(f"unsupported key type {type(key).__name__}")


def generate_private_key(alg: Algorithm) -> PrivateKey:
    """Make a fresh software key for ``alg`` (Ed25519 or P-256).

    :raises UnsupportedAlgorithmError: for other algorithms.
    """
    if alg == Algorithm.EDDSA:
        return ed25519.Ed25519PrivateKey.generate()
    if alg == Algorithm.ES256:
        return ec.generate_private_key(ec.SECP256R1())
    raise UnsupportedAlgorithmError(f"unsupported algorithm {alg!r}")


def raw_public_bytes(public_key: PublicKey) -> bytes:
    """Compact public key bytes for the trust bundle.

    :returns: 32 bytes (Ed25519, RFC 8032 §5.1.5) or 33 bytes (P-256 compressed
        point, SEC 1 v2 §2.3.3).
    """
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


def public_key_from_raw(alg: Algorithm, data: bytes) -> PublicKey:
    """Inverse of :func:`raw_public_bytes`.

    :raises UnsupportedAlgorithmError: on an unknown algorithm or malformed key bytes.
    """
    try:
        if alg == Algorithm.EDDSA:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if alg == Algorithm.ES256:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError as exc:
        raise UnsupportedAlgorithmError(f"malformed {alg!r} public key: {exc}") from exc
    raise UnsupportedAlgorithmError(f"unsupported algorithm {alg!r}")


def ecdsa_der_to_raw(der: bytes) -> bytes:
    """Convert a DER ECDSA-Sig-Value (RFC 3279 §2.2.3) to COSE ``r || s`` (RFC 9053 §2.1)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_COORD, "big") + s.to_bytes(_P256_COORD, "big")


class Signer(abc.ABC):
    """Something that signs with one private key and can name it.

    ``sign`` returns COSE-encoded signatures (see the module doc), so callers
    never care whether the key is in a file or on a token.
    """

    @property
    @abc.abstractmethod
    def public_key(self) -> PublicKey:
        """The matching public key."""

    @property
    def alg(self) -> Algorithm:
        """The COSE algorithm (EdDSA -8 or ES256 -7)."""
        return algorithm_of(self.public_key)

    @property
    def kid(self) -> bytes:
        """The 4-byte key id (:func:`derive_kid`)."""
        return derive_kid(self.public_key)

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (the full to-be-signed bytes; hashing is internal for ES256).

        :returns: 64 bytes (Ed25519 signature, or ES256 ``r || s``).
        """


class SoftwareSigner(Signer):
    """A signer over a private key held in memory (``cryptography``)."""

    def __init__(self, private_key: PrivateKey) -> None:
        algorithm_of(private_key)  # raises on unsupported keys
        self._key = private_key

    @property
    def private_key(self) -> PrivateKey:
        """The key itself, for APIs that need it (X.509 signing in the terminal CA)."""
        return self._key

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        # RFC 6979 deterministic ECDSA: no RNG failure can leak the key.
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return ecdsa_der_to_raw(der)

    def __repr__(self) -> str:
        return f"SoftwareSigner(kid={self.kid.hex()}, alg={self.alg.name})"


def cose_key(signer_or_key: Signer | PublicKey) -> CoseKey:
    """The :class:`cardlib.records.cose.CoseKey` (kid, alg, public key) for a signer or public key."""
    pub = signer_or_key.public_key if isinstance(signer_or_key, Signer) else signer_or_key
    return CoseKey(kid=derive_kid(pub), alg=algorithm_of(pub), public_key=pub)


def sign1_with(signer: Signer, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Build a tagged COSE_Sign1 (RFC 9052 §4.2) with any :class:`Signer`.

    Same wire shape as :func:`cardlib.records.cose.sign1` (protected ``{1: alg}``,
    unprotected ``{4: kid}``), so :func:`cardlib.records.cose.verify1` checks it; this
    variant exists because a PKCS#11 key cannot be handed over as a ``cryptography``
    private key object.

    :param payload: the bytes to sign (a CBOR map in our formats).
    :param external_aad: context bytes bound into the signature (RFC 9052 §4.3).
    :returns: the encoded message (CBOR tag 18).
    """
    protected = cbor2.dumps({int(HeaderLabel.ALG): int(signer.alg)})
    signature = signer.sign(sig_structure(protected, external_aad, payload))
    body = [protected, {int(HeaderLabel.KID): signer.kid}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body))
