"""``huma audit``: batch reconciliation, exports and offline verification of a journal export.

The database is ``--database URL`` (default ``DATABASE_URL``, else the instance SQLite file), as for
``huma server``; a database without the current schema is refused (exit 2), never created.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from pathlib import Path

import click

from cardlib.clitypes import count_noun
from cardlib.fsutil import atomic_write_chunks
from server.cli import DATABASE_OPTION, AliasOption, database, make_app


@click.group("audit")
def audit() -> None:
    """Reconciliation and exports for auditors."""


class _Speed(click.ParamType):
    """A finite speed > 0 in km/h (``nan``/``inf`` would switch impossible-travel detection off)."""

    name = "KM/H"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        try:
            speed = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(speed) or speed <= 0:
            self.fail(f"{value!r}: give a speed above 0 km/h (e.g. 60)", param, ctx)
        return speed


@audit.command("reconcile")
@click.option("--max-speed-kmh", type=_Speed(), default=60.0, show_default=True,
              help="Fastest plausible travel between two counters.")
@click.option("--verify-signatures", is_flag=True,
              help="Also re-verify every stored entry's signature and columns (one Ed25519 verify per entry).")
@click.option("--full", is_flag=True,
              help="Re-examine the whole journal, not only what arrived since the last run (docs/reconciliation.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@DATABASE_OPTION
def reconcile_cmd(max_speed_kmh: float, verify_signatures: bool, full: bool, as_json: bool) -> None:
    """Reconcile the stored journal; findings are upserted (re-running never duplicates).

    By default only the terminals, cards and households of entries stored since the last run are
    re-examined (a full run when that cannot be done exactly); one run at a time.
    """
    from server.extensions import db
    from server.reconcile.engine import reconcile
    from server.reconcile.errors import ReconcileBusy
    from server.reconcile.observations import ReconcileConfig

    app = make_app()
    with database(app):
        try:
            result = reconcile(db.write_session(), ReconcileConfig(max_speed_kmh=max_speed_kmh),
                               verify_signatures=verify_signatures, incremental=not full)
        except ReconcileBusy as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"run_id": result.run_id, "mode": result.mode, "entries": result.entries,
                               "findings": result.observed,
                               "new": result.new, "resolved": result.resolved, "by_kind": result.by_kind}))
        return
    read = (count_noun(result.entries, "entry", "entries") if result.scope is None else
            f"incremental, {count_noun(result.entries, 'new entry', 'new entries')}, "
            f"{count_noun(result.scope[0], 'terminal', 'terminals')} and "
            f"{count_noun(result.scope[1], 'card', 'cards')} re-examined")
    click.echo(f"run {result.run_id}: {read}, {count_noun(result.observed, 'finding', 'findings')} "
               f"({result.new} new, {result.resolved} resolved)")
    for kind, n in sorted(result.by_kind.items()):
        click.echo(f"  {kind}: {n}")


class _Instant(click.ParamType):
    """ISO 8601 with a UTC offset → aware datetime; anything else is a usage error, not a traceback."""

    name = "ISO8601"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, dt.datetime):
            return value
        from server.types import require_aware

        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError as exc:
            self.fail(f"{value!r} is not an ISO 8601 instant ({exc}); e.g. 2026-03-01T00:00+07:00", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset (e.g. 2026-03-01T00:00+07:00)", param, ctx)
        try:
            return require_aware(parsed)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _write_export(output: Path, chunks: Iterable[str]) -> None:
    """Stream ``chunks`` into ``output`` so that it is the whole export or untouched.

    A regular file is written through :func:`cardlib.fsutil.atomic_write_chunks` (a temporary
    file beside it, renamed over it at the end): an export that fails midway (database error,
    bad row, Ctrl-C) used to leave a truncated file in place of the previous good one. A device
    or FIFO (``/dev/stdout``) is streamed into directly. UTF-8, newlines as given (CSV carries
    its own CRLF).
    """
    encoded = (chunk.encode("utf-8") for chunk in chunks)
    if output.exists() and not output.is_file():
        with output.open("wb") as fh:
            for data in encoded:
                fh.write(data)
        return
    atomic_write_chunks(output, encoded)


@audit.command("export")
@click.argument("what", type=click.Choice(["findings", "journal"]))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True,
              help="json (a journal export is signed with the receipt key; huma audit verify-export checks it) "
                   "or csv (unsigned, for spreadsheets).")
@click.option("-o", "--out", "--output", "output", cls=AliasOption, hidden_names=("--output",),
              type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="File to write (use - for stdout).")
@click.option("--status", type=click.Choice(["open", "confirmed", "dismissed"]), help="Findings: only this status.")
@click.option("--terminal-id", help="Journal: only this terminal.")
@click.option("--card-id", help="Journal: only this card.")
@click.option("--since", type=_Instant(), help="Journal: wall time from (ISO 8601 with offset).")
@click.option("--until", type=_Instant(), help="Journal: wall time before (ISO 8601 with offset).")
@DATABASE_OPTION
def export_cmd(what: str, fmt: str, output: Path, status: str | None, terminal_id: str | None,
               card_id: str | None, since: dt.datetime | None, until: dt.datetime | None) -> None:
    """Export findings or the raw signed journal (streamed; flat memory on large journals).

    A JSON journal export is signed with the server receipt key: HUMA_RECEIPT_KEY must name the
    server's key file (this command never creates a key).
    """
    from server.audit import exports
    from server.extensions import db
    from server.reconcile.models import FindingStatus

    since_at, until_at = since, until  # parsed (and refused) by click before the database is opened
    if str(output) != "-" and not output.parent.is_dir():
        from cardlib.clitypes import OptionError

        raise OptionError(f"directory {str(output.parent)!r} does not exist", param_hint="'-o' / '--output'")
    app = make_app()
    with database(app):
        if what == "findings":
            chunks = exports.findings_export(db.session, fmt, FindingStatus(status) if status else None)
        else:
            from server.receipts import cli_receipt_signer

            chunks = exports.journal_export(db.session, fmt, terminal_id=terminal_id, card_id=card_id,
                                            since=since_at, until=until_at,
                                            signer=cli_receipt_signer(app) if fmt == "json" else None)
        if str(output) == "-":
            for chunk in chunks:
                click.echo(chunk, nl=False)
        else:
            _write_export(output, chunks)
    if str(output) != "-":
        click.echo(f"wrote {what} ({fmt}) to {output}")


class _TerminalHead(click.ParamType):
    """``TERMINAL_ID=SEQ[:HASH]`` → (terminal id, (seq, entry hash or None))."""

    name = "TERMINAL_ID=SEQ[:HASH]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, tuple):
            return value
        from server.audit.exports import parse_terminal_head

        try:
            return parse_terminal_head(str(value))
        except ValueError as exc:
            self.fail(f"{value!r}: expected TERMINAL_ID=SEQ or TERMINAL_ID=SEQ:HASH (64 hex digits) — {exc}",
                      param, ctx)


@audit.command("verify-export")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--expect-head", "expect_heads", type=_TerminalHead(), multiple=True,
              help="Fail unless TERMINAL_ID's entries end exactly at SEQ (and entry HASH, hex): the head "
                   "printed by `huma journal verify` on that terminal. Repeatable; catches entries cut "
                   "from the end of a chain, which the export alone cannot show.")
@click.option("--terminal-ca", "terminal_ca", required=True, envvar="HUMA_TERMINAL_CA_CERT",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal CA certificate(s) you pinned (PEM; the server's TERMINAL_CA_CERT, from the key "
                   "ceremony): every terminal certificate in the export must be issued by it.")
@click.option("--server-key", "server_key", required=True, envvar="HUMA_SERVER_KEY",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The server key you pinned (PEM: the receipt_key every counter pins at enrolment): the header "
                   "(filters, terminal keys) must be signed by it.")
def verify_export_cmd(path: Path, expect_heads: tuple[tuple[str, tuple[int, bytes | None]], ...],
                      terminal_ca: Path, server_key: Path) -> None:
    """Verify a JSON journal export offline (no server, no database): every signature, every
    exported column against the signed bytes, and each terminal's chain (gaps, breaks, deletions).

    Prints each terminal's last seq and head entry hash: entries deleted from the END of a
    chain leave no gap, so compare these heads with `huma journal verify` on each terminal,
    or pass them as --expect-head.

    Exit status 0 when it verifies; 2 with the terminal, seq and reason when it does not, or
    when the file is not a journal export (as `huma journal verify`).
    """
    from server.audit.exports import check_export_heads, verify_export_file

    if not path.is_file():  # before the anchors are read: a device or FIFO is refused at once
        from server.errors import NotAJournalExport

        raise NotAJournalExport(f"{path} is not a regular file")
    from server.errors import BadPinnedAnchor

    try:
        report = verify_export_file(path, terminal_ca=terminal_ca.read_bytes(), server_key=server_key.read_bytes())
    except BadPinnedAnchor as exc:  # the anchor file is at fault, not the export: name the file
        option, given = ("--server-key", server_key) if exc.anchor == "server_key" else ("--terminal-ca", terminal_ca)
        raise BadPinnedAnchor(f"{option} {given}: {exc}", exc.anchor) from None
    if expect_heads and not report.complete:
        raise click.UsageError(f"--expect-head needs an export that is not filtered by card or time "
                               f"(this one: {report.filters})")
    check_export_heads(report, dict(expect_heads))
    for terminal_id, n in sorted(report.counts.items()):
        seq, head = report.heads[terminal_id]
        click.echo(f"{terminal_id}: {count_noun(n, 'entry', 'entries')} verified, last seq {seq}, head {head}")
    if not report.complete:
        click.echo(f"warning: export filtered by {report.filters}: gaps are expected, so deletions "
                   "between entries cannot be detected; signatures, columns and adjacent links verified",
                   err=True)
    click.echo(f"OK: {count_noun(sum(report.counts.values()), 'entry', 'entries')}, "
               f"{count_noun(len(report.counts), 'terminal', 'terminals')}")
    if not expect_heads:
        click.echo("(compare each head with `huma journal verify` on that terminal, or pass "
                   "--expect-head TERMINAL_ID=SEQ:HASH: entries cut from the end cannot be seen from the export alone)")


@audit.group("checkpoint")
def checkpoint_group() -> None:
    """Scanned end-of-shift checkpoints of counters (docs/checkpoints.md)."""


@checkpoint_group.command("add")
@click.argument("source", metavar="FILE-OR-TEXT")
@DATABASE_OPTION
def checkpoint_add_cmd(source: str) -> None:
    """Verify a shift slip's checkpoint under its terminal's certified key and store it.

    FILE-OR-TEXT is the scanned text (HBCP1:…), a file holding it, or a file holding the
    COSE_Sign1 bytes; - reads standard input. Adding the same slip again changes nothing.
    Exit status 2 when it does not verify (the reason is printed).
    """
    from server.checkpoints import add_checkpoint
    from server.extensions import db

    if source == "-":
        data: bytes | str = click.get_binary_stream("stdin").read()
    elif source.lstrip().startswith("HBCP1:"):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"{source}: {exc.strerror or exc} (give a file or the HBCP1: text)") from exc
    app = make_app()
    with database(app):
        session = db.write_session()
        added = add_checkpoint(session, data, None, source="cli")
        session.commit()
        row = added.row
        click.echo(f"{'stored' if added.created else 'already stored'}: checkpoint {row.id} of {row.terminal_id}, "
                   f"boot {row.boot_id}, head {row.head_seq} {row.head_hash.hex()}")
