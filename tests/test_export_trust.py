"""verify-export trusted the document it checked (issue 17).

Before: ``huma audit verify-export`` took every terminal key from the export itself, so
whoever could edit the file re-signed forged entries with a key of their own and a
self-made certificate; and the unsigned ``filters`` header switched gap detection off, so
adding ``"filters": {"card_id": ...}`` made deleted entries invisible. Now the header
(format, time, filters, terminal keys and certificates) is signed by the server key the
auditor pins, and every terminal certificate must chain to the pinned terminal CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cardlib.keys.signer import SoftwareSigner, derive_kid, spki_der
from cardlib.records.journal import GENESIS_HASH, EntryKind, JournalEntry, new_entry_id, sign_entry
from server.audit import exports
from server.errors import ExportDoesNotVerify
from tests.reconcile_support import AUDITOR_PASSWORD, audit_db  # noqa: F401 - audit_db is a fixture
from tests.test_audit import clone_world  # noqa: F401 - a fixture


@pytest.fixture
def exported(app, clone_world, world) -> dict[str, Any]:  # noqa: F811
    r = world.client.post("/api/v1/auth/login", json={"username": "audrey", "password": AUDITOR_PASSWORD})
    r = app.test_client().get("/audit/export/journal.json",
                              headers={"Authorization": f"Bearer {r.get_json()['token']}"})
    assert r.status_code == 200
    return json.loads(r.get_data(as_text=True))


@pytest.fixture
def anchors(app, ca_key_path, tmp_path) -> dict[str, Any]:
    """What the auditor pins, as files: the terminal CA certificate and the server key (PEM)."""
    from cardlib.keys.terminal_ca import TerminalCA
    from server.receipts import receipt_public_pem

    ca = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    (tmp_path / "terminal-ca.pem").write_bytes(TerminalCA.self_signed(SoftwareSigner(ca)).certificate_pem)  # type: ignore[arg-type]
    with app.app_context():
        (tmp_path / "server-key.pem").write_text(receipt_public_pem(app))
    return {"terminal_ca": tmp_path / "terminal-ca.pem", "server_key": tmp_path / "server-key.pem"}


def _verify(document: dict[str, Any], anchors: dict[str, Any], tmp_path) -> Any:
    """verify-export as an auditor runs it, with the pinned files."""
    from huma.cli import main

    path = tmp_path / "journal.json"
    path.write_text(json.dumps(document))
    return main(["audit", "verify-export", str(path), "--terminal-ca", str(anchors["terminal_ca"]),
                 "--server-key", str(anchors["server_key"])])


def _forge(document: dict[str, Any], terminal_id: str) -> dict[str, Any]:
    """Replace a terminal's entries by forged ones signed with a new key and a self-made certificate."""
    key = ed25519.Ed25519PrivateKey.generate()
    kid = derive_kid(key.public_key())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).sign(key, None))
    items = [i for i in document["items"] if i["terminal_id"] == terminal_id]
    forged, prev = [], GENESIS_HASH
    for item in items:
        entry = JournalEntry(entry_id=new_entry_id(), terminal_id=terminal_id, boot_id=1, seq=item["seq"],
                             kind=EntryKind.BOOT, wall_ms=1_740_816_000_000 + item["seq"] * 1000,
                             mono_ns=item["seq"] * 10**9, clock_synced=True, prev_entry_hash=prev)
        signed = sign_entry(entry, key, kid)
        prev = signed.entry_hash
        forged.append({**exports.signed_columns(signed), "received_at": item["received_at"]})
    others = [i for i in document["items"] if i["terminal_id"] != terminal_id]
    terminals = dict(document["terminals"])
    terminals[terminal_id] = {**terminals[terminal_id], "kid": kid.hex(),
                              "public_key_spki_b64": base64.b64encode(spki_der(key.public_key())).decode(),
                              "certificate_der_b64": base64.b64encode(
                                  cert.public_bytes(serialization.Encoding.DER)).decode()}
    return {**document, "terminals": terminals, "items": forged + others}


def test_the_untouched_export_verifies_against_the_pinned_anchors(exported, anchors, tmp_path) -> None:
    assert _verify(exported, anchors, tmp_path) == 0


def test_an_export_resigned_with_a_forged_terminal_key_is_refused(exported, anchors, tmp_path, capsys) -> None:
    tid = exported["items"][0]["terminal_id"]
    forged = _forge(exported, tid)
    # the forgery is self-consistent: every entry verifies under the key the document carries
    with pytest.raises(ExportDoesNotVerify):
        exports.verify_journal_export(forged, terminal_ca=anchors["terminal_ca"].read_bytes(),
                                      server_key=anchors["server_key"].read_bytes())
    assert _verify(forged, anchors, tmp_path) == 2
    assert "does not verify" in capsys.readouterr().err


def test_editing_the_filters_cannot_switch_gap_detection_off(exported, anchors, tmp_path, capsys) -> None:
    items = exported["items"]
    cut = {**exported, "items": [i for n, i in enumerate(items) if n != 1],  # a middle entry deleted
           "filters": {"card_id": items[0]["card_id"] or "C-0001"}}  # "it is a partial export, gaps are fine"
    assert _verify(cut, anchors, tmp_path) == 2
    assert "does not verify" in capsys.readouterr().err


def test_the_terminal_list_is_signed_too(exported, anchors, tmp_path) -> None:
    tid = exported["items"][0]["terminal_id"]
    edited = json.loads(json.dumps(exported))
    edited["terminals"][tid]["status"] = "approved" if edited["terminals"][tid]["status"] != "approved" else "revoked"
    assert _verify(edited, anchors, tmp_path) == 2
