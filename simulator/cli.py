"""``huma sim``: make, present, import and export virtual NTAG cards.

Errors are raised as typed :mod:`simulator.errors` exceptions; ``huma.cli.main``
turns them into a one-line message and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from cardlib.clitypes import HexBytes, force_option, refuse_overwrite
from simulator.chip import SIGNATURE_LEN, ChipVariant, Ntag21x
from simulator.dumps import DumpFormat, filled_pages, import_dump, page_ranges, write_export
from simulator.reader import ReaderKind
from simulator.vpcd import VPCD_BASE_PORT, present_for, slot_port

UID_LENGTH = 7


class OutputDirMissing(click.ClickException):
    """The directory of an output file does not exist or is not a directory (exit status 2).

    Commands never create it: a mistyped path would otherwise leave a card file somewhere
    nobody looks, and the command would still say it succeeded.
    """

    exit_code = 2


def require_output_dir(out: Path) -> None:
    """Refuse an OUT whose parent directory is missing or not a directory.

    :raises OutputDirMissing: naming the directory.
    """
    parent = out.parent
    if not parent.exists():
        raise OutputDirMissing(f"{out}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise OutputDirMissing(f"{out}: {parent} is not a directory")


@click.group()
def sim() -> None:
    """Virtual NTAG213/215/216 cards on the vpcd virtual reader."""


@sim.command("new")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--chip", "chip_name", default="ntag215", show_default=True, help="ntag213, ntag215 or ntag216.")
@click.option("--uid", type=HexBytes(UID_LENGTH), default=None, help="7-byte UID in hex (default: random, NXP prefix 04).")
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
@click.option("--for", "seconds", default=5.0, show_default=True, type=click.FloatRange(0), help="Seconds on the reader.")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help=f"vpcd port (default {VPCD_BASE_PORT} + slot).")
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
