"""Where a counter's key and its secret live (issue 17).

Before: the key's passphrase sat in a file next to the encrypted key (``state/passphrase``
beside ``state/terminal-key.p8``), so one copy of the state directory carried both, and
the only other key store was a file. Now a passphrase file is an explicit choice
(``paths.passphrase``) refused beside the key or readable by others; the default is
``$HUMA_KEY_PASSPHRASE`` or the systemd credential ``huma-key-passphrase``; and the key can
live on a PKCS#11 token (a TPM's or SoftHSM2) selected with ``[key] store = "pkcs11"``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_config.loader import load_terminal_profile
from huma.cli import cli
from terminal.daemon import load_terminal_signer
from terminal.errors import TerminalProfileError

PASSPHRASE = b"counter passphrase 2026"


def _profile(root: Path, *, passphrase: str | None = None, key_table: str = "") -> Path:
    """A minimal terminal profile under ``root`` (key in ``state/``, a virtual reader)."""
    (root / "terminals").mkdir(parents=True, exist_ok=True)
    (root / "readers").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    lines = ['kind = "terminal"', "schema_version = 1", 'terminal_id = "T-6271-0042"', 'region = "62.71"',
             'counter_mode = "clinic_visit"', 'programmes = ["health"]', 'server_url = "http://127.0.0.1:9"',
             "sync_interval = 10", "", "[paths]", 'key = "../state/terminal-key.p8"',
             'journal = "../state/journal.sqlite"']
    if passphrase is not None:
        lines.append(f'passphrase = "{passphrase}"')
    lines += ["", "[[readers]]", 'profile = "acr122u"']
    if key_table:
        lines += ["", key_table]
    path = root / "terminals" / "terminal.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _init(profile: Path, env: dict[str, str]) -> object:
    return CliRunner().invoke(cli, ["terminal", "init", "--profile", str(profile)], env=env)


def test_a_passphrase_file_beside_the_key_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HUMA_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "state" / "passphrase"
    profile = _profile(tmp_path, passphrase="../state/passphrase")
    secret.write_bytes(PASSPHRASE + b"\n")
    secret.chmod(0o600)
    result = _init(profile, {"HUMA_KEY_PASSPHRASE": PASSPHRASE.decode()})
    with pytest.raises(TerminalProfileError, match="beside the key"):
        load_terminal_signer(load_terminal_profile(profile))
    assert result is not None


def test_a_passphrase_file_others_can_read_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HUMA_KEY_PASSPHRASE", raising=False)
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    secret.chmod(0o600)
    profile = _profile(tmp_path, passphrase="../secrets/passphrase")
    result = _init(profile, {})
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    secret.chmod(0o644)
    with pytest.raises(TerminalProfileError, match="readable by others"):
        load_terminal_signer(load_terminal_profile(profile))
    secret.chmod(0o600)  # an explicit, private file elsewhere is allowed
    assert load_terminal_signer(load_terminal_profile(profile)).kid


def test_the_default_is_the_environment_or_a_systemd_credential(tmp_path, monkeypatch) -> None:
    profile = _profile(tmp_path)
    result = _init(profile, {"HUMA_KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["terminal-key.csr.pem", "terminal-key.p8"]
    monkeypatch.delenv("HUMA_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TerminalProfileError, match="HUMA_KEY_PASSPHRASE"):
        load_terminal_signer(load_terminal_profile(profile))
    creds = tmp_path / "credentials"  # what systemd's LoadCredential(Encrypted)= provides
    creds.mkdir()
    (creds / "huma-key-passphrase").write_bytes(PASSPHRASE)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    kid = load_terminal_signer(load_terminal_profile(profile)).kid
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.setenv("HUMA_KEY_PASSPHRASE", PASSPHRASE.decode())
    assert load_terminal_signer(load_terminal_profile(profile)).kid == kid


# ----------------------------------------------------------------------------- PKCS#11 (SoftHSM2)

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
needs_softhsm = pytest.mark.skipif(not os.path.exists(MODULE), reason="SoftHSM2 is not installed")
with contextlib.suppress(ImportError, pytest.skip.Exception):  # no pkcs11 extra or no SoftHSM2: skipped below
    from tests.test_keys_pkcs11 import softhsm  # noqa: F401 - the session's SoftHSM2 token, a fixture


@needs_softhsm
@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_terminal_key_on_a_pkcs11_token(tmp_path, request, alg) -> None:
    pytest.importorskip("pkcs11", reason="extra pkcs11 not installed")
    from cryptography import x509

    from cardlib.keys.signer import cose_key, sign1_with
    from cardlib.records.cose import verify1
    from tests.test_keys_pkcs11 import LABEL, PIN

    request.getfixturevalue("softhsm")  # the session's SoftHSM2 token
    key_label = f"huma-terminal-{alg.lower()}-{os.getpid()}-{tmp_path.name[-8:]}"
    profile = _profile(tmp_path, key_table=f'[key]\nstore = "pkcs11"\nmodule = "{MODULE}"\ntoken = "{LABEL}"\n'
                                           f'label = "{key_label}"\nalg = "{alg}"')
    result = _init(profile, {"HUMA_TOKEN_PIN": PIN})
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "on token" in result.output and "fingerprint" in result.output  # type: ignore[attr-defined]
    state = tmp_path / "state"
    assert not (state / "terminal-key.p8").exists()  # no key file: the key never leaves the token
    csr = x509.load_pem_x509_csr((state / "terminal-key.csr.pem").read_bytes())
    assert csr.is_signature_valid
    assert [a.value for a in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)] == ["T-6271-0042"]
    again = _init(profile, {"HUMA_TOKEN_PIN": PIN})
    assert again.exit_code != 0 and "already" in str(again.output) + str(again.exception)  # type: ignore[attr-defined]

    os.environ["HUMA_TOKEN_PIN"] = PIN
    try:
        signer = load_terminal_signer(load_terminal_profile(profile))
    finally:
        del os.environ["HUMA_TOKEN_PIN"]
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    assert signer.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == \
        csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key = cose_key(signer)
    assert verify1(sign1_with(signer, b"journal entry"), {key.kid: key}).payload == b"journal entry"
    # the journal runs on the token key
    from terminal.journal_store import JournalStore

    store = JournalStore(state / "journal.sqlite", terminal_id="T-6271-0042", signer=signer)
    store.close()
    signer.close()  # type: ignore[attr-defined]  # a TokenSigner: logs out, so the next test can log in


@needs_softhsm
def test_a_wrong_token_pin_is_a_profile_error(tmp_path, request, monkeypatch) -> None:
    pytest.importorskip("pkcs11", reason="extra pkcs11 not installed")
    from tests.test_keys_pkcs11 import LABEL

    request.getfixturevalue("softhsm")
    profile = _profile(tmp_path, key_table=f'[key]\nstore = "pkcs11"\nmodule = "{MODULE}"\ntoken = "{LABEL}"\n'
                                           'label = "huma-terminal-none"')
    monkeypatch.setenv("HUMA_TOKEN_PIN", "000000")
    with pytest.raises(Exception, match="wrong PIN"):
        load_terminal_signer(load_terminal_profile(profile))
    monkeypatch.delenv("HUMA_TOKEN_PIN")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TerminalProfileError, match="HUMA_TOKEN_PIN"):
        load_terminal_signer(load_terminal_profile(profile))
