"""Key hierarchy and file key storage: keystore, passphrases, endorsements, terminal CA."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.errors import (
    CertificateError,
    KeyMismatchError,
    KeyNotFoundError,
    KeyStatusError,
    KeystoreError,
    ManifestSignatureError,
    WeakPassphraseError,
    WrongPassphraseError,
)
from cardlib.keys.keystore import KeyStatus, KeyStore, Role, verify_endorsement
from cardlib.keys.pkcs8 import load_private_key, save_private_key
from cardlib.keys.signer import SoftwareSigner, cose_key, derive_kid, sign1_with, spki_der
from cardlib.keys.terminal_ca import TerminalCA, make_terminal_csr, verify_terminal_certificate
from cardlib.records.cose import Algorithm, verify1
from cardlib.records.errors import BadSignature

ROOT_PW = b"root passphrase 0123"
KEY_PW = b"key passphrase 4567"
T0 = 1_790_000_000


@pytest.fixture()
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "ks", ROOT_PW, now=T0)


def test_kid_is_sha256_of_spki_first_4_bytes() -> None:
    import hashlib

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    assert derive_kid(key) == hashlib.sha256(spki_der(key)).digest()[:4]


@pytest.mark.parametrize("alg", [Algorithm.EDDSA, Algorithm.ES256])
def test_sign1_with_software_signer_verifies_with_cose_verify1(alg: Algorithm, store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    entry = store.issue(Role.ISSUER, root, passphrase=KEY_PW, alg=alg, now=T0)
    signer = store.signer(entry.kid, KEY_PW, now=T0)
    assert signer.alg is alg and signer.kid == entry.kid
    msg = sign1_with(signer, b"payload", b"aad")
    key = cose_key(signer)
    assert verify1(msg, {key.kid: key}, b"aad").payload == b"payload"
    with pytest.raises(BadSignature):
        verify1(msg, {key.kid: key}, b"other aad")


def test_wrong_passphrase_is_a_typed_error(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    entry = store.issue(Role.BUNDLE, root, passphrase=KEY_PW, now=T0)
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        store.signer(entry.kid, b"not the passphrase", now=T0)
    with pytest.raises(WrongPassphraseError, match="passphrase is required"):
        store.signer(entry.kid, None, now=T0)
    with pytest.raises(WrongPassphraseError):
        store.root_signer(b"wrong root passphrase")


def test_key_files_are_encrypted_pkcs8_mode_0600(store: KeyStore, tmp_path: Path) -> None:
    root = store.root_signer(ROOT_PW)
    entry = store.issue(Role.ISSUER, root, passphrase=KEY_PW, now=T0)
    path = store.path / "keys" / entry.location
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(WeakPassphraseError):
        save_private_key(tmp_path / "weak.pem", ed25519.Ed25519PrivateKey.generate(), b"short")
    with pytest.raises(WeakPassphraseError):
        store.issue(Role.ISSUER, root, passphrase=b"short", now=T0)


def test_unencrypted_key_file_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from cardlib.keys.errors import KeysError

    key = ed25519.Ed25519PrivateKey.generate()
    p = tmp_path / "plain.pem"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeysError, match="not an encrypted key file"):
        load_private_key(p, KEY_PW)


def test_manifest_lists_hierarchy_and_survives_reopen(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    issued = {r: store.issue(r, root, passphrase=KEY_PW, name="tech-01" if r is Role.TECHNICIAN else "", now=T0)
              for r in (Role.ISSUER, Role.TERMINAL_CA, Role.BUNDLE, Role.TECHNICIAN)}
    again = KeyStore.open(store.path, pinned_root_kid=store.root_kid)
    assert [e.role for e in again.entries] == [Role.ROOT, Role.ISSUER, Role.TERMINAL_CA, Role.BUNDLE, Role.TECHNICIAN]
    assert again.active(Role.TECHNICIAN, "tech-01").kid == issued[Role.TECHNICIAN].kid
    assert all(e.status is KeyStatus.ACTIVE for e in again.entries)
    # every non-root key carries a root endorsement a terminal can check with the pinned root
    root_pub = again.entry(again.root_kid).public_key
    e = verify_endorsement(again.endorsement(issued[Role.BUNDLE].kid), root_pub, Role.BUNDLE)
    assert e.kid == issued[Role.BUNDLE].kid
    with pytest.raises(KeystoreError):
        verify_endorsement(again.endorsement(issued[Role.ISSUER].kid), root_pub, Role.BUNDLE)


def test_tampered_manifest_is_refused(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    store.issue(Role.ISSUER, root, passphrase=KEY_PW, now=T0)
    path = store.path / "manifest.cose"
    tag = cbor2.loads(path.read_bytes())
    payload = cbor2.loads(tag.value[2])
    payload["keys"][1]["status"] = "revoked"
    tag.value[2] = cbor2.dumps(payload)
    path.write_bytes(cbor2.dumps(tag))
    with pytest.raises(ManifestSignatureError):
        KeyStore.open(store.path)


def test_manifest_from_another_root_fails_the_pin(store: KeyStore, tmp_path: Path) -> None:
    other = KeyStore.init(tmp_path / "other", ROOT_PW, now=T0)
    with pytest.raises(ManifestSignatureError, match="pinned root"):
        KeyStore.open(other.path, pinned_root_kid=store.root_kid)


def test_swapped_private_key_file_is_refused(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    a = store.issue(Role.ISSUER, root, passphrase=KEY_PW, now=T0)
    b = store.issue(Role.BUNDLE, root, passphrase=KEY_PW, now=T0)
    (store.path / "keys" / a.location).write_bytes((store.path / "keys" / b.location).read_bytes())
    with pytest.raises(KeyMismatchError):
        store.signer(a.kid, KEY_PW, now=T0)


def test_rotate_retires_and_revoke_blocks_signing(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    old = store.issue(Role.ISSUER, root, passphrase=KEY_PW, now=T0)
    new, retired = store.rotate(Role.ISSUER, root, passphrase=KEY_PW, now=T0 + 10)
    assert [r.kid for r in retired] == [old.kid]
    assert store.entry(old.kid).status is KeyStatus.RETIRED and store.entry(old.kid).status_time == T0 + 10
    assert store.active(Role.ISSUER).kid == new.kid
    with pytest.raises(KeyStatusError, match="retired"):
        store.signer(old.kid, KEY_PW, now=T0 + 20)
    store.revoke(new.kid, root, at=T0 + 15, now=T0 + 30)
    reopened = KeyStore.open(store.path)
    assert reopened.entry(new.kid).status is KeyStatus.REVOKED
    assert reopened.entry(new.kid).status_time == T0 + 15
    with pytest.raises(KeyStatusError, match="revoked"):
        reopened.signer(new.kid, KEY_PW, now=T0 + 40)
    with pytest.raises(KeyNotFoundError):
        reopened.active(Role.ISSUER)
    with pytest.raises(KeystoreError):
        reopened.revoke(reopened.root_kid, root)


def test_expired_key_cannot_sign(store: KeyStore) -> None:
    root = store.root_signer(ROOT_PW)
    e = store.issue(Role.TECHNICIAN, root, passphrase=KEY_PW, validity_days=1, now=T0, name="t")
    store.signer(e.kid, KEY_PW, now=T0 + 3600)
    with pytest.raises(KeyStatusError, match="expired"):
        store.signer(e.kid, KEY_PW, now=T0 + 2 * 86400)


def test_init_twice_is_refused(store: KeyStore) -> None:
    with pytest.raises(KeystoreError, match="already"):
        KeyStore.init(store.path, ROOT_PW)


# ------------------------------------------------------------------ terminal enrolment


@pytest.fixture()
def ca(store: KeyStore) -> TerminalCA:
    root = store.root_signer(ROOT_PW)
    store.issue(Role.TERMINAL_CA, root, passphrase=KEY_PW)
    return TerminalCA.from_keystore(store, KEY_PW)


@pytest.mark.parametrize("alg", [Algorithm.EDDSA, Algorithm.ES256])
def test_terminal_enrolment_round_trip(alg: Algorithm, store: KeyStore, ca: TerminalCA) -> None:
    key, csr = make_terminal_csr("KT-6271-0001", alg)
    cert = ca.issue(csr, terminal_id="KT-6271-0001")
    info = verify_terminal_certificate(cert, ca.certificate_pem, expected_key=key.public_key())
    assert info.terminal_id == "KT-6271-0001"
    assert info.kid == SoftwareSigner(key).kid and info.alg is alg
    # the CA certificate chains to the root certificate
    ca.certificate.verify_directly_issued_by(store.certificate(store.root_kid))
    assert info.not_after <= int(ca.certificate.not_valid_after_utc.timestamp())


def test_csr_for_another_terminal_id_is_refused(ca: TerminalCA) -> None:
    _, csr = make_terminal_csr("KT-6271-0002")
    with pytest.raises(CertificateError, match="approved terminal"):
        ca.issue(csr, terminal_id="KT-6271-0001")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_csr(csr).public_bytes(Encoding.DER)  # the server stores DER
    assert b"BEGIN CERTIFICATE" in ca.issue(der, terminal_id="KT-6271-0002")


def test_tampered_csr_is_refused(ca: TerminalCA) -> None:
    _, csr = make_terminal_csr("KT-6271-0003")
    _, other = make_terminal_csr("KT-6271-0004")
    # splice: keep the first CSR's text but corrupt one base64 character in the signature area
    lines = csr.splitlines()
    body = bytearray(lines[-2])
    body[5] = ord("A") if body[5] != ord("A") else ord("B")
    lines[-2] = bytes(body)
    with pytest.raises(CertificateError):
        ca.issue(b"\n".join(lines) + b"\n", terminal_id="KT-6271-0003")
    with pytest.raises(CertificateError):
        ca.issue(b"garbage", terminal_id="KT-6271-0003")
    assert other  # the second CSR stays valid on its own
    ca.issue(other, terminal_id="KT-6271-0004")


def test_certificate_from_another_ca_or_for_another_key_is_refused(store: KeyStore, ca: TerminalCA, tmp_path: Path) -> None:
    other_store = KeyStore.init(tmp_path / "o", ROOT_PW)
    other_store.issue(Role.TERMINAL_CA, other_store.root_signer(ROOT_PW), passphrase=KEY_PW)
    other_ca = TerminalCA.from_keystore(other_store, KEY_PW)
    key, csr = make_terminal_csr("KT-6271-0005")
    cert = other_ca.issue(csr, terminal_id="KT-6271-0005")
    with pytest.raises(CertificateError, match="not issued by"):
        verify_terminal_certificate(cert, ca.certificate_pem)
    mine = ca.issue(csr, terminal_id="KT-6271-0005")
    with pytest.raises(CertificateError, match="another key"):
        verify_terminal_certificate(mine, ca.certificate_pem, expected_key=ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CertificateError, match="not valid"):
        verify_terminal_certificate(mine, ca.certificate_pem, now=int(ca.certificate.not_valid_after_utc.timestamp()) + 10)
    with pytest.raises(CertificateError, match="terminal id"):
        make_terminal_csr("bad id with spaces")
