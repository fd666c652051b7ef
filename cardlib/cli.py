"""``huma readers`` and ``huma card info|dump|format``: look at a Type 2 card on a PC/SC reader.

Readers are chosen by ``--reader PATTERN`` (glob, or ``re:<regex>``); without
it the command works only when exactly one reader exists. ``--kind`` names the
reader's pass-through (``acr122u``, ``part3``, ``none``); ``auto`` takes it from
the reader profile whose name pattern matches the reader (the composing CLI,
``huma``, passes that look-up in :data:`READER_CAPS_META`: cardlib knows no
profiles), else guesses from the name (ACS ACR122U → ``acr122u``, otherwise ``none``).

Errors are cardlib's typed errors; ``huma``'s ``main()`` turns them into a
message and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cardlib.clitypes import force_option, refuse_overwrite, require_output_dir
from cardlib.errors import CardlibError
from cardlib.ndef import NdefError, decode_message
from cardlib.records.layout import PRIVATE_FIRST_PAGE, PUBLIC_HEADER_PAGE, parse_public_header
from cardlib.type2 import ACR122U, GENERIC, PART3, ReaderCapabilities, Type2Tag, channel_for
from cardlib.type2.chip import ChipType
from cardlib.type2.errors import UnsupportedCommand

_KINDS: dict[str, ReaderCapabilities] = {"acr122u": ACR122U, "part3": PART3, "none": GENERIC}
_ACR122U_NAME_MARK = "ACR122"
#: Key in click's ``Context.meta`` of a ``reader name -> ReaderCapabilities | None`` function that
#: ``--kind auto`` asks first; ``huma`` sets it from firmware_config's reader profiles.
READER_CAPS_META = "cardlib.reader_caps"
#: What ``card info`` says for a value only a raw tag command gives, when the channel has none.
NO_PASS_THROUGH = "unknown with this reader (no pass-through for raw tag commands); try --kind acr122u or --kind part3"
#: Default ``card info --wait``: seconds to wait for a card on the reader.
WAIT_S = 5.0

reader_option = click.option(
    "--reader", "pattern", metavar="PATTERN", default=None,
    help="Reader name glob (or re:REGEX). Needed when more than one reader exists.",
)
kind_option = click.option(
    "--kind", type=click.Choice(["auto", *_KINDS]), default="auto", show_default=True,
    help="Reader pass-through kind (from the reader profile).",
)


def _caps(kind: str, reader_name: str) -> ReaderCapabilities:
    """The pass-through of ``kind``; for ``auto`` the reader profile's, else a guess from the name."""
    if kind == "auto":
        ctx = click.get_current_context(silent=True)
        resolve = ctx.meta.get(READER_CAPS_META) if ctx is not None else None
        found = resolve(reader_name) if resolve is not None else None
        if isinstance(found, ReaderCapabilities):
            return found
        kind = "acr122u" if _ACR122U_NAME_MARK in reader_name else "none"
    return _KINDS[kind]


@click.command()
def readers() -> None:
    """List PC/SC readers and whether a card is present."""
    from cardlib.transport.pcsc import PcscContext

    with PcscContext() as ctx:
        names = ctx.readers()
        if not names:
            click.echo("no readers")
        for name in names:
            click.echo(f"{name}\t{'card' if ctx.card_present(name) else 'empty'}")


@click.group()
def card() -> None:
    """Inspect, dump and format Type 2 cards (NTAG213/215/216)."""


def _open(pattern: str | None, kind: str, wait_s: float = 0.0) -> tuple[Any, Type2Tag]:
    """Connect to the card on the reader matching ``pattern``, waiting up to ``wait_s`` seconds for one.

    :raises NoCard: no card came within ``wait_s`` (the message says to place one).
    :raises ReaderNotFound, ServiceUnavailable: see :mod:`cardlib.transport.pcsc`.
    """
    from cardlib.transport.errors import NoCard
    from cardlib.transport.pcsc import SCARD_E_NO_SMARTCARD, PcscConnection, PcscContext, select_reader

    ctx = PcscContext()
    try:
        name = select_reader(ctx.readers(), pattern)
        if not ctx.card_present(name):
            if wait_s > 0:
                click.echo(f"place a card on {name!r} (waiting up to {wait_s:g} s)", err=True)
            if wait_s <= 0 or not ctx.wait_for_card(name, True, wait_s):
                waited = f" after {wait_s:g} s" if wait_s > 0 else ""
                raise NoCard(f"no card on {name!r}{waited}: place the card on the reader and run the command "
                             "again (--wait SECONDS waits longer)", SCARD_E_NO_SMARTCARD)
        conn = PcscConnection(ctx, name, owns_context=True)
    except BaseException:
        ctx.close()
        raise
    try:
        caps = _caps(kind, conn.reader_name)
        tag = Type2Tag(channel_for(conn, caps, repoll=conn.reconnect), conn.atr)
    except BaseException:
        conn.close()
        raise
    return conn, tag


def _protected_pages(tag: Type2Tag) -> dict[str, Any] | None:
    """What ``card info`` says of a format-2 card whose NDEF read stopped at AUTH0, or None if not one.

    Page 10 is open on such a card (docs/card-format.md §2.2): it names the format and the card-password
    key version; pages from 11 on answer READ with a NAK until PWD_AUTH, which only counters and stations
    (holding the card-password keys) do.
    """
    try:
        header = parse_public_header(tag.read_pages(PUBLIC_HEADER_PAGE, 1)[:4])
    except CardlibError:
        return None
    if header is None:
        return None
    return {"error": f"format-{header.version} card: pages {PRIVATE_FIRST_PAGE} on are behind the card password "
                     f"(key version {header.key_version}); a counter or station reads them after PWD_AUTH",
            "card_format": header.version, "card_password_key_version": header.key_version}


def card_report(tag: Type2Tag) -> dict[str, Any]:
    """Everything ``card info`` shows, as JSON-ready data (hex strings for bytes).

    Optional parts the reader or card cannot give (counter, signature, NDEF)
    carry the typed error's text instead of a value.
    """
    chip = tag.identify()
    raw = tag.channel.supports_raw
    out: dict[str, Any] = {
        "chip": chip.chip.value,
        "identified_by": chip.source,
        "version": chip.version.hex().upper() if chip.version else
        NO_PASS_THROUGH if not raw else "none (the chip refused GET_VERSION)",
        "uid": tag.uid.hex().upper(),
        "total_pages": chip.total_pages,
    }
    try:
        area = tag.read_ndef()
    except CardlibError as exc:
        out["ndef"] = _protected_pages(tag) or {"error": f"{type(exc).__name__}: {exc}"}
    else:
        data = area.data_area
        out["cc"] = {
            "raw": data.cc.raw.hex().upper(),
            "data_area_bytes": data.cc.data_area_size,
            "writable": data.cc.writable,
        }
        out["data_area"] = {
            "usable_bytes": data.size,
            "read_only": data.read_only,
            "mis_issued": data.mis_issued,
            "issuance_errors": list(data.issuance_errors),
        }
        ndef_out: dict[str, Any] = {
            "tlv_offset": area.tlv_offset,
            "value_offset": area.value_offset,
            "length_form": area.length_form,
            "length": len(area.message),
            "capacity": area.capacity,
        }
        if area.message:
            try:
                ndef_out["records"] = [
                    {"type": r.type, "id": r.name, "payload_length": len(r.data), "payload": bytes(r.data).hex()}
                    for r in decode_message(area.message)
                ]
            except NdefError as exc:
                ndef_out["records_error"] = str(exc)
        else:
            ndef_out["records"] = []
        out["ndef"] = ndef_out
    try:
        out["counter"] = tag.read_counter()
    except UnsupportedCommand:
        out["counter"] = NO_PASS_THROUGH
    except CardlibError as exc:
        out["counter"] = f"unavailable: {type(exc).__name__}: {exc}"
    try:
        tag.verify_originality()
        out["originality"] = "verified (NXP NTAG21x key)"
    except UnsupportedCommand:
        out["originality"] = f"not checked: {NO_PASS_THROUGH}"
    except CardlibError as exc:
        out["originality"] = f"not verified: {type(exc).__name__}: {exc}"
    return out


@card.command()
@reader_option
@kind_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=WAIT_S, show_default=True,
              metavar="SECONDS", help="Seconds to wait for a card on the reader (0: it must be there already).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(pattern: str | None, kind: str, wait_s: float, as_json: bool) -> None:
    """Chip, UID, CC, counter, originality check and NDEF records of the card."""
    conn, tag = _open(pattern, kind, wait_s)
    with conn:
        report = {"reader": conn.reader_name, **card_report(tag)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for sub, item in value.items():
                if sub == "records" and isinstance(item, list):
                    for i, rec in enumerate(item):
                        click.echo(f"  record {i}: {rec['type']} id={rec['id']!r} {rec['payload_length']} B")
                else:
                    click.echo(f"  {sub}: {item}")
        else:
            click.echo(f"{key}: {value}")


@card.command()
@reader_option
@kind_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@force_option
def dump(pattern: str | None, kind: str, out: Path, force: bool) -> None:
    """Read every page to OUT, a card file ``huma sim`` can load (PWD/PACK read as zeros)."""
    from cardlib.type2.image import CardImage, save_card_image

    require_output_dir(out)  # never created here: a mistyped path would hide the dump
    refuse_overwrite(out, force)
    conn, tag = _open(pattern, kind)
    with conn:
        chip = tag.identify()
        if chip.chip is ChipType.UNKNOWN:
            raise click.ClickException("cannot dump an unidentified chip (no GET_VERSION on this reader?)")
        pages = tag.read_pages(0, chip.total_pages)
        uid = tag.uid
        signature = bytes(32)
        counter = 0
        if tag.channel.supports_raw:
            signature = tag.read_signature()
            try:
                counter = tag.read_counter()
            except CardlibError:
                counter = 0
    save_card_image(CardImage(chip=chip.chip.value.lower(), pages=pages, signature=signature, nfc_counter=counter), out)
    click.echo(f"{chip.chip.value} {uid.hex().upper()}: {chip.total_pages} pages -> {out}")


@card.command(name="format")
@reader_option
@kind_option
@click.option("--chip", "chip_name", type=click.Choice([c.value for c in ChipType if c is not ChipType.UNKNOWN]),
              default=None, help="Chip type when the reader cannot identify it.")
def format_(pattern: str | None, kind: str, chip_name: str | None) -> None:
    """Write a clean CC and an empty NDEF message on a blank tag."""
    conn, tag = _open(pattern, kind)
    with conn:
        area = tag.format(ChipType(chip_name) if chip_name else None)
    click.echo(f"formatted: data area {area.data_area_size} B, NDEF capacity {area.capacity} B")


@card.command()
@reader_option
@click.option("--pin", default=None, help="The card's PIN (the VERIFY checks are skipped without it).")
@click.option("--card-key", "card_key_hex", default=None, metavar="HEX",
              help="The identity's card_public_key (33 bytes, hex); default: the key the card reports.")
@click.option("--terminal-key", "terminal_key_hex", default=None, metavar="HEX",
              help="The card's terminal key (32 bytes, hex, docs/secure-card.md §5.5): needed by the checks "
                   "that verify the PIN or write.")
@click.option("--destructive", is_flag=True, help="Also block the PIN and write a state: test cards only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def conformance(pattern: str | None, pin: str | None, card_key_hex: str | None, terminal_key_hex: str | None,
                destructive: bool, as_json: bool) -> None:
    """Check a `secure` card against its spec (docs/secure-card.md); exit status 1 when a check fails."""
    from cardlib.secure.conformance import run_conformance
    from cardlib.transport.pcsc import connect

    try:
        card_key = bytes.fromhex(card_key_hex) if card_key_hex is not None else None
    except ValueError:
        raise click.BadParameter("not hex", param_hint="--card-key") from None
    try:
        terminal_key = bytes.fromhex(terminal_key_hex) if terminal_key_hex is not None else None
    except ValueError:
        raise click.BadParameter("not hex", param_hint="--terminal-key") from None
    if terminal_key is not None and len(terminal_key) != 32:
        raise click.BadParameter("the terminal key is 32 bytes", param_hint="--terminal-key")
    with connect(pattern) as conn:
        report = run_conformance(conn, pin=pin, card_key=card_key, destructive=destructive, terminal_key=terminal_key)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"reader: {report.reader}")
        for result in report.results:
            click.echo(f"{result.outcome.value.upper():4}  {result.name:24} {result.section:10} {result.detail}")
        click.echo("conformant" if report.ok else "NOT conformant")
    if not report.ok:
        raise SystemExit(1)
