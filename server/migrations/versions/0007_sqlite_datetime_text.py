"""SQLite: journal times written by the fast upload path get the ``.ffffff`` every other write has.

The upload's executemany handed sqlite3 datetimes, whose default adapter writes
``2026-03-02 17:00:00`` at whole seconds where SQLAlchemy writes
``2026-03-02 17:00:00.000000``. As text the short form sorts before the long one
for the same instant, so an entry at exactly a cycle start or a revocation time
compared as earlier. Appending ``.000000`` to the 19-character values makes every
stored time one format again. PostgreSQL stores ``timestamptz``: nothing to do.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for column in ("wall_time", "received_at"):
        op.execute(f"UPDATE journal_entries SET {column} = {column} || '.000000' WHERE length({column}) = 19")


def downgrade() -> None:
    """Nothing to undo: the long form is what every release reads and writes."""
