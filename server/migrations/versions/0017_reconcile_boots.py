"""Incremental reconciliation (issue 21): per-boot clock aggregates, so clock skew reads only new entries.

``reconcile_boots`` holds, per ``(terminal_id, boot_id)``, the extremes ``clock_skew`` compares
(docs/reconciliation.md §Incremental). It starts empty, so the watermark's run is forgotten here:
the next run is a full one and fills it (an incremental run would fold new entries into nothing).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_boots",
        sa.Column("terminal_id", sa.String(64), primary_key=True),  # Citus: the distribution key
        sa.Column("boot_id", sa.BigInteger(), primary_key=True),
        sa.Column("min_offset_s", sa.Float(), nullable=False),
        sa.Column("max_offset_s", sa.Float(), nullable=False),
        sa.Column("max_ahead_s", sa.Float(), nullable=False),
        sa.Column("journal_id", sa.BigInteger(), nullable=False),
    )
    op.execute("UPDATE reconcile_state SET run_id = NULL")  # the next run is full: it fills reconcile_boots


def downgrade() -> None:
    op.drop_table("reconcile_boots")
