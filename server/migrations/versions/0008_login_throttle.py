"""Failed-login state per account and per client address (back-off and lock-out, issue 17).

In the database, not in process memory, because the server runs as several processes;
see server/logins.py and docs/security.md ("Logins and web").

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", _TS, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=True),
        sa.Column("locked_until", _TS, nullable=True),
    )
    op.create_index("ix_login_throttle_last_failure", "login_throttle", ["last_failure"])


def downgrade() -> None:
    op.drop_index("ix_login_throttle_last_failure", table_name="login_throttle")
    op.drop_table("login_throttle")
