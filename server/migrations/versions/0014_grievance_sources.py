"""Grievances taken at a counter (issue 18): category, source counter, the counter's id, its time.

Plain ``ADD COLUMN`` and a unique index (no table rebuild on SQLite).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("grievances", sa.Column("category", sa.String(16), nullable=True))
    op.add_column("grievances", sa.Column("source_terminal", sa.String(64), nullable=True))
    op.add_column("grievances", sa.Column("client_ref", sa.String(32), nullable=True))
    op.add_column("grievances", sa.Column("counter_time", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_grievances_source_terminal", "grievances", ["source_terminal"])
    op.create_index("uq_grievances_source_ref", "grievances", ["source_terminal", "client_ref"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_grievances_source_ref", table_name="grievances")
    op.drop_index("ix_grievances_source_terminal", table_name="grievances")
    for column in ("counter_time", "client_ref", "source_terminal", "category"):
        op.drop_column("grievances", column)
