"""Incremental reconciliation (issue 21): a log of registry changes written by triggers, instead of a digest.

The tables the card and household checks read besides the journal get triggers that append to
``registry_changes`` on INSERT, UPDATE and DELETE: the card id for the card-keyed tables (``cards``,
``card_profiles`` with the household before and after, ``card_entitlements``), NULL for the others
(``terminal_sites``, ``benefit_cycles``; on PostgreSQL a TRUNCATE of any of them too). An incremental
run reads the log past its own watermark: the cards named join its touched cards, a NULL makes it a
full run (docs/reconciliation.md §Incremental). The reference digest it replaces goes; the state's
``registry_change_id`` starts NULL, so the next run is a full one and records it.

SQLite: row triggers. PostgreSQL: statement triggers with transition tables (one INSERT … SELECT per
statement, whatever its row count).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: table -> (card id column, household column) logged; None: not card-keyed (logged as NULL).
TABLES: dict[str, tuple[str | None, str | None]] = {
    "cards": ("card_id", None),
    "card_profiles": ("card_id", "household_ref"),
    "card_entitlements": ("card_id", None),
    "terminal_sites": (None, None),
    "benefit_cycles": (None, None),
}
_EVENTS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
_INTO = "INSERT INTO registry_changes (card_id, household_ref, table_name)"


def _columns(table: str, prefix: str) -> str:
    card, household = TABLES[table]
    return (f"{prefix}{card}" if card else "NULL") + ", " + (f"{prefix}{household}" if household else "NULL") \
        + f", '{table}'"


def _sqlite_trigger(table: str, event: str) -> str:
    card, household = TABLES[table]
    if event == "delete":
        body = f"{_INTO} VALUES ({_columns(table, 'OLD.')});"
    elif event == "insert" or card is None:
        body = f"{_INTO} VALUES ({_columns(table, 'NEW.')});"
    else:  # the card (and household) the row leaves, when it is another
        moved = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in (card, household) if c)
        body = (f"{_INTO} VALUES ({_columns(table, 'NEW.')}); "
                f"{_INTO} SELECT {_columns(table, 'OLD.')} WHERE {moved};")
    return f"CREATE TRIGGER {table}_changes_{event} AFTER {_EVENTS[event]} ON {table} BEGIN {body} END"


def _pg_function(table: str, event: str) -> str:
    card, _ = TABLES[table]
    sources = {"insert": ["new_rows"], "update": ["new_rows", "old_rows"], "delete": ["old_rows"]}[event]
    if card is None:
        stmt = f"{_INTO} SELECT {_columns(table, '')} WHERE EXISTS (SELECT FROM {sources[0]})"
    else:
        rows = " UNION ".join(f"SELECT {_columns(table, '')} FROM {s}" for s in sources)
        stmt = f"{_INTO} {rows}"
    return (f"CREATE FUNCTION {table}_changes_{event}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$BEGIN {stmt}; RETURN NULL; END$$")


def _pg_trigger(table: str, event: str) -> str:
    transition = {"insert": "NEW TABLE AS new_rows", "update": "NEW TABLE AS new_rows OLD TABLE AS old_rows",
                  "delete": "OLD TABLE AS old_rows"}[event]
    return (f"CREATE TRIGGER {table}_changes_{event} AFTER {_EVENTS[event]} ON {table} REFERENCING {transition} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_changes_{event}()")


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        # AUTOINCREMENT on SQLite: an id is never handed out twice, even after the log is pruned empty
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("card_id", sa.String(64), nullable=True),
        sa.Column("household_ref", sa.String(16), nullable=True),
        sa.Column("table_name", sa.String(32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("reconcile_state") as batch:
        batch.drop_column("reference_digest")
        batch.add_column(sa.Column("registry_change_id", sa.BigInteger(), nullable=True))
    # whether any card is revoked (the run's opening statement) without reading every profile
    op.create_index("ix_card_profiles_revoked", "card_profiles", ["revoked_at"],
                    postgresql_where=sa.text("revoked_at IS NOT NULL"), sqlite_where=sa.text("revoked_at IS NOT NULL"))
    dialect = op.get_bind().dialect.name
    for table in TABLES:
        for event in _EVENTS:
            if dialect == "postgresql":
                op.execute(_pg_function(table, event))
                op.execute(_pg_trigger(table, event))
            else:
                op.execute(_sqlite_trigger(table, event))
    if dialect == "postgresql":
        op.execute(f"CREATE FUNCTION registry_changes_truncated() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$BEGIN {_INTO} VALUES (NULL, NULL, TG_TABLE_NAME); RETURN NULL; END$$")
        for table in TABLES:
            op.execute(f"CREATE TRIGGER {table}_changes_truncate AFTER TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION registry_changes_truncated()")
    op.execute("UPDATE reconcile_state SET run_id = NULL")  # the next run is full: it records the log's watermark


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in TABLES:
        for event in _EVENTS:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_changes_{event}" + (f" ON {table}" if dialect == "postgresql"
                                                                             else ""))
            if dialect == "postgresql":
                op.execute(f"DROP FUNCTION IF EXISTS {table}_changes_{event}()")
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_changes_truncate ON {table}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS registry_changes_truncated()")
    op.drop_index("ix_card_profiles_revoked", table_name="card_profiles")
    with op.batch_alter_table("reconcile_state") as batch:
        batch.drop_column("registry_change_id")
        batch.add_column(sa.Column("reference_digest", sa.String(64), nullable=True))
    op.execute("UPDATE reconcile_state SET run_id = NULL")
    op.drop_table("registry_changes")
