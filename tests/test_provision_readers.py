"""``huma provision`` on every reader stack and card profile: an NTAG through nfcpy's UDP link
(``--reader nfcpy:udp:…``) and a batch of `secure` cards through real pcscd + vpcd."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from cardlib.keys.keystore import KeyStore
from cardlib.keys.signer import cose_key
from cardlib.provision.session import static_keys, verify_issuance_file
from cardlib.records.access import load_password_keys
from cardlib.records.bundle import verify_bundle
from cardlib.records.secure import NO_UID, verify_secure_identity
from cardlib.secure import LifeCycle, SecureCardSession, terminal_card_key
from huma.cli import cli, main
from simulator.nfc_udp import NfcUdpPeer
from simulator.secure_card import SecureCard, SecureCardConnection
from tests.provision_support import OriginalityIssuer
from tests.secure_tap_support import PIN, PIN_RESET_KEY, SecureSlot
from tests.test_provision_cli import _args, office  # noqa: F401 - office is a fixture


def test_card_command_provisions_an_ntag_through_nfcpys_udp_link(tmp_path: Path,
                                                                  office: dict[str, object]) -> None:  # noqa: F811
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chip = fab.genuine()
    with NfcUdpPeer(chip, persist=False) as peer:
        args = [*_args(tmp_path, office, f"nfcpy:{peer.path}"), "--state-dir", str(tmp_path / "single")]
        result = CliRunner().invoke(cli, ["provision", "card", "--household-ref", "9f3c2a1b000000dd",
                                          "--region", "62.71", *args])
    assert result.exit_code == 0, result.output
    card_id = bytes.fromhex(result.stdout.strip().splitlines()[-1])
    store = office["store"]
    assert isinstance(store, KeyStore)
    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "single" / "issuances.cose").read_bytes(),
                             static_keys(cose_key(tech.public_key)))
    (issued,) = f.issuances
    assert issued.card_id == card_id and issued.uid == chip.uid


def test_a_missing_nfcpy_reader_is_refused_before_anything_is_journalled(
        tmp_path: Path, office: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    args = [*_args(tmp_path, office, "nfcpy:tty:HUMA_NO_SUCH_PORT:pn532"), "--state-dir", str(tmp_path / "single")]
    code = main(["provision", "card", "--household-ref", "9f3c2a1b000000dd", "--region", "62.71", *args])
    assert code != 0 and "HUMA_NO_SUCH_PORT" in capsys.readouterr().err
    assert not (tmp_path / "single" / "issuances.cose").exists()


@pytest.mark.pcsc
def test_batch_command_issues_two_secure_cards(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                               pcscd_service: Any, reader_name: Any) -> None:
    pem = tmp_path / "pin-reset.pem"
    pem.write_bytes(PIN_RESET_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    households = tmp_path / "households.csv"
    households.write_text("household_ref,region,programmes\n9f3c2a1b00000001,62.71,\n9f3c2a1b00000002,62.05,2\n")
    results = tmp_path / "households.provision" / "results.csv"
    out: list[Result] = []
    runner = threading.Thread(target=lambda: out.append(CliRunner().invoke(
        cli, ["provision", "batch", str(households), "--card-profile", "secure", "--pin-reset-key", str(pem),
              *_args(tmp_path, office, reader_name(0))], input=f"{PIN}\n{PIN}\n" * 2)))
    runner.start()
    cards = [SecureCard(tmp_path / f"c{n}.secure.json") for n in (1, 2)]
    slot = SecureSlot(pcscd_service, 0)
    for n, card in enumerate(cards, start=1):
        with slot.present(card, connect=False):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if results.exists() and len(results.read_text().splitlines()) > n:
                    break
                time.sleep(0.05)
    runner.join(timeout=60)
    assert len(out) == 1 and out[0].exit_code == 0, out[0].output if out else "batch still running"
    with open(results, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["status"]) for r in rows] == [("2", "issued"), ("3", "issued")]
    store = office["store"]
    assert isinstance(store, KeyStore)
    bundle = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)
    ring = load_password_keys(tmp_path / "card-keys.json", (tmp_path / "pw.txt").read_text().splitlines()[0].encode())
    for card, row in zip(cards, rows, strict=True):
        session = SecureCardSession(SecureCardConnection(SecureCard.load(card.path or "")))
        assert session.select().life_cycle is LifeCycle.OPERATIONAL
        identity = verify_secure_identity(session.read_identity(), bundle, int(time.time()))
        assert identity.claims.card_id.hex() == row["card_id"] and identity.claims.uid == NO_UID
        assert identity.claims.card_public_key is not None
        session.verify_card(identity.claims.card_public_key, identity.claims.card_id, select=False)
        # a counter holding the key ring's current version proves itself and verifies the PIN (docs/secure-card.md §5.5)
        session.external_authenticate(terminal_card_key(ring.keys[ring.current], identity.claims.card_id),
                                      identity.claims.card_id, pin=PIN)
    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "households.provision" / "issuances.cose").read_bytes(),
                             static_keys(cose_key(tech.public_key)))
    assert [i.card_id.hex() for i in f.issuances] == [r["card_id"] for r in rows]
