"""The X.509 certificates the key hierarchy issues keep their shape: extensions (order,
criticality, values), names, issuer and validity — root, terminal CA, terminal, receipt key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.receipt_cert import RECEIPT_KEY_USAGE
from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.keys.terminal_ca import TerminalCA, make_terminal_csr
from cardlib.records.cose import Algorithm

ROOT_PW = b"root passphrase 0123"
KEY_PW = b"key passphrase 4567"
T0 = 1_790_000_000

def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca,
        crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def _shape(cert: x509.Certificate) -> list[tuple[Any, bool, Any]]:
    return [(e.oid, e.critical, e.value) for e in cert.extensions]


def _ski(key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _aki(key: Any) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(key)


@pytest.fixture()
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "ks", ROOT_PW, now=T0)


def test_root_and_terminal_ca_certificates(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    root_cert = store.certificate(store.root_kid)
    assert _shape(root_cert) == [
        (ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=True, path_length=1)),
        (ExtensionOID.KEY_USAGE, True, _usage(ca=True)),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, _ski(root.public_key)),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki(root.public_key)),
    ]
    assert root_cert.subject == root_cert.issuer
    assert int(root_cert.not_valid_before_utc.timestamp()) == T0
    entry = store.issue(Role.TERMINAL_CA, root, passphrase=KEY_PW, now=T0 + 10)
    ca_cert = store.certificate(entry.kid)
    assert _shape(ca_cert) == [
        (ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=True, path_length=0)),
        (ExtensionOID.KEY_USAGE, True, _usage(ca=True)),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, _ski(ca_cert.public_key())),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki(root.public_key)),
    ]
    assert ca_cert.issuer == root_cert.subject
    assert int(ca_cert.not_valid_before_utc.timestamp()) == T0 + 10
    assert int(ca_cert.not_valid_after_utc.timestamp()) == entry.not_after


@pytest.mark.parametrize("alg", [Algorithm.EDDSA, Algorithm.ES256])
def test_self_signed_ca_terminal_and_receipt_certificates(alg: Algorithm) -> None:
    signer = SoftwareSigner(generate_private_key(alg))
    ca = TerminalCA.self_signed(signer, now=T0, days=30)
    assert _shape(ca.certificate) == [
        (ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=True, path_length=0)),
        (ExtensionOID.KEY_USAGE, True, _usage(ca=True)),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, _ski(signer.public_key)),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki(signer.public_key)),
    ]
    assert int(ca.certificate.not_valid_before_utc.timestamp()) == T0 - 300
    assert int(ca.certificate.not_valid_after_utc.timestamp()) == T0 + 30 * 86400

    key, csr = make_terminal_csr("KT-6271-0001", alg)
    term = x509.load_pem_x509_certificate(ca.issue(csr, terminal_id="KT-6271-0001", validity_days=7,
                                                   now=T0 + 1))
    assert _shape(term) == [
        (ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)),
        (ExtensionOID.KEY_USAGE, True, _usage(ca=False)),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, _ski(key.public_key())),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki(signer.public_key)),
    ]
    assert term.issuer == ca.certificate.subject
    assert int(term.not_valid_before_utc.timestamp()) == T0 + 1 - 300
    assert int(term.not_valid_after_utc.timestamp()) == T0 + 1 + 7 * 86400
    # never past the CA certificate
    late = x509.load_pem_x509_certificate(ca.issue(csr, terminal_id="KT-6271-0001", now=T0 + 2))
    assert late.not_valid_after_utc == ca.certificate.not_valid_after_utc

    receipt = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    rc = x509.load_pem_x509_certificate(ca.certify_receipt_key(receipt.public_key, now=T0 + 3))
    assert _shape(rc) == [
        (ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)),
        (ExtensionOID.KEY_USAGE, True, _usage(ca=False)),
        (ExtensionOID.EXTENDED_KEY_USAGE, True, x509.ExtendedKeyUsage([RECEIPT_KEY_USAGE])),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki(signer.public_key)),
    ]
    assert rc.issuer == ca.certificate.subject
    assert int(rc.not_valid_before_utc.timestamp()) == T0 + 3 - 300
    # the receipt key's two-year validity is cut at the 30-day CA's end
    assert rc.not_valid_after_utc == ca.certificate.not_valid_after_utc
