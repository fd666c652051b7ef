"""``huma sim``: the virtual-card commands of :mod:`simulator.cli` plus ``huma sim district``.

``district`` needs the server package (it feeds the real upload path and
reconciliation), so it is composed here, in the CLI root, and imports the
server lazily: a counter without the server extra still runs ``huma sim present``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from simulator.cli import sim as _card_sim


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """A bad ``--database`` is one line and exit 2 (``huma server`` does the same), not a traceback.

    :raises ConfigurationError: the URL cannot work (scheme, port, in-memory SQLite, unparseable).
    :raises DatabaseUnavailable: cannot connect, or the SQLite file is not a database (no password shown).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DatabaseError, InterfaceError, NoSuchModuleError, OperationalError

    from server.cli import check_database_url
    from server.errors import ConfigurationError, DatabaseUnavailable

    check_database_url(url)
    try:
        yield
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        why = f"its driver needs the Python package {exc.name!r}" if isinstance(exc, ImportError) else str(exc)
        raise ConfigurationError(f"database URL {make_url(url).render_as_string(hide_password=True)} is not "
                                 f"usable: {why}") from None
    except (OperationalError, InterfaceError, DatabaseError) as exc:
        if not isinstance(exc, (OperationalError, InterfaceError)) and type(exc) is not DatabaseError:
            raise  # IntegrityError, ProgrammingError...: bugs, keep the traceback
        parsed = make_url(url)
        where = parsed.database if parsed.get_backend_name() == "sqlite" else \
            f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnavailable(f"cannot use the database at {where}: {first}") from None


def _require_empty(url: str) -> None:
    """Refuse a ``--database`` that already holds tables: the simulation writes fake terminals,
    an admin, journal entries and findings into it (a production database given by mistake)."""
    from sqlalchemy import inspect

    from server.db import make_engine, sqlite_file
    from server.errors import ConfigurationError

    path = sqlite_file(url)
    if path is not None and not path.exists():
        return  # a new SQLite file: created empty by the simulation (its directory must exist)
    engine = make_engine(url)  # refuses a backend other than sqlite/postgresql
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise ConfigurationError(f"--database must be an empty database: the simulation writes fake terminals, "
                                 f"journal entries and findings into it, and this one already has "
                                 f"{len(tables)} table(s) ({', '.join(sorted(tables)[:3])}, …)")


@click.command("district")
@click.option("--households", default=2_000, show_default=True, type=click.IntRange(1), help="Cards, one per household.")
@click.option("--terminals", default=20, show_default=True, type=click.IntRange(2), help="Counters over 5 regions.")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1), help="Days offline before the upload.")
@click.option("--skewed", default=1, show_default=True, type=click.IntRange(0), help="Terminals whose clock steps.")
@click.option("--skew-minutes", default=45, show_default=True, type=click.IntRange(1), help="Size of the clock step.")
@click.option("--torn", default=5, show_default=True, type=click.IntRange(0), help="Torn writes (UNCERTAIN → FINISHED).")
@click.option("--duplicate-batches", default=3, show_default=True, type=click.IntRange(0), help="Batches sent twice.")
@click.option("--partial", default=2, show_default=True, type=click.IntRange(0), help="Terminals uploading in two parts.")
@click.option("--gaps", default=1, show_default=True, type=click.IntRange(0), help="Terminals losing a journal range.")
@click.option("--clones", default=2, show_default=True, type=click.IntRange(0), help="Cards cloned and used elsewhere.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--database", default=None, help="SQLAlchemy URL (default: a new SQLite file in a temp dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def district(households: int, terminals: int, days: int, skewed: int, skew_minutes: int, torn: int,
             duplicate_batches: int, partial: int, gaps: int, clones: int, seed: int, database: str | None,
             as_json: bool) -> None:
    """Simulate a district (no card link) through the real upload API and reconciliation."""
    import json

    from simulator.district import DistrictPlan, open_database, run_district, unexplained

    plan = DistrictPlan(households, terminals, days, skewed, skew_minutes, torn, duplicate_batches, partial,
                        gaps, clones, seed)
    with tempfile.TemporaryDirectory(prefix="huma-district-") as tmp:
        url = database or f"sqlite:///{Path(tmp) / 'district.db'}"
        with _database_errors(url):
            if database:
                _require_empty(database)
            app, token = open_database(url, Path(tmp))
            report = run_district(plan, app, token)
    extra = unexplained(report)
    doc = {"entries": report.entries, "requests": report.requests, "results": dict(report.results),
           "findings": dict(report.findings), "seeded": {"clones": len(report.clone_cards),
                                                         "gaps": len(report.gap_terminals),
                                                         "skewed": len(report.skewed_terminals),
                                                         "torn": len(report.torn_cards)},
           "unexplained_findings": len(extra), "seconds": {k: round(v, 2) for k, v in report.seconds.items()}}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"district: {households} households, {terminals} terminals, {days} days offline (seed {seed})")
    click.echo(f"uploaded {report.entries} entries in {report.requests} requests: "
               + ", ".join(f"{k} {v}" for k, v in sorted(report.results.items())))
    click.echo("seeded: " + ", ".join(f"{k} {v}" for k, v in doc["seeded"].items()))  # type: ignore[union-attr]
    click.echo("findings: " + (", ".join(f"{k} {v}" for k, v in sorted(report.findings.items())) or "none"))
    click.echo(f"unexplained findings: {len(extra)}")
    click.echo("seconds: " + ", ".join(f"{k} {v}" for k, v in doc["seconds"].items()))  # type: ignore[union-attr]


sim = click.Group(_card_sim.name, commands={**_card_sim.commands, "district": district}, help=_card_sim.help)
