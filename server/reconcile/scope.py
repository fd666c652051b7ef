"""The keys an incremental reconciliation run re-examines: touched terminals, cards and households.

An incremental run (:func:`server.reconcile.engine.reconcile` with ``incremental=True``,
docs/reconciliation.md §Incremental) fills three temporary tables from the journal entries
stored since the watermark: the terminals that uploaded them, the cards they name, the
households of those cards (and then every card of those households). Each check that reads
whole partitions of the journal (a terminal's chain, a card's redemptions, a household's
cards) is then restricted to those keys with ``key IN (SELECT key FROM scope table)``: a
partition is read whole or not at all, so the observations for a touched key are the ones
a full run makes, and an untouched key's partition did not change since the last run.
Along a terminal's chain the checks compare each entry with the one before, so a touched
terminal's chain is re-read only from the last stored entry before its first new one, and its
clock skew only for the boots the new entries belong to. The touched cards' entries are copied
once into a fifth table that every card check reads (:attr:`Scope.entries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete, func, insert, select, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.schema import CreateTable, DropTable
from sqlalchemy.sql.elements import ColumnElement

from server.reconcile.sql import card_profiles, full_scan, journal

__all__ = ["ENTRY_COLUMNS", "Scope", "card_in", "household_in", "terminal_in"]

_meta = MetaData()
#: Temporary tables (one per connection, emptied at the start of each run).
_terminals = Table("reconcile_scope_terminals", _meta, Column("terminal_id", String(64), primary_key=True),
                   Column("from_seq", BigInteger, nullable=False), prefixes=["TEMPORARY"])
_boots = Table("reconcile_scope_boots", _meta, Column("terminal_id", String(64), primary_key=True),
               Column("boot_id", BigInteger, primary_key=True), prefixes=["TEMPORARY"])
_cards = Table("reconcile_scope_cards", _meta, Column("card_id", String(64), primary_key=True),
               prefixes=["TEMPORARY"])
_households = Table("reconcile_scope_households", _meta, Column("household_ref", String(16), primary_key=True),
                    prefixes=["TEMPORARY"])
#: The card checks' columns of the journal (server.reconcile.card_checks).
ENTRY_COLUMNS = ("card_id", "entry_id", "terminal_id", "seq", "wall_time", "kind", "tag_uid", "ntag_counter",
                 "slot_seq_before", "slot_seq_after", "state_hash_prev", "state_hash_new", "programme", "amount")
_entries = Table("reconcile_scope_entries", _meta, *(Column(name, journal.c[name].type) for name in ENTRY_COLUMNS),
                 prefixes=["TEMPORARY"])
_TABLES = (_terminals, _boots, _cards, _households, _entries)


_CREATE: dict[tuple[str, str], str] = {}


def _create_sql(dialect: Dialect, name: str) -> str:
    """``CREATE TEMPORARY TABLE IF NOT EXISTS`` of scope table ``name``, compiled once per dialect name."""
    key = (dialect.name, name)
    if key not in _CREATE:
        _CREATE[key] = str(CreateTable(_meta.tables[name], if_not_exists=True).compile(dialect=dialect))
    return _CREATE[key]


def _setup_sql(dialect: Dialect) -> str:
    """PostgreSQL: every scope table's ``CREATE TEMPORARY TABLE IF NOT EXISTS`` and ``DELETE``, as one string."""
    key = (dialect.name, "")
    if key not in _CREATE:
        _CREATE[key] = "; ".join([_create_sql(dialect, table.name) for table in _TABLES]
                                 + [f"DELETE FROM {table.name}" for table in _TABLES])
    return _CREATE[key]


@dataclass(frozen=True)
class Scope:
    """The touched keys of one incremental run, as temporary tables on the run's connection.

    :ivar terminals: table ``(terminal_id, from_seq)``: ``from_seq`` is the highest stored seq
        below the terminal's first new entry (0: none); the chain is re-read from there.
    :ivar boots: table ``(terminal_id, boot_id)`` of the new entries (clock skew is per boot).
    :ivar cards: table ``(card_id)``: the cards of new entries and every card of their households.
    :ivar households: table ``(household_ref)``.
    :ivar entries: table of :data:`ENTRY_COLUMNS`: every journal entry of the cards in ``cards``, copied
        once so that the card checks read these few rows from it instead of each walking
        ``ix_journal_card_time`` and the journal's pages for the same cards again.
    :ivar counts: rows in each table (terminals, cards, households), for the run's log.
    :ivar journal_id: the watermark: the new entries are those with ``journal_entries.id`` above it.
    """

    terminals: Table
    boots: Table
    cards: Table
    households: Table
    entries: Table
    counts: tuple[int, int, int]
    journal_id: int = 0

    @classmethod
    def since(cls, conn: Connection, journal_id: int) -> Scope:
        """Create (or empty) the scope tables on ``conn`` and fill them from the entries with ``id > journal_id``.

        :param journal_id: the watermark, a ``journal_entries.id``.
        """
        if conn.dialect.name == "postgresql":  # one round trip (psycopg sends a parameterless string as one query)
            conn.exec_driver_sql(_setup_sql(conn.dialect))
        else:
            for table in _TABLES:  # no catalog query first (checkfirst); DDL is not in SQLAlchemy's statement cache
                conn.exec_driver_sql(_create_sql(conn.dialect, table.name))
                conn.execute(delete(table))
        # the new entries by primary key range (SQLite: NOT INDEXED, or it walks a whole index in key order)
        fresh = full_scan._construct(journal, name="fresh")
        new = fresh.c.id > journal_id
        first = (select(fresh.c.terminal_id, func.min(fresh.c.seq).label("first_seq"))
                 .where(new).group_by(fresh.c.terminal_id).subquery())
        before = journal.alias("before")
        from_seq = (select(func.max(before.c.seq))
                    .where(before.c.terminal_id == first.c.terminal_id, before.c.seq < first.c.first_seq)
                    .scalar_subquery())
        conn.execute(insert(_terminals).from_select(
            ["terminal_id", "from_seq"], select(first.c.terminal_id, func.coalesce(from_seq, 0))))
        conn.execute(insert(_boots).from_select(
            ["terminal_id", "boot_id"], select(fresh.c.terminal_id, fresh.c.boot_id).where(new).distinct()))
        conn.execute(insert(_cards).from_select(
            ["card_id"], select(fresh.c.card_id).where(new, fresh.c.card_id.is_not(None)).distinct()))
        hh = card_profiles.c.household_ref
        conn.execute(insert(_households).from_select(
            ["household_ref"],
            select(hh).where(card_profiles.c.card_id.in_(select(_cards.c.card_id)), hh.is_not(None)).distinct()))
        conn.execute(insert(_cards).from_select(
            ["card_id"],
            select(card_profiles.c.card_id).where(hh.in_(select(_households.c.household_ref)),
                                                  card_profiles.c.card_id.not_in(select(_cards.c.card_id)))))
        conn.execute(insert(_entries).from_select(
            list(ENTRY_COLUMNS),
            select(*(journal.c[name] for name in ENTRY_COLUMNS)).where(
                journal.c.card_id.in_(select(_cards.c.card_id)))))
        # planner statistics: the scope tables are small, start from them (entries: only ever scanned whole)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE " + ", ".join(table.name for table in _TABLES[:-1]))
        else:
            for table in _TABLES[:-1]:
                conn.exec_driver_sql(f"ANALYZE {table.name}")
        if conn.dialect.name == "postgresql":
            # A table PostgreSQL never analyzed is planned as 10 pages of rows: benefit_cycles (a few rows,
            # below autovacuum's 50-row threshold for ever) as 640 cycles made every per-card join a hash
            # join over all entitlements. Analyzed once here; autovacuum keeps them current after that.
            for name in conn.execute(text(
                    "SELECT relname FROM pg_class WHERE relname IN ('benefit_cycles', 'terminal_sites', "
                    "'card_profiles', 'card_entitlements', 'journal_entries') AND relkind = 'r' AND reltuples < 0 "
                    "AND relnamespace = current_schema()::regnamespace")).scalars():
                conn.execute(text(f"ANALYZE {name}"))
        n_terminals, n_cards, n_households = conn.execute(select(
            *(select(func.count()).select_from(t).scalar_subquery() for t in (_terminals, _cards, _households)))).one()
        return cls(_terminals, _boots, _cards, _households, _entries, (n_terminals, n_cards, n_households), journal_id)

    def drop(self, conn: Connection) -> None:
        """Drop the temporary tables (before the run commits)."""
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TABLE IF EXISTS " + ", ".join(table.name for table in _TABLES))
            return
        for table in _TABLES:
            conn.execute(DropTable(table, if_exists=True))


def terminal_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched terminals,)`` (spread into ``.where(...)``)."""
    return () if scope is None else (column.in_(select(scope.terminals.c.terminal_id)),)


def card_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched cards,)``."""
    return () if scope is None else (column.in_(select(scope.cards.c.card_id)),)


def household_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched households,)``."""
    return () if scope is None else (column.in_(select(scope.households.c.household_ref)),)
