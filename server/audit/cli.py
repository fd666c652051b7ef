"""``huma audit``: batch reconciliation, exports and offline verification of a journal export.

The database is ``DATABASE_URL`` (default: the instance SQLite file), as for ``huma server``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click


def _app() -> Any:
    from server import create_app

    return create_app()


@click.group("audit")
def audit() -> None:
    """Reconciliation and exports for auditors."""


@audit.command("reconcile")
@click.option("--max-speed-kmh", type=float, default=60.0, show_default=True,
              help="Fastest plausible travel between two counters.")
@click.option("--verify-signatures", is_flag=True,
              help="Also re-verify every stored entry's signature and columns (one Ed25519 verify per entry).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
def reconcile_cmd(max_speed_kmh: float, verify_signatures: bool, as_json: bool) -> None:
    """Reconcile the whole stored journal; findings are upserted (re-running never duplicates)."""
    from server.extensions import db
    from server.reconcile.engine import ReconcileConfig, reconcile

    app = _app()
    with app.app_context():
        try:
            result = reconcile(db.write_session(), ReconcileConfig(max_speed_kmh=max_speed_kmh),
                               verify_signatures=verify_signatures)
        finally:
            db.engine.dispose()
    if as_json:
        click.echo(json.dumps({"run_id": result.run_id, "entries": result.entries, "findings": result.observed,
                               "new": result.new, "resolved": result.resolved, "by_kind": result.by_kind}))
        return
    click.echo(f"run {result.run_id}: {result.entries} entries, {result.observed} findings "
               f"({result.new} new, {result.resolved} resolved)")
    for kind, n in sorted(result.by_kind.items()):
        click.echo(f"  {kind}: {n}")


def _instant(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no UTC offset (e.g. 2026-03-01T00:00+07:00)")
    return value


@audit.command("export")
@click.argument("what", type=click.Choice(["findings", "journal"]))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="File to write (use - for stdout).")
@click.option("--status", type=click.Choice(["open", "confirmed", "dismissed"]), help="Findings: only this status.")
@click.option("--terminal-id", help="Journal: only this terminal.")
@click.option("--card-id", help="Journal: only this card.")
@click.option("--since", help="Journal: wall time from (ISO 8601 with offset).")
@click.option("--until", help="Journal: wall time before (ISO 8601 with offset).")
def export_cmd(what: str, fmt: str, output: Path, status: str | None, terminal_id: str | None,
               card_id: str | None, since: str | None, until: str | None) -> None:
    """Export findings or the raw signed journal (streamed; flat memory on large journals)."""
    from server.audit import exports
    from server.extensions import db
    from server.reconcile.models import FindingStatus

    app = _app()
    with app.app_context():
        try:
            if what == "findings":
                chunks = exports.findings_export(db.session, fmt, FindingStatus(status) if status else None)
            else:
                chunks = exports.journal_export(db.session, fmt, terminal_id=terminal_id, card_id=card_id,
                                                since=_instant(since), until=_instant(until))
            if str(output) == "-":
                for chunk in chunks:
                    click.echo(chunk, nl=False)
            else:
                with output.open("w", encoding="utf-8", newline="") as fh:  # CSV carries its own CRLF
                    for chunk in chunks:
                        fh.write(chunk)
        finally:
            db.session.close()
            db.engine.dispose()
    if str(output) != "-":
        click.echo(f"wrote {what} ({fmt}) to {output}")


@audit.command("verify-export")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify_export_cmd(path: Path) -> None:
    """Verify a JSON journal export offline (no server, no database): every signature, every
    exported column against the signed bytes, and each terminal's chain (gaps, breaks, deletions).

    Exit status 0 when it verifies; 2 with the terminal, seq and reason when it does not, or
    when the file is not a journal export (as ``huma journal verify``).
    """
    from server.audit.exports import verify_journal_export
    from server.errors import NotAJournalExport

    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise NotAJournalExport(f"{path} is not JSON ({type(exc).__name__}: {exc})") from None
    report = verify_journal_export(document)
    for terminal_id, n in sorted(report.counts.items()):
        seq, head = report.heads[terminal_id]
        click.echo(f"{terminal_id}: {n} entries verified, last seq {seq}, head {head}")
    if not report.complete:
        click.echo(f"warning: export filtered by {report.filters}: gaps are expected, so deletions "
                   "between entries cannot be detected; signatures, columns and adjacent links verified",
                   err=True)
    click.echo(f"OK: {sum(report.counts.values())} entries, {len(report.counts)} terminals")
