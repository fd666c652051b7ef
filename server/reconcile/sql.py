"""SQL building blocks of the reconciliation checks, the same on SQLite and PostgreSQL.

Table handles named after their tables, :class:`epoch_s` (a timestamp as UNIX seconds in
SQL), :class:`json_int` (an integer member of a JSON text column), :class:`full_scan` (SQLite's
``NOT INDEXED`` for the per-card statements) and :func:`built_once` (a statement kept per process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, Float, Table, and_, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Alias

from server.models import JournalEntryRow, Terminal
from server.reconcile.models import BenefitCycle, CardEntitlement, CardProfile, Finding, TerminalSite
from server.reconcile.observations import REDEMPTION_KINDS

__all__ = [
    "REDEEMED",
    "REDEEMED_IN_SCAN",
    "benefit_cycles",
    "built_once",
    "card_entitlements",
    "card_profiles",
    "epoch_s",
    "findings",
    "full_scan",
    "journal",
    "journal_scan",
    "json_int",
    "terminal_sites",
    "terminals",
]

_T = TypeVar("_T")


class epoch_s(FunctionElement[float]):  # noqa: N801 - SQL function style
    """Seconds since 1970-01-01T00:00Z of a timestamp column, as a float (both dialects)."""

    type = Float()
    inherit_cache = True
    name = "epoch_s"


@compiles(epoch_s, "sqlite")
def _epoch_sqlite(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    # UTCDateTime stores UTC text on SQLite; julianday() parses it (23 µs resolution).
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


@compiles(epoch_s, "postgresql")
def _epoch_pg(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    # date_part is float8 arithmetic on the microseconds; EXTRACT is numeric since PostgreSQL 14 and costs
    # twice as much per row (the clock checks compute it for every entry they read). Same double values.
    return f"date_part('epoch', {compiler.process(element.clauses, **kw)})"


class json_int(FunctionElement[int]):  # noqa: N801 - SQL function style
    """An integer member of a JSON object stored as text (``findings.detail``): ``json_int(column, key)``.

    ``key`` is a plain member name (letters, digits, ``_``); a missing member, a member that is not a
    number, or a non-object is NULL (PostgreSQL: a NUMERIC; SQLite: the JSON number).
    """

    type = BigInteger()
    inherit_cache = True
    name = "json_int"

    def __init__(self, column: Any, key: str) -> None:
        if not key.replace("_", "").isalnum():
            raise ValueError(f"not a plain JSON member name: {key!r}")
        super().__init__(column, literal_column(f"'{key}'"))


@compiles(json_int, "sqlite")
def _json_int_sqlite(element: json_int, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = (compiler.process(c, **kw) for c in element.clauses)
    path = f"'$.' || {key}"
    return f"CASE WHEN json_type({column}, {path}) IN ('integer', 'real') THEN json_extract({column}, {path}) END"


@compiles(json_int, "postgresql")
def _json_int_pg(element: json_int, compiler: SQLCompiler, **kw: Any) -> str:
    # numeric, and only for a JSON number: PostgreSQL may evaluate this for rows another condition of the
    # statement excludes (any kind's detail), and a cast of a string or fraction to BIGINT would raise
    column, key = (compiler.process(c, **kw) for c in element.clauses)
    member = f"(CAST({column} AS json) -> {key})"
    return f"CASE WHEN json_typeof({member}) = 'number' THEN CAST(CAST({column} AS json) ->> {key} AS NUMERIC) END"


#: The tables the checks read, as SQLAlchemy Core tables (column access ``journal.c.seq``).
#: (Declarative models type ``__table__`` as FromClause; they are Tables.)
journal = cast(Table, JournalEntryRow.__table__)
terminals = cast(Table, Terminal.__table__)
terminal_sites = cast(Table, TerminalSite.__table__)
card_profiles = cast(Table, CardProfile.__table__)
card_entitlements = cast(Table, CardEntitlement.__table__)
benefit_cycles = cast(Table, BenefitCycle.__table__)
findings = cast(Table, Finding.__table__)

#: A journal entry that redeemed a benefit (a slot written and an amount charged).
REDEEMED = and_(journal.c.kind.in_(REDEMPTION_KINDS), journal.c.card_id.is_not(None))


class full_scan(Alias):  # noqa: N801 - SQL construct style
    """An alias of a table that SQLite reads by a full table scan (``NOT INDEXED``); a plain alias elsewhere.

    For the per-card statements: walking ``ix_journal_card_time`` visits the journal's
    rows in card order, i.e. one random row lookup per entry (rows are stored in upload
    order), which costs more than reading the table in order and sorting (issue 8:
    e.g. 1.8 s → 1.0 s for a GROUP BY card at 1M entries). PostgreSQL chooses for itself.
    """

    inherit_cache = True


@compiles(full_scan, "sqlite")
def _full_scan_sqlite(element: full_scan, compiler: SQLCompiler, **kw: Any) -> str:
    text = compiler.visit_alias(element, **kw)
    return f"{text} NOT INDEXED" if kw.get("asfrom") else text


#: ``journal_entries`` for statements that read every card's entries (see :class:`full_scan`).
journal_scan = full_scan._construct(journal, name="journal_scan")
#: :data:`REDEEMED` over :data:`journal_scan`.
REDEEMED_IN_SCAN = and_(journal_scan.c.kind.in_(REDEMPTION_KINDS), journal_scan.c.card_id.is_not(None))


_BUILT: dict[tuple[Any, ...], Any] = {}


def built_once(key: tuple[Any, ...], build: Callable[[], _T]) -> _T:
    """The statement ``build()`` makes, built on the first call with ``key`` in this process and kept.

    For the checks' statements that depend only on the run's kind (full or incremental: the scope
    tables are module-level tables) and its :class:`~server.reconcile.observations.ReconcileConfig`
    (hashable, frozen): ``key`` must name everything ``build`` reads. Rebuilding them each run cost
    more Python than a small incremental run spends elsewhere; SQLAlchemy then finds the compiled
    form in its cache.
    """
    stmt = _BUILT.get(key)
    if stmt is None:
        stmt = _BUILT[key] = build()
    return cast(_T, stmt)
