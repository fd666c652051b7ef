"""Office PIN resets reach the server: ``huma server cards upload-pin-resets`` and the auditor's card page.

The station's own journal code (:class:`cardlib.provision.state.BatchState`) writes
``pin-resets.cose`` (each reset signed by the technician key) as ``huma provision pin-reset`` does;
the console command verifies it against the bundle's technician keys, stores each reset once with
its signer's kid, refuses a malformed file whole, and the auditor's card page shows who reset the PIN, who
approved it, when and the PIN epoch, with the checks that need no reconciliation: a PIN epoch
that went back (an older PIN record put back with the card password) and a self-approved reset.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cardlib.provision.session import sign_pin_reset_record
from cardlib.provision.state import BatchState
from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db  # noqa: F401 - audit_db: fixture
from tests.test_registry_reconcile import Keys, keys, registry  # noqa: F401 - keys, registry: fixtures

CARD = bytes.fromhex("ca31000000000000")
OTHER = bytes.fromhex("ca32000000000000")
UID, HOUSEHOLD = bytes.fromhex("045a3101020304"), bytes.fromhex("9f3c2a1b00000031")


def _stored(app: Any) -> int:
    from server.extensions import db
    from server.pin_resets import PinReset

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(PinReset)) or 0)


def test_a_stations_pin_resets_are_uploaded_once_and_shown_on_the_card_page(
        app: Any, audit_db: str, registry: Any, keys: Keys, tmp_path: Path, monkeypatch: Any,  # noqa: F811
        capsys: Any) -> None:
    from huma.cli import main
    from server.auth import create_person
    from server.extensions import db
    from server.models import PersonRole
    from tests.audit_login import form_login

    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_TRUST_ROOT_CERT", app.config["TRUST_ROOT_CERT"])
    with app.app_context():
        create_person(db.write_session(), "tech-07", "technician password 1", PersonRole.TECHNICIAN)
        db.session.commit()
    kid, tech = keys.technician.kid, keys.technician
    station = BatchState(tmp_path / "single-cards", "single-cards")
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", kid, "ntag", 3, True, pin_epoch=1, epoch_before=0,
                      approved_by="kepala-kantor", signer=tech)
    # Later: the card carries epoch 0 again (someone with the card password put the old PIN record back).
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", kid, "ntag", 5, True, pin_epoch=2, epoch_before=0, signer=tech)
    station.pin_reset(OTHER, UID, HOUSEHOLD, "tech-07", kid, "secure", 0, True, approved_by="kepala-kantor",
                      signer=tech)
    signed = tmp_path / "single-cards" / "pin-resets.cose"

    assert main(["server", "cards", "upload-pin-resets", str(signed), "--technician", "tech-07"]) == 0
    out = capsys.readouterr().out
    assert "3 PIN reset(s) stored, 0 already known" in out
    flagged = [line for line in out.splitlines() if line.startswith("card ")]
    assert len(flagged) == 1 and CARD.hex() in flagged[0] and "PIN epoch below" in flagged[0] and \
        "approved by the technician" in flagged[0]
    assert main(["server", "cards", "upload-pin-resets", str(signed), "--technician", "tech-07"]) == 0
    assert "0 PIN reset(s) stored, 3 already known" in capsys.readouterr().out  # the file again: nothing new
    assert _stored(app) == 3

    bad = tmp_path / "bad.cose"
    ev = station.pin_reset(OTHER, UID, HOUSEHOLD, "tech-07", kid, "secure", 1, True, signer=tech)
    bad.write_bytes(signed.read_bytes() + sign_pin_reset_record(tech, {**ev, "card_id": "not hex"}))
    assert main(["server", "cards", "upload-pin-resets", str(bad), "--technician", "tech-07"]) != 0
    assert "record 5: card_id must be 16 lower-case hex digits" in capsys.readouterr().err  # signed, yet not a reset
    assert _stored(app) == 3  # all or nothing
    assert main(["server", "cards", "upload-pin-resets", str(signed), "--technician", "nobody"]) != 0

    add_auditor(app)
    client = registry.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    r = client.get(f"/audit/cards/{CARD.hex()}?lang=en")
    assert r.status_code == 200  # a card known only from its PIN resets has a page
    html = r.get_data(as_text=True)
    rows = re.findall(r'<tr class="pin-reset" data-flags="([^"]*)">(.*?)</tr>', html, re.S)
    assert [flags for flags, _ in rows] == ["", "epoch_back self_approved"]
    first, second = rows[0][1], rows[1][1]
    assert "tech-07" in first and kid.hex() in first and "kepala-kantor" in first and "0 → 1" in first
    assert "new PIN" in first and ">3<" in first
    assert "0 → 2" in second and "older PIN epoch" in second and "approved by the technician" in second
    html = client.get(f"/audit/cards/{OTHER.hex()}?lang=id").get_data(as_text=True)
    assert "Reset PIN" in html and "secure" in html and "kepala-kantor" in html  # Bahasa Indonesia
