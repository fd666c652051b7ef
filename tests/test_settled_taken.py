"""A torn card write that reconciliation settled as taken counts as taken in every server total.

The attack: a household's food package is written to its card, the card is pulled mid-write
(PENDING, UNCERTAIN: the counter cannot tell) and the card is next seen elsewhere already
holding that state — the package was taken. Reconciliation settles the write ``finished``
(``write_settlements``, docs/reconciliation.md §Settling torn writes). The household then
reports its card lost: a balance statement that counts only COMMIT/FINISHED entries says one
package is left, and the re-issued card is loaded with it — the household is paid twice.
Everything goes through the real API (issuance file, enrolment, signed journal upload,
reconciliation). SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import random
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select

from cardlib.records.balance import verify_balance
from cardlib.records.claims import Entitlement, IdentityClaims, Unit
from cardlib.records.journal import EntryKind
from server.reconcile.models import FindingKind
from simulator.journals import SimCard, SimTerminal
from tests.reconcile_support import audit_db, findings, run, upload  # noqa: F401 - audit_db: fixture
from tests.test_households import _issue
from tests.test_registry_reconcile import (  # noqa: F401 - keys, registry: fixtures
    UTC,
    Keys,
    _card,
    _enrol,
    keys,
    registry,
)

HOUR_MS = 3_600_000


def _now_card(n: int, programmes: dict[int, Entitlement], ref: bytes | None = None) -> IdentityClaims:
    now = dt.datetime.now(UTC)
    c = dataclasses.replace(_card(n, "62.71", programmes), valid_from=now.date() - dt.timedelta(days=30),
                            valid_to=now.date() + dt.timedelta(days=700))
    return dataclasses.replace(c, household_ref=ref) if ref else c


def _terminal(world: Any, name: str, boot_ms: int) -> SimTerminal:
    t = SimTerminal.new(name, "62.71", random.Random(name))
    assert _enrol(world, t, region=t.region).status_code == 202
    world.approve(t.terminal_id)
    t.boot(boot_ms)
    return t


def _sim(c: IdentityClaims) -> SimCard:
    return SimCard(c.card_id.hex(), c.uid, c.region)


def _torn_then_seen(here: SimTerminal, there: SimTerminal, card: SimCard, at_ms: int, amount: int = 1) -> Any:
    """A write torn at ``here`` (PENDING, UNCERTAIN) that landed; ``there`` later reads the card in that state."""
    p = here.torn_redeem(card, at_ms, "food", amount)
    e = p.entry
    here.append(EntryKind.UNCERTAIN, at_ms + 500, card_id=e.card_id, tag_uid=e.tag_uid, programme=e.programme,
                amount=e.amount, slot_seq_before=e.slot_seq_before, slot_seq_after=e.slot_seq_after,
                state_hash_prev=e.state_hash_prev, state_hash_new=e.state_hash_new, ntag_counter=e.ntag_counter)
    there.balance(card, at_ms + 600_000)  # reads the torn state as the card's: it took effect
    return p


def _settlements(app: Any) -> dict[str, str]:
    from server.extensions import db
    from server.reconcile.settlements import WriteSettlement

    with app.app_context():
        return {r.entry_id.hex(): r.outcome for r in db.session.scalars(select(WriteSettlement))}


def _upload(world: Any, *terminals: SimTerminal) -> None:
    for t in terminals:
        assert all(r.status_code == 200 for r in upload(world, t, t.messages()))
        t.entries.clear()


def test_a_household_whose_torn_write_was_settled_taken_gets_no_second_package_on_reissue(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    world = registry
    now_ms = int(dt.datetime.now(UTC).timestamp() * 1000)
    old = _now_card(11, {1: Entitlement(Unit.PACKAGE, 1)})
    _issue(world, keys, old, dt.datetime.now(UTC) - dt.timedelta(days=10))
    here, there = _terminal(world, "T-PKY-0011", now_ms - 5 * HOUR_MS), _terminal(world, "T-PKY-0012",
                                                                                 now_ms - 5 * HOUR_MS)
    p = _torn_then_seen(here, there, _sim(old), now_ms - 3 * HOUR_MS)
    _upload(world, here, there)
    run(app)
    assert _settlements(app) == {p.entry.entry_id.hex(): "finished"}

    ref = old.household_ref.hex()
    body = world.client.get(f"/api/v1/households/{ref}", headers=world.auth()).get_json()
    assert [(b["programme"], b["entitled"], b["redeemed"], b["remaining"]) for b in body["balances"]] == [
        ("food", 1, 1, 0)]
    r = world.client.post(f"/api/v1/households/{ref}/balance-statement", headers=world.auth(),
                          json={"reissue_of": old.card_id.hex()})
    assert r.status_code == 200, r.get_json()
    s = verify_balance(base64.b64decode(r.get_json()["statement"]),
                       load_pem_public_key(r.get_json()["server_key"].encode()))
    assert s.remaining == {1: 0}  # the re-issued card carries nothing more for this cycle

    from server.dashboard import queries
    from server.extensions import db

    with app.app_context():  # the dashboard: the household collected its package; the amount is counted
        cycle = queries.current_cycle(db.session)
        assert queries.totals(queries.progress(db.session, cycle)).collected == 1
        assert queries.pending(db.session, cycle) == []
        assert queries.amounts(db.session, cycle) == [("food", "package", 1)]


def test_a_write_settled_taken_counts_in_the_card_and_household_entitlement_checks(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    """One package each: the lost card's settled torn write plus a COMMIT on it, and one on its re-issue."""
    world = registry
    now_ms = int(dt.datetime.now(UTC).timestamp() * 1000)
    old = _now_card(12, {1: Entitlement(Unit.PACKAGE, 1)})
    new = _now_card(13, {1: Entitlement(Unit.PACKAGE, 1)}, ref=old.household_ref)
    lone = _now_card(14, {1: Entitlement(Unit.PACKAGE, 1)})
    _issue(world, keys, old, dt.datetime.now(UTC) - dt.timedelta(days=10))
    _issue(world, keys, lone, dt.datetime.now(UTC) - dt.timedelta(days=10))
    here, there = _terminal(world, "T-PKY-0021", now_ms - 9 * HOUR_MS), _terminal(world, "T-PKY-0022",
                                                                                 now_ms - 9 * HOUR_MS)
    lone_card = _sim(lone)
    _torn_then_seen(here, there, _sim(old), now_ms - 8 * HOUR_MS)
    _torn_then_seen(here, there, lone_card, now_ms - 8 * HOUR_MS)
    there.redeem(lone_card, now_ms - 7 * HOUR_MS, "food", 1)  # the same card paid again: 2 of 1
    _upload(world, here, there)
    _issue(world, keys, new, dt.datetime.now(UTC) - dt.timedelta(hours=6), reissue_of=old.card_id)
    there.redeem(_sim(new), now_ms - 5 * HOUR_MS, "food", 1)  # the household paid again on its new card
    _upload(world, there)
    run(app)
    assert sorted(_settlements(app).values()) == ["finished", "finished"]

    per_card = findings(app, FindingKind.ENTITLEMENT_EXCEEDED)
    assert [f.card_id for f in per_card] == [lone.card_id.hex()], [f.summary for f in findings(app)]
    assert '"total": 2' in per_card[0].detail
    over = findings(app, FindingKind.HOUSEHOLD_OVER_ENTITLEMENT)
    assert len(over) == 1, [f.summary for f in findings(app)]
    assert over[0].card_id == new.card_id.hex() and '"total": 2' in over[0].detail
    assert old.card_id.hex() in over[0].detail


def test_a_settled_write_the_counter_also_closed_itself_counts_once(
        app: Any, registry: Any, keys: Keys) -> None:  # noqa: F811 - fixtures
    """The counter's own FINISHED for the write arrives after the server settled it: one package, not two."""
    world = registry
    now_ms = int(dt.datetime.now(UTC).timestamp() * 1000)
    card = _now_card(15, {1: Entitlement(Unit.PACKAGE, 1)})
    _issue(world, keys, card, dt.datetime.now(UTC) - dt.timedelta(days=10))
    here, there = _terminal(world, "T-PKY-0031", now_ms - 5 * HOUR_MS), _terminal(world, "T-PKY-0032",
                                                                                 now_ms - 5 * HOUR_MS)
    p = _torn_then_seen(here, there, _sim(card), now_ms - 3 * HOUR_MS)
    _upload(world, here, there)
    run(app)
    assert list(_settlements(app).values()) == ["finished"]
    e = p.entry
    here.append(EntryKind.FINISHED, now_ms - 2 * HOUR_MS, card_id=e.card_id, tag_uid=e.tag_uid,
                programme=e.programme, amount=e.amount, slot_seq_before=e.slot_seq_before,
                slot_seq_after=e.slot_seq_after, state_hash_prev=e.state_hash_prev,
                state_hash_new=e.state_hash_new, ntag_counter=e.ntag_counter)
    _upload(world, here)
    run(app)
    body = world.client.get(f"/api/v1/households/{card.household_ref.hex()}", headers=world.auth()).get_json()
    assert [(b["redeemed"], b["remaining"]) for b in body["balances"]] == [(1, 0)]
    assert findings(app, FindingKind.ENTITLEMENT_EXCEEDED) == []
