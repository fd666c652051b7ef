"""Auditors see each settled torn write: the read-only API and the ``/audit/settlements`` page.

Two torn writes at one counter, one the card later showed (settled taken), one another
counter overwrote (settled not taken), reconciled through the real upload and run; then the
API filters and pages them and the page lists them, linked from the card and terminal pages,
in Bahasa Indonesia and English. SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from cardlib.records.claims import Entitlement, Unit
from cardlib.records.journal import EntryKind
from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db, run  # noqa: F401 - audit_db: fixture
from tests.test_registry_reconcile import keys, registry  # noqa: F401 - fixtures
from tests.test_settled_taken import HOUR_MS, UTC, _issue, _now_card, _sim, _terminal, _torn_then_seen, _upload


def _torn_then_overwritten(here: Any, there: Any, claims: Any, at_ms: int) -> Any:
    """A write torn at ``here`` that did not land: ``there`` then wrote another state at that slot seq."""
    p = here.torn_redeem(_sim(claims), at_ms, "food", 1)
    e = p.entry
    here.append(EntryKind.UNCERTAIN, at_ms + 500, card_id=e.card_id, tag_uid=e.tag_uid, programme=e.programme,
                amount=e.amount, slot_seq_before=e.slot_seq_before, slot_seq_after=e.slot_seq_after,
                state_hash_prev=e.state_hash_prev, state_hash_new=e.state_hash_new, ntag_counter=e.ntag_counter)
    there.redeem(_sim(claims), at_ms + 600_000, "food", 1)  # the card as it was before the torn write
    return p


@pytest.fixture
def settled(app: Any, registry: Any, keys: Any) -> dict[str, Any]:  # noqa: F811 - fixtures
    world = registry
    now_ms = int(dt.datetime.now(UTC).timestamp() * 1000)
    a = _now_card(21, {1: Entitlement(Unit.PACKAGE, 2)})
    b = _now_card(22, {1: Entitlement(Unit.PACKAGE, 2)})
    for c in (a, b):
        _issue(world, keys, c, dt.datetime.now(UTC) - dt.timedelta(days=10))
    here, there = _terminal(world, "T-PKY-0041", now_ms - 5 * HOUR_MS), _terminal(world, "T-PKY-0042",
                                                                                 now_ms - 5 * HOUR_MS)
    taken = _torn_then_seen(here, there, _sim(a), now_ms - 3 * HOUR_MS)
    voided = _torn_then_overwritten(here, there, b, now_ms - 3 * HOUR_MS)
    _upload(world, here, there)
    run(app)
    add_auditor(app)
    return {"world": world, "a": a, "b": b, "taken": taken, "voided": voided}


def _auditor_token(world: Any) -> dict[str, str]:
    r = world.client.post("/api/v1/auth/login", json={"username": "audrey", "password": AUDITOR_PASSWORD})
    assert r.status_code == 200, r.get_json()
    return {"Authorization": f"Bearer {r.get_json()['token']}"}


def test_the_api_lists_settlements_filtered_and_paged(app: Any, settled: dict[str, Any]) -> None:
    world, a, b = settled["world"], settled["a"], settled["b"]
    auth = _auditor_token(world)
    body = world.client.get("/api/v1/settlements", headers=auth).get_json()
    rows = body["settlements"]
    assert [(r["card_id"], r["outcome"]) for r in rows] == [(a.card_id.hex(), "taken"), (b.card_id.hex(), "not_taken")]
    assert body["next_after"] is None
    first = rows[0]
    assert first["terminal_id"] == "T-PKY-0041" and first["seq"] == settled["taken"].entry.seq
    assert first["entry_id"] == settled["taken"].entry.entry_id.hex()
    assert first["household_ref"] == a.household_ref.hex() and (first["programme"], first["amount"]) == ("food", 1)
    assert first["evidence"]["terminal_id"] == "T-PKY-0042" and first["run_id"] is not None
    assert first["run_started_at"] and first["settled_at"] and first["wall_time"]
    assert rows[1]["evidence"]["terminal_id"] == "T-PKY-0042"

    one = world.client.get("/api/v1/settlements?limit=1", headers=auth).get_json()
    assert [r["id"] for r in one["settlements"]] == [rows[0]["id"]] and one["next_after"] == rows[0]["id"]
    rest = world.client.get(f"/api/v1/settlements?limit=1&after={one['next_after']}", headers=auth).get_json()
    assert [r["id"] for r in rest["settlements"]] == [rows[1]["id"]]
    by_card = world.client.get(f"/api/v1/settlements?card_id={b.card_id.hex()}", headers=auth).get_json()
    assert [r["outcome"] for r in by_card["settlements"]] == ["not_taken"]
    assert world.client.get("/api/v1/settlements?terminal_id=T-PKY-0041", headers=auth).get_json()[
        "settlements"] == rows
    assert world.client.get("/api/v1/settlements?terminal_id=T-PKY-0042", headers=auth).get_json()[
        "settlements"] == []  # the torn write's terminal, not the evidence's

    for bad in ("limit=0", "limit=501", "after=-1", "terminal=T-PKY-0041", "card_id=" + "c" * 65, "card_id=a%00b"):
        r = world.client.get(f"/api/v1/settlements?{bad}", headers=auth)
        assert r.status_code == 400, (bad, r.get_json())
    assert world.client.get("/api/v1/settlements").status_code == 401


def test_the_auditor_page_lists_settlements_and_is_linked_from_card_and_terminal(
        app: Any, settled: dict[str, Any]) -> None:
    from tests.audit_login import form_login

    world, a, b = settled["world"], settled["a"], settled["b"]
    client = world.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    card_page = client.get(f"/audit/cards/{a.card_id.hex()}").get_data(as_text=True)
    link = re.search(r'id="settlements-link" href="([^"]+)"', card_page)
    assert link and link.group(1) == f"/audit/settlements?card_id={a.card_id.hex()}"
    terminal_page = client.get("/audit/terminals/T-PKY-0041").get_data(as_text=True)
    assert 'href="/audit/settlements?terminal_id=T-PKY-0041"' in terminal_page

    r = client.get(link.group(1))
    assert r.status_code == 200 and "script-src 'none'" in r.headers["Content-Security-Policy"]
    html = r.get_data(as_text=True)
    assert "<script" not in html
    assert re.findall(r'data-outcome="(\w+)"', html) == ["taken"]
    assert ">diambil<" in html and a.household_ref.hex() in html and "T-PKY-0042" in html  # Bahasa Indonesia
    html = client.get("/audit/settlements?lang=en").get_data(as_text=True)
    assert re.findall(r'data-outcome="(\w+)"', html) == ["taken", "not_taken"]
    assert ">not taken<" in html and "Settled torn writes" in html and b.card_id.hex() in html
    assert 'id="no-settlements"' in client.get("/audit/settlements?card_id=ffffffffffffffff").get_data(as_text=True)
    assert client.get("/audit/settlements?after=x").status_code == 400
    assert client.get("/audit/settlements?outcome=taken").status_code == 400
