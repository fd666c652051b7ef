"""Usernames are one login in any case: store them lower-cased, unique on lower(username).

Fails (and changes nothing) when two people's names differ only in case: rename or
disable one of them first (``huma server people list``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_people_username_lower", "people", [sa.text("lower(username)")], unique=True)
    op.execute("UPDATE people SET username = lower(username) WHERE username <> lower(username)")


def downgrade() -> None:
    op.drop_index("uq_people_username_lower", table_name="people")
