"""Complaints taken at the counter (issue 18): kept durably, sent by sync, stored once by the server.

The counter's queue survives a restart and works offline; the screen answers 400 on bad input;
a sync sends the complaints terminal-signed to the live server (SQLite and PostgreSQL), which
links the receipt code's card and records the counter as the source; only the server's signed
receipt marks a complaint sent, and a resend is stored once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from sqlalchemy import select

from cardlib.records.claims import Unit
from cardlib.records.upload import SIGNATURE_HEADER, sign_envelope
from firmware_config.models import CounterMode
from simulator.journals import SimCard, SimTerminal
from terminal.grievances import GRIEVANCE_PATH, GrievanceQueue, GrievanceSender
from terminal.outcome import Receipt, TapOutcome, TapStatus
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.complaint import CATEGORY_NAMES, LABELS
from terminal.sync import HttpApi, UnverifiedAnswer
from tests.reconcile_support import audit_db, enrol, upload  # noqa: F401 - audit_db: fixture
from tests.test_terminal_support import enrol_terminal, new_signer
from tests.test_terminal_sync import pinned_receipt_key

LOCALE = Path(__file__).parents[1] / "terminal" / "screen" / "locale"
CARD = "ca07000000000000"
HOUSEHOLD = "62710a0b0c0d0e0f"


def test_every_complaint_text_has_an_indonesian_translation() -> None:
    with open(LOCALE / "id" / "LC_MESSAGES" / "terminal.po", "rb") as fh:
        catalog = read_po(fh, locale="id")
    for msgid in [*LABELS.values(), *CATEGORY_NAMES.values()]:
        msg = catalog.get(msgid)
        assert msg is not None and msg.string and msg.string != msgid, msgid


def test_the_queue_survives_a_restart_and_refuses_bad_input(tmp_path: Path) -> None:
    q = GrievanceQueue(tmp_path / "grievances.sqlite")
    g = q.add("  got nothing  ", "not_received", receipt_code="abcd2345")
    assert (g.receipt_code, g.text) == ("ABCD-2345", "got nothing")
    for bad in ({"text": " ", "category": "other", "receipt_code": "ABCD-2345"},
                {"text": "x", "category": "bribe", "receipt_code": "ABCD-2345"},
                {"text": "x", "category": "other", "receipt_code": "ABCD-1111"},  # 1 is not base32
                {"text": "x", "category": "other"},
                {"text": "x", "category": "other", "card_id": "not-hex"},
                {"text": "x" * 1001, "category": "other", "household_ref": HOUSEHOLD}):
        with pytest.raises(ValueError):
            q.add(**bad)  # type: ignore[arg-type]
    q.close()
    again = GrievanceQueue(tmp_path / "grievances.sqlite")  # the counter restarted
    assert [x.client_ref for x in again.unsent()] == [g.client_ref] and again.unsent_count() == 1
    again.close()


def _accepted(code: str) -> TapOutcome:
    receipt = Receipt("T-6271-0001", 7, "HB-62710A0B", "food", Unit.PACKAGE, 2, 1, 1, code, 1_780_000_000.0)
    return TapOutcome(TapStatus.ACCEPTED, "r0", CounterMode.MARKET_REDEMPTION, "food", household_ref="HB-62710A0B",
                      unit=Unit.PACKAGE, amount=1, entitled=2, remaining=1, receipt=receipt, card_id=CARD)


def _post(url: str, body: object) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_screen_keeps_a_complaint_about_a_tap_and_starts_a_sync(tmp_path: Path) -> None:
    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["food"])
    screen = CounterScreen(state, port=0).start()
    try:
        api = screen.url + "api/grievance"
        assert _post(api, {"n": 1, "category": "other", "text": "x"})[0] == 503  # no queue on this screen
        state.grievances = GrievanceQueue(tmp_path / "g.sqlite")
        kicks: list[int] = []
        state.sync_trigger = lambda: kicks.append(1)
        n = state.publish(_accepted("ABCD-2345"))
        with urllib.request.urlopen(screen.url + "complaint?lang=id", timeout=5) as resp:
            page = resp.read().decode()
        assert "Keluhan" in page and "ABCD-2345" in page and "Tidak menerima bantuan" in page
        for bad in ({"n": n, "category": "other", "text": "  "}, {"n": n, "category": "nope", "text": "x"},
                    {"n": 99, "category": "other", "text": "x"}, {"category": "other", "text": "x"},
                    {"n": "", "receipt_code": "zz", "category": "other", "text": "x"}):
            status, answer = _post(api, bad)
            assert status == 400 and answer["error"], (bad, answer)
        status, answer = _post(api, {"n": n, "category": "not_received", "text": "paket tidak diterima"})
        assert status == 200 and answer["ok"] and kicks == [1]
        [g] = state.grievances.unsent()
        assert (g.client_ref, g.receipt_code, g.card_id, g.household_ref) == (answer["id"], "ABCD-2345", CARD, None)
        with urllib.request.urlopen(screen.url + "api/grievances?lang=en", timeout=5) as resp:
            [listed] = json.loads(resp.read())["grievances"]
        assert (listed["status"], listed["category"]) == ("waiting", "Did not receive the benefit")
    finally:
        screen.stop()


def _receipt_code(app: Any, world: Any) -> str:
    """A redemption uploaded by a simulated counter, as the receipt code its screen showed."""
    t = SimTerminal.new("T-SIM", "62.71", random.Random(3))
    enrol(world, t)
    t.boot(1_780_000_000_000)
    t.redeem(SimCard(CARD, bytes(7), "62.71"), 1_780_000_060_000, "food", 1)
    assert all(r.status_code == 200 for r in upload(world, t, t.messages()))
    from cardlib.records.receipt import receipt_code
    from server.audit.receipts import RECEIPT_KINDS
    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.kind.in_(RECEIPT_KINDS))).one()
        return receipt_code(row.entry_hash)


def test_sync_sends_complaints_signed_and_the_server_stores_each_once(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path) -> None:  # noqa: F811 - fixture
    from server.extensions import db
    from server.grievances import Grievance
    from server.models import AuditLog

    code = _receipt_code(app, world)
    signer = new_signer()
    enrol_terminal(world, "T-6271-0042", signer)
    key = pinned_receipt_key(world, "T-6271-0042")
    queue = GrievanceQueue(tmp_path / "grievances.sqlite")
    api = HttpApi(f"http://{live_server.host}:{live_server.port}")
    g = queue.add("the package was not handed over", "not_received", receipt_code=code)
    refused = queue.add("x", "other", household_ref=HOUSEHOLD)
    with sqlite3.connect(tmp_path / "grievances.sqlite") as raw:  # a field the server refuses
        raw.execute("UPDATE grievances SET category = 'bribe' WHERE client_ref = ?", (refused.client_ref,))

    forged = GrievanceSender(api, queue, signer, "T-6271-0042", receipt_key=new_signer().public_key)
    with pytest.raises(UnverifiedAnswer):
        forged.send_pending()  # stored at the server, but the answer is not under the pinned key
    assert queue.unsent_count() == 2  # nothing marked
    sender = GrievanceSender(api, queue, signer, "T-6271-0042", receipt_key=key)
    assert sender.send_pending() == 1  # the stored one again: duplicate, now marked
    assert queue.unsent_count() == 0
    kept = {x.client_ref: x for x in queue.all()}
    assert kept[refused.client_ref].refused == "category" and kept[g.client_ref].server_id

    body = json.dumps({"terminal_id": "T-6271-0042", "grievances": [g.to_json()]}).encode()
    status, _, _, answer = live_server.request("POST", GRIEVANCE_PATH, body, {
        "Content-Type": "application/json", SIGNATURE_HEADER: sign_envelope(body, "T-6271-0042", signer)})
    assert status == 200 and json.loads(answer)["results"][0]["result"] == "duplicate"
    status, _, _, _ = live_server.request("POST", GRIEVANCE_PATH, body, {
        "Content-Type": "application/json", SIGNATURE_HEADER: sign_envelope(body, "T-6271-0042", new_signer())})
    assert status == 401  # not the enrolled key
    with app.app_context():
        [stored] = db.session.scalars(select(Grievance)).all()
        assert (stored.receipt_code, stored.card_id, stored.source_terminal, stored.category, stored.client_ref) == (
            code, CARD, "T-6271-0042", "not_received", g.client_ref)
        assert stored.counter_time is not None and stored.created_by is None
        actions = db.session.scalars(select(AuditLog.detail).where(AuditLog.action == "grievance.recorded")).all()
        assert len(actions) == 1 and json.loads(actions[0])["terminal_id"] == "T-6271-0042"
    queue.close()
