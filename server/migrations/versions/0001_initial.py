"""Initial schema: people, tokens, audit log, terminals, cards, journal, conflicts, bundles.

Revision ID: 0001
Revises:
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Autoincrement primary keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
_BIGPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def _enum(*values: str) -> sa.Enum:
    return sa.Enum(*values, native_enum=False, length=16)


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", _enum("admin", "technician", "auditor"), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_sha256", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("person_id", sa.Integer(), sa.ForeignKey("people.id"), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("person_id", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_table(
        "terminals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False, unique=True),
        sa.Column("status", _enum("pending", "approved", "rejected", "revoked"), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("kid", sa.LargeBinary(4), nullable=False, unique=True),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_by", sa.Integer(), sa.ForeignKey("people.id"), nullable=True),
    )
    op.create_table(
        "cards",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("card_id", sa.String(64), nullable=False, unique=True),
        sa.Column("tag_uid", sa.LargeBinary(10), nullable=False),
        sa.Column("kid", sa.LargeBinary(4), nullable=False),
        sa.Column("technician_id", sa.Integer(), sa.ForeignKey("people.id"), nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "journal_entries",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("entry_id", sa.LargeBinary(16), nullable=False, unique=True),
        sa.Column(
            "terminal_id", sa.String(64), sa.ForeignKey("terminals.terminal_id"), nullable=False
        ),
        sa.Column("boot_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("wall_time", _TS, nullable=False),
        sa.Column("mono_ns", sa.BigInteger(), nullable=False),
        sa.Column("clock_synced", sa.Boolean(), nullable=False),
        sa.Column("card_id", sa.String(64), nullable=True),
        sa.Column("tag_uid", sa.LargeBinary(10), nullable=True),
        sa.Column("programme", sa.String(32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("slot_seq_before", sa.BigInteger(), nullable=True),
        sa.Column("slot_seq_after", sa.BigInteger(), nullable=True),
        sa.Column("state_hash_prev", sa.LargeBinary(32), nullable=True),
        sa.Column("state_hash_new", sa.LargeBinary(32), nullable=True),
        sa.Column("ntag_counter", sa.Integer(), nullable=True),
        sa.Column("prev_entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.UniqueConstraint("terminal_id", "seq", name="uq_journal_terminal_seq"),
    )
    op.create_index("ix_journal_card", "journal_entries", ["card_id"])
    op.create_table(
        "journal_conflicts",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("entry_id", sa.LargeBinary(16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("existing_entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
    )
    op.create_table(
        "rejected_entries",
        sa.Column("id", _BIGPK, primary_key=True),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("raw_sha256", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
    )
    op.create_table(
        "trust_bundles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "trust_bundles",
        "rejected_entries",
        "journal_conflicts",
        "journal_entries",
        "cards",
        "terminals",
        "audit_log",
        "api_tokens",
        "people",
    ):
        op.drop_table(table)
