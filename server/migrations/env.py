"""Alembic environment: runs on the connection handed in by :func:`server.db.upgrade`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from server import enrolment as _enrolment  # noqa: F401 - enrolment_codes (migration 0011) is in Base.metadata
from server import grievances as _grievances  # noqa: F401 - grievances (migration 0013) is in Base.metadata
from server import logins as _logins  # noqa: F401 - login_throttle (migration 0008) is in Base.metadata
from server import pin_resets as _pin_resets  # noqa: F401 - pin_resets (migration 0018) is in Base.metadata
from server.checkpoints import models as _checkpoints  # noqa: F401 - terminal_checkpoints (migration 0012)
from server.models import Base
from server.reconcile import settlements as _settlements  # noqa: F401 - write_settlements (migration 0016)

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations via `huma server db upgrade` (server.db.upgrade)")
_run(connection)
