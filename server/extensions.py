"""Flask extensions, created unbound and attached with ``init_app`` (Flask patterns)."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from server.db import WRITE, make_engine, make_sessionmaker

_KEY = "huma_db"

log = logging.getLogger(__name__)


class Database:
    """Owns one engine per app and one session per app context, always closed at teardown.

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
    def session(self) -> Session:
        """The session of the current app context (created on first use)."""
        if "huma_session" not in g:
            g.huma_session = self._state()[1]()
        session: Session = g.huma_session
        return session

    def write_session(self) -> Session:
        """The session, with its transaction opened for writing.

        On SQLite this starts the transaction with ``BEGIN IMMEDIATE``: the write
        lock is taken up front (waiting up to the busy timeout) instead of failing
        on a read→write lock upgrade (SV-3). Call before the first statement.
        """
        session = self.session
        if session.in_transaction():
            # A read (e.g. token lookup) already began a deferred transaction; end it
            # so the write transaction starts afresh with the write lock.
            session.commit()
        # WRITE is this server's own execution option, not a key of SQLAlchemy's TypedDict of options
        session.connection(execution_options={WRITE: True})  # type: ignore[misc]
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
            session.close()


db = Database()
