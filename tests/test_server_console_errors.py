"""``huma server`` console commands: the server receipt key is named, never made; failures are one line, exit 2.

A console command beside a checkout must not sign with (and silently create)
``<instance>/receipt-key.pem``, a key no counter pins (docs/operations.md "Server receipt key").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from huma.cli import main
from server.receipts import load_receipt_signer

HOUSEHOLD = "00000000000000ff"
CARD = "00000000000000aa"


@pytest.fixture
def sqlite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("HUMA_RECEIPT_KEY", "HUMA_RECEIPT_KEY_PASSWORD", "HUMA_TRUST_ROOT_CERT",
                 "HUMA_TERMINAL_CA_KEY", "HUMA_TERMINAL_CA_KEY_PASSWORD", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'huma.db'}"
    assert main(["server", "db", "upgrade", "--database", url]) == 0
    return url


def _huma(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _statement(capsys: Any, db: str, tmp_path: Path) -> tuple[int, str]:
    return _huma(capsys, "server", "household", "statement", HOUSEHOLD, "--reissue-of", CARD, "--out",
                 str(tmp_path / "bal.cose"), "--key-out", str(tmp_path / "server-key.pem"), "--database", db)


def test_statement_without_huma_receipt_key_refuses_in_one_line(sqlite_db, tmp_path, capsys) -> None:
    code, err = _statement(capsys, sqlite_db, tmp_path)
    assert code == 2 and "HUMA_RECEIPT_KEY" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bal.cose").exists() and not (tmp_path / "server-key.pem").exists()


def test_statement_with_a_missing_key_file_refuses_and_creates_none(sqlite_db, tmp_path, monkeypatch, capsys) -> None:
    key = tmp_path / "receipt-key.pem"
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(key))
    code, err = _statement(capsys, sqlite_db, tmp_path)
    assert code == 2 and f"{key} does not exist" in err and "HUMA_RECEIPT_KEY" in err, err
    assert not key.exists()


def test_unknown_household_is_a_typed_error(sqlite_db, tmp_path, monkeypatch, capsys) -> None:
    key = tmp_path / "receipt-key.pem"
    load_receipt_signer(key, None)  # the server's key, made at its first start
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(key))
    code, err = _huma(capsys, "server", "household", "show", HOUSEHOLD, "--database", sqlite_db)
    assert code == 2 and err.startswith("error: ") and HOUSEHOLD in err, err
    code, err = _statement(capsys, sqlite_db, tmp_path)
    assert code == 2 and err.startswith("error: ") and HOUSEHOLD in err, err


def test_unknown_grievance_is_a_typed_error(sqlite_db, capsys) -> None:
    code, err = _huma(capsys, "server", "grievance", "status", "99", "resolved", "--reason", "x",
                      "--database", sqlite_db)
    assert code == 2 and err.strip() == "error: no grievance 99", err


def test_upload_issuance_names_huma_trust_root_cert(sqlite_db, tmp_path, capsys) -> None:
    f = tmp_path / "issuances.cose"
    f.write_bytes(b"\xa0")
    code, err = _huma(capsys, "server", "cards", "upload-issuance", str(f), "--technician", "t",
                      "--database", sqlite_db)
    assert code == 2 and "HUMA_TRUST_ROOT_CERT" in err, err


def test_encrypted_terminal_ca_key_without_password_names_the_variable(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from server import create_app
    from server.errors import ConfigurationError
    from server.terminals import terminal_ca

    path = tmp_path / "terminal-ca.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"ca password")))
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "TERMINAL_CA_KEY": str(path),
                      "TERMINAL_CA_KEY_PASSWORD": None})
    with app.app_context(), pytest.raises(ConfigurationError, match="HUMA_TERMINAL_CA_KEY_PASSWORD"):
        terminal_ca()


def test_bundle_export_writes_the_newest_stored_bundle_bytes(sqlite_db, tmp_path, capsys) -> None:
    import datetime as dt
    import hashlib

    from server import create_app
    from server.extensions import db
    from server.models import PublishedBundle

    out = tmp_path / "bundle.cose"
    code, err = _huma(capsys, "server", "bundle", "export", "--out", str(out), "--database", sqlite_db)
    assert code == 2 and "no trust bundle" in err and not out.exists(), err
    app = create_app({"DATABASE_URL": sqlite_db})
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    with app.app_context():
        session = db.write_session()
        for version, blob in ((1, b"old bundle"), (2, b"new bundle")):
            session.add(PublishedBundle(version=version, blob=blob, sha256=hashlib.sha256(blob).digest(),
                                        expires_at=when))
        session.commit()
    code, err = _huma(capsys, "server", "bundle", "export", "--out", str(out), "--database", sqlite_db)
    assert code == 0, err
    assert out.read_bytes() == b"new bundle"


def test_unknown_receipt_code_and_a_refused_grievance_move_are_typed_errors(sqlite_db, capsys) -> None:
    code, err = _huma(capsys, "server", "receipt", "ABCD-EFGH", "--database", sqlite_db)
    assert code == 2 and err.strip() == "error: no redemption with this receipt code", err
    assert main(["server", "grievance", "add", "--household", HOUSEHOLD, "--text", "card lost",
                 "--database", sqlite_db]) == 0
    capsys.readouterr()
    code, err = _huma(capsys, "server", "grievance", "status", "1", "resolved", "--reason", "   ",
                      "--database", sqlite_db)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
