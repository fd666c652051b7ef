"""``huma provision`` end to end: keystore + bundle files, a real pcscd reader, virtual cards."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.keys.terminal_ca import make_terminal_csr
from cardlib.provision.session import static_keys, verify_issuance_file
from cardlib.records.access import CardPasswordKeys, save_password_keys
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle, sign_bundle
from huma.cli import main
from tests.provision_support import OriginalityIssuer

ROOT_PW = "root passphrase 0123"
KEY_PW = "station passphrase 4567"
PROFILE = '''valid_days = 730
cycle = 20261
[programmes.1]
unit = "package"
per_cycle = 1
[programmes.2]
unit = "rupiah"
per_cycle = 250000
'''


@pytest.fixture()
def office(tmp_path: Path) -> dict[str, object]:
    store = KeyStore.init(tmp_path / "keys", ROOT_PW.encode())
    root = store.root_signer(ROOT_PW.encode())
    issuer = store.issue(Role.ISSUER, root, passphrase=KEY_PW.encode())
    tech = store.issue(Role.TECHNICIAN, root, passphrase=KEY_PW.encode(), name="tech-07")
    bundle_key = store.issue(Role.BUNDLE, root, passphrase=KEY_PW.encode())
    station_key, _ = make_terminal_csr("KT-6271-STATION")
    save_private_key(tmp_path / "station.key", station_key, KEY_PW.encode())
    station = SoftwareSigner(station_key)
    now = int(time.time())
    bundle = TrustBundle(
        version=1, issued_at=now - 60, expires_at=now + 86400,
        keys=(BundleKey(issuer.kid, KeyRole.ISSUER, issuer.alg, issuer.public_key),
              BundleKey(station.kid, KeyRole.TERMINAL, station.alg, station.public_key)),
    )
    (tmp_path / "bundle.cbor").write_bytes(
        sign_bundle(bundle, store.signer(bundle_key.kid, KEY_PW.encode()), store.endorsement(bundle_key.kid)))
    (tmp_path / "profile.toml").write_text(PROFILE)
    (tmp_path / "pwd.secret").write_bytes(b"district-office-secret-0123456789\n")
    (tmp_path / "pw.txt").write_text(KEY_PW + "\n")
    # the provincial card-password key file, keeping the office secret as the format-1 version
    save_password_keys(tmp_path / "card-keys.json",
                       CardPasswordKeys.create((tmp_path / "pwd.secret").read_bytes().strip()), KEY_PW.encode())
    return {"store": store, "tech": tech, "fab": OriginalityIssuer()}


def _args(tmp_path: Path, office: dict[str, object], reader: str) -> list[str]:
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    return ["--keys", str(tmp_path / "keys"), "--technician", "tech-07", "--station-key", str(tmp_path / "station.key"),
            "--bundle", str(tmp_path / "bundle.cbor"), "--profile", str(tmp_path / "profile.toml"),
            "--pwd-secret-file", str(tmp_path / "pwd.secret"), "--passphrase-file", str(tmp_path / "pw.txt"),
            "--card-keys", str(tmp_path / "card-keys.json"), "--card-keys-passphrase-file", str(tmp_path / "pw.txt"),
            "--reader", reader, "--timeout", "20", "--originality-key", fab.public_key.hex()]


def test_bad_csv_lists_every_row_and_exits_2(tmp_path: Path, office: dict[str, object], reader_name,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "households.csv"
    bad.write_text("household_ref,region\n,62.71\n9f3c2a1b00000002,64.01\n")
    code = main(["provision", "batch", str(bad), *_args(tmp_path, office, reader_name(0))])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 2: household_ref: missing household reference" in err
    assert "line 3: region: not a Kalimantan Tengah region code" in err


@pytest.mark.pcsc
def test_batch_command_with_two_cards(tmp_path: Path, office: dict[str, object], present_card, reader_name) -> None:
    households = tmp_path / "households.csv"
    households.write_text("household_ref,region,programmes\n9f3c2a1b00000001,62.71,\n9f3c2a1b00000002,62.05,2\n")
    results = tmp_path / "households.provision" / "results.csv"
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(
        main(["provision", "batch", str(households), *_args(tmp_path, office, reader_name(0))])))
    runner.start()
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chips = [fab.genuine(), fab.genuine()]
    for n, chip in enumerate(chips, start=1):
        with present_card(chip):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if results.exists() and len(results.read_text().splitlines()) > n:
                    break
                time.sleep(0.05)
    runner.join(timeout=60)
    assert codes == [0]
    with open(results, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["status"], r["uid"]) for r in rows] == [
        ("2", "issued", chips[0].uid.hex().upper()), ("3", "issued", chips[1].uid.hex().upper())]
    # format 2 by default: page 10 names the key file's current version (2; version 1 is the format-1 secret)
    assert [chip.page(10) for chip in chips] == [b"HB\x02\x02"] * 2
    store = office["store"]
    assert isinstance(store, KeyStore)
    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "households.provision" / "issuances.cose").read_bytes(),
                             static_keys(cose_key(tech.public_key)))
    assert [i.card_id.hex() for i in f.issuances] == [r["card_id"] for r in rows]


@pytest.mark.pcsc
def test_card_command_issues_and_reissues(tmp_path: Path, office: dict[str, object], present_card, reader_name,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    args = _args(tmp_path, office, reader_name(0)) + ["--state-dir", str(tmp_path / "single")]
    with present_card(fab.genuine()):
        assert main(["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71", *args]) == 0
    captured = capsys.readouterr()
    first = captured.out.strip()
    # a single card has no households-file line to name
    assert f"issued card {first}" in captured.err and "line " not in captured.err
    # the balance comes from the server's signed statement (issue 18); --remaining only lowers it
    from tests.test_reissue import server_statement

    statement, key = server_statement(tmp_path, "9f3c2a1b000000aa", first, {1: 0, 2: 100000})
    with present_card(fab.genuine()):
        assert main(["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71",
                     "--reissue-of", first, "--balance-statement", str(statement), "--server-key", str(key),
                     "--remaining", "2=50000", *args]) == 0
    second = capsys.readouterr().out.strip()
    assert len(first) == len(second) == 16 and first != second
    store = office["store"]
    assert isinstance(store, KeyStore)
    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "single" / "issuances.cose").read_bytes(), static_keys(cose_key(tech.public_key)))
    assert [i.card_id.hex() for i in f.issuances] == [first, second]
    assert f.deny_list_additions() == [bytes.fromhex(first)]
    # a counterfeit chip: exit 2, nothing issued
    from simulator.chip import ChipVariant, Ntag21x

    with present_card(Ntag21x.blank(ChipVariant.NTAG215)):
        assert main(["provision", "card", "--household-ref", "9f3c2a1b000000bb", "--region", "62.71", *args]) == 2
    assert "originality" in capsys.readouterr().err
