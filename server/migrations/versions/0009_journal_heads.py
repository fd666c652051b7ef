"""Signed journal heads reported by counters (issue 17, "The trust chain above the card").

A head the uploads never reach is the ``journal_tail_missing`` finding
(server/reconcile/terminal_checks.py, docs/security.md).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "journal_heads",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("terminal_id", sa.String(64), sa.ForeignKey("terminals.terminal_id"), nullable=False),
        sa.Column("boot_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("terminal_id", "seq", "entry_hash", name="uq_journal_heads_head"),
    )


def downgrade() -> None:
    op.drop_table("journal_heads")
