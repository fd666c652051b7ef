"""``huma sim``: the virtual-card commands of :mod:`cardlib.sim.cli` plus ``huma sim district``.

``district`` needs the server package (it feeds the real upload path and
reconciliation), so it is composed here, in the CLI root, and imports the
server lazily: a counter without the server extra still runs ``huma sim present``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from cardlib.sim.cli import sim as _card_sim


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

    from server.sim_district import DistrictPlan, open_database, run_district, unexplained

    plan = DistrictPlan(households, terminals, days, skewed, skew_minutes, torn, duplicate_batches, partial,
                        gaps, clones, seed)
    with tempfile.TemporaryDirectory(prefix="huma-district-") as tmp:
        url = database or f"sqlite:///{Path(tmp) / 'district.db'}"
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
