"""Enrolling a provisioning station, as docs/keys-and-provisioning.md §Enrolling a provisioning station says.

The station's key is a terminal key: `huma terminal init` + `huma terminal enrol --code` with a
station profile (terminal id ``S-…``) send its CSR, an admin approves it, the next bundle
`huma server bundle publish` signs lists it, and `huma provision card` issues with that key and
bundle. A bundle published before the approval does not list the key: the station refuses it
before the chip (tests/test_provision_station_key.py).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import load_signer
from cardlib.records.access import CardPasswordKeys, save_password_keys
from cardlib.records.bundle import KeyRole, Programme, verify_bundle
from huma.cli import main
from tests.provision_support import OriginalityIssuer
from tests.test_provision_cli import PROFILE as PROVISION_PROFILE

ROOT_PW = b"root passphrase 2026"
KEY_PW = b"station passphrase 4567"  # one passphrase for the station's non-root keys (--passphrase-file)
STATION_ID = "S-6271-0001"


DOC = Path(__file__).resolve().parent.parent / "docs" / "keys-and-provisioning.md"


def _doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n### ", start + 1)
    return text[start:end if end != -1 else None]


def _station_profile(server_url: str) -> str:
    """The station profile the docs show, with this test's server."""
    (toml,) = re.findall(r"```toml\n(.*?)```", _doc_section("Enrolling a provisioning station"), re.S)
    toml = textwrap.dedent(toml)
    assert 'terminal_id = "S-6271-0001"' in toml
    return re.sub(r'server_url = ".*"', f'server_url = "{server_url}"', toml)


def test_the_documented_households_csv_gives_each_household_its_own_label() -> None:
    """The label is HB- + the first 8 hex digits: the example's refs must differ there."""
    from cardlib.provision.households import parse_households
    from cardlib.records.household_label import household_label

    text = DOC.read_text()
    start = text.index("    household_ref,region,programmes\n")
    block = textwrap.dedent(text[start:text.index("\n\n", start)])
    rows = parse_households(block, [1, 2])
    labels = [household_label(h.household_ref) for h in rows]
    assert len(rows) == 2 and len(set(labels)) == 2
    assert all(label in text for label in labels)


def _publish(app: Any, store: KeyStore) -> bytes:
    """`huma server bundle publish`'s use case; returns what `huma server bundle export` writes."""
    from server.bundles import publish_next_bundle
    from server.extensions import db

    with app.app_context():
        session = db.write_session()
        row = publish_next_bundle(session, store, KEY_PW, programmes=[Programme(1, "food", "package", 1),
                                                                      Programme(2, "cash", "rupiah", 250000)]).row
        session.commit()
        return bytes(row.blob)


@pytest.mark.pcsc
def test_a_station_enrolled_with_terminal_init_and_enrol_issues_cards(
        tmp_path: Path, world: Any, live_server: Any, app: Any, present_card, reader_name,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = KeyStore.init(tmp_path / "keys", ROOT_PW)
    root = store.root_signer(ROOT_PW)
    store.issue(Role.ISSUER, root, passphrase=KEY_PW)
    store.issue(Role.TECHNICIAN, root, passphrase=KEY_PW, name="tech-07")
    store.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    ca = store.issue(Role.TERMINAL_CA, root, passphrase=KEY_PW)
    app.config.update(TERMINAL_CA_KEY=str(tmp_path / "keys" / "keys" / ca.location),
                      TERMINAL_CA_KEY_PASSWORD=KEY_PW.decode(), TERMINAL_CA_CERT=None)
    before_approval = _publish(app, store)

    station = tmp_path / "station"
    station.mkdir()
    (station / "pw.txt").write_bytes(KEY_PW + b"\n")
    profile = station / "station.toml"
    profile.write_text(_station_profile(f"http://{live_server.host}:{live_server.port}"))
    assert main(["keys", "export-root", "--dir", str(tmp_path / "keys"), str(station / "trust-root.pem")]) == 0
    # 1. key + CSR, 2. the CSR with the admin's code (pending), 3. approval, 4. the certificate
    assert main(["terminal", "init", "--profile", str(profile), "--passphrase-file", str(station / "pw.txt")]) == 0
    assert (station / "station.csr.pem").is_file()
    with pytest.raises(SystemExit) as pending:  # exit status 3: waiting for approval
        main(["terminal", "enrol", "--profile", str(profile), "--code", world.enrolment_code(STATION_ID)])
    assert pending.value.code == 3
    world.approve(STATION_ID)
    assert main(["terminal", "enrol", "--profile", str(profile)]) == 0
    assert (station / "station.cert.pem").is_file()
    # 5. the next bundle lists the station key as a terminal key
    blob = _publish(app, store)
    signer = load_signer(station / "station.p8", KEY_PW)
    bundle = verify_bundle(blob, store.entry(store.root_kid).public_key)
    assert bundle.key(signer.kid).role is KeyRole.TERMINAL
    (station / "bundle.cose").write_bytes(blob)
    (station / "bundle-before-approval.cose").write_bytes(before_approval)

    (station / "profile.toml").write_text(PROVISION_PROFILE)
    save_password_keys(station / "card-keys.json", CardPasswordKeys.create(), KEY_PW)
    fab = OriginalityIssuer()
    args = ["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71",
            "--keys", str(tmp_path / "keys"), "--technician", "tech-07", "--station-key", str(station / "station.p8"),
            "--profile", str(station / "profile.toml"), "--passphrase-file", str(station / "pw.txt"),
            "--card-keys", str(station / "card-keys.json"), "--card-keys-passphrase-file", str(station / "pw.txt"),
            "--reader", reader_name(0), "--timeout", "20", "--originality-key", fab.public_key.hex(),
            "--state-dir", str(station / "single")]
    chip = fab.genuine()
    blank = chip.memory
    with present_card(chip):
        assert main([*args, "--bundle", str(station / "bundle-before-approval.cose")]) == 2
    assert f"station key {signer.kid.hex()} is not a terminal key" in capsys.readouterr().err
    assert chip.memory == blank
    with present_card(chip):
        assert main([*args, "--bundle", str(station / "bundle.cose")]) == 0
    card_id = capsys.readouterr().out.strip()
    assert len(card_id) == 16 and chip.memory != blank
