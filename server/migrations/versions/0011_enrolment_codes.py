"""One-time enrolment codes: only a counter holding a code an admin issued for its terminal id may enrol (issue 17).

Only the SHA-256 of a code is stored; see server/enrolment.py and docs/security.md ("Enrolment").
Failed enrolments are throttled per address in login_throttle (0008) under ``enrol-address:`` keys.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "enrolment_codes",
        sa.Column("code_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("used_fingerprint", sa.LargeBinary(32), nullable=True),
    )
    op.create_index("ix_enrolment_codes_terminal_id", "enrolment_codes", ["terminal_id"])


def downgrade() -> None:
    op.drop_index("ix_enrolment_codes_terminal_id", table_name="enrolment_codes")
    op.drop_table("enrolment_codes")
