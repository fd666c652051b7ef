"""``huma sim``: make, present, import and export virtual NTAG cards.

Errors are raised as typed :mod:`cardlib.sim.errors` exceptions; ``huma.cli.main``
turns them into a one-line message and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from cardlib.sim.chip import SIGNATURE_LEN, ChipVariant, Ntag21x
from cardlib.sim.dumps import DumpFormat, import_dump, write_export
from cardlib.sim.reader import ReaderKind
from cardlib.sim.vpcd import VPCD_BASE_PORT, present_for, slot_port


def _hex_bytes(value: str, what: str, length: int) -> bytes:
    try:
        data = bytes.fromhex(value.replace(":", "").replace(" ", ""))
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be hex, got {value!r}") from exc
    if len(data) != length:
        raise click.BadParameter(f"{what} must be {length} bytes, got {len(data)}")
    return data


@click.group()
def sim() -> None:
    """Virtual NTAG213/215/216 cards on the vpcd virtual reader."""


@sim.command("new")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--chip", "chip_name", default="ntag215", show_default=True, help="ntag213, ntag215 or ntag216.")
@click.option("--uid", default=None, help="7-byte UID in hex (default: random, NXP prefix 04).")
@click.option("--signature", default=None, help="32-byte originality signature in hex (default: zeros).")
def new(out: Path, chip_name: str, uid: str | None, signature: str | None) -> None:
    """Create a factory-fresh virtual card file OUT."""
    variant = ChipVariant.parse(chip_name)
    chip = Ntag21x.blank(variant, _hex_bytes(uid, "--uid", 7) if uid else None)
    if signature:
        chip.signature = _hex_bytes(signature, "--signature", SIGNATURE_LEN)
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
def import_(dump: Path, out: Path) -> None:
    """Turn a Flipper .nfc or Proxmark3 JSON DUMP into the virtual card file OUT."""
    chip = import_dump(dump)
    chip.save(out)
    click.echo(f"{out}: {chip.variant.value} UID {chip.uid.hex().upper()} from {dump}")


@sim.command("export")
@click.argument("card", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(list(DumpFormat.ALL)), help="Dump format.")
def export(card: Path, out: Path, fmt: str) -> None:
    """Write the virtual card CARD as a dump OUT."""
    write_export(Ntag21x.load(card), out, fmt)
    click.echo(f"{out}: {fmt} dump of {card}")
