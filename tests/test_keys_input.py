"""``huma keys``: malformed input becomes one typed line (exit 2), never a traceback; export-root."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cardlib.keys.cli import keys as keys_group
from cardlib.keys.keystore import KeyStore
from cardlib.keys.signer import derive_kid
from cardlib.provision.cli import provision as provision_group
from huma.cli import main

ROOT_PW = "root passphrase 0123\n"
KEY_PW = "key passphrase 4567\n"


@pytest.fixture()
def ks(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "root.txt").write_text(ROOT_PW)
    (tmp_path / "key.txt").write_text(KEY_PW)
    d = str(tmp_path / "ks")
    rp = ["--root-passphrase-file", str(tmp_path / "root.txt")]
    kp = ["--passphrase-file", str(tmp_path / "key.txt")]
    assert main(["keys", "init", "--dir", d, *rp]) == 0
    for role in ("terminal-ca", "bundle"):
        assert main(["keys", "issue", role, "--dir", d, *rp, *kp]) == 0
    return {"dir": d, "root": str(tmp_path / "root.txt"), "key": str(tmp_path / "key.txt")}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("value", "why"), [("zz", "is not hex"), ("abcd", "is 2 bytes"), ("0011223344", "is 5 bytes"),
                                            ("", "empty value")])
def test_hex_options_are_typed_with_length(ks: dict[str, str], capsys: pytest.CaptureFixture[str],
                                           value: str, why: str) -> None:
    capsys.readouterr()
    assert main(["keys", "list", "--dir", ks["dir"], "--pin-root", value]) == 2
    line = _one_line_error(capsys)
    assert "'--pin-root'" in line and why in line and "expected 4 bytes" in line
    assert main(["keys", "revoke", value, "--dir", ks["dir"], "--root-passphrase-file", ks["root"]]) == 2
    assert why in _one_line_error(capsys)


def test_pin_root_with_separators_still_works(ks: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    kid = KeyStore.open(Path(ks["dir"])).root_kid
    assert main(["keys", "list", "--dir", ks["dir"], "--pin-root", ":".join(f"{b:02X}" for b in kid)]) == 0
    assert main(["keys", "list", "--dir", ks["dir"], "--pin-root", "00000000"]) == 2
    assert "pinned root" in _one_line_error(capsys)


def _bundle(ks: dict[str, str], tmp_path: Path, *extra: str) -> int:
    return main(["keys", "bundle", "--dir", ks["dir"], "--version", "1", "--out", str(tmp_path / "b.cose"),
                 "--passphrase-file", ks["key"], *extra])


def test_deny_cards_names_file_and_line(ks: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("# lost cards\n0011223344556677\n\nnot-hex-at-all\n")
    capsys.readouterr()
    assert _bundle(ks, tmp_path, "--deny-cards", str(deny)) == 2
    assert f"{deny}:4: card id: 'not-hex-at-all' is not hex" in _one_line_error(capsys)
    deny.write_text("0011223344556677\nabcd\n")
    assert _bundle(ks, tmp_path, "--deny-cards", str(deny)) == 2
    assert f"{deny}:2: card id: 'abcd' is 2 bytes (expected 8 bytes" in _one_line_error(capsys)
    deny.write_bytes(b"0011223344556677\n\xff\xfe\n")
    assert _bundle(ks, tmp_path, "--deny-cards", str(deny)) == 2
    assert f"{deny}:2: not UTF-8" in _one_line_error(capsys)
    assert not (tmp_path / "b.cose").exists()
    deny.write_text("0011223344556677  # lost 2026-01\n")
    assert _bundle(ks, tmp_path, "--deny-cards", str(deny)) == 0
    assert "1 denied card," in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"\x00\x01binary", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_terminal_cert_not_pem_names_the_file(ks: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              content: bytes) -> None:
    cert = tmp_path / "t1.cert.pem"
    cert.write_bytes(content)
    capsys.readouterr()
    assert _bundle(ks, tmp_path, "--terminal-cert", str(cert)) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"error: {cert}: ") and ("not a PEM certificate" in line or "refused" in line)


def test_export_root_writes_the_pinned_public_key(ks: dict[str, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trust-root.pem"
    assert main(["keys", "export-root", "--dir", ks["dir"], str(out)]) == 0
    key = load_pem_public_key(out.read_bytes())
    assert derive_kid(key) == KeyStore.open(Path(ks["dir"])).root_kid  # type: ignore[arg-type]
    assert b"PRIVATE" not in out.read_bytes()
    capsys.readouterr()
    assert main(["keys", "export-root", "--dir", ks["dir"], str(out)]) == 2
    assert "--force" in _one_line_error(capsys)
    assert main(["keys", "export-root", "--dir", ks["dir"], str(out), "--force"]) == 0


_SECRET_NAME = re.compile(r"passphrase|password|secret|(?<![a-z])pin(?!-root)")


@pytest.mark.parametrize("group", [keys_group, provision_group], ids=["keys", "provision"])
def test_no_secret_value_on_the_command_line(group: click.Group) -> None:
    """Docs: passphrases/PINs/secrets never on the command line: only a file, env or prompt."""
    checked = 0
    for name, cmd in group.commands.items():
        for param in cmd.params:
            if not isinstance(param, click.Option) or not any(_SECRET_NAME.search(o) for o in param.opts):
                continue
            checked += 1
            assert param.is_flag or isinstance(param.type, click.Path), f"{group.name} {name} {param.opts}"
    assert checked >= 5


def test_bom_at_the_start_of_a_deny_list_or_secret_file_is_ignored(
        ks: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Notepad saves UTF-8 with a byte-order mark; the first id / the passphrase must still read."""
    deny = tmp_path / "deny2.txt"
    deny.write_text("0011223344556677\r\n8899aabbccddeeff\r\n", encoding="utf-8-sig")
    assert deny.read_bytes().startswith(b"\xef\xbb\xbf")
    bom_pw = tmp_path / "key-bom.txt"
    bom_pw.write_text(KEY_PW, encoding="utf-8-sig")
    out = str(tmp_path / "b.cose")
    assert main(["keys", "bundle", "--dir", ks["dir"], "--version", "1", "--deny-cards", str(deny),
                 "--passphrase-file", str(bom_pw), "--out", out]) == 0, capsys.readouterr().err
    assert "2 denied cards" in capsys.readouterr().out
    deny.write_text("\ufeffzz11223344556677\n", encoding="utf-8")  # a BOM does not hide a real error
    assert main(["keys", "bundle", "--dir", ks["dir"], "--version", "2", "--deny-cards", str(deny),
                 "--passphrase-file", str(bom_pw), "--out", out]) == 2
    line = _one_line_error(capsys)
    assert f"{deny}:1: card id: 'zz11223344556677' is not hex" in line and "\ufeff" not in line
