"""Card registry fed by signed issuance files: issuance status, replaced card, provisioning session.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="issued"))
        batch.add_column(sa.Column("reissue_of", sa.String(64), nullable=True))
        batch.add_column(sa.Column("session_id", sa.LargeBinary(16), nullable=True))
        batch.create_index("ix_cards_reissue_of", ["reissue_of"])


def downgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.drop_index("ix_cards_reissue_of")
        batch.drop_column("session_id")
        batch.drop_column("reissue_of")
        batch.drop_column("status")
