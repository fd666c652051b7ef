"""Entitlements from verified identity records: the card's programme id and unit next to the amount.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("card_entitlements") as batch:
        batch.add_column(sa.Column("programme_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("unit", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("card_entitlements") as batch:
        batch.drop_column("unit")
        batch.drop_column("programme_id")
