"""``huma audit export journal`` signs with the server's receipt key, named by HUMA_RECEIPT_KEY, never a new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from huma.cli import main
from server.receipts import load_receipt_signer


@pytest.fixture
def sqlite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("HUMA_RECEIPT_KEY", raising=False)
    monkeypatch.delenv("HUMA_RECEIPT_KEY_PASSWORD", raising=False)
    url = f"sqlite:///{tmp_path / 'huma.db'}"
    assert main(["server", "db", "upgrade", "--database", url]) == 0
    return url


def _instance_keys() -> list[Path]:
    from server import create_app

    app = create_app({"DATABASE_URL": "sqlite:////nonexistent/x.db"})  # only its instance path is read
    return list(Path(app.instance_path).glob("receipt-key.pem"))


def test_export_without_huma_receipt_key_refuses_and_creates_no_key(sqlite_db, tmp_path, capsys) -> None:
    before = _instance_keys()
    out = tmp_path / "journal.json"
    code = main(["audit", "export", "journal", "-o", str(out), "--database", sqlite_db])
    err = capsys.readouterr().err
    assert code == 2 and "HUMA_RECEIPT_KEY" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and _instance_keys() == before


def test_export_with_a_missing_key_file_refuses_and_creates_nothing(sqlite_db, tmp_path, monkeypatch, capsys) -> None:
    key = tmp_path / "receipt-key.pem"
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(key))
    code = main(["audit", "export", "journal", "-o", str(tmp_path / "j.json"), "--database", sqlite_db])
    err = capsys.readouterr().err
    assert code == 2 and f"{key} does not exist" in err, err
    assert not key.exists()


def test_export_signed_with_the_named_key_verifies_against_it(sqlite_db, tmp_path, monkeypatch, capsys) -> None:
    import json

    from cryptography.hazmat.primitives import serialization

    from server.audit.exports import _signed_header

    key = tmp_path / "receipt-key.pem"
    signer = load_receipt_signer(key, None)  # what the server made at its first start
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(key))
    out = tmp_path / "journal.json"
    assert main(["audit", "export", "journal", "-o", str(out), "--database", sqlite_db]) == 0, capsys.readouterr()
    pem = signer.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _signed_header(json.loads(out.read_text()), pem)["filters"] is not None
