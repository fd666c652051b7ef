"""Terminal enrolment: the terminal makes its key and a CSR, the terminal CA certifies it.

Flow (docs/design.md §Keys and trust)::

    terminal:  key, csr_pem = make_terminal_csr("KT-6271-0001")     # key never leaves it
    server:    ca = TerminalCA.from_keystore(store, passphrase)       # admin approves, then
               cert_pem = ca.issue(csr_pem, terminal_id="KT-6271-0001")
    terminal:  info = verify_terminal_certificate(cert_pem, ca_cert_pem, expected_key=key.public_key())

Certificates follow RFC 5280: end-entity (basicConstraints CA=false, critical),
keyUsage digitalSignature (critical), subject CN = terminal id, SubjectKeyIdentifier and
AuthorityKeyIdentifier. The terminal's trust-bundle ``kid`` is
:func:`cardlib.keys.signer.derive_kid` of the certified public key, so the certificate and
the bundle name the same key.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cardlib.keys.errors import CertificateError, CsrError, UnsupportedAlgorithmError
from cardlib.keys.keystore import (
    KeyStore,
    Role,
    _ca_certificate,
    _certificate_builder,
    _hash_for,
    _name,
    terminal_ca_common_name,
)
from cardlib.keys.signer import (
    PrivateKey,
    PublicKey,
    Signer,
    SoftwareSigner,
    algorithm_of,
    derive_kid,
    generate_private_key,
    spki_der,
)
from cardlib.keys.terminal_id import TERMINAL_ID_RE, check_terminal_id
from cardlib.records.cose import Algorithm

_log = logging.getLogger(__name__)

TERMINAL_ID_PATTERN = TERMINAL_ID_RE
"""Allowed terminal ids (they become the certificate CN): :mod:`cardlib.keys.terminal_id`."""

DEFAULT_TERMINAL_VALIDITY_DAYS = 2 * 365
#: notBefore is set this many seconds before issuance, so a terminal whose clock runs a
#: little behind the server's can verify its new certificate at once.
CLOCK_SKEW_ALLOWANCE_S = 300
#: Validity of a self-signed development CA (:meth:`TerminalCA.self_signed`), days.
SELF_SIGNED_CA_DAYS = 10 * 365


def _check_terminal_id(terminal_id: str) -> None:
    try:
        check_terminal_id(terminal_id)
    except ValueError as exc:
        raise CsrError(str(exc), "bad_terminal_id") from None


@dataclass(frozen=True)
class CheckedCsr:
    """A terminal CSR whose self-signature verified and whose subject CN is the terminal id.

    :ivar der: the CSR, DER (what the server stores).
    :ivar terminal_id: the approved terminal id (= subject CN).
    :ivar public_key: the terminal's Ed25519 or P-256 key.
    """

    der: bytes
    terminal_id: str
    public_key: PublicKey

    @property
    def spki_der(self) -> bytes:
        """The terminal key as SubjectPublicKeyInfo DER."""
        return spki_der(self.public_key)

    @property
    def kid(self) -> bytes:
        """The 4-byte trust-bundle key id (:func:`cardlib.keys.signer.derive_kid`)."""
        return derive_kid(self.public_key)


def check_terminal_csr(csr: bytes, terminal_id: str) -> CheckedCsr:
    """Parse and check a terminal's PKCS#10 CSR (RFC 2986 §4), without issuing anything.

    Proof of possession (the self-signature verifies), subject CN = ``terminal_id``,
    key Ed25519 or P-256. The server runs it when a terminal enrols, :meth:`TerminalCA.issue`
    again when an administrator approves.

    :param csr: PEM or DER bytes.
    :param terminal_id: the terminal the CSR must name; see :data:`TERMINAL_ID_PATTERN`.
    :raises CsrError: with ``reason`` ``bad_terminal_id``, ``undecodable``,
        ``bad_signature``, ``subject_mismatch`` or ``unsupported_key``.
    """
    _check_terminal_id(terminal_id)
    try:
        request = x509.load_pem_x509_csr(csr) if csr.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_csr(csr)
        public_key = request.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError(f"not a PEM or DER CSR: {exc}", "undecodable") from exc
    try:
        algorithm_of(public_key)  # type: ignore[arg-type]
    except UnsupportedAlgorithmError as exc:
        raise CsrError(f"terminal key type not allowed: {exc}", "unsupported_key") from exc
    if not request.is_signature_valid:
        raise CsrError("CSR self-signature does not verify (no proof of possession)", "bad_signature")
    try:
        subject = _cn(request.subject)
    except CertificateError as exc:
        raise CsrError(f"CSR subject: {exc}", "subject_mismatch") from exc
    if subject != terminal_id:
        raise CsrError(f"CSR names {subject!r}, approved terminal is {terminal_id!r}", "subject_mismatch")
    return CheckedCsr(request.public_bytes(serialization.Encoding.DER), terminal_id,
                      public_key)  # type: ignore[arg-type]


def make_terminal_csr(terminal_id: str, alg: Algorithm = Algorithm.EDDSA) -> tuple[PrivateKey, bytes]:
    """Generate the terminal's key pair and a PKCS#10 CSR (RFC 2986) naming it.

    :param terminal_id: becomes the subject CN; see :data:`TERMINAL_ID_PATTERN`.
    :returns: ``(private key, CSR PEM bytes)``; store the key with
        :func:`cardlib.keys.pkcs8.save_private_key`.
    :raises CertificateError: on a malformed terminal id.
    """
    _check_terminal_id(terminal_id)
    key = generate_private_key(alg)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(terminal_id))
        .sign(key, _hash_for(key))
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (ITU-T X.690 §8.1, definite length)."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


#: AlgorithmIdentifier DER of the CSR signature: id-Ed25519 (RFC 8410 §3), ecdsa-with-SHA256 (RFC 5758 §3.2).
_SIGNATURE_ALGORITHM = {
    Algorithm.EDDSA: bytes.fromhex("300506032b6570"),
    Algorithm.ES256: bytes.fromhex("300a06082a8648ce3d040302"),
}


def terminal_csr_with(signer: Signer, terminal_id: str) -> bytes:
    """A PKCS#10 CSR (RFC 2986 §4) naming ``terminal_id``, signed by any :class:`Signer` (e.g. a PKCS#11 key).

    ``cryptography`` signs CSRs only with its own private key objects, which a token key is
    not, so the request is encoded here: CertificationRequestInfo {version 0, subject CN,
    SubjectPublicKeyInfo, attributes [0] {}}, then the signature over its DER (Ed25519, or
    ECDSA P-256 with SHA-256 as a DER ECDSA-Sig-Value, RFC 3279 §2.2.3).

    :returns: the CSR, PEM bytes; :func:`check_terminal_csr` accepts it.
    :raises CertificateError: a malformed terminal id.
    :raises UnsupportedAlgorithmError: a key that is neither Ed25519 nor P-256.
    """
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    _check_terminal_id(terminal_id)
    alg = signer.alg
    if alg not in _SIGNATURE_ALGORITHM:
        raise UnsupportedAlgorithmError(f"terminal key algorithm {alg!r}")
    info = _der(0x30, _der(0x02, b"\x00") + _name(terminal_id).public_bytes() + spki_der(signer.public_key)
                + b"\xa0\x00")
    signature = signer.sign(info)
    if alg == Algorithm.ES256:
        half = len(signature) // 2
        signature = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                         int.from_bytes(signature[half:], "big"))
    der = _der(0x30, info + _SIGNATURE_ALGORITHM[alg] + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TerminalCertificate:
    """A verified terminal certificate.

    :ivar terminal_id: the subject CN.
    :ivar kid: 4-byte bundle key id of the certified key.
    :ivar not_before: / :ivar not_after: validity, UNIX seconds.
    """

    terminal_id: str
    kid: bytes
    alg: Algorithm
    public_key: PublicKey
    serial: int
    not_before: int
    not_after: int
    pem: bytes


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise CertificateError("expected exactly one CN")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _basic_constraints(cert: x509.Certificate, what: str) -> x509.BasicConstraints:
    """``cert``'s basicConstraints (RFC 5280 §4.2.1.9).

    :param what: names the certificate in the error message, e.g. ``"terminal certificate"``.
    :raises CertificateError: the certificate has none.
    """
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError(f"{what} lacks basicConstraints") from exc


def _end_entity_validity(now: float, days: int, ca: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """notBefore and notAfter of an end-entity certificate ``ca`` issues at ``now`` (POSIX seconds).

    Whole seconds; notBefore :data:`CLOCK_SKEW_ALLOWANCE_S` early, notAfter ``days`` later but
    never past ``ca``'s own notAfter.
    """
    issued = dt.datetime.fromtimestamp(now, dt.UTC).replace(microsecond=0)
    return (issued - dt.timedelta(seconds=CLOCK_SKEW_ALLOWANCE_S),
            min(issued + dt.timedelta(days=days), ca.not_valid_after_utc))


def _within(cert: x509.Certificate, now: float, what: str) -> None:
    """Check ``now`` (POSIX seconds) lies in ``cert``'s validity, bounds included.

    :raises CertificateError: outside it (the message names ``what``).
    """
    nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    if not nb <= now <= na:
        raise CertificateError(f"{what} not valid at {int(now)} (valid {int(nb)}..{int(na)})")


def _issued_by(cert_pem: bytes, ca: x509.Certificate, what: str) -> x509.Certificate:
    """``cert_pem`` parsed and checked to be an end-entity certificate that ``ca`` issued directly.

    The steps the terminal certificate and the server receipt-key certificate share (RFC 5280
    §4.1.2.4, §4.2.1.9): PEM, issuer name and signature of ``ca``, basicConstraints present and not a CA.
    Validity and the certificate's own purpose are the caller's to check.

    :param ca: the terminal CA certificate.
    :param what: names the certificate in error messages, e.g. ``"receipt key certificate"``.
    :raises CertificateError: not PEM, not issued by ``ca``, no basicConstraints, or a CA certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"{what} is not a PEM certificate: {exc}") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{what} not issued by the terminal CA: {exc!r}") from exc
    if _basic_constraints(cert, what).ca:
        raise CertificateError(f"{what} is a CA certificate, not an end-entity one")
    return cert


class TerminalCA:
    """The terminal certification authority: a file key and its root-signed certificate.

    :param signer: the CA private key (software; X.509 signing needs it in memory).
    :param certificate: the CA certificate issued by the root at ``keys issue terminal-ca``.
    :raises CertificateError: when the key does not match the certificate.
    """

    def __init__(self, signer: SoftwareSigner, certificate: x509.Certificate) -> None:
        if derive_kid(certificate.public_key()) != signer.kid:  # type: ignore[arg-type]
            raise CertificateError("terminal CA key does not match its certificate")
        self._signer = signer
        self.certificate = certificate

    @classmethod
    def from_keystore(cls, store: KeyStore, passphrase: bytes, kid: bytes | None = None) -> TerminalCA:
        """Load the (newest active, or given) terminal CA from a keystore.

        :raises KeyNotFoundError: / :raises WrongPassphraseError: / :raises KeyStatusError:
        """
        entry = store.entry(kid) if kid is not None else store.active(Role.TERMINAL_CA)
        signer = store.signer(entry.kid, passphrase)
        assert isinstance(signer, SoftwareSigner)
        return cls(signer, store.certificate(entry.kid))

    @classmethod
    def self_signed(cls, signer: SoftwareSigner, *, now: int | None = None,
                    days: int = SELF_SIGNED_CA_DAYS) -> TerminalCA:
        """A CA whose certificate the key signs itself (development, tests, simulations).

        Production CAs come from :meth:`from_keystore`: their certificate chains to the
        offline root. Terminals can only pin a self-signed CA certificate directly.

        :param now: UNIX seconds (default: current time).
        """
        start = int(dt.datetime.now(dt.UTC).timestamp()) if now is None else now
        cn = terminal_ca_common_name(signer.kid)
        cert = _ca_certificate(signer.public_key, cn, signer, cn, start - CLOCK_SKEW_ALLOWANCE_S,
                               start + days * 86400, path_length=0)
        return cls(signer, cert)

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate, PEM (what terminals verify against)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def certify_receipt_key(self, receipt_key: PublicKey, now: int | None = None) -> bytes:
        """Certify the server receipt key (:func:`cardlib.keys.receipt_cert.issue_receipt_certificate`).

        :param now: UNIX seconds (default: the current time).
        :returns: the receipt-key certificate, PEM bytes.
        :raises CertificateError: the receipt key is not Ed25519.
        """
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from cardlib.keys.receipt_cert import issue_receipt_certificate

        if not isinstance(receipt_key, ed25519.Ed25519PublicKey):
            raise CertificateError("the server receipt key is not Ed25519")
        at = dt.datetime.now(dt.UTC).timestamp() if now is None else now
        return issue_receipt_certificate(self._signer, self.certificate, receipt_key, at)

    def issue(
        self,
        csr_pem: bytes,
        *,
        terminal_id: str,
        validity_days: int = DEFAULT_TERMINAL_VALIDITY_DAYS,
        now: int | None = None,
    ) -> bytes:
        """Certify a terminal's CSR after an administrator approved it.

        The CSR's self-signature must verify (proof of possession), its CN must equal
        ``terminal_id`` and its key must be Ed25519 or P-256. The certificate never
        outlives the CA certificate.

        :param csr_pem: PKCS#10 CSR, PEM or DER bytes.
        :param terminal_id: the id the administrator approved.
        :param now: UNIX seconds (default: the current time); notBefore is
            :data:`CLOCK_SKEW_ALLOWANCE_S` earlier.
        :returns: the certificate, PEM bytes.
        :raises CsrError: malformed CSR, bad self-signature, CN mismatch,
            unsupported key type (see :func:`check_terminal_csr`).
        """
        public_key = check_terminal_csr(csr_pem, terminal_id).public_key
        at = now if now is not None else dt.datetime.now(dt.UTC).timestamp()
        start, end = _end_entity_validity(at, validity_days, self.certificate)
        cert = (
            _certificate_builder(_name(terminal_id), self.certificate.subject, public_key, start, end, ca=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._signer.public_key),
                critical=False,
            )
            .sign(self._signer.private_key, _hash_for(self._signer.private_key))
        )
        _log.info("issued terminal certificate for %s serial %x", terminal_id, cert.serial_number)
        return cert.public_bytes(serialization.Encoding.PEM)


def verify_terminal_certificate(
    cert_pem: bytes,
    ca_cert_pem: bytes,
    *,
    expected_key: PublicKey | None = None,
    now: int | None = None,
) -> TerminalCertificate:
    """Verify a terminal certificate against the terminal CA certificate.

    :param expected_key: when given (on the terminal), the certified key must be this one.
    :param now: UNIX seconds for the validity check (default: current time).
    :raises CertificateError: malformed, not issued by this CA, bad signature, not an
        end-entity certificate, outside its validity, or certifying another key.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as exc:
        raise CertificateError(f"terminal CA certificate is not a PEM certificate: {exc}") from exc
    cert = _issued_by(cert_pem, ca, "terminal certificate")
    t = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    _within(cert, t, "terminal certificate")
    nb, na = int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp())
    public_key = cert.public_key()
    if expected_key is not None and derive_kid(expected_key) != derive_kid(public_key):  # type: ignore[arg-type]
        raise CertificateError("certificate certifies another key than this terminal's")
    return TerminalCertificate(
        terminal_id=_cn(cert.subject),
        kid=derive_kid(public_key),  # type: ignore[arg-type]
        alg=algorithm_of(public_key),  # type: ignore[arg-type]
        public_key=public_key,  # type: ignore[arg-type]
        serial=cert.serial_number,
        not_before=nb,
        not_after=na,
        pem=cert_pem,
    )
