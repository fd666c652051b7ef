"""PostgreSQL's pool pre-ping is skipped for a connection returned in the last seconds (issue 21).

server/db.py pings a pooled connection at checkout only when it sat in the pool for
``PING_IDLE_S`` or longer, or when any connection was invalidated since it was returned.
A connection the server dropped inside that window fails its request with a 503 (nothing
acknowledged, the counter retries), and the retry gets a working connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

import server.db


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, pg_database_url: str) -> str:
    """PostgreSQL only (SQLite has no pool pre-ping), emptied as tests/fixtures/db.py's ``db_url`` does."""
    from sqlalchemy import create_engine

    from tests.fixtures.db import _ALL_TABLES

    engine = create_engine(pg_database_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {conn.execute(text(_ALL_TABLES)).scalar_one()} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database_url


@pytest.fixture
def pings(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    from server.extensions import db

    with app.app_context():
        dialect = db.engine.dialect
    seen: list[Any] = []
    real = dialect.do_ping

    def counting(dbapi_conn: Any) -> bool:
        seen.append(dbapi_conn)
        return bool(real(dbapi_conn))

    monkeypatch.setattr(dialect, "do_ping", counting)
    yield seen


def _kill_backends(app: Any) -> int:
    """Terminate every other backend of the test database (the app's pooled connections)."""
    from sqlalchemy import create_engine

    with app.app_context():
        from server.extensions import db

        url = db.engine.url
    admin = create_engine(url)
    try:
        with admin.connect() as c:
            killed = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
    finally:
        admin.dispose()
    return int(killed)


def test_a_connection_just_returned_is_not_pinged(world, pings):
    t = world.enrol("T-WARM")
    for _ in range(3):
        r = world.upload(t, [t.append().message for _ in range(3)])
        assert r.status_code == 200, r.get_json()
    assert pings == []


def test_an_idle_connection_is_pinged_and_replaced_when_dead(world, pings, app, monkeypatch):
    """Past the idle window the pre-ping runs: a connection the server dropped is replaced, no error."""
    t = world.enrol("T-IDLE")
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    monkeypatch.setattr(server.db, "PING_IDLE_S", 0.0)
    assert _kill_backends(app) >= 1
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert len(pings) >= 1


def test_a_connection_dropped_inside_the_window_is_replaced_before_anything_is_written(world, pings, app):
    """The attack on the skipped ping: every pooled connection killed right after its last use. The
    upload's first statement (the terminal look-up, a read) finds it dead and is repeated on a new
    connection: the batch is stored and acknowledged once, no 500, no retry needed."""
    from server.extensions import db

    t = world.enrol("T-DROP")
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    assert _kill_backends(app) >= 1
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["counts"]["accepted"] == 3
    with app.app_context():
        stored = db.session.execute(text("SELECT count(*) FROM journal_entries WHERE terminal_id = 'T-DROP'"))
        assert stored.scalar_one() == 4


def test_a_write_on_a_connection_dropped_mid_request_answers_503_and_the_retry_is_stored(world, app, monkeypatch):
    """Dropped after the look-up (between read and write): 503, nothing acknowledged; the retry stores it."""
    import server.blueprints.journal as journal

    t = world.enrol("T-MID")
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    real = journal.verify_batch

    def verify_then_drop(*args: Any) -> Any:
        out = real(*args)
        _kill_backends(app)
        return out

    monkeypatch.setattr(journal, "verify_batch", verify_then_drop)
    messages = [t.append().message for _ in range(3)]
    first = world.upload(t, messages)
    assert first.status_code == 503, first.get_json()
    assert first.get_json()["error"]["code"] == "database_unavailable"
    assert "receipt" not in first.get_json()
    monkeypatch.setattr(journal, "verify_batch", real)
    retry = world.upload(t, messages)  # the counter retries what was not acknowledged
    assert retry.status_code == 200, retry.get_json()
    assert retry.get_json()["counts"]["accepted"] == 3
