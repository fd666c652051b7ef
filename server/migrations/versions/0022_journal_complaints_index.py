"""An index of the journal's COMPLAINT entries: ``ix_journal_complaints (terminal_id, seq) WHERE kind = 12``.

A counter journals each complaint it takes as a ``COMPLAINT`` entry (kind 12, docs/card-format.md
§Conventions) whose ``entry_id`` is the complaint's ``client_ref``. Every reconciliation run, full or
incremental, looks for those whose complaint never arrived (``complaint_not_received``,
:func:`server.reconcile.terminal_checks.complaints_not_received`): the partial index holds only them,
so the run reads a few rows instead of scanning the journal. No data changes; journals stored before
hold no kind 12 (older counters never wrote it). Same on SQLite and PostgreSQL.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

#: Journal entry kind COMPLAINT (cardlib.records.journal.EntryKind; frozen here).
_COMPLAINT = 12


def upgrade() -> None:
    op.create_index("ix_journal_complaints", "journal_entries", ["terminal_id", "seq"],
                    postgresql_where=sa.text(f"kind = {_COMPLAINT}"), sqlite_where=sa.text(f"kind = {_COMPLAINT}"))


def downgrade() -> None:
    op.drop_index("ix_journal_complaints", table_name="journal_entries")
