"""Cards reported lost, stolen or damaged at the office: ``card_blocks`` (server/card_blocks.py).

A block puts the card id and its chip UIDs on the next trust bundle's deny lists before any re-issue;
lifting it keeps the row (who, when, why). One standing block per card: a partial unique index on
``card_id`` where ``lifted_at`` is NULL. Same on SQLite and PostgreSQL; no data changes.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "card_blocks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("card_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("blocked_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=False),
        sa.Column("blocked_at", _TS, nullable=False),
        sa.Column("lifted_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("lifted_at", _TS, nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_card_blocks_card_id", "card_blocks", ["card_id"])
    op.create_index("uq_card_blocks_standing", "card_blocks", ["card_id"], unique=True,
                    postgresql_where=sa.text("lifted_at IS NULL"), sqlite_where=sa.text("lifted_at IS NULL"))


def downgrade() -> None:
    op.drop_index("uq_card_blocks_standing", table_name="card_blocks")
    op.drop_index("ix_card_blocks_card_id", table_name="card_blocks")
    op.drop_table("card_blocks")
