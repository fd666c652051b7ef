"""Incremental reconciliation (issue 21): the watermark and single-flight row, an index by boot; docs/reconciliation.md.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconcile_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("journal_id", sa.BigInteger(), nullable=False),
        sa.Column("reference_digest", sa.String(64), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("running_since", _TS, nullable=True),
    )
    # An incremental run's clock-skew aggregate reads only the boots of the new entries.
    op.create_index("ix_journal_terminal_boot", "journal_entries", ["terminal_id", "boot_id"])


def downgrade() -> None:
    op.drop_index("ix_journal_terminal_boot", table_name="journal_entries")
    op.drop_table("reconcile_state")
