"""Reconciliation and audit: card profiles, cycles, entitlements, terminal sites, findings, runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIGPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

_KINDS = (
    "terminal_gap", "terminal_chain_break", "journal_conflict", "rejected_entry", "bad_signature",
    "revoked_terminal_used", "card_fork", "card_rollback", "counter_backwards", "card_chain_gap",
    "entitlement_exceeded", "revoked_card_used", "impossible_travel", "clock_backwards", "clock_skew",
)


def upgrade() -> None:
    op.create_table(
        "card_profiles",
        sa.Column("card_id", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(16), nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoke_reason", sa.String(255), nullable=True),
    )
    op.create_table(
        "benefit_cycles",
        sa.Column("cycle_id", sa.String(32), primary_key=True),
        sa.Column("starts_at", _TS, nullable=False),
        sa.Column("ends_at", _TS, nullable=False),
    )
    op.create_table(
        "card_entitlements",
        sa.Column("card_id", sa.String(64), primary_key=True),
        sa.Column("programme", sa.String(32), primary_key=True),
        sa.Column("cycle_id", sa.String(32), sa.ForeignKey("benefit_cycles.cycle_id"), primary_key=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "terminal_sites",
        sa.Column("terminal_id", sa.String(64), sa.ForeignKey("terminals.terminal_id"), primary_key=True),
        sa.Column("region", sa.String(16), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("compromised_from", _TS, nullable=True),
    )
    op.create_table(
        "findings",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.Enum(*_KINDS, native_enum=False, length=32), nullable=False),
        sa.Column("severity", sa.Enum("low", "medium", "high", "critical", native_enum=False, length=16),
                  nullable=False),
        sa.Column("card_id", sa.String(64), nullable=True),
        sa.Column("terminal_id", sa.String(64), nullable=True),
        sa.Column("summary", sa.String(255), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("status", sa.Enum("open", "confirmed", "dismissed", native_enum=False, length=16),
                  nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("last_run_id", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_findings_kind", "findings", ["kind"])
    op.create_index("ix_findings_card_id", "findings", ["card_id"])
    op.create_index("ix_findings_terminal_id", "findings", ["terminal_id"])
    op.create_index("ix_findings_status", "findings", ["status"])
    op.create_table(
        "reconcile_runs",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("findings_new", sa.Integer(), nullable=False),
        sa.Column("findings_seen", sa.Integer(), nullable=False),
        sa.Column("findings_resolved", sa.Integer(), nullable=False),
    )
    # Reconciliation reads each terminal's chain in seq order (covered by the
    # unique (terminal_id, seq)) and each card's taps in time order.
    op.create_index("ix_journal_card_time", "journal_entries", ["card_id", "wall_time"])


def downgrade() -> None:
    op.drop_index("ix_journal_card_time", table_name="journal_entries")
    for table in ("reconcile_runs", "findings", "terminal_sites", "card_entitlements", "benefit_cycles",
                  "card_profiles"):
        op.drop_table(table)
