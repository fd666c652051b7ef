"""Red team r4: a forged or edited office PIN reset reaches the auditor's card page.

``pin-resets.jsonl`` is plain JSON lines: whoever carries the file from the station to the
server (the technician, an office clerk) can blame another technician, hide a self-approved
reset (``approved_by``) or change the PIN epoch, and the server stored it as the station's
word. Each reset is now signed at the station with the technician key that signs
``issuances.cose`` (``pin-resets.cose``, a CBOR sequence of COSE_Sign1) and the server checks it
against the technician keys of the trust bundle, refusing the whole file on one bad record.
An unsigned ``pin-resets.jsonl`` (stations before this change) is refused unless the uploader says
``--unsigned-legacy``; its resets are then marked ``unsigned`` on the card page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest

from cardlib.keys.keystore import Role as KeystoreRole
from cardlib.keys.signer import sign1_with
from cardlib.provision.state import BatchState
from huma.cli import main
from server.auth import create_person
from server.extensions import db
from server.models import PersonRole
from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db  # noqa: F401 - audit_db: fixture
from tests.test_pin_resets_upload import CARD, HOUSEHOLD, UID, _stored
from tests.test_registry_reconcile import KEY_PW, ROOT_PW, Keys, registry  # noqa: F401 - registry: a fixture


class _Keys(Keys):
    """The district's keys (tests/test_registry_reconcile.py) with a second technician, tech-09, in the bundle."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.store.issue(KeystoreRole.TECHNICIAN, self.store.root_signer(ROOT_PW), passphrase=KEY_PW, name="tech-09")
        self.tech09 = self.store.signer(self.store.active(KeystoreRole.TECHNICIAN, "tech-09").kid, KEY_PW)


@pytest.fixture
def keys(tmp_path: Path) -> _Keys:
    return _Keys(tmp_path / "ks")


def _station(tmp_path: Path) -> BatchState:
    return BatchState(tmp_path / "single-cards", "single-cards")


def _upload(path: Path, *extra: str) -> int:
    return main(["server", "cards", "upload-pin-resets", str(path), "--technician", "tech-07", *extra])


@pytest.fixture
def office(app: Any, registry: Any, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811 - the fixture
    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_TRUST_ROOT_CERT", app.config["TRUST_ROOT_CERT"])
    with app.app_context():
        create_person(db.write_session(), "tech-07", "technician password 1", PersonRole.TECHNICIAN)
        db.session.commit()
    return registry


def _forge_jsonl(path: Path) -> None:
    """The clerk's edit: another technician did it, someone else approved it, the epoch moved."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0].update(technician="tech-09", approved_by="kepala-kantor", pin_epoch=9)
    path.write_text("".join(json.dumps(ev, sort_keys=True) + "\n" for ev in lines))


def test_an_edited_pin_resets_jsonl_is_not_stored_as_the_stations_word(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0)  # self-approved
    jsonl = tmp_path / "single-cards" / "pin-resets.jsonl"
    _forge_jsonl(jsonl)
    assert _upload(jsonl) != 0  # unsigned: refused, whatever it says
    assert _stored(app) == 0
    assert "--unsigned-legacy" in capsys.readouterr().err


def _rows(app: Any) -> list[tuple[str, str, str | None, int | None]]:
    from server.pin_resets import PinReset

    with app.app_context():
        return [(r.technician, r.approved_by, r.signer_kid, r.pin_epoch)
                for r in db.session.query(PinReset).order_by(PinReset.id)]


def _split(data: bytes) -> list[bytes]:
    """The COSE_Sign1 records of a pin-resets.cose as their bytes."""
    from cardlib.provision.session import split_cbor_sequence

    return split_cbor_sequence(data)


def test_unsigned_legacy_resets_are_taken_only_when_asked_and_stay_marked_unsigned(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.audit_login import form_login

    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, approved_by="kepala-kantor")
    jsonl = tmp_path / "single-cards" / "pin-resets.jsonl"
    assert _upload(jsonl, "--unsigned-legacy") == 0
    assert "1 PIN reset(s) stored, 0 already known; unsigned (--unsigned-legacy)" in capsys.readouterr().out
    assert _rows(app) == [("tech-07", "kepala-kantor", None, 1)]
    add_auditor(app)
    assert form_login(office.client, "audrey", AUDITOR_PASSWORD).status_code == 302
    html = office.client.get(f"/audit/cards/{CARD.hex()}?lang=en").get_data(as_text=True)
    assert re.findall(r'<tr class="pin-reset" data-flags="([^"]*)">', html) == ["unsigned"]
    assert "not signed at the station" in html


def test_a_signed_reset_is_stored_with_its_signer_and_a_legacy_copy_of_it_becomes_signed(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, approved_by="kepala-kantor", signer=keys.technician)
    jsonl, cose = tmp_path / "single-cards" / "pin-resets.jsonl", tmp_path / "single-cards" / "pin-resets.cose"
    assert _upload(jsonl, "--unsigned-legacy") == 0  # first handed in as the readable file
    capsys.readouterr()
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 0, True, pin_epoch=2,
                      epoch_before=1, approved_by="kepala-kantor", signer=keys.technician)
    assert _upload(cose) == 0
    assert "1 PIN reset(s) stored, 1 already known (1 of them now signed)" in capsys.readouterr().out
    kid = keys.technician.kid.hex()
    assert _rows(app) == [("tech-07", "kepala-kantor", kid, 1), ("tech-07", "kepala-kantor", kid, 2)]
    assert _upload(cose) == 0  # idempotent
    assert "0 PIN reset(s) stored, 2 already known" in capsys.readouterr().out
    assert len(_rows(app)) == 2


def _tamper(path: Path, index: int, **changes: Any) -> bytes:
    """Record ``index`` of a pin-resets.cose with its payload edited and its signature kept."""
    records = _split(path.read_bytes())
    tag = cbor2.loads(records[index])
    event = cbor2.loads(tag.value[2])
    event.update(changes)
    tag.value[2] = cbor2.dumps(event, canonical=True)
    records[index] = cbor2.dumps(tag)
    return b"".join(records)


@pytest.mark.parametrize("changes", [{"technician": "tech-09"}, {"approved_by": "kepala-kantor"}, {"pin_epoch": 9}])
def test_an_edited_signed_record_refuses_the_whole_file(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        changes: dict[str, Any]) -> None:
    station = _station(tmp_path)
    for epoch in (1, 2):  # the second one self-approved
        station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=epoch,
                          epoch_before=epoch - 1, signer=keys.technician)
    forged = tmp_path / "forged.cose"
    forged.write_bytes(_tamper(tmp_path / "single-cards" / "pin-resets.cose", 1, **changes))
    assert _upload(forged) != 0
    assert "record 2: does not verify" in capsys.readouterr().err
    assert _stored(app) == 0  # not even the honest first record


def test_a_record_resigned_by_another_technician_or_an_unknown_key_is_refused(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from cardlib.keys.signer import SoftwareSigner
    from cardlib.provision.errors import SessionError
    from cardlib.provision.session import PIN_RESET_AAD, sign_pin_reset_record

    station = _station(tmp_path)
    ev = station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                           epoch_before=0, approved_by="kepala-kantor", signer=keys.technician)
    cose = tmp_path / "single-cards" / "pin-resets.cose"
    honest = cose.read_bytes()
    # tech-09 (a trusted technician key) blames tech-07: the record names tech-07's key, signed by tech-09's
    blamed = tmp_path / "blamed.cose"
    resigned = sign1_with(keys.tech09, cbor2.dumps({**ev, "pin_epoch": 2}, canonical=True), PIN_RESET_AAD)
    blamed.write_bytes(honest + resigned)
    assert _upload(blamed) != 0
    assert f"record 2: names technician key '{keys.technician.kid.hex()}'" in capsys.readouterr().err
    # and the station refuses to sign one for another key in the first place
    with pytest.raises(SessionError, match="cannot be signed"):
        sign_pin_reset_record(keys.tech09, ev)
    # a key outside the bundle, naming itself
    stranger = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    own = {**ev, "technician_kid": stranger.kid.hex()}
    alien = tmp_path / "alien.cose"
    alien.write_bytes(honest + sign_pin_reset_record(stranger, own))
    assert _upload(alien) != 0
    assert "record 2: does not verify" in capsys.readouterr().err
    assert _stored(app) == 0
    assert _upload(cose) == 0 and _rows(app) == [("tech-07", "kepala-kantor", keys.technician.kid.hex(), 1)]


def test_a_reset_cut_off_by_a_crash_is_dropped_at_the_station_before_the_next_one(
        app: Any, office: Any, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    station = _station(tmp_path)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 3, True, pin_epoch=1,
                      epoch_before=0, signer=keys.technician)
    cose = tmp_path / "single-cards" / "pin-resets.cose"
    whole = cose.read_bytes()
    cose.write_bytes(whole + whole[:40])  # the next append torn by a power cut
    assert _upload(cose) != 0
    assert "record 2" in capsys.readouterr().err and _stored(app) == 0
    station = _station(tmp_path)  # the next command run
    assert cose.read_bytes() == whole
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", keys.technician.kid, "ntag", 0, True, pin_epoch=2,
                      epoch_before=1, signer=keys.technician)
    assert len(_split(cose.read_bytes())) == 2
    assert _upload(cose) == 0 and _stored(app) == 2
