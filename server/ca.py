"""Terminal CA: CSR checks and certificate issuance (RFC 2986 CSR in, RFC 5280 certificate out).

The signing key is loaded from a PKCS#8 PEM file named in the config
(``TERMINAL_CA_KEY``, optional password ``TERMINAL_CA_KEY_PASSWORD``). The real
key hierarchy (root → terminal CA, PKCS#11) comes with the keys issue; it only
has to provide another :class:`TerminalCa`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from server.errors import ConfigurationError, InvalidCsr

#: Terminal keys we accept: Ed25519 (default) and ECDSA P-256 (COSE EdDSA / ES256).
TerminalPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
CaPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

#: Certificate lifetime of a terminal key, days.
TERMINAL_CERT_DAYS = 730
KID_LEN = 4  # bytes, DESIGN §4


def key_id(public_key: TerminalPublicKey) -> bytes:
    """The 4-byte key id of a public key: SHA-256 of its SubjectPublicKeyInfo DER, first 4 bytes.

    Terminals put this ``kid`` in the COSE protected header of journal entries
    and upload envelopes (RFC 9052 §3.1, label 4).
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:KID_LEN]


@dataclass(frozen=True)
class CheckedCsr:
    """A CSR whose self-signature verified and whose subject names the terminal."""

    der: bytes
    terminal_id: str
    public_key: TerminalPublicKey

    @property
    def spki_der(self) -> bytes:
        """The terminal public key as SubjectPublicKeyInfo DER."""
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def check_csr(data: bytes, terminal_id: str) -> CheckedCsr:
    """Parse a PKCS#10 CSR (PEM or DER) and check it (RFC 2986 §4).

    :param data: the CSR, PEM text or DER bytes.
    :param terminal_id: the terminal this CSR must name in its subject CN.
    :raises InvalidCsr: undecodable, bad self-signature, unsupported key type,
        or subject CN different from ``terminal_id``.
    """
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCsr(f"undecodable CSR: {exc}", reason="undecodable") from exc
    if not csr.is_signature_valid:
        raise InvalidCsr("CSR self-signature does not verify", reason="bad_signature")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidCsr("only P-256 ECDSA keys are accepted", reason="unsupported_key")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidCsr("terminal keys must be Ed25519 or P-256", reason="unsupported_key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != terminal_id:
        raise InvalidCsr("CSR subject CN must equal the terminal id", reason="subject_mismatch")
    return CheckedCsr(
        der=csr.public_bytes(serialization.Encoding.DER), terminal_id=terminal_id, public_key=key
    )


class TerminalCa:
    """Issues terminal certificates with one CA key."""

    def __init__(self, key: CaPrivateKey, name: str = "Huma Betang Terminal CA") -> None:
        self._key = key
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])

    @classmethod
    def from_file(cls, path: str | Path, password: bytes | None = None) -> TerminalCa:
        """Load the CA key from a PKCS#8 PEM file.

        :raises ConfigurationError: file missing, wrong password or not Ed25519/EC.
        """
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot load terminal CA key {path}: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigurationError("terminal CA key must be Ed25519 or EC")
        return cls(key)

    def issue(self, csr: CheckedCsr, now: dt.datetime) -> bytes:
        """Sign a terminal certificate for a checked CSR (RFC 5280 §4.1).

        :param now: aware UTC issue time.
        :returns: the certificate, DER.
        """
        algorithm = None if isinstance(self._key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, csr.terminal_id)]))
            .issuer_name(self._name)
            .public_key(csr.public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=TERMINAL_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, algorithm)
        )
        return cert.public_bytes(serialization.Encoding.DER)


def load_public_key(spki_der: bytes) -> TerminalPublicKey:
    """Load a stored terminal public key (SubjectPublicKeyInfo DER)."""
    key = serialization.load_der_public_key(spki_der)
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
    return key
