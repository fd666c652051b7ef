"""Grievances (issue 18): a complaint linked to a receipt code, card or household, worked through by auditors.

SQLite and PostgreSQL, through the API; the receipt code is the one the counter showed for a real upload.
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import select

from simulator.journals import SimCard, SimTerminal
from tests.reconcile_support import audit_db, enrol, upload  # noqa: F401 - audit_db: fixture


def _redeemed_code(app: Any, world: Any) -> tuple[str, str]:
    t = SimTerminal.new("T-GRV", "62.71", random.Random(3))
    enrol(world, t)
    t.boot(1_780_000_000_000)
    t.redeem(SimCard("ca07000000000000", bytes(7), "62.71"), 1_780_000_060_000, "food", 1)
    assert all(r.status_code == 200 for r in upload(world, t, t.messages()))
    from cardlib.records.receipt import receipt_code
    from server.audit.receipts import RECEIPT_KINDS
    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.kind.in_(RECEIPT_KINDS))).one()
        return receipt_code(row.entry_hash), row.card_id


def test_a_complaint_about_a_receipt_is_worked_through_and_audited(
        app: Any, audit_db: str, world: Any) -> None:  # noqa: F811 - fixture
    code, card_id = _redeemed_code(app, world)
    c, auth = world.client, world.auth()
    r = c.get(f"/api/v1/receipts/{code.lower().replace('-', '')}", headers=auth)
    assert r.status_code == 200, r.get_json()
    [entry] = r.get_json()["entries"]
    assert (entry["card_id"], entry["programme"], entry["amount"], entry["terminal_id"]) == (
        card_id, "food", 1, "T-GRV")
    assert c.get("/api/v1/receipts/AAAA-AAAA", headers=auth).status_code == 404
    assert c.get("/api/v1/receipts/not-a-code", headers=auth).status_code == 400

    assert c.post("/api/v1/grievances", headers=auth, json={"text": "no link"}).status_code == 400
    assert c.post("/api/v1/grievances", headers=auth,
                  json={"text": "x", "receipt_code": "1234"}).get_json()["error"]["field"] == "receipt_code"
    r = c.post("/api/v1/grievances", headers=auth,
               json={"text": "the counter said food, I got nothing", "receipt_code": code})
    assert r.status_code == 201, r.get_json()
    gid = r.get_json()["id"]
    assert r.get_json()["status"] == "open" and r.get_json()["receipt_code"] == code

    def move(status: str, reason: str) -> Any:
        return c.post(f"/api/v1/grievances/{gid}/status", headers=auth, json={"status": status, "reason": reason})

    assert move("investigating", "  ").status_code == 400  # a reason is required
    assert move("investigating", "calling the counter's operator").status_code == 200
    r = move("resolved", "package handed over late, signed by the head of village")
    assert r.status_code == 200 and r.get_json()["status"] == "resolved" and r.get_json()["decided_by"]
    assert move("open", "no").status_code == 400  # resolved → open is not a move
    listed = c.get("/api/v1/grievances?status=resolved", headers=auth).get_json()["grievances"]
    assert [x["id"] for x in listed] == [gid]
    assert c.get("/api/v1/grievances?status=open", headers=auth).get_json()["grievances"] == []
    assert c.get("/api/v1/grievances/999999", headers=auth).status_code == 404
    actions = [row["action"] for row in c.get("/api/v1/audit", headers=auth).get_json()["audit"]]
    assert {"grievance.recorded", "grievance.status", "receipts.lookup"} <= set(actions)
