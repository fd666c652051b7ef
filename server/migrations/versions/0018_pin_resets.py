"""Office PIN resets uploaded from stations (``huma server cards upload-pin-resets``): server/pin_resets.py.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_BIGPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pin_resets",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("line_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("card_id", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("household_ref", sa.String(64), nullable=False),
        sa.Column("technician", sa.String(128), nullable=False),
        sa.Column("technician_kid", sa.String(16), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=False),
        sa.Column("card_profile", sa.String(16), nullable=False),
        sa.Column("failures_before", sa.Integer(), nullable=True),
        sa.Column("pin_changed", sa.Boolean(), nullable=False),
        sa.Column("pin_epoch", sa.BigInteger(), nullable=True),
        sa.Column("epoch_before", sa.BigInteger(), nullable=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("reset_at", _TS, nullable=False),
        sa.Column("uploaded_at", _TS, nullable=False),
        sa.Column("uploaded_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
    )
    op.create_index("ix_pin_resets_card_id", "pin_resets", ["card_id"])


def downgrade() -> None:
    op.drop_index("ix_pin_resets_card_id", table_name="pin_resets")
    op.drop_table("pin_resets")
