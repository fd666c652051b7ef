"""A small upload costs one pooled connection and no benefit-cycle insert once the cycle is known (issue 21).

- One checkout per request: the terminal look-up and the write share the request's connection,
  so PostgreSQL's pool pre-ping runs once (tests/test_failover.py keeps the failover answers).
- ``ensure_cycles`` runs only for cycles this process has not seen committed; a new database
  connection (a failover, a restore) forgets them, and a miss is the insert-if-absent again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, select, text


def _count(engine: Any, name: str) -> list[Any]:
    seen: list[Any] = []
    event.listen(engine, name, lambda *args: seen.append(args))
    return seen


def test_one_upload_checks_out_one_connection(app, world):
    from server.extensions import db

    t = world.enrol("T-ONE")
    with app.app_context():
        engine = db.engine
    checkouts = _count(engine.pool, "checkout")
    for _ in range(3):
        r = world.upload(t, [t.append().message for _ in range(3)])
        assert r.status_code == 200, r.get_json()
    assert len(checkouts) == 3


def test_a_known_cycle_is_not_inserted_again(app, world):
    from server.extensions import db

    t = world.enrol("T-CYC")
    with app.app_context():
        engine = db.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: statements.append(stmt))
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert any("benefit_cycles" in s for s in statements)
    statements.clear()
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert not any("benefit_cycles" in s for s in statements)


def test_a_new_connection_forgets_the_known_cycles(app, world):
    """A restore that lost the cycle row: after the pool reconnects, the next upload inserts it again."""
    from server.extensions import db

    t = world.enrol("T-RESTORE")
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    with app.app_context():
        session = db.write_session()
        session.execute(text("DELETE FROM benefit_cycles"))
        session.commit()
    with app.app_context():
        db.engine.dispose()  # every pooled connection closed: the next checkout connects anew
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(text("benefit_cycles"))) == 1


def test_known_cycles_ignore_an_insert_that_straddles_a_reconnect():
    from server.cycles import KnownCycles

    known = KnownCycles()
    missing, generation = known.missing({20261, 20262})
    assert missing == {20261, 20262}
    known.forget()  # a new connection while the insert was under way
    known.add(missing, generation)
    assert known.missing({20261})[0] == {20261}
    missing, generation = known.missing({20261})
    known.add(missing, generation)
    assert known.missing({20261, 20262})[0] == {20262}


def test_closing_the_session_returns_the_request_connection(app):
    """``db.session.close(); db.engine.dispose()`` (CLIs, tests) leaves no connection open, and the
    session works again afterwards in the same context."""
    from server.extensions import db

    with app.app_context():
        db.session.execute(text("SELECT 1"))
        assert db.engine.pool.checkedout() == 1
        db.session.close()
        assert db.engine.pool.checkedout() == 0
        assert db.session.execute(text("SELECT 1")).scalar_one() == 1
    with app.app_context():
        assert db.engine.pool.checkedout() == 0
