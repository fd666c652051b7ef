"""Grievances (issue 18): complaints linked to a receipt code, card or household (server/grievances.py).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "grievances",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("receipt_code", sa.String(9), nullable=True),
        sa.Column("card_id", sa.String(64), nullable=True),
        sa.Column("household_ref", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    for column in ("receipt_code", "card_id", "household_ref", "status"):
        op.create_index(f"ix_grievances_{column}", "grievances", [column])


def downgrade() -> None:
    for column in ("receipt_code", "card_id", "household_ref", "status"):
        op.drop_index(f"ix_grievances_{column}", table_name="grievances")
    op.drop_table("grievances")
