"""Programme dashboard and auditor search (issue 19).

- ``card_profiles.household_ref``: the pseudonymous household reference (16 hex digits)
  of the card's verified identity record, so progress counts households (a re-issued
  card serves the same household) and an auditor can search by it;
- ``receipt_codes``: the short receipt code a counter shows for a COMMIT/FINISHED entry
  (``XXXX-XXXX``, see :func:`server.audit.receipts.receipt_code`), indexed for search.
  Filled incrementally from ``journal_entries`` by :func:`server.audit.receipts.index_receipts`.

The ``manager`` role needs no change: ``people.role`` is a VARCHAR(16) without a CHECK.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("card_profiles", sa.Column("household_ref", sa.String(16), nullable=True))
    op.create_index("ix_card_profiles_household_ref", "card_profiles", ["household_ref"])
    op.create_table(
        "receipt_codes",
        sa.Column("journal_id", _BIGINT, sa.ForeignKey("journal_entries.id"), primary_key=True,
                  autoincrement=False),
        sa.Column("code", sa.String(9), nullable=False),
    )
    op.create_index("ix_receipt_codes_code", "receipt_codes", ["code"])


def downgrade() -> None:
    op.drop_index("ix_receipt_codes_code", table_name="receipt_codes")
    op.drop_table("receipt_codes")
    op.drop_index("ix_card_profiles_household_ref", table_name="card_profiles")
    with op.batch_alter_table("card_profiles") as batch:
        batch.drop_column("household_ref")
