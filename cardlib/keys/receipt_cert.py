"""The server receipt key's certificate and the terminal CA's chain to the root (docs/security.md).

A counter pins the server receipt key at enrolment; every later server answer that changes
its state must be signed by it. So the key must come with proof that the province's root
stands behind it, not only the word of whoever answered the enrolment request. The chain
reuses what exists:

    root  --(X.509, ``huma keys issue terminal-ca``)-->  terminal CA
    terminal CA  --(X.509, this module, at the server)-->  server receipt key

The terminal CA already lives on the server (it certifies terminal keys on approval), beside
the receipt key, so certifying the receipt key there gives a thief nothing the server's disk
did not give already, and needs no root ceremony. A receipt-key certificate is an
end-entity certificate whose extended key usage is :data:`RECEIPT_KEY_USAGE` (terminal
certificates carry no extended key usage, so one can never stand in for the other) and
whose key is Ed25519.

OID: :data:`RECEIPT_KEY_USAGE` is under ``2.25`` (ITU-T X.667 / RFC 4122 §1: an OID made of
a random UUID, needing no registration).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from cardlib.keys.errors import CertificateError
from cardlib.keys.keystore import _certificate_builder, _hash_for
from cardlib.keys.signer import PublicKey, SoftwareSigner
from cardlib.keys.terminal_ca import _basic_constraints, _end_entity_validity, _issued_by, _within

#: Extended key usage of a server receipt key certificate (``2.25.<random UUID>``, ITU-T X.667).
RECEIPT_KEY_USAGE = x509.ObjectIdentifier("2.25.339866557629686868413213435768188076828")
#: Subject CN prefix of a receipt-key certificate (a terminal id never starts so).
RECEIPT_CN_PREFIX = "Huma Betang server receipt key "
#: Validity of a receipt-key certificate, days (checked at enrolment only; never past the CA's).
RECEIPT_CERT_DAYS = 2 * 365


def issue_receipt_certificate(ca_signer: SoftwareSigner, ca_certificate: x509.Certificate,
                              receipt_key: ed25519.Ed25519PublicKey, now: float) -> bytes:
    """Certify the server receipt key with the terminal CA.

    :param ca_signer: the terminal CA key (the one ``ca_certificate`` certifies).
    :param receipt_key: the server receipt key's public key.
    :param now: POSIX seconds of issuance.
    :returns: the certificate, PEM bytes (end-entity, extended key usage :data:`RECEIPT_KEY_USAGE`).
    """
    from cryptography.hazmat.primitives import serialization

    from cardlib.keys.signer import derive_kid

    start, end = _end_entity_validity(now, RECEIPT_CERT_DAYS, ca_certificate)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, RECEIPT_CN_PREFIX + derive_kid(receipt_key).hex())])
    cert = (
        _certificate_builder(subject, ca_certificate.subject, receipt_key, start, end, ca=False)
        .add_extension(x509.ExtendedKeyUsage([RECEIPT_KEY_USAGE]), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_signer.public_key), critical=False)
        .sign(ca_signer.private_key, _hash_for(ca_signer.private_key))
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _signed_by(cert: x509.Certificate, key: PublicKey) -> bool:
    """Whether ``key`` made ``cert``'s signature (Ed25519, or ECDSA P-256 with the certificate's hash)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        elif isinstance(key, ec.EllipticCurvePublicKey) and cert.signature_hash_algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def verify_terminal_ca(ca_pem: bytes, root: PublicKey, now: float) -> x509.Certificate:
    """The terminal CA certificate, checked to be a CA certificate the pinned root signed.

    A development CA that certifies itself chains only when its own key is the pinned root.

    :param ca_pem: the terminal CA certificate, PEM.
    :param root: the root public key the counter was provisioned with.
    :param now: POSIX seconds for the validity check.
    :raises CertificateError: not PEM, not signed by ``root``, not a CA with keyCertSign, or outside its validity.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise CertificateError(f"terminal CA certificate is not PEM: {exc}") from exc
    if not _signed_by(ca, root):
        raise CertificateError("terminal CA certificate is not signed by the pinned root")
    if not _basic_constraints(ca, "terminal CA certificate").ca:
        raise CertificateError("terminal CA certificate is not a CA certificate")
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("terminal CA certificate lacks keyUsage") from exc
    if not usage.key_cert_sign:
        raise CertificateError("terminal CA certificate may not sign certificates (keyUsage)")
    _within(ca, now, "terminal CA certificate")
    return ca


def verify_receipt_certificate(cert_pem: bytes, ca: x509.Certificate, now: float) -> ed25519.Ed25519PublicKey:
    """The server receipt key, from its certificate issued by the terminal CA ``ca``.

    :param cert_pem: the receipt-key certificate, PEM.
    :param ca: the terminal CA certificate, already checked (:func:`verify_terminal_ca`).
    :param now: POSIX seconds for the validity check.
    :returns: the certified Ed25519 public key.
    :raises CertificateError: not PEM, not issued by ``ca``, a CA certificate, without the
        receipt-key extended key usage (a terminal certificate), not Ed25519, or outside its validity.
    """
    cert = _issued_by(cert_pem, ca, "receipt key certificate")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("certificate does not certify a server receipt key (no extended key usage)") from exc
    if RECEIPT_KEY_USAGE not in usages:
        raise CertificateError("certificate does not certify a server receipt key (extended key usage)")
    _within(cert, now, "receipt key certificate")
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateError("the certified server receipt key is not Ed25519")
    return key
