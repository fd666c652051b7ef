"""PKCS#11 key storage against a real SoftHSM2 token (Debian softhsm2, private config in tmp).

python-pkcs11 initialises the module once per process and SoftHSM2 reads SOFTHSM2_CONF
at that moment, so the token directory is session-scoped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pkcs11", reason="extra pkcs11 not installed")

from cardlib.keys.errors import KeyNotFoundError, KeystoreError, Pkcs11Error  # noqa: E402
from cardlib.keys.keystore import Backend, KeyStore, Role  # noqa: E402
from cardlib.keys.pkcs11 import Pkcs11Token  # noqa: E402
from cardlib.keys.signer import cose_key, sign1_with  # noqa: E402
from cardlib.records.bundle import TrustBundle, sign_bundle, verify_bundle  # noqa: E402
from cardlib.records.cose import Algorithm, verify1  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "huma-test"
PIN = "246810"
ROOT_PW = b"root passphrase 0123"

if not (os.path.exists(MODULE) and shutil.which("softhsm2-util")):  # pragma: no cover
    pytest.skip("SoftHSM2 is not installed (apt install softhsm2)", allow_module_level=True)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", "13579111"],
        check=True, capture_output=True,
    )
    yield LABEL
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@pytest.fixture()
def token(softhsm: str) -> Iterator[Pkcs11Token]:
    with Pkcs11Token(MODULE, softhsm, PIN) as tok:
        yield tok


@pytest.mark.parametrize("alg", [Algorithm.EDDSA, Algorithm.ES256])
def test_token_key_signs_cose_that_verifies(token: Pkcs11Token, alg: Algorithm) -> None:
    signer = token.generate(alg, label="huma-test-key")
    assert signer.alg is alg
    msg = sign1_with(signer, b"claims", b"aad")
    key = cose_key(signer)
    assert verify1(msg, {key.kid: key}, b"aad").payload == b"claims"
    # found again by kid (CKA_ID), the same public key
    again = token.signer(signer.kid)
    assert again.kid == signer.kid
    assert verify1(sign1_with(again, b"x"), {key.kid: key}).payload == b"x"


def test_wrong_pin_is_a_typed_error(softhsm: str) -> None:
    with pytest.raises(Pkcs11Error, match="wrong PIN"):
        Pkcs11Token(MODULE, softhsm, "000000")


def test_unknown_token_and_kid(softhsm: str, token: Pkcs11Token) -> None:
    with pytest.raises(Pkcs11Error, match="no PKCS#11 token"):
        Pkcs11Token(MODULE, "no-such-token", PIN)
    with pytest.raises(KeyNotFoundError):
        token.signer(b"\x00\x01\x02\x03")


def test_keystore_bundle_key_on_token_signs_a_bundle(token: Pkcs11Token, tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "ks", ROOT_PW)
    root = store.root_signer(ROOT_PW)
    entry = store.issue(Role.BUNDLE, root, token=token)
    assert entry.backend is Backend.PKCS11 and entry.location == LABEL
    with pytest.raises(KeystoreError, match="open the token"):
        store.signer(entry.kid)
    signer = store.signer(entry.kid, token=token)
    data = sign_bundle(TrustBundle(version=3, issued_at=100, expires_at=200), signer, store.endorsement(entry.kid))
    bundle = verify_bundle(data, store.entry(store.root_kid).public_key)
    assert bundle.version == 3 and bundle.signer_kid == entry.kid
    with pytest.raises(KeystoreError, match="X.509"):
        store.issue(Role.TERMINAL_CA, root, token=token)
