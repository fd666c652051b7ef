"""Engine, sessions and migrations (no Flask imports).

SQLite (the default, for a district pilot) gets WAL, a busy timeout and foreign
keys on *every* connection via a ``connect`` event, and write transactions
start with ``BEGIN IMMEDIATE`` so two writers never deadlock upgrading a
read lock (SV-3). PostgreSQL (``postgresql+psycopg://...``) gets a lock timeout
so a blocked writer fails fast with a retryable error instead of hanging.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from server.errors import ConfigurationError, DatabaseBusy, SchemaNotCurrent

log = logging.getLogger(__name__)

#: Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE.
WRITE = "huma_write"

#: PostgreSQL SQLSTATEs that mean "busy, retry": serialization failure, deadlock,
#: lock not available (lock_timeout), query canceled (statement_timeout),
#: too many connections, cannot connect now.
_PG_BUSY_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "53300", "57P03"})
_SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")
#: PostgreSQL SQLSTATEs that mean "the server went away" (a primary failing over): admin
#: shutdown, crash shutdown; and every connection exception (class 08).
_PG_GONE_SQLSTATES = frozenset({"57P01", "57P02"})
#: ``?host=h1:p1,h2:p2`` (libpq's comma list with ports), which SQLAlchemy passes on unsplit.
_HOST_PORT_LIST = re.compile(r"[A-Za-z0-9.-]+:[0-9]+(?:,[A-Za-z0-9.-]+:[0-9]+)+")


def normalise_url(url: str) -> str:
    """Map ``postgres://`` / ``postgresql://`` URLs to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


#: SQLite settings for a journal of millions of rows (per connection; sqlite.org/pragma.html).
#: Each uploaded entry lands on a random leaf of two indexes (entry_id, card_id), so the
#: default 2 MiB page cache and a checkpoint (with fsync) every 1,000 WAL pages made a
#: 1M-row upload wait on the disk for ~0.5x of its Ed25519 time:
#: - ``cache_size``: 32 MiB of page cache (negative = KiB), allocated only as used;
#: - ``mmap_size``: reads through a 128 MiB shared memory map instead of read() calls;
#: - ``wal_autocheckpoint``: checkpoint every 65,536 pages (256 MiB of WAL on disk), so a
#:   leaf of the card index written by many batches is copied back once, with one fsync
#:   (store time per entry at 300k rows: 50 µs with 8,192, 44 µs with 65,536, 43 µs with
#:   131,072 pages);
#: - ``temp_store``: reconciliation's sorts and window functions in memory, not temp files.
SQLITE_TUNING: dict[str, object] = {
    "cache_size": -32 * 1024,
    "mmap_size": 128 * 1024 * 1024,
    "wal_autocheckpoint": 65536,
    "temp_store": "MEMORY",
}


#: SQLAlchemy backends this server is written and tested for (the schemes of ``DATABASE_URL``).
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def make_engine(url: str, *, busy_timeout_s: float = 5.0, pool_size: int = 10) -> Engine:
    """Create an engine with the per-connection settings this server relies on.

    :param url: SQLAlchemy URL (``sqlite:///path.db`` or ``postgresql+psycopg://...``); several
        PostgreSQL hosts (a failover pair, docs/operations.md) as ``?host=h1:p1&host=h2:p2``,
        ``?host=h1,h2&port=p1,p2`` or libpq's ``?host=h1:p1,h2:p2``, with ``target_session_attrs=read-write``.
    :param busy_timeout_s: how long a writer waits for a lock before the request
        answers 503 (SQLite ``busy_timeout``, PostgreSQL ``lock_timeout``), seconds.
    :param pool_size: connections kept per process.
    :raises ConfigurationError: the URL's backend is not one of :data:`SUPPORTED_BACKENDS`
        (checked before SQLAlchemy imports a driver; the message has no password), or it
        is an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``).
    :raises sqlalchemy.exc.ArgumentError: the URL does not parse.
    :raises ImportError: the URL names a driver that is not installed (``postgresql+psycopg2``).
    """
    from sqlalchemy.engine import make_url

    url = normalise_url(url)
    parsed = make_url(url)
    hosts = parsed.query.get("host")
    if isinstance(hosts, str) and "port" not in parsed.query and _HOST_PORT_LIST.fullmatch(hosts):
        # SQLAlchemy splits host:port only in ?host=h1:p1&host=h2:p2; given the comma form it
        # sent libpq the host name "h1:p1" and the port ",".
        parsed = parsed.update_query_dict({"host": hosts.split(",")})
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"database URL {parsed.render_as_string(hide_password=True)} is not usable: "
            f"{parsed.get_backend_name()!r} is not supported (supported: {', '.join(SUPPORTED_BACKENDS)}); "
            "expected postgresql+psycopg://user@host:5432/name or sqlite:///path.db")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One in-memory database per connection: a pooled server would see several
        # empty, unrelated databases, and lose them all at exit.
        raise ConfigurationError(
            f"database URL {parsed.render_as_string(hide_password=True)} is an in-memory SQLite database, "
            "empty and lost when the process ends; expected postgresql+psycopg://user@host:5432/name "
            "or sqlite:///path.db")
    timeout_ms = int(busy_timeout_s * 1000)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy (the "begin" hook) own transaction start, not pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            for pragma, value in SQLITE_TUNING.items():
                cur.execute(f"PRAGMA {pragma}={value}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE, False) else "BEGIN"
            # On the driver: SQLAlchemy's execution context for a statement without parameters or
            # rows was a tenth of a small upload's database CPU (issue 21). Its errors are wrapped
            # as SQLAlchemy wraps them (a busy BEGIN IMMEDIATE stays an OperationalError).
            driver = conn.connection.driver_connection
            try:
                driver.execute(statement)  # type: ignore[union-attr]  # a checked-out connection has one
            except sqlite3.Error as exc:
                raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    else:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            pool_use_lifo=True,
            connect_args={"options": f"-c lock_timeout={timeout_ms} -c timezone=UTC"},
        )
        _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection returned less than this long ago (seconds) is handed out without
#: the pre-ping round trip (see :func:`_ping_when_idle`).
PING_IDLE_S = 2.0
_LAST_CHECKIN = "huma_last_checkin"


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pool pre-ping, skipped for a connection returned to the pool in the last
    :data:`PING_IDLE_S` seconds, since no connection of the pool was invalidated.

    The pre-ping (``SELECT 1``) finds a connection PostgreSQL dropped while it sat in the pool
    (a failover, a restart, an idle timeout); it was one round trip per request, on a connection
    that had just served another (issue 21). A connection that just served a request is alive unless
    the server went away in these seconds: then its next statement fails; an upload repeats its
    first statement, a read, on another connection (server/blueprints/journal.py), any other failure
    answers 503 (nothing acknowledged, the client retries; server/http.py); SQLAlchemy invalidates
    the connection at the latest when the request's rollback fails. Any invalidation makes every connection returned
    before it pinged again, and a failed ping invalidates the whole pool, as ``pool_pre_ping`` does.
    A newly made connection is not pinged. The pool hands out the most recently returned
    connection first (``pool_use_lifo``), so a lightly loaded server keeps reusing warm ones.
    """
    invalidated = [float("-inf")]  # monotonic time of the newest invalidation in this pool

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_CHECKIN] = time.monotonic()

    @event.listens_for(engine, "invalidate")
    def _invalidated(_dbapi_conn: Any, _record: Any, _exc: BaseException | None) -> None:
        invalidated[0] = time.monotonic()

    @event.listens_for(engine, "soft_invalidate")
    def _soft_invalidated(_dbapi_conn: Any, _record: Any, _exc: BaseException | None) -> None:
        invalidated[0] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_CHECKIN)
        if last is None:
            return  # connected for this checkout (info is cleared when a connection is replaced)
        if time.monotonic() - last < PING_IDLE_S and last > invalidated[0]:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, None):
                raise InvalidatePoolError() from exc  # the pool reconnects (every connection made before now)
            raise


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def driver_error(exc: BaseException) -> BaseException | None:
    """The DB-API driver exception behind ``exc`` (sqlite3 or psycopg), or None if it is none.

    SQLAlchemy wraps driver errors in :class:`~sqlalchemy.exc.DBAPIError`; statements
    run on the raw driver connection (the upload's bulk insert) may raise them bare.
    """
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        return orig
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the server extra installs it
        return None
    return orig if isinstance(orig, psycopg.Error) else None


def is_busy(exc: BaseException) -> bool:
    """True when ``exc`` (wrapped by SQLAlchemy or bare from the driver) means the database is busy
    and the same request may simply be retried (PostgreSQL SQLSTATE class 40/55P03/57014/53300/57P03,
    SQLite ``SQLITE_BUSY``/``SQLITE_LOCKED``)."""
    orig = driver_error(exc)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in _PG_BUSY_SQLSTATES:
        return True
    text = str(orig).lower()
    return any(msg in text for msg in _SQLITE_BUSY_MESSAGES)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL could not be reached or dropped the connection: during a
    failover (docs/operations.md) the same request succeeds once the standby is promoted.

    psycopg reports a refused or failed connection, and a connection lost mid-statement, as an
    ``OperationalError`` without SQLSTATE; the server's own "terminating connection" notices carry
    57P01/57P02; SQLAlchemy marks a connection it found dead as ``connection_invalidated``.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = driver_error(exc)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the server extra installs it
        return False
    if not isinstance(orig, psycopg.OperationalError):
        return False
    state = orig.sqlstate
    return state is None or state.startswith("08") or state in _PG_GONE_SQLSTATES


@contextmanager
def busy_as_503(retry_after_s: int) -> Iterator[None]:
    """Translate a busy-database error (SQLAlchemy-wrapped or bare driver error) into :class:`DatabaseBusy`.

    :raises DatabaseBusy: when the wrapped block fails because of lock contention.
    """
    try:
        yield
    except Exception as exc:
        if is_busy(exc):
            log.warning("database busy, answering 503: %s", driver_error(exc))
            raise DatabaseBusy("database busy, retry later", retry_after=retry_after_s) from exc
        raise


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the migrations shipped inside this package.

    :param connection: run migrations on this connection (tests, ``db upgrade``).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _refuse_foreign(conn: Connection, where: str, doing: str) -> None:
    """Refuse a database that has tables but no ``alembic_version``: another application's, not ours.

    An empty database (no tables) passes; so does one with ``alembic_version`` (ours, any revision).

    :param doing: what is refused, for the message ("refusing to migrate it").
    :raises ConfigurationError: names up to three of its tables (``--database`` points at the wrong file).
    """
    from sqlalchemy import inspect

    tables = sorted(inspect(conn).get_table_names())
    if tables and "alembic_version" not in tables:
        shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
        raise ConfigurationError(f"database at {where} has tables ({shown}) but no alembic_version: "
                                 f"not a Huma server database; {doing} (check --database / DATABASE_URL)")


def _unknown_revision(current: str, head: str, where: str) -> SchemaNotCurrent:
    return SchemaNotCurrent(f"database at {where} is at revision {current}, unknown to this release "
                            f"(head {head}): run the release that migrated it", current, head)


def upgrade(engine: Engine, revision: str = "head", *, where: str | None = None) -> str | None:
    """Apply the Alembic migrations up to ``revision`` (the schema's source of truth), in one transaction.

    Only an empty database or one of ours (with ``alembic_version``) is migrated: tables of another
    application (a terminal's journal file) are never written into.

    :param where: how messages name the database (default: its URL without the password).
    :returns: the database's revision afterwards (``revision`` may be one it is already past).
    :raises ConfigurationError: the database has tables but no ``alembic_version`` (not ours).
    :raises SchemaNotCurrent: it is at a revision this release does not ship (a newer release's).
    :raises alembic.util.CommandError: ``revision`` is not one of this release's.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    where = where or engine.url.render_as_string(hide_password=True)
    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None:
            _refuse_foreign(conn, where, "refusing to migrate it")
        else:
            try:
                ScriptDirectory.from_config(alembic_config()).get_revision(current)
            except CommandError:
                raise _unknown_revision(current, head_revision(), where) from None
        command.upgrade(alembic_config(conn), revision)
        return MigrationContext.configure(conn).get_current_revision()


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None for another backend or an in-memory database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def head_revision() -> str:
    """The newest Alembic revision shipped in :mod:`server.migrations` (single head)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "server/migrations has no revisions"
    return head


def check_schema(engine: Engine, where: str) -> str:
    """Refuse a database whose schema is not at this release's Alembic head, without creating anything.

    A SQLite file that does not exist is reported before connecting (connecting would
    create an empty file). The revision is read from ``alembic_version``
    (:class:`alembic.runtime.migration.MigrationContext`).

    :param where: how messages name the database (``host:port/name`` or the file; no password).
    :returns: the current revision (== the head).
    :raises SchemaNotCurrent: no schema (revision none) or behind/ahead of the head.
    :raises ConfigurationError: tables but no ``alembic_version``: another application's database.
    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    path = sqlite_file(str(engine.url))
    if path is not None and not path.is_file():
        raise SchemaNotCurrent(f"database at {where} has no schema (revision none; the file does not exist); "
                               "run `huma server db upgrade`", None, head)
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None:
            _refuse_foreign(conn, where, "refusing to use it")
    if current is None:
        raise SchemaNotCurrent(f"database at {where} has no schema (revision none); run `huma server db upgrade`",
                               None, head)
    if current != head:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        try:
            ScriptDirectory.from_config(alembic_config()).get_revision(current)
        except CommandError:
            raise _unknown_revision(current, head, where) from None
        raise SchemaNotCurrent(f"database at {where} is at revision {current}, not this release's {head}; "
                               "run `huma server db upgrade`", current, head)
    return current
