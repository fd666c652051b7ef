"""Flask extensions, created unbound and attached with ``init_app`` (Flask patterns)."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from server.cycles import KnownCycles
from server.db import WRITE, make_engine, make_sessionmaker

_KEY = "huma_db"
_CYCLES_KEY = "huma_known_cycles"

log = logging.getLogger(__name__)


class _RequestSession(Session):
    """The request's session, bound to the request's connection until :meth:`close`.

    :meth:`close` also returns that connection to the pool (as closing an engine-bound session
    did: ``db.session.close(); db.engine.dispose()`` closes every connection) and binds the
    session to the engine; :attr:`Database.session` gives it a pooled connection again on next use.
    """

    def close(self) -> None:
        super().close()
        bind = self.bind
        if isinstance(bind, Connection):
            self.bind = bind.engine
            try:
                bind.close()  # back to the pool, which discards it if it is dead
            except DBAPIError as exc:
                log.warning("returning the request's connection failed: %s", exc.orig)


class Database:
    """Owns one engine per app and one session per app context, always closed at teardown.

    The session is bound to one pooled connection checked out at its first use and
    returned at teardown: a request's transactions (an upload's terminal look-up, then its
    write) share it, so PostgreSQL's pool pre-ping (which finds a connection a failover
    killed; server.db runs it only for a connection idle a while) runs at most once per
    request instead of once per transaction (issue 21).
    A session that failed mid-request is rolled back and closed at teardown, so
    the next request on that worker never sees ``PendingRollbackError`` (SV-2).
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Create the engine from ``app.config["DATABASE_URL"]`` and register teardown."""
        engine = make_engine(
            app.config["DATABASE_URL"],
            busy_timeout_s=float(app.config["DB_BUSY_TIMEOUT"]),
            pool_size=int(app.config["DB_POOL_SIZE"]),
        )
        app.extensions[_KEY] = (engine, make_sessionmaker(engine))
        known = KnownCycles()
        known.watch(engine)
        app.extensions[_CYCLES_KEY] = known
        app.teardown_appcontext(self._teardown)

    @staticmethod
    def _state() -> tuple[Engine, sessionmaker[Session]]:
        state: tuple[Engine, sessionmaker[Session]] = current_app.extensions[_KEY]
        return state

    @property
    def engine(self) -> Engine:
        """The current app's engine."""
        return self._state()[0]

    @property
    def known_cycles(self) -> KnownCycles:
        """Benefit cycles this process knows are stored (:mod:`server.cycles`)."""
        known: KnownCycles = current_app.extensions[_CYCLES_KEY]
        return known

    @property
    def session(self) -> Session:
        """The session of the current app context (created on first use)."""
        session: Session | None = g.get("huma_session")
        if session is None:
            # the request's one checkout (pre-ping on PostgreSQL)
            session = g.huma_session = _RequestSession(bind=self.engine.connect(), expire_on_commit=False)
        elif not isinstance(session.bind, Connection) and not session.in_transaction():
            session.bind = self.engine.connect()  # closed earlier in this context
        return session

    def discard_connection(self) -> None:
        """Invalidate the request's pooled connection (found dead) and end its session; the next use of
        :attr:`session` checks out another one. Only before the request wrote anything: its transaction
        is lost with the connection.
        """
        session: Session | None = g.get("huma_session")
        if session is None:
            return
        bind = session.bind
        if isinstance(bind, Connection):
            bind.invalidate()  # the pool closes it and pings the connections returned before this
        session.close()

    def write_session(self, *, continue_read: bool = False) -> Session:
        """The session, with its transaction opened for writing.

        On SQLite this starts the transaction with ``BEGIN IMMEDIATE``: the write
        lock is taken up front (waiting up to the busy timeout) instead of failing
        on a read→write lock upgrade (SV-3). Call before the first statement.

        :param continue_read: on PostgreSQL, a transaction that has only read so far goes on
            as the write transaction (no lock upgrade there: one BEGIN and one COMMIT round
            trip less, issue 21); on SQLite it is ended and the write one begun, as without it.
        """
        session = self.session
        if continue_read and session.get_bind().dialect.name == "postgresql":
            return session
        if session.in_transaction():
            # A read (e.g. token lookup) already began a deferred transaction; end it
            # so the write transaction starts afresh with the write lock.
            session.commit()
        # WRITE is this server's own execution option, not a key of SQLAlchemy's TypedDict of options
        connection = session.connection(execution_options={WRITE: True})  # type: ignore[misc]
        # The option is set on the request's connection in place and was read at BEGIN: clear it,
        # so a later read transaction of this request begins deferred again.
        connection.execution_options(**{WRITE: False})
        return session

    @staticmethod
    def _teardown(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("huma_session", None)
        if session is not None:
            try:
                session.rollback()
            except DBAPIError as exc:
                # The connection died mid-request (a failover; the answer, a 503, is already made).
                # Raised here it would replace that answer with the WSGI server's bare 500; the
                # pool discards the connection when close() returns it.
                log.warning("rollback at the end of a request failed: %s", exc.orig)
            session.close()  # also returns the request's connection (_RequestSession)


db = Database()
