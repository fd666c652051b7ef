"""Drop ``ix_journal_card``: ``ix_journal_card_time`` (card_id, wall_time) serves every card_id lookup.

Every journal insert paid for both B-trees; the planner uses the composite index's
card_id prefix for the same queries (auditor card history, reconciliation by card).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_journal_card", table_name="journal_entries")


def downgrade() -> None:
    op.create_index("ix_journal_card", "journal_entries", ["card_id"])
