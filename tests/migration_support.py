"""Shared set-up for data-migration tests (no tests here): a database at an older revision, a migration module.

A data migration is tested on a database upgraded to the revision before it (SQLite file, or a fresh
PostgreSQL database dropped afterwards), filled as the older server stored it, then upgraded.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from tests.fixtures.db import PG_ADMIN_URL

VERSIONS = Path(__file__).parents[1] / "server" / "migrations" / "versions"


def ms_at(h: int, m: int = 0) -> int:
    """POSIX milliseconds of 2 March 2026 ``h``:``m`` UTC (the migration tests' journal day)."""
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=dt.UTC).timestamp() * 1000)


def load_migration(filename: str) -> ModuleType:
    """The migration module ``server/migrations/versions/<filename>``, loaded by path (as Alembic does)."""
    spec = importlib.util.spec_from_file_location(f"migration_{filename.split('_', 1)[0]}", VERSIONS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def database_at(backend: str, revision: str, tmp_path: Path) -> Iterator[Engine]:
    """Yield an engine on an empty database upgraded to ``revision``; PostgreSQL's is dropped afterwards.

    :param backend: ``"sqlite"`` (a file in ``tmp_path``) or ``"postgresql"`` (skipped when unreachable).
    """
    from server.db import make_engine, upgrade

    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        upgrade(engine, revision)
        yield engine
        engine.dispose()
        return
    name = f"huma_test_m{revision}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable: {str(exc.orig).splitlines()[0]}")
    engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        upgrade(engine, revision)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
