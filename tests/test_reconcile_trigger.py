"""``RECONCILE_AFTER_UPLOAD`` (issue 21): an accepted upload starts an incremental reconciliation
in the background, single-flight with at most one pending, never delaying or failing the upload."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from sqlalchemy import func, select

from tests.reconcile_support import findings

WAIT_S = 60.0


def _runs(app: Any) -> list[Any]:
    from server.extensions import db
    from server.reconcile.models import ReconcileRun

    with app.app_context():
        return list(db.session.execute(select(ReconcileRun.id, ReconcileRun.started_at, ReconcileRun.finished_at)
                                       .order_by(ReconcileRun.id)))


def _trigger(app: Any) -> Any:
    from server.reconcile_trigger import trigger_of

    return trigger_of(app)


def _gap_batch(t: Any) -> list[bytes]:
    """Seqs 1, 2 and 4 of a terminal's journal: seq 3 missing (a terminal_gap)."""
    entries = [t.append() for _ in range(4)]
    return [entries[0].message, entries[1].message, entries[3].message]


def test_an_upload_leads_to_findings_without_a_manual_run(app, world):
    from server.reconcile.models import FindingKind

    app.config["RECONCILE_AFTER_UPLOAD"] = True
    t = world.enrol("T-AUTO")
    r = world.upload(t, _gap_batch(t))
    assert r.status_code == 200, r.get_json()
    assert _trigger(app).wait_idle(WAIT_S)
    gaps = findings(app, FindingKind.TERMINAL_GAP)
    assert "T-AUTO" in [g.terminal_id for g in gaps]


def test_off_by_default_no_run(app, world):
    before = _runs(app)
    t = world.enrol("T-OFF")
    r = world.upload(t, _gap_batch(t))
    assert r.status_code == 200, r.get_json()
    from server.reconcile_trigger import _KEY

    assert _KEY not in app.extensions
    assert _runs(app) == before


def test_two_quick_uploads_give_one_or_two_runs_never_at_once(app, world, monkeypatch):
    from server.reconcile import engine

    app.config["RECONCILE_AFTER_UPLOAD"] = True
    real, active, most = engine.reconcile, [0], [0]
    lock = threading.Lock()

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.3)  # long enough for the second upload to arrive during the first run
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(engine, "reconcile", counted)
    a, b = world.enrol("T-Q1"), world.enrol("T-Q2")
    before = len(_runs(app))
    for t in (a, b):
        r = world.upload(t, [t.append().message for _ in range(3)])
        assert r.status_code == 200, r.get_json()
    trigger = _trigger(app)
    assert trigger.wait_idle(WAIT_S)
    runs = _runs(app)[before:]
    assert 1 <= len(runs) == trigger.runs <= 2
    assert most[0] == 1
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at


def test_a_failing_run_does_not_touch_the_upload(app, world, monkeypatch):
    from server.extensions import db
    from server.models import JournalEntryRow
    from server.reconcile import engine

    app.config["RECONCILE_AFTER_UPLOAD"] = True

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("reconciliation bug")

    monkeypatch.setattr(engine, "reconcile", broken)
    t = world.enrol("T-FAIL")
    for _ in range(2):
        r = world.upload(t, [t.append().message for _ in range(2)])
        assert r.status_code == 200, r.get_json()
        assert _trigger(app).wait_idle(WAIT_S)
    assert _trigger(app).runs == 2
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(JournalEntryRow)) == 4


def test_an_upload_storing_nothing_new_starts_no_run(app, world):
    app.config["RECONCILE_AFTER_UPLOAD"] = True
    t = world.enrol("T-DUP")
    batch = [t.append().message]
    assert world.upload(t, batch).status_code == 200
    assert _trigger(app).wait_idle(WAIT_S)
    before = _trigger(app).runs
    assert world.upload(t, batch).status_code == 200  # a retry: duplicates only
    assert _trigger(app).wait_idle(WAIT_S)
    assert _trigger(app).runs == before == 1
