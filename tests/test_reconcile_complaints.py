"""``complaint_not_received``: a complaint a counter journalled never arrived (server/reconcile/terminal_checks.py).

A counter journals each complaint it takes as a ``COMPLAINT`` entry whose ``entry_id`` is the complaint's
``client_ref`` (docs/card-format.md §Conventions), then sends the complaint itself after the journal in its
sync round (docs/grievances.md). Real journal uploads and real ``POST /api/v1/terminal/grievances``
requests signed by the counter's key, on SQLite and PostgreSQL; after every round an incremental run
records its findings and a full run in the same transaction (rolled back) must leave them exactly so
(as tests/test_reconcile_incremental.py). The grace is 0 here (every journalled complaint is due at
once) except where the grace itself is tested.
"""

from __future__ import annotations

import json
import random
from typing import Any

from cardlib.records.journal import EntryKind
from server.reconcile.findings import RESOLVED_REASON
from server.reconcile.models import FindingKind, FindingStatus, Severity
from server.reconcile.observations import ReconcileConfig
from simulator.journals import SimTerminal
from tests.audit_login import form_login
from tests.reconcile_support import (  # noqa: F401 - audit_db: fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
    incremental_then_full,
    upload,
)
from tests.test_registry_reconcile import _enrol, _ms

#: Exact watermark; every journalled complaint due at once.
CFG = ReconcileConfig(watermark_margin_s=0, complaint_grace_s=0)
CARD = "6271000000000abc"


def _terminal(world: Any, terminal_id: str = "T-CMP", seed: int = 4) -> SimTerminal:
    t = SimTerminal.new(terminal_id, "62.71", random.Random(seed))
    assert _enrol(world, t, region=t.region).status_code == 202
    world.approve(t.terminal_id)
    t.boot(_ms(2, 0))
    return t


def _complaint(t: SimTerminal, when: int) -> str:
    """Journal one complaint as the counter does; returns its client_ref."""
    return t.append(EntryKind.COMPLAINT, when).entry.entry_id.hex()


def _send(world: Any, t: SimTerminal, ref: str, **fields: Any) -> str:
    """The counter's grievance request for ``ref`` (signed envelope); returns the result."""
    from server.upload import SIGNATURE_HEADER, sign_envelope

    item = {"client_ref": ref, "recorded_at": "2026-03-02T03:00:00+00:00", "category": "not_received",
            "text": "the screen said paid, I got nothing", "card_id": CARD, **fields}
    body = json.dumps({"terminal_id": t.terminal_id, "grievances": [item]}).encode()
    r = world.client.post("/api/v1/terminal/grievances", data=body, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: sign_envelope(body, t.terminal_id, t.private_key, t.kid)})
    assert r.status_code == 200, r.get_json()
    return str(r.get_json()["results"][0]["result"])


def _round(app: Any, world: Any, t: SimTerminal, sent: int,
           cfg: ReconcileConfig = CFG) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]], int]:
    """Upload the entries after ``sent``, run incrementally, check a full run leaves the same findings.

    :returns: the complaint findings by client_ref, every finding, entries sent so far.
    """
    messages = t.messages()
    if messages[sent:]:
        assert all(r.status_code == 200 for r in upload(world, t, messages[sent:]))
    with app.app_context():
        _result, found = incremental_then_full(cfg)
    complaints = {json.loads(v[7])["client_ref"]: v for v in found.values()
                  if v[0] == FindingKind.COMPLAINT_NOT_RECEIVED.value}
    return complaints, found, len(messages)


def test_a_journalled_complaint_that_arrives_raises_nothing(app: Any, audit_db: str, world: Any) -> None:  # noqa: F811
    t = _terminal(world)
    ref = _complaint(t, _ms(2, 3))
    complaints, found, sent = _round(app, world, t, 0, ReconcileConfig(watermark_margin_s=0))
    assert complaints == {}  # within the grace: the complaint may still be on its way
    assert _send(world, t, ref) == "accepted"
    complaints, found, _ = _round(app, world, t, sent)
    assert complaints == {} and found == {}  # and the COMPLAINT entry is no anomaly of the chain or of a card


def test_an_erased_complaint_is_reported_and_withdrawn_when_it_arrives_late(
        app: Any, audit_db: str, world: Any) -> None:  # noqa: F811
    t = _terminal(world)
    other = _terminal(world, "T-CMQ", 5)
    erased = _complaint(t, _ms(2, 3))
    kept = _complaint(t, _ms(2, 4))
    assert _send(world, t, kept) == "accepted"
    assert _send(world, other, erased) == "accepted"  # another counter's complaint under the same id is not it

    complaints, _found, sent = _round(app, world, t, 0)
    assert sorted(complaints) == [erased]
    add_auditor(app)
    assert form_login(world.client, "audrey", AUDITOR_PASSWORD).status_code == 302
    page = world.client.get("/audit/findings").get_data(as_text=True)  # Bahasa Indonesia by default
    assert "keluhan yang dicatat di jurnal loket tidak pernah sampai ke server" in page
    page_en = world.client.get("/audit/findings?lang=en").get_data(as_text=True)
    assert "a complaint the counter journalled never reached the server" in page_en
    f = complaints[erased]
    assert (f[1], f[2], f[5]) == (Severity.HIGH.value, FindingStatus.OPEN.value, t.terminal_id)
    assert f[6] == f"terminal {t.terminal_id}: complaint {erased} journalled at seq 2 never reached the server"
    assert json.loads(f[8]) == [erased]  # evidence: the signed entry
    detail = json.loads(f[7])
    assert (detail["client_ref"], detail["seq"], detail["grace_s"]) == (erased, 2, 0)

    t.append(EntryKind.BOOT, _ms(3, 0))  # more of the journal, the complaint still missing: it stays as it was
    complaints2, _found, sent = _round(app, world, t, sent)
    assert complaints2 == complaints

    assert _send(world, t, erased, card_id=None, text="[erased ...]", receipt_code=None) == "rejected"
    complaints3, _found, sent = _round(app, world, t, sent)
    assert complaints3 == complaints  # refused (no link): the server holds no complaint of that id

    assert _send(world, t, erased) == "accepted"  # the complaint arrives late (the counter's next sync)
    complaints4, _found, _ = _round(app, world, t, sent)
    withdrawn = complaints4[erased]
    assert withdrawn[2] == FindingStatus.DISMISSED.value and withdrawn[3].startswith(RESOLVED_REASON.split("{")[0])
