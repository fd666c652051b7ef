"""Schema, connections, CLI and the OpenAPI description (schemathesis), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from sqlalchemy import event

from server.db import make_engine
from server.extensions import db
from server.models import Base


# SQLite cannot reflect the expression index on lower(username) (migration 0005); Alembic then skips it.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrations_match_models(app):
    with app.app_context(), db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_sqlite_pragmas_on_every_connection(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_s=1.5)
    conns = [engine.connect() for _ in range(3)]  # three distinct pooled DBAPI connections
    try:
        for conn in conns:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        for conn in conns:
            conn.close()
        engine.dispose()


def test_write_transactions_begin_immediate_on_sqlite(app):
    """A write session holds SQLite's write lock from its first statement (BEGIN IMMEDIATE); a read does not.

    Observed as another writer sees it (a second driver connection's BEGIN IMMEDIATE), not by the
    statement text: the BEGIN runs on the driver connection, below SQLAlchemy's cursor events.
    """
    import sqlite3

    if not app.config["DATABASE_URL"].startswith("sqlite"):
        pytest.skip("BEGIN IMMEDIATE is SQLite's; PostgreSQL uses row locks + lock_timeout")
    path = app.config["DATABASE_URL"].removeprefix("sqlite:///")

    def another_writer_can_start() -> bool:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        finally:
            other.close()

    with app.app_context():
        db.session.execute(Base.metadata.tables["people"].select())  # a read first: no write lock
        assert another_writer_can_start()
        db.session.rollback()
        session = db.write_session()
        assert session.in_transaction()
        assert not another_writer_can_start()  # the write session took the lock at BEGIN
        session.rollback()
        assert another_writer_can_start()


def test_cli_db_upgrade_and_people_add(db_url, monkeypatch):
    from huma.cli import cli

    monkeypatch.setenv("DATABASE_URL", db_url)
    runner = CliRunner()
    r = runner.invoke(cli, ["server", "db", "upgrade"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["server", "people", "add", "root", "--role", "admin"],
                      input="a long password\na long password\n")
    assert r.exit_code == 0, r.output
    from server import create_app

    app = create_app({"DATABASE_URL": db_url})
    client = app.test_client()
    assert client.post("/api/v1/auth/login",
                       json={"username": "root", "password": "a long password"}).status_code == 200
    with app.app_context():
        db.engine.dispose()


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    served = {str(rule) for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"}
    documented = {p.replace("{", "<").replace("}", ">") for p in spec["paths"]}
    assert served == documented


def test_a_nul_in_the_login_next_parameter_is_a_documented_400(client):
    """Every /audit route refuses a NUL in its query (PostgreSQL text cannot hold one); the
    login form's 400 was undocumented, which schemathesis found only on some runs."""
    assert client.get("/audit/login?next=%00").status_code == 400  # a browser: the HTML error page
    r = client.get("/audit/login?next=%00", headers={"Authorization": "Bearer x"})  # a script: JSON
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed_request"
    spec = client.get("/openapi.json").get_json()
    for method in ("get", "post"):
        assert "400" in spec["paths"]["/audit/login"][method]["responses"], method


def test_schemathesis_finds_no_server_errors(app, world):
    """Property-based requests from the served description: no 5xx, responses match the schema."""
    schema = schemathesis.from_wsgi("/openapi.json", app)
    world.enrol("T-900")
    token = world.admin_token
    failures: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=8, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
            response = case.call_wsgi()
            calls.append(response.status_code)
            case.validate_response(response, checks=(
                schemathesis.checks.not_a_server_error,
                schemathesis.checks.status_code_conformance,
                schemathesis.checks.content_type_conformance,
                schemathesis.checks.response_schema_conformance,
            ))

        from hypothesis import given

        try:
            given(operation.as_strategy())(check)()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.verbose_name}: {exc}")
    assert not failures, "\n".join(failures)
    assert len(calls) >= 40 and 500 not in calls  # ~20 operations, several examples each


def test_migration_0007_gives_sqlite_journal_times_their_microseconds(tmp_path):
    """Rows the fast upload path stored as "YYYY-MM-DD HH:MM:SS" (whole seconds, sqlite3's
    datetime adapter) become "… .000000" like every other write, so text comparisons with
    cycle starts and revocation times see equal instants as equal."""
    from sqlalchemy import text

    from server.db import upgrade

    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO terminals (terminal_id, status, csr_der, public_key, kid, created_at) "
                          "VALUES ('T-1', 'APPROVED', x'', x'', x'01020304', '2026-01-01 00:00:00.000000')"))
        for seq, wall in ((1, "2026-03-02 17:00:00"), (2, "2026-03-02 17:00:01.250000")):
            conn.execute(text(
                "INSERT INTO journal_entries (entry_id, terminal_id, boot_id, seq, kind, wall_time, mono_ns, "
                "clock_synced, prev_entry_hash, entry_hash, raw, received_at) VALUES (:id, 'T-1', 1, :seq, 2, :wall, "
                "0, 1, zeroblob(32), :h, x'00', '2026-03-03 08:00:00')"),
                {"id": bytes([seq]) * 16, "seq": seq, "wall": wall, "h": bytes([seq]) * 32})
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT wall_time, received_at FROM journal_entries ORDER BY seq")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("2026-03-02 17:00:00.000000", "2026-03-03 08:00:00.000000"),
                                       ("2026-03-02 17:00:01.250000", "2026-03-03 08:00:00.000000")]
