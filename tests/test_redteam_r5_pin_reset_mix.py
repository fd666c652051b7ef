"""Red team r5: an unsigned copy of a station's reset, edited, next to the signed one.

Since a8ec3be the server takes a station's resets as it signed them, and an old station's unsigned
``pin-resets.jsonl`` only with ``--unsigned-legacy``. Whoever carries the files (a clerk, the
technician) uploads the signed file, then the station's ``pin-resets.jsonl`` with the reset edited
(another approver, another PIN epoch) as "legacy": it was stored as a second reset of the card,
marked only ``unsigned``. A station session whose resets are signed has no legacy resets: an
unsigned reset of a session the server holds signed resets of is now refused (PinResetFileError,
nothing of the file stored).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_pin_resets_upload import CARD, HOUSEHOLD, UID
from tests.test_redteam_r4_pin_reset_forgery import _Keys, _rows, _station, _upload, keys, office  # noqa: F401
from tests.test_registry_reconcile import registry  # noqa: F401 - fixture


def test_an_edited_legacy_copy_of_a_signed_sessions_reset_is_refused(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, approved_by="tech-07", signer=keys.technician)  # self-approved
    signed = tmp_path / "single-cards" / "pin-resets.cose"
    assert _upload(signed) == 0
    jsonl = tmp_path / "single-cards" / "pin-resets.jsonl"
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    lines[0].update(approved_by="kepala-kantor")  # the clerk's edit: someone else approved it
    jsonl.write_text("".join(json.dumps(ev, sort_keys=True) + "\n" for ev in lines))
    capsys.readouterr()
    assert _upload(jsonl, "--unsigned-legacy") != 0
    assert "signed" in capsys.readouterr().err
    assert [r[:3] for r in _rows(app)] == [("tech-07", "tech-07", keys.technician.kid.hex())]


def test_the_unchanged_legacy_copy_of_a_signed_reset_is_still_known(
        app: Any, office: Any, keys: _Keys, tmp_path: Path) -> None:  # noqa: F811
    """The same reset as the station journalled it: already stored (signed), nothing refused."""
    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, approved_by="kepala-kantor", signer=keys.technician)
    assert _upload(tmp_path / "single-cards" / "pin-resets.cose") == 0
    assert _upload(tmp_path / "single-cards" / "pin-resets.jsonl", "--unsigned-legacy") == 0
    assert len(_rows(app)) == 1 and _rows(app)[0][2] == keys.technician.kid.hex()


def test_resets_signed_by_a_revoked_technician_key_are_refused(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """The key of a stolen station, revoked in a newer bundle: its records are refused, the whole file."""
    import base64
    import time

    from cardlib.keys.keystore import Role as KeystoreRole
    from cardlib.records.bundle import TrustBundle, keystore_bundle_keys, sign_bundle
    from tests.test_registry_reconcile import KEY_PW, PROGRAMMES, ROOT_PW

    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, approved_by="kepala-kantor", signer=keys.technician)
    keys.store.revoke(keys.technician.kid, keys.store.root_signer(ROOT_PW))
    now = int(time.time())
    kid = keys.store.active(KeystoreRole.BUNDLE).kid
    blob = sign_bundle(TrustBundle(version=2, issued_at=now - 30, expires_at=now + 86400,
                                   keys=keystore_bundle_keys(keys.store.entries), programmes=PROGRAMMES),
                       keys.store.signer(kid, KEY_PW), keys.store.endorsement(kid))
    r = office.client.post("/api/v1/bundles", headers=office.auth(), json={
        "version": 2, "expires_at": "2099-01-01T00:00:00+00:00", "blob": base64.b64encode(blob).decode()})
    assert r.status_code == 201, r.get_json()
    capsys.readouterr()
    assert _upload(tmp_path / "single-cards" / "pin-resets.cose") != 0
    assert "record 1: does not verify" in capsys.readouterr().err
    assert _rows(app) == []
