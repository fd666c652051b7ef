"""Card states written by a since-revoked terminal key (issue 20), on SQLite and PostgreSQL.

Counters serve a card whose newest state a terminal wrote before its key was revoked
(docs/security.md "Revocation that does not exclude"). Reconciliation reports, per card:
``revoked_key_state`` for a state that key wrote at or after the revocation instant (by its
signed time, or backdated: its predecessor on the card was written at or after the instant),
and ``revoked_state_built_on`` for a redemption elsewhere, after the instant, that read a
state of that key. A state the stolen key wrote and no journal ever carried is seen only as
the reading counter's ``card_chain_gap`` (the journal does not say which key signed a state read).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from server.extensions import db
from server.reconcile.models import FindingKind, Severity, TerminalSite
from simulator.journals import District
from tests.reconcile_support import audit_db, evidence, findings, install, run, upload_all  # noqa: F401

UTC = dt.UTC
DAY = dt.date(2026, 3, 2)


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(DAY.year, DAY.month, DAY.day, h, m, tzinfo=UTC).timestamp() * 1000)


def _ids(*entries) -> set[str]:
    return {e.entry.entry_id.hex() for e in entries}


def test_states_of_a_revoked_key(app, audit_db, world):  # noqa: F811
    d = District.new(3, 5, seed=5, regions=["62.71"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    revoked, good, other = d.terminals
    honest, late, backdated, stolen, untouched = d.cards

    # Before 02:00 (the revocation instant): an honest state, served afterwards at another counter.
    honest_w = revoked.redeem(honest, _ms(1), "food", 50_000)[1]
    honest_r = good.redeem(honest, _ms(3), "food", 50_000)[1]
    # After 02:00 by its signed time, then built on by a counter that should have declined it.
    late_w = revoked.redeem(late, _ms(2, 30), "food", 50_000)[1]
    late_r = good.redeem(late, _ms(4), "food", 50_000)[1]
    # Backdated: the key signs 01:30 on top of a state written at 03:00.
    pred = good.redeem(backdated, _ms(3), "food", 50_000)[1]
    revoked.step_clock(-2 * 3600_000)
    back_w = revoked.redeem(backdated, _ms(3, 30), "food", 50_000)[1]
    revoked.step_clock(2 * 3600_000)
    # Stolen key, never journalled: the thief writes the next slot; a good counter reads it.
    good.redeem(stolen, _ms(2, 40), "food", 50_000)
    stolen.slot_seq += 1
    stolen.state_hash = hashlib.sha256(b"thief").digest()
    other.redeem(stolen, _ms(5), "food", 50_000)
    revoked.redeem(untouched, _ms(1, 10), "food", 50_000)  # before 02:00, never read again: nothing

    install(app, world, d)
    with app.app_context():
        session = db.write_session()
        session.get(TerminalSite, revoked.terminal_id).compromised_from = dt.datetime.fromtimestamp(
            _ms(2) / 1000, UTC)
        session.commit()
    upload_all(world, d)
    run(app)

    states = {f.card_id: f for f in findings(app, FindingKind.REVOKED_KEY_STATE)}
    assert set(states) == {late.card_id, backdated.card_id}
    assert evidence(states[late.card_id]) == _ids(late_w)
    assert json.loads(states[late.card_id].detail)["backdated"] == 0
    assert evidence(states[backdated.card_id]) == _ids(back_w, pred)
    assert json.loads(states[backdated.card_id].detail)["backdated"] == 1
    assert {f.terminal_id for f in states.values()} == {revoked.terminal_id}
    assert {f.severity for f in states.values()} == {Severity.CRITICAL}

    built = {f.card_id: f for f in findings(app, FindingKind.REVOKED_STATE_BUILT_ON)}
    assert set(built) == {honest.card_id, late.card_id}
    assert evidence(built[honest.card_id]) == _ids(honest_w, honest_r)
    assert built[honest.card_id].severity is Severity.LOW
    assert json.loads(built[honest.card_id].detail)["state_after_revocation"] is False
    assert evidence(built[late.card_id]) == _ids(late_w, late_r)
    assert built[late.card_id].severity is Severity.HIGH

    gaps = {f.card_id for f in findings(app, FindingKind.CARD_CHAIN_GAP)}
    assert stolen.card_id in gaps  # seen, but not attributed to the revoked key

    again = run(app)  # idempotent
    assert again.new == 0
