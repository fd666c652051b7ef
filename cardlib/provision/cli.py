"""``huma provision``: issue one card (``card``) or a households CSV (``batch``), and grant quotas.

Keys come from the keystore (``--keys``, env ``HUMA_KEYSTORE``): the active issuer key, the
technician's key (``--technician NAME``). The issuing station signs genesis states with its
own terminal key (``--station-key``, an encrypted PKCS#8 file made by ``huma keys csr`` and
listed in the trust bundle). Non-root key passphrases: ``--passphrase-file`` or
``HUMA_KEY_PASSPHRASE`` (one passphrase per station), else a prompt. The per-card password
secret: ``--pwd-secret-file`` (≥ 16 bytes) or env ``HUMA_PWD_SECRET_FILE``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cardlib.keys.cli import _open_token, read_secret
from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import load_signer
from cardlib.keys.signer import cose_key
from cardlib.provision.batch import CardOutcome, PcscCardSource, batch_key, provision_card, run_batch, write_issuance_file
from cardlib.provision.card import StationContext, Step
from cardlib.provision.errors import CsvError, ProvisionError
from cardlib.provision.households import Household, load_households, parse_households
from cardlib.provision.profile import Profile
from cardlib.provision.session import SessionGrant, grant_session, static_keys, verify_grant
from cardlib.provision.state import BatchState, Event
from cardlib.records.bundle import KeyRole, verify_bundle
from cardlib.type2.originality import NXP_NTAG21X_PUBLIC_KEY

_console = Console(stderr=True, soft_wrap=True)
SINGLE_CARDS_KEY = "single-cards"


def _reader_caps(kind: str) -> Any:
    from cardlib.type2.channel import ACR122U, GENERIC, PART3

    return {"acr122u": ACR122U, "part3": PART3, "plain": GENERIC}[kind]


def _station_options(f: Any) -> Any:
    opts = [
        click.option("--keys", "keydir", type=click.Path(file_okay=False, exists=True, path_type=Path),
                     envvar="HUMA_KEYSTORE", required=True, help="Keystore directory (env HUMA_KEYSTORE)."),
        click.option("--pin-root", default=None, help="Refuse a keystore not signed by this root kid (hex)."),
        click.option("--technician", required=True, help="Technician name (their active key signs the issuance file)."),
        click.option("--station-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                     help="The station's terminal key (encrypted PKCS#8); signs genesis states."),
        click.option("--station-id", type=click.IntRange(0, 2**32 - 1), default=None,
                     help="Slot terminal id of genesis states (default: the station key's kid, big-endian)."),
        click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                     help="Current trust bundle (read-back verification uses it)."),
        click.option("--profile", "profile_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                     help="Provisioning profile TOML (programmes, validity, cycle)."),
        click.option("--pwd-secret-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     envvar="HUMA_PWD_SECRET_FILE", required=True, help="Secret for per-card write passwords."),
        click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Passphrase of the station's non-root keys (else $HUMA_KEY_PASSPHRASE, else prompt)."),
        click.option("--grant", "grant_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Session grant (quota) from `huma provision grant`."),
        click.option("--reader", default=None, help="Reader name pattern (needed when several readers are attached)."),
        click.option("--reader-kind", type=click.Choice(["acr122u", "part3", "plain"]), default="acr122u", show_default=True),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     help="Seconds to wait for each card (default: wait forever; Ctrl-C stops)."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Batch journal/results directory (default: next to the CSV)."),
        click.option("--originality-key", default=None, hidden=True,
                     help="Lab only: secp128r1 originality key (hex) instead of NXP's."),
        click.option("--pkcs11-module", type=click.Path(dir_okay=False, exists=True), default=None),
        click.option("--pkcs11-token", default=None),
        click.option("--pkcs11-pin-file", type=click.Path(dir_okay=False, exists=True, path_type=Path)),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


class _Station:
    """Loaded keys and settings for one command run."""

    def __init__(self, stack: ExitStack, o: dict[str, Any]) -> None:
        pin = bytes.fromhex(o["pin_root"]) if o["pin_root"] else None
        self.store = KeyStore.open(o["keydir"], pinned_root_kid=pin)
        token = _open_token(stack, o["pkcs11_module"], o["pkcs11_token"], o["pkcs11_pin_file"])
        pw = read_secret(o["passphrase_file"], "HUMA_KEY_PASSPHRASE", "Station key passphrase")
        self.issuer = self.store.signer(self.store.active(Role.ISSUER).kid, pw, token=token)
        self.technician_name = o["technician"]
        self.technician = self.store.signer(self.store.active(Role.TECHNICIAN, o["technician"]).kid, pw, token=token)
        station = load_signer(o["station_key"], pw)
        root = self.store.entry(self.store.root_kid).public_key
        bundle = verify_bundle(o["bundle_path"].read_bytes(), root)
        if bundle.is_stale():
            _console.print("[yellow]warning: the trust bundle has expired; fetch a new one[/]")
        self.grant: SessionGrant | None = None
        if o["grant_path"]:
            self.grant = verify_grant(o["grant_path"].read_bytes(), bundle.resolver(KeyRole.ISSUER), self.technician.kid)
        secret_lines = o["pwd_secret_file"].read_bytes()
        self.ctx = StationContext(
            issuer=self.issuer, station=station, station_id=o["station_id"], trust=bundle,
            profile=Profile.load(o["profile_path"]), password_secret=secret_lines.strip(),
            originality_key=bytes.fromhex(o["originality_key"]) if o["originality_key"] else NXP_NTAG21X_PUBLIC_KEY,
        )
        self.source = PcscCardSource(o["reader"], _reader_caps(o["reader_kind"]), o["timeout"])
        stack.callback(self.source.close)


def _report(outcome: CardOutcome) -> None:
    h = outcome.household
    if outcome.status is Event.ISSUED and outcome.card is not None:
        _console.print(f"[green]line {h.line}: issued card {outcome.card.card_id.hex()} on chip {outcome.uid.hex().upper()}[/]")
    else:
        _console.print(f"[red]line {h.line}: chip {outcome.uid.hex().upper()} rejected: {outcome.detail}[/]")


@click.group("provision")
def provision() -> None:
    """Turn blank NTAG215/216 tags into beneficiary cards."""


@provision.command("batch")
@click.argument("households", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_station_options
def batch_cmd(households: Path, **o: Any) -> None:
    """Provision every household of HOUSEHOLDS (CSV); resumable, one result line per card."""
    profile = Profile.load(o["profile_path"])
    try:
        rows = load_households(households, profile.programmes)
    except CsvError as exc:
        for err in exc.errors:
            _console.print(f"[red]{households}:{err}[/]")
        raise
    state_dir = o["state_dir"] or households.with_name(households.stem + ".provision")
    with ExitStack() as stack:
        st = _Station(stack, o)
        state = BatchState(state_dir, batch_key(rows))
        todo = [r for r in rows if state.issued_for(r.ref_hex) is None]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=_console, transient=False) as progress:
            task = progress.add_task("cards", total=len(rows), completed=len(rows) - len(todo))
            st.source.on_remove_prompt = lambda: progress.update(task, description="remove the card")

            def on_wait(h: Household) -> None:
                progress.update(task, description=f"place a blank card for line {h.line} ({h.region})")

            def on_step(s: Step) -> None:
                progress.update(task, description=s.value)

            def on_card(out: CardOutcome) -> None:
                _report(out)
                if out.status is Event.ISSUED:
                    progress.advance(task)

            try:
                run_batch(todo, st.source, st.ctx, state, technician=st.technician,
                          technician_name=st.technician_name, grant=st.grant,
                          on_card=on_card, on_wait=on_wait, on_step=on_step)
            finally:
                _console.print(f"results: {state.results_path}; issuance file: {state.directory / 'issuances.cose'}")
        left = [r for r in rows if state.issued_for(r.ref_hex) is None]
        if left:
            raise ProvisionError(f"{len(left)} household(s) not issued yet (no more cards); run again to continue")


@provision.command("card")
@click.option("--household-ref", required=True, help="16 hex digits (pseudonymous registry reference).")
@click.option("--region", required=True, help="Kemendagri code, e.g. 62.71.")
@click.option("--programmes", default="", help="Programme ids separated by ';' (default: all of the profile).")
@click.option("--pin/--no-pin", default=False, help="Let the beneficiary type a 6-digit PIN.")
@click.option("--reissue-of", default=None, help="Card id (16 hex) of a lost card this one replaces.")
@click.option("--remaining", default=None, help="Re-issue: remaining entitlement, e.g. '1=0,2=100000'.")
@_station_options
def card_cmd(household_ref: str, region: str, programmes: str, pin: bool, reissue_of: str | None,
             remaining: str | None, **o: Any) -> None:
    """Provision one card (or re-issue a lost one with its remaining entitlement)."""
    profile = Profile.load(o["profile_path"])
    header = "household_ref,region,programmes\n"
    row = parse_households(header + f"{household_ref},{region},{programmes}\n", profile.programmes)[0]
    rem: dict[int, int] | None = None
    if remaining:
        try:
            rem = {int(k): int(v) for k, v in (part.split("=") for part in remaining.split(","))}
        except ValueError as exc:
            raise click.BadParameter("use 'programme=amount,...'", param_hint="--remaining") from exc
    if (reissue_of is None) != (rem is None):
        raise click.UsageError("--reissue-of and --remaining go together")
    pin_value = click.prompt("Beneficiary PIN (6 digits)", hide_input=True, confirmation_prompt=True) if pin else None
    state_dir = o["state_dir"] or Path("provision-single")
    with ExitStack() as stack:
        st = _Station(stack, o)
        st.source._wait_removal = False
        # One journal (and issuance file) for all single cards made in this state dir.
        state = BatchState(state_dir, SINGLE_CARDS_KEY)
        _console.print("place the card on the reader")
        cm = st.source.next_card()
        if cm is None:
            raise ProvisionError("no card presented")
        with cm as tag:
            out = provision_card(tag, st.ctx, row, state, grant=st.grant,
                                 reissue_of=bytes.fromhex(reissue_of) if reissue_of else None, remaining=rem, pin=pin_value,
                                 on_step=lambda s: _console.print(f"  {s.value}"))
        write_issuance_file(state, st.technician, st.technician_name, st.grant)
        _report(out)
        if out.status is not Event.ISSUED:
            raise ProvisionError(out.detail)
        click.echo(out.card.card_id.hex() if out.card else "")


@provision.command("grant")
@click.option("--keys", "keydir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              envvar="HUMA_KEYSTORE", required=True)
@click.option("--technician", required=True)
@click.option("--max-cards", type=click.IntRange(min=1), required=True)
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def grant_cmd(keydir: Path, technician: str, max_cards: int, days: int, out: Path, passphrase_file: Path | None) -> None:
    """(Office) allow a technician at most MAX_CARDS cards for DAYS days (signed by the issuer key)."""
    store = KeyStore.open(keydir)
    pw = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Issuer key passphrase")
    issuer = store.signer(store.active(Role.ISSUER).kid, pw)
    tech = store.active(Role.TECHNICIAN, technician)
    out.write_bytes(grant_session(issuer, tech.kid, max_cards, int(time.time()) + days * 86400))
    verify_grant(out.read_bytes(), static_keys(cose_key(issuer)), tech.kid)
    click.echo(f"granted {max_cards} card(s) to {technician} ({tech.kid.hex()}) for {days} day(s)")
