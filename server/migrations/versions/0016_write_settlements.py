"""Settled torn writes (issue 20): the server's decision on each deferred card write; docs/reconciliation.md.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BIGPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "write_settlements",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("entry_id", sa.LargeBinary(16), sa.ForeignKey("journal_entries.entry_id"), nullable=False,
                  unique=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("card_id", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("evidence_entry_id", sa.LargeBinary(16), sa.ForeignKey("journal_entries.entry_id"),
                  nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("settled_at", _TS, nullable=False),
        sa.CheckConstraint("outcome IN ('finished', 'voided')", name="ck_write_settlements_outcome"),
    )
    op.create_index("ix_write_settlements_terminal", "write_settlements", ["terminal_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_write_settlements_terminal", table_name="write_settlements")
    op.drop_table("write_settlements")
