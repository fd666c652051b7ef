"""A card block keeps its blocker's role at block time: ``card_blocks.blocked_by_role`` (server/card_blocks.py).

Who may lift a block was decided by the blocker's *current* role: an auditor later moved to a
technician's desk turned their blocks into ones any technician may lift (and a technician promoted
to auditor the reverse). :func:`server.card_blocks.unblock_card` now reads this column.

Back-fill: each existing row takes its blocker's role at the upgrade (``people.role``). No role
history is kept anywhere (no command changes a role; an admin edits the row), so this is the best
evidence there is; review ``huma server cards blocks`` after the upgrade if roles changed since
0023 (docs/operations.md). The column is NOT NULL with the server default ``auditor``: a row written
without a role (an old server process left running through the upgrade) needs an auditor or admin to
lift, the safe side. Same on SQLite and PostgreSQL (plain ADD COLUMN, so the table and its partial
unique index are not rebuilt).

Downgrade: the column is dropped (lifting then follows the current role again).

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("card_blocks", sa.Column("blocked_by_role", sa.String(16), nullable=False,
                                           server_default="auditor"))
    op.execute("UPDATE card_blocks SET blocked_by_role = "
               "(SELECT people.role FROM people WHERE people.id = card_blocks.blocked_by) "
               "WHERE EXISTS (SELECT 1 FROM people WHERE people.id = card_blocks.blocked_by)")


def downgrade() -> None:
    op.execute("ALTER TABLE card_blocks DROP COLUMN blocked_by_role")  # SQLite >= 3.35 and PostgreSQL
