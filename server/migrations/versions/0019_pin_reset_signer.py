"""Office PIN resets keep the kid of the technician key that signed them (``pin-resets.cose``): server/pin_resets.py.

NULL: uploaded unsigned (a legacy ``pin-resets.jsonl``, ``--unsigned-legacy``), as every reset stored before.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pin_resets") as batch:
        batch.add_column(sa.Column("signer_kid", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pin_resets") as batch:
        batch.drop_column("signer_kid")
