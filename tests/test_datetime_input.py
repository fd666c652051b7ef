"""Instants typed by people or scripts: out-of-range and malformed ones are client errors.

``9999-12-31T23:59:59-23:59`` is a valid ISO 8601 instant that Python cannot convert to UTC
(year 10000): it was a 500 on ``POST /api/v1/cards`` and ``/audit/export/journal.json?since=``
and a traceback from ``huma audit export --since``; ``--since abc`` was a traceback too. A
failed ``huma audit export`` also left a truncated file over the previous good export.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from huma.cli import main
from server.audit.exports import JOURNAL_FORMAT
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
)

OUT_OF_RANGE = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+05:00"]


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_card_issued_out_of_range_is_400(when, app, world):
    r = world.client.post("/api/v1/cards", headers=world.auth(), json={"cards": [
        {"card_id": "c-1", "tag_uid": "04aabbccddeeff", "kid": "00112233", "issued_at": when}]})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "malformed_request" and error["index"] == 0 and "range" in error["message"]


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_bundle_expiry_out_of_range_is_400(when, app, world):
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={"blob": "AAAA", "expires_at": when})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["field"] == "expires_at"


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_audit_export_since_out_of_range_is_400(when, app, audit_db, world):
    add_auditor(app)
    client = app.test_client()
    from tests.audit_login import form_login

    form_login(client, "audrey", AUDITOR_PASSWORD)
    r = client.get("/audit/export/journal.json", query_string={"since": when})
    assert r.status_code == 400, r.data[:300]


@pytest.mark.parametrize(("when", "says"), [
    ("abc", "'abc'"), ("2026-13-01T00:00+00:00", "month"), ("2026-03-01", "no UTC offset"),
    *((w, "range") for w in OUT_OF_RANGE)])
def test_cli_export_bad_since_is_one_line_and_writes_nothing(when, says, db_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    out = tmp_path / "journal.json"
    for flag in ("--since", "--until"):
        code = main(["audit", "export", "journal", "-o", str(out), flag, when])
        _out, err = capsys.readouterr()
        assert code != 0 and "Traceback" not in err, err
        assert f"Invalid value for '{flag}'" in err and says in err.strip().splitlines()[-1], err
        assert not out.exists()


def test_cli_export_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    """A row the export cannot read (a damaged database: entry kind 99) fails after the header was written."""
    from server import create_app
    from server.db import upgrade
    from server.extensions import db

    path = tmp_path / "huma.db"
    url = f"sqlite:///{path}"
    with create_app({"DATABASE_URL": url}).app_context():
        upgrade(db.engine, "head")
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO terminals (terminal_id, status, csr_der, public_key, kid, created_at) "
                    "VALUES ('T-0001-0001', 'approved', x'00', x'00', x'00000000', '2026-01-01 00:00:00')")
        con.execute("INSERT INTO journal_entries (entry_id, terminal_id, boot_id, seq, kind, wall_time, mono_ns, "
                    "clock_synced, prev_entry_hash, entry_hash, raw, received_at) VALUES (x'01', 'T-0001-0001', "
                    "1, 1, 9, '2026-01-01 00:00:00', 0, 1, x'00', x'00', x'00', '2026-01-01 00:00:00')")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(receipt_key(tmp_path)))  # the CLI never makes one
    out = tmp_path / "journal.json"
    assert main(["audit", "export", "journal", "--format", "json", "-o", str(out)]) == 0, capsys.readouterr()
    good = out.read_bytes()
    assert b'"kind": "BOOT"' in good
    with sqlite3.connect(path) as con:
        con.execute("UPDATE journal_entries SET kind = 99")
    with pytest.raises(ValueError, match="99"):
        main(["audit", "export", "journal", "--format", "json", "-o", str(out)])
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if "journal" in p.name] == ["journal.json"]


def receipt_key(directory: Path) -> Path:
    """A server receipt key file in ``directory`` (what the server makes at its first start)."""
    from server.receipts import load_receipt_signer

    load_receipt_signer(directory / "receipt-key.pem", None)
    return directory / "receipt-key.pem"


def test_cli_export_to_stdout_and_a_device_still_streams(db_url, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(receipt_key(tmp_path)))  # the CLI never makes one
    assert main(["audit", "export", "journal", "-o", "-"]) == 0
    document = json.loads(capsys.readouterr().out)  # the whole document reached stdout
    # the export format of today (v2, signed header: commit c766c79), not the unsigned v1
    assert document["format"] == JOURNAL_FORMAT == "huma-betang/journal-export/v2"
    assert document["header_cose_b64"] and document["items"] == []
    assert main(["audit", "export", "journal", "-o", "/dev/null"]) == 0
    assert JOURNAL_FORMAT not in capsys.readouterr().out  # the document went to the device, not to stdout
