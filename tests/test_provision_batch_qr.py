"""``huma provision batch --qr-dir``: every card a batch makes gets its household QR for the card body
(docs/fallback.md §Step 1), the same QR ``provision card --qr-out`` writes, read back by zxing-cpp."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from cardlib.keys.keystore import KeyStore, Role
from cardlib.provision.qr import household_qr, qr_file_name
from cardlib.records.access import load_password_keys
from cardlib.records.bundle import verify_bundle
from cardlib.records.household_qr import verify_household_qr
from cardlib.records.session import CardSession
from huma.cli import main
from tests.provision_support import OriginalityIssuer, tag_on_reader
from tests.test_checkpoint_server import decode_qr
from tests.test_provision_cli import KEY_PW, _args, office  # noqa: F401 - office: fixture

HOUSEHOLDS = "household_ref,region,programmes\n9f3c2a1b00000001,62.71,\n5c07e4d100000002,62.05,2\n"


@pytest.mark.pcsc
def test_batch_writes_each_cards_qr_as_provision_card_would(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                            present_card, reader_name) -> None:
    households = tmp_path / "households.csv"
    households.write_text(HOUSEHOLDS)
    qr_dir = tmp_path / "print" / "qr"  # made by the command, parents too
    results = tmp_path / "households.provision" / "results.csv"
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(main(
        ["provision", "batch", str(households), "--qr-dir", str(qr_dir), *_args(tmp_path, office, reader_name(0))])))
    runner.start()
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chips = [fab.genuine(), fab.genuine()]
    for n, chip in enumerate(chips, start=1):
        with present_card(chip):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (results.exists() and len(results.read_text().splitlines()) > n):
                time.sleep(0.05)
    runner.join(timeout=60)
    assert codes == [0]
    with open(results, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["issued", "issued"]

    store = office["store"]
    assert isinstance(store, KeyStore)
    bundle = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)
    issuer = store.signer(store.active(Role.ISSUER).kid, KEY_PW.encode())
    card_keys = load_password_keys(tmp_path / "card-keys.json", KEY_PW.encode())
    pngs = sorted(qr_dir.glob("*.png"))
    assert [p.name for p in pngs] == sorted(
        qr_file_name(bytes.fromhex(r["household_ref"]), bytes.fromhex(r["card_id"])) for r in rows)
    assert pngs[0].name.startswith("HB-5C07E4D1-") and pngs[1].name.startswith("HB-9F3C2A1B-")
    regions = {"9f3c2a1b00000001": "62.71", "5c07e4d100000002": "62.05"}
    for row, chip in zip(rows, chips, strict=True):
        png = qr_dir / qr_file_name(bytes.fromhex(row["household_ref"]), bytes.fromhex(row["card_id"]))
        texts = decode_qr(png.read_bytes())  # zxing-cpp, as a phone or a USB scanner reads the printed body
        assert texts == [png.with_suffix(".txt").read_text().strip()]
        qr = verify_household_qr(texts[0], bundle, int(time.time()))
        assert (qr.card_id.hex(), qr.household_ref.hex(), qr.region) == (
            row["card_id"], row["household_ref"], regions[row["household_ref"]])
        # `provision card --qr-out` makes household_qr(the identity record read back, issuer key, now): the
        # same text for this card at the QR's time (the issuer key signs deterministically)
        with tag_on_reader(present_card, reader_name(0), chip) as tag:
            identity = CardSession(tag, bundle, passwords=card_keys).read_image().identity
        assert texts[0] == household_qr(identity, issuer, qr.issued_at)


def test_qr_dir_is_refused_for_secure_cards_before_any_input(tmp_path: Path, office: dict[str, object],  # noqa: F811
                                                             reader_name,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    households = tmp_path / "households.csv"
    households.write_text(HOUSEHOLDS)
    code = main(["provision", "batch", str(households), "--card-profile", "secure", "--qr-dir", str(tmp_path / "qr"),
                 *_args(tmp_path, office, reader_name(0))])
    assert code == 2 and "--qr-dir is for --card-profile ntag" in capsys.readouterr().err
    assert not (tmp_path / "qr").exists()
