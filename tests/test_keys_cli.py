"""``huma keys`` end to end through the composed CLI (secrets from files and env, never argv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.keys.keystore import KeyStatus, KeyStore, Role
from huma.cli import main


@pytest.fixture()
def secrets(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, value in (("root", "root passphrase 0123\n"), ("key", "key passphrase 4567\n"), ("bad", "wrong passphrase 999\n")):
        p = tmp_path / f"{name}.txt"
        p.write_text(value)
        out[name] = p
    return out


def test_init_issue_rotate_revoke_list(tmp_path: Path, secrets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ks")
    rp = ["--root-passphrase-file", str(secrets["root"])]
    kp = ["--passphrase-file", str(secrets["key"])]
    assert main(["keys", "init", "--dir", d, *rp]) == 0
    assert main(["keys", "issue", "issuer", "--dir", d, *rp, *kp]) == 0
    assert main(["keys", "issue", "technician", "--dir", d, "--name", "tech-07", *rp, *kp, "--alg", "es256"]) == 0
    assert main(["keys", "rotate", "issuer", "--dir", d, *rp, *kp]) == 0
    store = KeyStore.open(Path(d))
    issuers = [e for e in store.entries if e.role is Role.ISSUER]
    assert [e.status for e in issuers] == [KeyStatus.RETIRED, KeyStatus.ACTIVE]
    tech = store.active(Role.TECHNICIAN, "tech-07")
    assert main(["keys", "revoke", tech.kid.hex(), "--dir", d, *rp]) == 0
    assert KeyStore.open(Path(d)).entry(tech.kid).status is KeyStatus.REVOKED
    capsys.readouterr()
    assert main(["keys", "list", "--dir", d, "--pin-root", store.root_kid.hex()]) == 0
    out = capsys.readouterr().out
    assert tech.kid.hex() in out and "revoked" in out and "retired" in out


def test_wrong_passphrase_gives_exit_2_and_a_message(tmp_path: Path, secrets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ks")
    assert main(["keys", "init", "--dir", d, "--root-passphrase-file", str(secrets["root"])]) == 0
    capsys.readouterr()
    code = main(["keys", "issue", "bundle", "--dir", d, "--root-passphrase-file", str(secrets["bad"]),
                 "--passphrase-file", str(secrets["key"])])
    assert code == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert [e.role for e in KeyStore.open(Path(d)).entries] == [Role.ROOT]


def test_passphrase_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUMA_ROOT_PASSPHRASE", "root passphrase from env")
    monkeypatch.setenv("HUMA_KEY_PASSPHRASE", "key passphrase from env")
    monkeypatch.setenv("HUMA_KEYSTORE", str(tmp_path / "ks"))
    assert main(["keys", "init"]) == 0
    assert main(["keys", "issue", "bundle"]) == 0
    store = KeyStore.open(tmp_path / "ks")
    store.signer(store.active(Role.BUNDLE).kid, b"key passphrase from env")


def test_terminal_enrolment_via_cli(tmp_path: Path, secrets: dict[str, Path]) -> None:
    d = str(tmp_path / "ks")
    assert main(["keys", "init", "--dir", d, "--root-passphrase-file", str(secrets["root"])]) == 0
    assert main(["keys", "issue", "terminal-ca", "--dir", d, "--root-passphrase-file", str(secrets["root"]),
                 "--passphrase-file", str(secrets["key"])]) == 0
    key, csr, cert = tmp_path / "t.key", tmp_path / "t.csr", tmp_path / "t.crt"
    assert main(["keys", "csr", "--terminal-id", "KT-6201-0009", "--key-out", str(key), "--csr-out", str(csr),
                 "--passphrase-file", str(secrets["key"])]) == 0
    assert main(["keys", "certify", str(csr), "--dir", d, "--terminal-id", "KT-6201-0009", "--out", str(cert),
                 "--passphrase-file", str(secrets["key"])]) == 0
    assert cert.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert main(["keys", "certify", str(csr), "--dir", d, "--terminal-id", "KT-6201-0010", "--out", str(cert),
                 "--passphrase-file", str(secrets["key"])]) == 2


def test_bundle_command_lists_keys_terminals_and_deny_list(tmp_path: Path, secrets: dict[str, Path]) -> None:
    from cardlib.records.bundle import KeyRole, KeyState, verify_bundle

    d = str(tmp_path / "ks")
    rp = ["--root-passphrase-file", str(secrets["root"])]
    kp = ["--passphrase-file", str(secrets["key"])]
    assert main(["keys", "init", "--dir", d, *rp]) == 0
    for role in ("issuer", "terminal-ca", "bundle"):
        assert main(["keys", "issue", role, "--dir", d, *rp, *kp]) == 0
    assert main(["keys", "issue", "technician", "--name", "tech-01", "--dir", d, *rp, *kp]) == 0
    assert main(["keys", "rotate", "issuer", "--dir", d, *rp, *kp]) == 0
    key, csr, cert = tmp_path / "t.key", tmp_path / "t.csr", tmp_path / "t.crt"
    assert main(["keys", "csr", "--terminal-id", "KT-6212-0001", "--key-out", str(key), "--csr-out", str(csr), *kp]) == 0
    assert main(["keys", "certify", str(csr), "--dir", d, "--terminal-id", "KT-6212-0001", "--out", str(cert), *kp]) == 0
    deny = tmp_path / "deny.txt"
    deny.write_text("00000000000000ff\n0000000000000001\n")
    out = tmp_path / "bundle.cbor"
    assert main(["keys", "bundle", "--dir", d, "--version", "4", "--terminal-cert", str(cert), "--deny-cards", str(deny),
                 "--out", str(out), *kp]) == 0
    store = KeyStore.open(Path(d))
    bundle = verify_bundle(out.read_bytes(), store.entry(store.root_kid).public_key, held_version=3)
    roles = sorted((k.role, k.status) for k in bundle.keys)
    assert roles == [(KeyRole.ISSUER, KeyState.ACTIVE), (KeyRole.ISSUER, KeyState.RETIRED),
                     (KeyRole.TERMINAL, KeyState.ACTIVE), (KeyRole.TECHNICIAN, KeyState.ACTIVE)]
    assert list(bundle.deny_cards) == [bytes.fromhex("0000000000000001"), bytes.fromhex("00000000000000ff")]
