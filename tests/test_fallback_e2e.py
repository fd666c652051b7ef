"""The fallback ladder end to end (docs/fallback.md): a card provisioned by ``huma provision card
--qr-out`` through pcscd + vpcd, its PNG read back by zxing-cpp, the QR text typed into the counter
screen's fallback API as a USB scanner does, then a supervisor's manual entry at the same counter
(declined ``fallback_used_up``: QR and supervisor entry share one allowance there), then a real tap of the
same card at that counter (declined ``already_served_fallback``). A second counter, whose journal knows
nothing of the first's, serves the same household by supervisor entry (and then refuses its QR). Both
journals are uploaded to the live server with signed receipts, and reconciliation finds what no counter
alone could see: the fallback redemptions of both counters weigh on the card's entitlement like taps do.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
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
from tests.fallback_support import post
from tests.provision_support import OriginalityIssuer
from tests.reconcile_support import audit_db, findings, run  # noqa: F401 - audit_db: fixture
from tests.test_checkpoint_server import decode_qr
from tests.test_terminal_support import enrol_terminal, new_signer, publish_bundle
from tests.test_terminal_sync import pinned_receipt_key

pytestmark = pytest.mark.pcsc

ROOT_PW = b"root passphrase 0123"
KEY_PW = "station passphrase 4567"
TERMINAL_ID = "T-6271-0077"
#: A second counter of the same market, which the household visits after the first.
OTHER_ID = "T-6271-0078"
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

    def __init__(self, tmp: Path, *counters: SoftwareSigner) -> None:
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
                  *(BundleKey(c.kid, KeyRole.TERMINAL, c.alg, c.public_key) for c in counters)),
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
    return post(url, path, body, timeout=30)  # longer than the default: beside pcscd and a live server


def test_qr_and_manual_fallback_are_uploaded_and_count_against_the_card(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path,  # noqa: F811 - fixture
        present_card: Any, reader_name: Any) -> None:
    counter_key, other_key = new_signer(), new_signer()
    office = Office(tmp_path, counter_key, other_key)
    app.config["TRUST_ROOT_CERT"] = str(office.root_cert)
    publish_bundle(world, 1, office.bundle_bytes)  # the server learns the programmes' names from it
    enrol_terminal(world, TERMINAL_ID, counter_key)
    enrol_terminal(world, OTHER_ID, other_key)

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
    supervisors = {"sri": supervisor_hash("kunci-sri-77")}
    state.fallback = FallbackDesk(journal, lambda: office.bundle, state.mode, supervisors)
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
        # The QR's package counts toward the supervisor step's limit too: the steps do not stack at one counter.
        assert (manual["status"], manual["reason"], manual["amount"]) == ("declined", "fallback_used_up", 0), manual

        # The card itself at the same counter: the fallbacks are not on the card, the counter's journal has them.
        with present_card(chip, slot=0), cond:
            assert cond.wait_for(lambda: outcomes, 30), "no tap"
        assert outcomes[0].reason is DeclineReason.ALREADY_SERVED_FALLBACK, outcomes[0]
        assert (outcomes[0].card_id, outcomes[0].amount, outcomes[0].remaining) == (card_id, 0, 0)
    finally:
        screen.stop()
        sup.stop()
        sup_thread.join(timeout=15)

    # The household then goes to a second counter, whose journal has none of the first's entries: its
    # supervisor serves the package again (only reconciliation can see it), and its desk then refuses the QR.
    other_journal = JournalStore(tmp_path / "other.sqlite", terminal_id=OTHER_ID, signer=other_key,
                                 clock=Clock(force_synced=True))
    other = ScreenState(CounterMode.MARKET_REDEMPTION, ["food", "cash"])
    other.fallback = FallbackDesk(other_journal, lambda: office.bundle, other.mode, supervisors)
    other_screen = CounterScreen(other, port=0).start()
    try:
        again = _post(other_screen.url, "/api/fallback/manual", {"card_id": card_id, "supervisor": "sri",
                                                                 "password": "kunci-sri-77"})
        assert (again["status"], again["amount"]) == ("accepted", 1), again
        qr_there = _post(other_screen.url, "/api/fallback/qr", {"qr": texts[0], "clerk": "clerk-budi"})
        assert (qr_there["status"], qr_there["reason"]) == ("declined", "fallback_used_up"), qr_there
    finally:
        other_screen.stop()

    # 3. Sync: every entry of both counters uploaded, each batch's receipt checked under the pinned server key.
    for tid, key, jour in ((TERMINAL_ID, counter_key, journal), (OTHER_ID, other_key, other_journal)):
        sync = SyncClient(HttpApi(f"http://{live_server.host}:{live_server.port}/", timeout_s=30), jour, key,
                          tid, TrustStore(tmp_path / f"trust-{tid}.cose", office.root_public),
                          receipt_key=pinned_receipt_key(world, tid))
        sync.upload_pending()
        assert jour.unsent_count() == 0
        jour.close()

    from server.extensions import db
    from server.models import JournalEntryRow

    def uploaded(tid: str) -> list[tuple[EntryKind, Any]]:
        with app.app_context():
            rows = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.terminal_id == tid)
                                      .order_by(JournalEntryRow.seq)).all()
            return [(EntryKind(row.kind), decode_entry(row.raw)) for row in rows]

    def desk_entries(tid: str) -> list[tuple[EntryKind, str, str, str, int | None, str | None]]:
        return [(k, e.fallback, e.approved_by, e.card_id, e.amount, e.decline_reason) for k, e in uploaded(tid)
                if e is not None and k in (EntryKind.FALLBACK, EntryKind.DECLINED) and e.fallback]

    fb, no = EntryKind.FALLBACK, EntryKind.DECLINED
    assert desk_entries(TERMINAL_ID) == [(fb, "qr", "clerk-ani", card_id, 1, None),
                                         (no, "manual", "sri", card_id, None, "supervisor_refused"),
                                         (no, "manual", "sri", card_id, None, "fallback_used_up")]
    assert desk_entries(OTHER_ID) == [(fb, "manual", "sri", card_id, 1, None),
                                      (no, "qr", "clerk-budi", card_id, None, "fallback_used_up")]
    first_tap = [e.decline_reason for k, e in uploaded(TERMINAL_ID) if k is no and e is not None and not e.fallback]
    assert first_tap == ["already_served_fallback"]  # the card's own tap at the first counter

    # 4. Reconciliation: the first counter's QR + the second's supervisor entry = 2 food packages of an
    # entitlement of 1 in one cycle, across counters (each counter alone paid 1).
    run(app)
    over = [f for f in findings(app, FindingKind.ENTITLEMENT_EXCEEDED) if f.card_id == card_id]
    assert len(over) == 1, [f.summary for f in findings(app)]
    assert "2 redeemed of 1" in over[0].summary
    evidence = [bytes.fromhex(x) for x in json.loads(over[0].evidence)]
    with app.app_context():
        where = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.entry_id.in_(evidence))).all()
        assert sorted((r.terminal_id, EntryKind(r.kind)) for r in where) == [(TERMINAL_ID, fb), (OTHER_ID, fb)]

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
    assert "cadangan qr · dimasukkan oleh clerk-budi" in page  # refused at the second counter: not approved
    assert "supervisor menolak" in page and "jatah cadangan sudah habis" in page  # supervisor_refused, fallback_used_up
    terminal_page = client.get(f"/audit/terminals/{TERMINAL_ID}?lang=en").get_data(as_text=True)
    # sri's two entries there were refused (wrong password, then the allowance used up): never "approved by sri"
    assert "fallback manual · entered as sri" in terminal_page and "fallback manual · entered by sri" in terminal_page
    assert "approved by sri" not in terminal_page
    assert "fallback qr · approved by clerk-ani" in terminal_page
    other_page = client.get(f"/audit/terminals/{OTHER_ID}?lang=en").get_data(as_text=True)
    assert "fallback manual · approved by sri" in other_page and "clerk-ani" not in other_page
    csv_text = client.get(f"/audit/export/journal.csv?card_id={card_id}").get_data(as_text=True)
    header, *lines = csv_text.splitlines()
    assert ",fallback,approved_by," in header
    # QR: served at the first counter, refused at the second; supervisor: refused twice at the first, served at
    # the second
    assert sum(",qr,clerk-ani," in line for line in lines) == 1
    assert sum(",qr,clerk-budi," in line for line in lines) == 1
    assert sum(",manual,sri," in line for line in lines) == 3
    with app.app_context():
        records = list(journal_records(db.session, terminal_id=TERMINAL_ID))
        others = list(journal_records(db.session, terminal_id=OTHER_ID))
    assert [(r["kind"], r["fallback"], r["approved_by"]) for r in records if r["fallback"]] == [
        ("FALLBACK", "qr", "clerk-ani"), ("DECLINED", "manual", "sri"), ("DECLINED", "manual", "sri")]
    assert [(r["kind"], r["fallback"], r["approved_by"]) for r in others if r["fallback"]] == [
        ("FALLBACK", "manual", "sri"), ("DECLINED", "qr", "clerk-budi")]
