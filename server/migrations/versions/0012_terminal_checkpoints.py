"""Scanned end-of-shift checkpoints of counters (issue 19): server.checkpoints, docs/checkpoints.md.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "terminal_checkpoints",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("terminal_id", sa.String(64), sa.ForeignKey("terminals.terminal_id"), nullable=False),
        sa.Column("boot_id", sa.BigInteger(), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("totals", sa.Text(), nullable=False),
        sa.Column("declined", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("message_sha256", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("added_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("kid", sa.LargeBinary(4), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_terminal_checkpoints_head", "terminal_checkpoints", ["terminal_id", "head_seq"])


def downgrade() -> None:
    op.drop_index("ix_terminal_checkpoints_head", table_name="terminal_checkpoints")
    op.drop_table("terminal_checkpoints")
