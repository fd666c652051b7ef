"""The fallback ladder end to end (docs/fallback.md): a card provisioned by ``huma provision card
--qr-out`` through pcscd + vpcd, its PNG read back by zxing-cpp, the QR text typed into the counter
screen's fallback API as a USB scanner does, a supervisor's manual entry, then a real tap of the same
card at the same counter (declined ``already_served_fallback``), the journal uploaded to the live
server with signed receipts, and reconciliation: the fallback redemptions weigh on the card's
entitlement like a tap does.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import SoftwareSigner
from cardlib.keys.terminal_ca import make_terminal_csr
from cardlib.records.access import CardPasswordKeys, load_password_keys, save_password_keys
from cardlib.records.bundle import BundleKey, KeyRole, Programme, TrustBundle, keystore_bundle_keys, sign_bundle
from cardlib.records.household_label import household_label
from cardlib.records.household_qr import verify_household_qr
from cardlib.records.journal import EntryKind
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from huma.cli import main
from server.audit.entries import decode_entry
from server.reconcile.models import FindingKind
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome
from terminal.policy import DeclineReason, OfflineLimits
from terminal.screen import CounterScreen, ScreenState
from terminal.supervisor import ReaderNamePattern, Supervisor
from terminal.sync import HttpApi, SyncClient, TrustStore
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.provision_support import OriginalityIssuer
from tests.reconcile_support import audit_db, findings, run  # noqa: F401 - audit_db: fixture
from tests.test_checkpoint_server import decode_qr
from tests.test_terminal_support import enrol_terminal, new_signer, publish_bundle
from tests.test_terminal_sync import pinned_receipt_key

pytestmark = pytest.mark.pcsc

ROOT_PW = b"root passphrase 0123"
KEY_PW = "station passphrase 4567"
TERMINAL_ID = "T-6271-0077"
HOUSEHOLD = "9f3c2a1b000000aa"
PROGRAMMES = (Programme(1, "food", "package", 1), Programme(2, "cash", "rupiah", 250_000))
#: One food package per card per cycle on the QR and on a supervisor's entry; no cash either way.
POLICIES = {"fallback.qr.food": 1, "fallback.manual.food": 1}
PROFILE = """valid_days = 730
[programmes.1]
unit = "package"
per_cycle = 1
offline_cap = 1
"""


class Office:
    """The district office's keys, the signed bundle and the station's files (as operators have them)."""

    def __init__(self, tmp: Path, counter: SoftwareSigner) -> None:
        self.tmp = tmp
        self.store = KeyStore.init(tmp / "keys", ROOT_PW)
        root = self.store.root_signer(ROOT_PW)
        self.root_public = root.public_key
        self.store.issue(Role.ISSUER, root, passphrase=KEY_PW.encode())
        self.store.issue(Role.TECHNICIAN, root, passphrase=KEY_PW.encode(), name="tech-07")
        bundle_key = self.store.issue(Role.BUNDLE, root, passphrase=KEY_PW.encode())
        station_key, _ = make_terminal_csr("KT-6271-STATION")
        save_private_key(tmp / "station.key", station_key, KEY_PW.encode())
        station = SoftwareSigner(station_key)
        now = int(time.time())
        self.bundle = TrustBundle(
            version=1, issued_at=now - 60, expires_at=now + 30 * 86400,
            keys=(*keystore_bundle_keys(self.store.entries),
                  BundleKey(station.kid, KeyRole.TERMINAL, station.alg, station.public_key),
                  BundleKey(counter.kid, KeyRole.TERMINAL, counter.alg, counter.public_key)),
            programmes=PROGRAMMES, policies=POLICIES)
        self.bundle_bytes = sign_bundle(self.bundle, self.store.signer(bundle_key.kid, KEY_PW.encode()),
                                        self.store.endorsement(bundle_key.kid))
        (tmp / "bundle.cbor").write_bytes(self.bundle_bytes)
        (tmp / "profile.toml").write_text(PROFILE)
        (tmp / "pwd.secret").write_bytes(b"district-office-secret-0123456789\n")
        (tmp / "pw.txt").write_text(KEY_PW + "\n")
        save_password_keys(tmp / "card-keys.json",
                           CardPasswordKeys.create((tmp / "pwd.secret").read_bytes().strip()), KEY_PW.encode())
        self.card_keys = load_password_keys(tmp / "card-keys.json", KEY_PW.encode())
        self.fab = OriginalityIssuer()
        self.root_cert = tmp / "keys" / "certs" / f"{self.store.root_kid.hex()}.crt.pem"

    def station_args(self, reader: str) -> list[str]:
        t = self.tmp
        return ["--keys", str(t / "keys"), "--technician", "tech-07", "--station-key", str(t / "station.key"),
                "--bundle", str(t / "bundle.cbor"), "--profile", str(t / "profile.toml"),
                "--pwd-secret-file", str(t / "pwd.secret"), "--passphrase-file", str(t / "pw.txt"),
                "--card-keys", str(t / "card-keys.json"), "--card-keys-passphrase-file", str(t / "pw.txt"),
                "--reader", reader, "--timeout", "20", "--originality-key", self.fab.public_key.hex(),
                "--state-dir", str(t / "single")]


def _post(url: str, path: str, body: dict[str, object]) -> dict[str, Any]:
    req = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert isinstance(answer, dict)
    return answer


def test_qr_and_manual_fallback_are_uploaded_and_count_against_the_card(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path,  # noqa: F811 - fixture
        present_card: Any, reader_name: Any) -> None:
    counter_key = new_signer()
    office = Office(tmp_path, counter_key)
    app.config["TRUST_ROOT_CERT"] = str(office.root_cert)
    publish_bundle(world, 1, office.bundle_bytes)  # the server learns the programmes' names from it
    enrol_terminal(world, TERMINAL_ID, counter_key)

    # 1. The office issues the card (format 2) and prints its household QR.
    png = tmp_path / "card.png"
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(main(
        ["provision", "card", "--household-ref", HOUSEHOLD, "--region", "62.71", "--programmes", "1",
         "--qr-out", str(png), *office.station_args(reader_name(0))])))
    chip = office.fab.genuine()
    runner.start()
    with present_card(chip):
        runner.join(timeout=90)
    assert codes == [0]
    issuances = next((tmp_path / "single").rglob("issuances.cose")).read_bytes()
    r = world.client.post("/api/v1/cards/issuances", headers=world.auth(),
                          json={"file": base64.b64encode(issuances).decode()})
    assert r.status_code == 200 and [x["result"] for x in r.get_json()["results"]] == ["accepted"], r.get_json()
    texts = decode_qr(png.read_bytes())  # zxing-cpp, as a phone or a USB scanner would
    assert texts == [(tmp_path / "card.txt").read_text().strip()]
    card_id = verify_household_qr(texts[0], office.bundle, int(time.time())).card_id.hex()

    # 2. The counter: taps through pcscd, the screen with the fallback desk, one journal.
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=TERMINAL_ID, signer=counter_key,
                           clock=Clock(force_synced=True))
    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["food", "cash"])
    state.fallback = FallbackDesk(journal, lambda: office.bundle, state.mode, {"sri": supervisor_hash("kunci-sri-77")})
    outcomes: list[TapOutcome] = []
    cond = threading.Condition()

    def publish(o: TapOutcome) -> None:
        state.publish(o)
        with cond:
            outcomes.append(o)
            cond.notify_all()

    tap = TapProcessor(CounterConfig(TERMINAL_ID, CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": ACR122U},
                                     card_passwords=office.card_keys),
                       journal, counter_key, trust=lambda: Trust(office.bundle, time.time()),
                       request=lambda: ("food", 1, None), publish=publish)
    sup = Supervisor([ReaderNamePattern(re.compile("^Virtual PCD"))], tap, scan_s=0.3)
    sup_thread = threading.Thread(target=sup.run)
    sup_thread.start()
    screen = CounterScreen(state, port=0).start()
    try:
        # The household comes "without a working card": the clerk scans the card body. (The other order, the
        # card's tap first, is declined already_served_card at the desk: tests/test_fallback_after_tap.py.)
        qr = _post(screen.url, "/api/fallback/qr", {"qr": texts[0] + "\n", "clerk": "clerk-ani"})
        label = household_label(bytes.fromhex(HOUSEHOLD))  # "HB-9F3C2A1B", as a card tap shows it
        assert (qr["status"], qr["amount"], qr["household_ref"]) == ("accepted", 1, label)
        # And with no card at all: a supervisor's entry, first with a wrong password.
        wrong = _post(screen.url, "/api/fallback/manual", {"card_id": card_id, "supervisor": "sri",
                                                           "password": "tebakan"})
        assert (wrong["status"], wrong["reason"]) == ("declined", "supervisor_refused")
        manual = _post(screen.url, "/api/fallback/manual", {"card_id": card_id, "supervisor": "sri",
                                                            "password": "kunci-sri-77"})
        assert manual["status"] == "accepted"  # the per-step limits do not count each other

        # The card itself at the same counter: the fallbacks are not on the card, the counter's journal has them.
        with present_card(chip, slot=0), cond:
            assert cond.wait_for(lambda: outcomes, 30), "no tap"
        assert outcomes[0].reason is DeclineReason.ALREADY_SERVED_FALLBACK, outcomes[0]
        assert (outcomes[0].card_id, outcomes[0].amount, outcomes[0].remaining) == (card_id, 0, 0)
    finally:
        screen.stop()
        sup.stop()
        sup_thread.join(timeout=15)

    # 3. Sync: every entry uploaded, each batch's receipt checked under the pinned server key.
    client = SyncClient(HttpApi(f"http://{live_server.host}:{live_server.port}/", timeout_s=30), journal, counter_key,
                        TERMINAL_ID, TrustStore(tmp_path / "trust.cose", office.root_public),
                        receipt_key=pinned_receipt_key(world, TERMINAL_ID))
    client.upload_pending()
    assert journal.unsent_count() == 0
    journal.close()

    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        rows = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.terminal_id == TERMINAL_ID)
                                  .order_by(JournalEntryRow.seq)).all()
        stored = [(EntryKind(row.kind), decode_entry(row.raw)) for row in rows]
    fallback = [(e.fallback, e.approved_by, e.card_id, e.amount) for k, e in stored
                if e is not None and k in (EntryKind.FALLBACK, EntryKind.DECLINED) and e.fallback]
    assert fallback == [("qr", "clerk-ani", card_id, 1), ("manual", "sri", card_id, None),
                        ("manual", "sri", card_id, 1)]
    refused = [e for k, e in stored if k is EntryKind.DECLINED and e is not None and e.fallback]
    assert [e.decline_reason for e in refused] == ["supervisor_refused"]

    # 4. Reconciliation: QR + manual = 2 food packages of an entitlement of 1 in one cycle.
    run(app)
    over = [f for f in findings(app, FindingKind.ENTITLEMENT_EXCEEDED) if f.card_id == card_id]
    assert len(over) == 1, [f.summary for f in findings(app)]
    assert "2 redeemed of 1" in over[0].summary
    assert len(json.loads(over[0].evidence)) == 2  # both fallback entries

    # 5. The auditor sees who approved each fallback, on the card's page and in the journal export.
    from server.audit.exports import journal_records
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor

    add_auditor(app)
    client = world.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    page = client.get(f"/audit/cards/{card_id}?lang=id").get_data(as_text=True)
    assert "cadangan qr · disetujui oleh clerk-ani" in page
    assert "cadangan manual · disetujui oleh sri" in page
    assert "supervisor menolak" in page
    terminal_page = client.get(f"/audit/terminals/{TERMINAL_ID}?lang=en").get_data(as_text=True)
    assert "fallback manual · approved by sri" in terminal_page
    csv_text = client.get(f"/audit/export/journal.csv?card_id={card_id}").get_data(as_text=True)
    header, *lines = csv_text.splitlines()
    assert ",fallback,approved_by," in header
    assert sum(",qr,clerk-ani," in line for line in lines) == 1 and sum(",manual,sri," in line for line in lines) == 2
    with app.app_context():
        records = list(journal_records(db.session, terminal_id=TERMINAL_ID))
    assert [(r["kind"], r["fallback"], r["approved_by"]) for r in records if r["fallback"]] == [
        ("FALLBACK", "qr", "clerk-ani"), ("DECLINED", "manual", "sri"), ("FALLBACK", "manual", "sri")]
