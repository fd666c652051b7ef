"""The pinned root public key that endorses bundle and technician keys, loaded from a PEM file.

Terminals and the server pin the root by file (docs/keys-and-provisioning.md): either the root's
self-signed certificate the keystore writes (``certs/<root kid>.crt.pem``,
RFC 5280) or its bare SubjectPublicKeyInfo (RFC 7468 ``PUBLIC KEY``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cardlib.keys.errors import KeysError, UnsupportedAlgorithmError
from cardlib.keys.signer import PublicKey, algorithm_of


class RootKeyError(KeysError):
    """The pinned root key file is missing, unreadable, or holds no Ed25519 / P-256 public key."""


def load_root_key(path: str | Path) -> PublicKey:
    """The pinned root public key from a PEM certificate or PEM public key file.

    :param path: the PEM file (``-----BEGIN CERTIFICATE-----`` or ``-----BEGIN PUBLIC KEY-----``).
    :returns: the root's public key (Ed25519 or ECDSA P-256).
    :raises RootKeyError: unreadable, not PEM, or not one of our key types (message names the file).
    """
    try:
        data = Path(path).read_bytes()
        key: object = (x509.load_pem_x509_certificate(data).public_key()
                       if b"-----BEGIN CERTIFICATE-----" in data else serialization.load_pem_public_key(data))
        if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            raise UnsupportedAlgorithmError(f"unsupported key type {type(key).__name__}")
        algorithm_of(key)  # the curve: P-256 only
    except (OSError, ValueError, UnsupportedAlgorithmError) as exc:
        raise RootKeyError(f"cannot load the pinned root key {path}: {exc}") from exc
    return key
