"""The per-boot clock state (``reconcile_boots``, migration 0017) an incremental run folds equals a full rebuild's.

An incremental run folds only the entries above the watermark into ``reconcile_boots`` and
``clock_skew`` flags from it (docs/reconciliation.md §Incremental). After every round of uploads
the table must hold, row for row and to the last bit of each double, what a full run rebuilds
from the whole journal: a boot whose entries arrive over several rounds, a reboot, a range
uploaded after the entries that follow it, and (PostgreSQL) the watermark margin that makes a
run fold entries a second time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from server.extensions import db
from server.reconcile.engine import reconcile
from server.reconcile.models import ReconcileBoot
from server.reconcile.observations import ReconcileConfig
from simulator.journals import District
from tests.reconcile_support import audit_db, install, upload  # noqa: F401 - audit_db is a fixture

DAY = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)


def _ms(minutes: float) -> int:
    return int(DAY.timestamp() * 1000 + minutes * 60_000)


def _state(session: Any) -> dict[tuple[str, int], tuple[float, float, float, int]]:
    return {(r.terminal_id, r.boot_id): (r.min_offset_s, r.max_offset_s, r.max_ahead_s, r.journal_id)
            for r in session.scalars(select(ReconcileBoot))}


@pytest.mark.parametrize("margin_s", [0, 3600], ids=["exact", "margin"])
def test_boot_state_after_incremental_runs_equals_a_full_rebuild(app, audit_db, world, margin_s):  # noqa: F811
    cfg = ReconcileConfig(watermark_margin_s=margin_s)  # 3600: on PostgreSQL every run folds everything again
    d = District.new(2, 6, seed=5, regions=["62.71"])
    steady, rebooted = d.terminals[:2]
    for t in d.terminals:
        t.boot(_ms(-30))
    # steady: one boot over every round, its clock stepped both ways between rounds (spread grows each round)
    steps = {6: -120_000, 12: +600_000, 18: -45_000}
    for i in range(24):
        if i in steps:
            steady.step_clock(steps[i])
        steady.redeem(d.cards[i % 6], _ms(10 * i), "food", 1)
    # rebooted: taps, a clock step, a reboot (new boot id, monotonic clock restarts), more taps
    for i in range(8):
        if i == 3:
            rebooted.step_clock(-900_000)
        if i == 5:
            rebooted.boot(_ms(10 * i + 3))
        rebooted.balance(d.cards[i % 6], _ms(10 * i + 5))
    install(app, world, d)
    s, r = [e.message for e in steady.entries], [e.message for e in rebooted.entries]
    rounds = [
        (s[:10], r[6:]),     # the rebooted counter's second boot and the tail of its first arrive first
        (s[10:20], []),
        (s[20:35], r[:6]),   # its earlier range, late: folded into boots already in the table
        (s[35:], []),
    ]
    modes, seen = [], []
    for batch_s, batch_r in rounds:
        for t, batch in ((steady, batch_s), (rebooted, batch_r)):
            for resp in upload(world, t, batch) if batch else ():
                assert resp.status_code == 200, resp.get_json()
        with app.app_context():
            modes.append(reconcile(db.write_session(), cfg, incremental=True).mode)
            session = db.write_session()
            folded = _state(session)
            reconcile(session, cfg, commit=False)
            rebuilt = _state(session)
            session.rollback()
        assert folded == rebuilt
        seen.append(folded)
    assert modes[0] == "full" and set(modes[1:]) == {"incremental"}
    key = (steady.terminal_id, 1)
    spreads = [state[key][1] - state[key][0] for state in seen]
    assert spreads[0] < spreads[1] < spreads[3], spreads  # the one boot grew over several increments
    assert len({state[key][3] for state in seen}) == 4  # a higher entry id folded in each round
    assert {b for t, b in seen[-1] if t == rebooted.terminal_id} == {1, 2}


def test_migration_0017_makes_the_next_run_full(tmp_path):
    """An existing watermark would fold new entries into an empty table: 0017 forgets its run, so the next is full."""
    from sqlalchemy import text

    from server.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(engine, "0016")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO reconcile_state (id, journal_id, reference_digest, run_id) "
                              "VALUES (1, 10, 'd', 5)"))
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT journal_id, run_id FROM reconcile_state")).one() == (10, None)
            assert conn.execute(text("SELECT count(*) FROM reconcile_boots")).scalar_one() == 0
    finally:
        engine.dispose()
