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
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    union,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.schema import CreateTable, DropTable
from sqlalchemy.sql.elements import ColumnElement

from server.reconcile.models import RegistryChange
from server.reconcile.sql import built_once, card_profiles, full_scan, journal

__all__ = ["ENTRY_COLUMNS", "Scope", "card_in", "household_in", "terminal_in"]

_meta = MetaData()
#: Temporary tables (one per connection, emptied at the start of each run).
_terminals = Table("reconcile_scope_terminals", _meta, Column("terminal_id", String(64), primary_key=True),
                   Column("from_seq", BigInteger, nullable=False), prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
_boots = Table("reconcile_scope_boots", _meta, Column("terminal_id", String(64), primary_key=True),
               Column("boot_id", BigInteger, primary_key=True), prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
_cards = Table("reconcile_scope_cards", _meta, Column("card_id", String(64), primary_key=True),
               prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
_households = Table("reconcile_scope_households", _meta, Column("household_ref", String(16), primary_key=True),
                    prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
#: The card checks' columns of the journal (server.reconcile.card_checks).
ENTRY_COLUMNS = ("card_id", "entry_id", "terminal_id", "seq", "wall_time", "kind", "tag_uid", "ntag_counter",
                 "slot_seq_before", "slot_seq_after", "state_hash_prev", "state_hash_new", "programme", "amount")
_entries = Table("reconcile_scope_entries", _meta, *(Column(name, journal.c[name].type) for name in ENTRY_COLUMNS),
                 prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
_TABLES = (_terminals, _boots, _cards, _households, _entries)
registry_changes = cast(Table, RegistryChange.__table__)


_CREATE: dict[tuple[str, str], str] = {}


def _create_sql(dialect: Dialect, name: str) -> str:
    """``CREATE TEMPORARY TABLE IF NOT EXISTS`` of scope table ``name``, compiled once per dialect name."""
    key = (dialect.name, name)
    if key not in _CREATE:
        _CREATE[key] = str(CreateTable(_meta.tables[name], if_not_exists=True).compile(dialect=dialect))
    return _CREATE[key]


#: Stands for the watermark in :func:`_fill_statements`' SQL (an integer put in its place per run).
_WATERMARK = "__reconcile_watermark__"
#: Stands for the ``registry_changes`` watermark (the last run's ``registry_change_id``), likewise.
_CHANGES = "__reconcile_changes__"


def _fill_statements() -> list[Any]:
    """The statements that fill the scope tables from the entries with ``id >`` :data:`_WATERMARK` and the registry
    changes with ``id >`` :data:`_CHANGES` (their cards, and the households a profile left or joined), in order;
    last, the changes read by an earlier run are pruned."""
    # the new entries by primary key range (SQLite: NOT INDEXED, or it walks a whole index in key order)
    fresh = full_scan._construct(journal, name="fresh")
    new = fresh.c.id > literal_column(_WATERMARK)
    first = (select(fresh.c.terminal_id, func.min(fresh.c.seq).label("first_seq"))
             .where(new).group_by(fresh.c.terminal_id).subquery())
    before = journal.alias("before")
    from_seq = (select(func.max(before.c.seq))
                .where(before.c.terminal_id == first.c.terminal_id, before.c.seq < first.c.first_seq)
                .scalar_subquery())
    hh = card_profiles.c.household_ref
    changed = registry_changes.c.id > literal_column(_CHANGES)
    return [
        insert(_terminals).from_select(
            ["terminal_id", "from_seq"], select(first.c.terminal_id, func.coalesce(from_seq, 0))),
        insert(_boots).from_select(
            ["terminal_id", "boot_id"], select(fresh.c.terminal_id, fresh.c.boot_id).where(new).distinct()),
        insert(_cards).from_select(
            ["card_id"], select(fresh.c.card_id).where(new, fresh.c.card_id.is_not(None)).distinct()),
        insert(_cards).from_select(
            ["card_id"], select(registry_changes.c.card_id).where(
                changed, registry_changes.c.card_id.is_not(None),
                registry_changes.c.card_id.not_in(select(_cards.c.card_id))).distinct()),
        insert(_households).from_select(
            ["household_ref"],
            union(select(hh).where(card_profiles.c.card_id.in_(select(_cards.c.card_id)), hh.is_not(None)),
                  select(registry_changes.c.household_ref).where(changed,
                                                                 registry_changes.c.household_ref.is_not(None)))),
        insert(_cards).from_select(
            ["card_id"],
            select(card_profiles.c.card_id).where(hh.in_(select(_households.c.household_ref)),
                                                  card_profiles.c.card_id.not_in(select(_cards.c.card_id)))),
        insert(_entries).from_select(
            list(ENTRY_COLUMNS),
            select(*(journal.c[name] for name in ENTRY_COLUMNS))
            .where(journal.c.card_id.in_(select(_cards.c.card_id)))),
        delete(registry_changes).where(registry_changes.c.id <= literal_column(_CHANGES)),
    ]


_SCRIPT: dict[tuple[str, str], list[str]] = {}


def _script(dialect: Dialect) -> list[str]:
    """The SQL that creates, empties, fills and analyzes the scope tables, with :data:`_WATERMARK` in it.

    PostgreSQL: one string (psycopg sends a parameterless string as one query: one round trip for
    all of it), ending with a ``DO`` block that ANALYZEs the reference tables PostgreSQL never
    analyzed (see :meth:`Scope.since`). SQLite: one string per statement. Compiled once per dialect.
    """
    key = (dialect.name, "script")
    if key not in _SCRIPT:
        fill = [str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
                for stmt in _fill_statements()]
        names = [table.name for table in _TABLES]
        analyze = names[:-1]  # planner statistics: the scope tables are small, start from them (entries: scanned)
        if dialect.name == "postgresql":
            # A table PostgreSQL never analyzed is planned as 10 pages of rows: benefit_cycles (a few rows,
            # below autovacuum's 50-row threshold for ever) as 640 cycles made every per-card join a hash
            # join over all entitlements. Analyzed once here; autovacuum keeps them current after that.
            never = ("DO $$DECLARE r record; BEGIN FOR r IN SELECT relname FROM pg_class WHERE relname IN "
                     "('benefit_cycles', 'terminal_sites', 'card_profiles', 'card_entitlements', 'journal_entries') "
                     "AND relkind = 'r' AND reltuples < 0 AND relnamespace = current_schema()::regnamespace "
                     "LOOP EXECUTE 'ANALYZE ' || quote_ident(r.relname); END LOOP; END$$")
            _SCRIPT[key] = ["; ".join([_create_sql(dialect, name) for name in names]
                                      + [f"DELETE FROM {name}" for name in names] + fill
                                      + ["ANALYZE " + ", ".join(analyze), never])]
        else:
            _SCRIPT[key] = ([_create_sql(dialect, name) for name in names] + [f"DELETE FROM {name}" for name in names]
                            + fill + [f"ANALYZE {name}" for name in analyze])
    return _SCRIPT[key]


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
    :ivar new_entries: how many entries those are.
    """

    terminals: Table
    boots: Table
    cards: Table
    households: Table
    entries: Table
    counts: tuple[int, int, int]
    journal_id: int = 0
    new_entries: int = 0

    @classmethod
    def since(cls, conn: Connection, journal_id: int, registry_change_id: int) -> Scope:
        """Create (or empty) the scope tables on ``conn`` and fill them from the entries with ``id > journal_id``
        and the registry changes with ``id > registry_change_id``; delete the registry changes at or below it
        (the last run, committed, read them).

        :param journal_id: the watermark, a ``journal_entries.id``.
        :param registry_change_id: the last run's ``registry_changes`` watermark.
        """
        for sql in _script(conn.dialect):  # PostgreSQL: one round trip
            conn.exec_driver_sql(sql.replace(_WATERMARK, str(int(journal_id)))
                                 .replace(_CHANGES, str(int(registry_change_id))))
        n_terminals, n_cards, n_households, n_new = conn.execute(_counts(), {"watermark": journal_id}).one()
        return cls(_terminals, _boots, _cards, _households, _entries, (n_terminals, n_cards, n_households), journal_id,
                   n_new)

    def drop(self, conn: Connection) -> None:
        """Drop the temporary tables (before the run commits; on PostgreSQL its commit drops them: ON COMMIT DROP)."""
        if conn.dialect.name == "postgresql":
            return
        for table in _TABLES:
            conn.execute(DropTable(table, if_exists=True))


def _counts() -> Any:
    """Rows in the scope tables (terminals, cards, households) and new entries (``id >`` the bound ``watermark``)."""
    return built_once(("scope_counts",), lambda: select(
        *(select(func.count()).select_from(t).scalar_subquery() for t in (_terminals, _cards, _households)),
        select(func.count()).select_from(journal).where(journal.c.id > bindparam("watermark")).scalar_subquery()))


def terminal_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched terminals,)`` (spread into ``.where(...)``)."""
    return () if scope is None else (column.in_(select(scope.terminals.c.terminal_id)),)


def card_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched cards,)``."""
    return () if scope is None else (column.in_(select(scope.cards.c.card_id)),)


def household_in(scope: Scope | None, column: Any) -> tuple[ColumnElement[bool], ...]:
    """``()`` for a full run, else ``(column IN touched households,)``."""
    return () if scope is None else (column.in_(select(scope.households.c.household_ref)),)
