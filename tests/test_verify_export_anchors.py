"""``huma audit verify-export`` with an unusable pinned anchor blames the anchor file, not the export."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner
from huma.cli import main
from server.audit.exports import JOURNAL_FORMAT, sign_header


def _export(tmp_path: Path) -> tuple[Path, Path]:
    """An empty but well-signed export and the server public key file it verifies under."""
    key = ed25519.Ed25519PrivateKey.generate()
    head = {"format": JOURNAL_FORMAT, "generated_at": "2026-03-01T00:00:00+00:00", "filters": {}, "terminals": {}}
    doc = {**head, "header_cose_b64": sign_header(head, SoftwareSigner(key)), "items": []}
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(doc))
    pub = tmp_path / "server-key.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def test_a_bad_server_key_file_is_named_and_the_export_not_blamed(tmp_path, capsys) -> None:
    export, _pub = _export(tmp_path)
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello\n")
    code = main(["audit", "verify-export", str(export), "--terminal-ca", str(bad), "--server-key", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "not a journal export" not in err, err
    assert err.startswith(f"error: --server-key {bad}: the pinned server key is not an Ed25519/P-256 PEM"), err


def test_a_bad_terminal_ca_file_is_named_and_the_export_not_blamed(tmp_path, capsys) -> None:
    export, pub = _export(tmp_path)
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    code = main(["audit", "verify-export", str(export), "--terminal-ca", str(bad), "--server-key", str(pub)])
    err = capsys.readouterr().err
    assert code == 2 and "not a journal export" not in err, err
    assert err.startswith(f"error: --terminal-ca {bad}: the pinned terminal CA is not a PEM certificate"), err
