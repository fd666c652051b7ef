"""``huma sim``: make, present, import and export virtual NTAG cards; simulate a district.

``district`` needs the server package (it feeds the real upload path and
reconciliation) and imports it lazily, inside the command: a counter without the
server extra still runs ``huma sim present``.

Errors are raised as typed :mod:`simulator.errors` (or, for ``district``,
:mod:`server.errors`) exceptions; ``huma.cli.main`` turns them into a one-line
message and exit status 2.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from cardlib.clitypes import HexBytes, force_option, refuse_overwrite, require_output_dir
from simulator.chip import SIGNATURE_LEN, ChipVariant, Ntag21x
from simulator.dumps import DumpFormat, filled_pages, import_dump, page_ranges, write_export
from simulator.reader import ReaderKind
from simulator.vpcd import VPCD_BASE_PORT, present_for, slot_port

UID_LENGTH = 7


@click.group()
def sim() -> None:
    """Virtual NTAG213/215/216 cards on the vpcd virtual reader, and a simulated district."""


@sim.command("pcscd")
@click.option("--slots", default=2, show_default=True, type=click.IntRange(1, 16),
              help="Virtual reader slots (rounded up to even: each vpcd entry opens two).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for its reader.conf.d, socket and log (default: a temporary one, removed at exit).")
def pcscd(slots: int, workdir: Path | None) -> None:
    """Run a private pcscd with vpcd virtual readers until Ctrl-C or SIGTERM (no root, the machine's pcscd
    untouched); prints the PCSCLITE_CSOCK_NAME setting, each reader's vpcd port and how to tap a card."""
    from simulator.harness import PcscdReaders, serve_pcscd

    def show(r: PcscdReaders) -> None:
        click.echo(f"pcscd ({r.mode}, pid {r.pid or '-'}) with {len(r.slots)} virtual readers; log {r.log.resolve()}")
        click.echo(f"clients (huma readers, huma terminal run, huma provision): "
                   f"export PCSCLITE_CSOCK_NAME={r.socket.resolve()}")
        for name, port in r.slots:
            click.echo(f"  {name} = vpcd port {port}")
        click.echo(f"tap a card: huma sim present CARD.json --port {r.slots[0][1]} --for 5")
        click.echo("running; Ctrl-C (or SIGTERM) stops it")

    serve_pcscd(slots, workdir.resolve() if workdir is not None else None, ready=show)
    click.echo("pcscd stopped")


@sim.command("new")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--chip", "chip_name", default="ntag215", show_default=True, help="ntag213, ntag215 or ntag216.")
@click.option("--uid", type=HexBytes(UID_LENGTH), default=None,
              help="7-byte UID in hex (default: random, NXP prefix 04).")
@click.option("--signature", type=HexBytes(SIGNATURE_LEN), default=None,
              help="32-byte originality signature in hex (default: zeros).")
@force_option
def new(out: Path, chip_name: str, uid: bytes | None, signature: bytes | None, force: bool) -> None:
    """Create a factory-fresh virtual card file OUT (refuses to replace an existing OUT without --force)."""
    variant = ChipVariant.parse(chip_name)
    require_output_dir(out)
    refuse_overwrite(out, force)
    chip = Ntag21x.blank(variant, uid)
    if signature:
        chip.signature = signature
    chip.save(out)
    click.echo(f"{out}: {variant.value} UID {chip.uid.hex().upper()}")


@sim.command("present")
@click.argument("card", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--slot", default=0, show_default=True, type=click.IntRange(0, 1), help="vpcd slot.")
@click.option("--for", "seconds", default=5.0, show_default=True, type=click.FloatRange(0),
              help="Seconds on the reader.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help=f"vpcd port (default {VPCD_BASE_PORT} + slot).")
@click.option(
    "--reader-kind",
    default=ReaderKind.ACR122U.value,
    show_default=True,
    type=click.Choice([k.value for k in ReaderKind]),
    help="Reader behaviour to emulate.",
)
@click.option("--wait", "wait_s", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for vpcd to poll the card (a busy slot never does).")
def present(card: Path, slot: int, seconds: float, port: int | None, reader_kind: str, wait_s: float) -> None:
    """Put CARD on the virtual reader for --for seconds, then take it away (memory is saved)."""
    target = port if port is not None else slot_port(slot)
    apdus = present_for(card, seconds, port=target, kind=reader_kind, connect_timeout=wait_s)
    click.echo(f"{card}: presented on 127.0.0.1:{target} for {seconds:g} s, {apdus} APDUs answered")


@sim.command("import")
@click.argument("dump", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--fill-missing", is_flag=True,
              help="Accept a partial dump: pages it lacks get the chip's factory values (AUTH0=FF, no password).")
@force_option
def import_(dump: Path, out: Path, fill_missing: bool, force: bool) -> None:
    """Turn a Flipper .nfc or Proxmark3 JSON DUMP into the virtual card file OUT.

    A partial dump (the reader stopped early) is refused unless --fill-missing is given.
    """
    require_output_dir(out)
    refuse_overwrite(out, force)
    chip = import_dump(dump, fill_missing=fill_missing)
    chip.save(out)
    click.echo(f"{out}: {chip.variant.value} UID {chip.uid.hex().upper()} from {dump}")
    filled = filled_pages(chip)
    if filled:
        click.echo(f"warning: {dump} lacked page(s) {page_ranges(filled)}; filled with {chip.variant.value} "
                   "factory values (CFG0 04 00 00 FF: AUTH0=FF, no password; CFG1 00 05 00 00)", err=True)


@sim.command("export")
@click.argument("card", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(list(DumpFormat.ALL)), help="Dump format.")
@force_option
def export(card: Path, out: Path, fmt: str, force: bool) -> None:
    """Write the virtual card CARD as a dump OUT (refuses to replace an existing OUT without --force)."""
    require_output_dir(out)
    refuse_overwrite(out, force)
    write_export(Ntag21x.load(card), out, fmt)
    click.echo(f"{out}: {fmt} dump of {card}")


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


@sim.command("district")
@click.option("--households", default=2_000, show_default=True, type=click.IntRange(1),
              help="Cards, one per household.")
@click.option("--terminals", default=20, show_default=True, type=click.IntRange(2), help="Counters over 5 regions.")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1), help="Days offline before the upload.")
@click.option("--skewed", default=1, show_default=True, type=click.IntRange(0), help="Terminals whose clock steps.")
@click.option("--skew-minutes", default=45, show_default=True, type=click.IntRange(1), help="Size of the clock step.")
@click.option("--torn", default=5, show_default=True, type=click.IntRange(0),
              help="Torn writes (UNCERTAIN → FINISHED).")
@click.option("--duplicate-batches", default=3, show_default=True, type=click.IntRange(0), help="Batches sent twice.")
@click.option("--partial", default=2, show_default=True, type=click.IntRange(0),
              help="Terminals uploading in two parts.")
@click.option("--gaps", default=1, show_default=True, type=click.IntRange(0), help="Terminals losing a journal range.")
@click.option("--clones", default=2, show_default=True, type=click.IntRange(0), help="Cards cloned and used elsewhere.")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Random seed for the generated households, taps and faults.")
@click.option("--database", default=None, help="SQLAlchemy URL (default: a new SQLite file in a temp dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--campaign", is_flag=True, help="Planted attackers (--clones, --rollbacks) redeem at several counters "
              "for --days while the upload/reconcile/publish/fetch cycle runs; reports taken vs the docs bound.")
@click.option("--rollbacks", default=2, show_default=True, type=click.IntRange(0),
              help="With --campaign: cards whose old dump is written back before every visit.")
@click.option("--cycle", "cycle_h", nargs=4, type=click.FloatRange(min=0.1), default=(24.0, 6.0, 6.0, 24.0),
              show_default=True, metavar="U R P F",
              help="With --campaign: hours between uploads, reconciliations, publications, bundle fetches.")
def district(households: int, terminals: int, days: int, skewed: int, skew_minutes: int, torn: int,
             duplicate_batches: int, partial: int, gaps: int, clones: int, seed: int, database: str | None,
             as_json: bool, campaign: bool, rollbacks: int, cycle_h: tuple[float, float, float, float]) -> None:
    """Simulate a district (no card link) through the real upload API and reconciliation."""
    import json

    if campaign:
        from simulator.attackers import AttackPlan, campaign_summary, check, run_campaign
        from simulator.district import open_database as open_campaign_database

        attack = AttackPlan(households, terminals, days, clones, rollbacks, seed=seed, upload_h=cycle_h[0],
                            reconcile_h=cycle_h[1], publish_h=cycle_h[2], fetch_h=cycle_h[3])
        with tempfile.TemporaryDirectory(prefix="huma-district-") as tmp:
            url = database or f"sqlite:///{Path(tmp) / 'district.db'}"
            with _database_errors(url):
                if database:
                    _require_empty(database)
                app, token = open_campaign_database(url, Path(tmp))
                result = run_campaign(attack, app, token)
        summary = campaign_summary(result)
        click.echo(json.dumps(summary, indent=1) if as_json else
                   "\n".join(f"{k}: {v}" for k, v in summary.items()))
        check(result)
        return
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
    seeded = {"clones": len(report.clone_cards), "gaps": len(report.gap_terminals),
              "skewed": len(report.skewed_terminals), "torn": len(report.torn_cards)}
    seconds = {k: round(v, 2) for k, v in report.seconds.items()}
    doc = {"entries": report.entries, "requests": report.requests, "results": dict(report.results),
           "findings": dict(report.findings), "seeded": seeded, "unexplained_findings": len(extra),
           "seconds": seconds}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"district: {households} households, {terminals} terminals, {days} days offline (seed {seed})")
    click.echo(f"uploaded {report.entries} entries in {report.requests} requests: "
               + ", ".join(f"{k} {v}" for k, v in sorted(report.results.items())))
    click.echo("seeded: " + ", ".join(f"{k} {v}" for k, v in seeded.items()))
    click.echo("findings: " + (", ".join(f"{k} {v}" for k, v in sorted(report.findings.items())) or "none"))
    click.echo(f"unexplained findings: {len(extra)}")
    click.echo("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
