"""``huma provision``: issue one card (``card``) or a households CSV (``batch``), grant quotas, ``pin-reset``.

Keys come from the keystore (``--keys``, env ``HUMA_KEYSTORE``): the active issuer key, the
technician's key (``--technician NAME``). The issuing station signs genesis states with its
own terminal key (``--station-key``, an encrypted PKCS#8 file made by ``huma terminal init``,
enrolled like a counter's and listed in the trust bundle: docs/keys-and-provisioning.md §Enrolling
a provisioning station; a key the bundle does not accept is refused before any card). Non-root
key passphrases: ``--passphrase-file`` or ``HUMA_KEY_PASSPHRASE`` (one passphrase per station),
else a prompt. Cards are issued in format 2
(private pages, docs/card-format.md §2.2) under the current version of the provincial card-password
key file (``--card-keys``, env ``HUMA_CARD_KEYS``; passphrase ``--card-keys-passphrase-file``, else
``HUMA_CARD_KEYS_PASSPHRASE``, else a prompt; made by ``huma keys card-passwords create``). Format 1
(``--card-format 1``) takes the office secret ``--pwd-secret-file`` (≥ 16 bytes, env
``HUMA_PWD_SECRET_FILE``) or the key file's format-1 version.

Every input (profile, CSV or ``card`` options, password secret, keystore and passphrases,
station key, bundle, grant) is loaded and checked at start-up, before the reader is opened,
any card is touched or anything is journalled; a bad one is a one-line typed error (exit 2).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cardlib.clitypes import HexBytes, count_noun
from cardlib.keys.cli import CARD_KEYS_PASSPHRASE_ENV, KID, _open_token, read_secret
from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import load_signer
from cardlib.keys.signer import cose_key
from cardlib.provision.batch import (
    CARD_ID_BYTES,
    CardOutcome,
    NfcpyCardSource,
    PcscCardSource,
    batch_key,
    provision_card,
    run_batch,
    run_secure_batch,
    write_issuance_file,
)
from cardlib.provision.card import PersonalisedCard, StationContext, Step
from cardlib.provision.errors import (
    CsvError,
    ProvisionError,
    StationIdMismatch,
    StationInputError,
    StationKeyNotTrusted,
)
from cardlib.provision.households import Household, load_households, parse_households
from cardlib.provision.profile import Profile
from cardlib.provision.qr import household_qr, qr_file_name, qr_png
from cardlib.provision.reissue import station_lock
from cardlib.provision.session import SessionGrant, grant_session, static_keys, verify_grant
from cardlib.provision.state import BatchState, Event
from cardlib.records.bundle import KeyRole, verify_bundle
from cardlib.type2.originality import NXP_NTAG21X_PUBLIC_KEY

if TYPE_CHECKING:
    from cardlib.records.access import CardPasswordKeys

_console = Console(stderr=True, soft_wrap=True)
SINGLE_CARDS_KEY = "single-cards"
#: Default ``provision card --state-dir`` (relative to the working directory).
SINGLE_CARDS_DIR = Path("provision-single")
#: ``--reader`` prefix naming an nfcpy device path instead of a PC/SC reader pattern.
NFCPY_READER_PREFIX = "nfcpy:"
#: ``provision card`` option that carries each households-CSV column.
_COLUMN_OPTIONS = {"household_ref": "--household-ref", "region": "--region", "programmes": "--programmes"}


def _reader_caps(kind: str) -> Any:
    from cardlib.type2.channel import ACR122U, GENERIC, PART3

    return {"acr122u": ACR122U, "part3": PART3, "plain": GENERIC}[kind]


def _station_options(f: Any) -> Any:
    opts = [
        click.option("--keys", "keydir", type=click.Path(file_okay=False, exists=True, path_type=Path),
                     envvar="HUMA_KEYSTORE", required=True, help="Keystore directory (env HUMA_KEYSTORE)."),
        click.option("--pin-root", type=KID, default=None, help="Refuse a keystore not signed by this root kid (hex)."),
        click.option("--technician", required=True, help="Technician name (their active key signs the issuance file)."),
        click.option("--station-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                     help="The station's terminal key (encrypted PKCS#8); signs genesis states. It must be a "
                          "terminal key of --bundle (enrolled: huma terminal init + enrol)."),
        click.option("--station-id", type=click.IntRange(0, 2**32 - 1), default=None,
                     help="Slot terminal id of genesis states: only the station key's own (its kid, "
                          "big-endian, also the default) is accepted; leave it out."),
        click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     required=True, help="Current trust bundle (read-back verification uses it)."),
        click.option("--profile", "profile_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     required=True, help="Provisioning profile TOML (programmes, validity, cycle)."),
        click.option("--card-format", type=click.IntRange(1, 2), default=2, show_default=True,
                     help="2: identity and slots behind the card password (docs/card-format.md §2.2); "
                          "1: the old open layout."),
        click.option("--card-keys", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     envvar="HUMA_CARD_KEYS", default=None,
                     help="Card-password key file (huma keys card-passwords create; env HUMA_CARD_KEYS)."),
        click.option("--card-keys-passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Passphrase of --card-keys (else $HUMA_CARD_KEYS_PASSPHRASE, else prompt)."),
        click.option("--pwd-secret-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     envvar="HUMA_PWD_SECRET_FILE", default=None,
                     help="--card-format 1 only: the office secret of per-card write passwords."),
        click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Passphrase of the station's non-root keys (else $HUMA_KEY_PASSPHRASE, else prompt)."),
        click.option("--grant", "grant_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Session grant (quota) from `huma provision grant`."),
        click.option("--reader", default=None, help="Reader name pattern (needed when several readers are attached), "
                                                    "or nfcpy:<device path> for an nfcpy reader (nfcpy:tty:USB0:pn532, "
                                                    "nfcpy:usb, nfcpy:udp:127.0.0.1:54321)."),
        click.option("--reader-kind", type=click.Choice(["acr122u", "part3", "plain"]), default="acr122u",
                     show_default=True, help="How the PC/SC reader passes NTAG commands: acr122u (direct transmit), "
                                             "part3 (PC/SC Part 3 transparent session), plain (storage-card "
                                             "READ/UPDATE BINARY only, 16-byte reads)."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     help="Seconds to wait for each card (default: wait forever; Ctrl-C stops)."),
        click.option("--originality-key", type=HexBytes(len(NXP_NTAG21X_PUBLIC_KEY)), default=None, hidden=True,
                     help="Lab only: secp128r1 originality key (hex) instead of NXP's."),
        click.option("--pkcs11-module", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="PKCS#11 module (e.g. libsofthsm2.so) of the token holding the keystore's issuer and "
                          "technician keys (default: key files)."),
        click.option("--pkcs11-token", default=None, help="Token label (required with --pkcs11-module)."),
        click.option("--pkcs11-pin-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="File holding the token PIN (else $HUMA_PKCS11_PIN, else prompt)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _read_password_secret(path: Path) -> bytes:
    """The per-card password secret: the file's bytes without surrounding whitespace.

    :raises StationInputError: unreadable, or shorter than the minimum (checked again by
        :class:`StationContext`).
    """
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise StationInputError(f"--pwd-secret-file {path}: cannot read: {exc.strerror}") from exc


def card_password_setting(o: dict[str, Any], ring: CardPasswordKeys | None = None) -> tuple[bytes, int, int]:
    """(password secret, key version, card format) from the station's options.

    :param ring: the ``--card-keys`` file already loaded (a :class:`CardPasswordKeys`), else None.
    :raises StationInputError: format 2 without ``--card-keys``; format 1 with neither
        ``--pwd-secret-file`` nor a key file holding a format-1 version; an unreadable key file.
    """
    fmt = int(o["card_format"])
    path = o["card_keys"]
    if path is None:
        if fmt == 2:
            raise StationInputError("format-2 cards need the card-password key file: --card-keys FILE "
                                    "(env HUMA_CARD_KEYS; made by `huma keys card-passwords create`), "
                                    "or --card-format 1")
        if o["pwd_secret_file"] is None:
            raise StationInputError("--card-format 1 needs --pwd-secret-file (env HUMA_PWD_SECRET_FILE) or --card-keys")
        return _read_password_secret(o["pwd_secret_file"]), 1, 1
    if ring is None:
        ring = _load_card_keys(o)
    if fmt == 2:
        return ring.keys[ring.current], ring.current, 2
    if o["pwd_secret_file"] is not None:
        return _read_password_secret(o["pwd_secret_file"]), 1, 1
    if ring.format1 is None:
        raise StationInputError(f"--card-keys {path} holds no format-1 version; give --pwd-secret-file")
    return ring.keys[ring.format1], ring.format1, 1


def _load_card_keys(o: dict[str, Any]) -> CardPasswordKeys:
    """The ``--card-keys`` key ring (:class:`cardlib.records.access.CardPasswordKeys`), passphrase read once.

    :raises StationInputError: unreadable file.
    """
    from cardlib.records.access import load_password_keys

    path = o["card_keys"]
    passphrase = read_secret(o["card_keys_passphrase_file"], CARD_KEYS_PASSPHRASE_ENV, "Card-password key passphrase")
    try:
        return load_password_keys(path, passphrase)
    except OSError as exc:
        raise StationInputError(f"--card-keys {path}: cannot read: {exc.strerror}") from exc


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StationInputError(f"{what} {path}: cannot read: {exc.strerror}") from exc


class _Station:
    """Every key and setting of one command run, loaded and checked up front.

    Nothing here touches a reader or the batch directory: a bad input fails before any card
    is presented or journalled. :meth:`open_source` opens the reader afterwards.
    """

    def __init__(self, stack: ExitStack, o: dict[str, Any], profile: Profile,
                 ring: CardPasswordKeys | None = None) -> None:
        if ring is None and o["card_keys"] is not None:
            ring = _load_card_keys(o)
        self.ring = ring  # secure cards take their terminal key from its current version (docs/secure-card.md §5.5)
        secret, key_version, card_format = card_password_setting(o, ring)
        bundle_bytes = _read_input(o["bundle_path"], "--bundle")
        grant_bytes = _read_input(o["grant_path"], "--grant") if o["grant_path"] else None
        self.store = KeyStore.open(o["keydir"], pinned_root_kid=o["pin_root"])
        root = self.store.entry(self.store.root_kid).public_key
        bundle = verify_bundle(bundle_bytes, root)
        issuer_entry = self.store.active(Role.ISSUER)
        tech_entry = self.store.active(Role.TECHNICIAN, o["technician"])
        token = _open_token(stack, o["pkcs11_module"], o["pkcs11_token"], o["pkcs11_pin_file"])
        pw = read_secret(o["passphrase_file"], "HUMA_KEY_PASSPHRASE", "Station key passphrase")
        self.issuer = self.store.signer(issuer_entry.kid, pw, token=token)
        self.key_passphrase = pw  # pin-reset --pin-reset-signer is under the same passphrase
        self.technician_name = o["technician"]
        self.technician = self.store.signer(tech_entry.kid, pw, token=token)
        station = load_signer(o["station_key"], pw)
        if bundle.is_stale():
            _console.print("[yellow]warning: the trust bundle has expired; fetch a new one[/]")
        self.grant: SessionGrant | None = None
        if grant_bytes is not None:
            self.grant = verify_grant(grant_bytes, bundle.resolver(KeyRole.ISSUER), self.technician.kid)
        try:
            self.ctx = StationContext(
                issuer=self.issuer, station=station, station_id=o["station_id"], trust=bundle,
                profile=profile, password_secret=secret,
                originality_key=o["originality_key"] or NXP_NTAG21X_PUBLIC_KEY,
                card_format=card_format, password_key_version=key_version,
            )
        except (StationKeyNotTrusted, StationIdMismatch):
            raise  # names the key or option itself; not a card-password problem
        except StationInputError as exc:
            source = f"--card-keys {o['card_keys']}" if o["card_keys"] else f"--pwd-secret-file {o['pwd_secret_file']}"
            raise StationInputError(f"{source}: {exc}") from None
        self._stack = stack

    def open_source(self, o: dict[str, Any], *, wait_removal: bool) -> PcscCardSource | NfcpyCardSource:
        """Open the reader (closed with the command's exit stack): PC/SC, or ``--reader nfcpy:<path>``.

        :raises ServiceUnavailable: pcscd is not running. :raises ReaderNotFound: no single reader
            matches, or nothing answers on the nfcpy path.
        """
        source: PcscCardSource | NfcpyCardSource
        reader = o["reader"] or ""
        if reader.startswith(NFCPY_READER_PREFIX):  # docs/readers.md: tty:, usb:, udp: paths
            source = NfcpyCardSource(reader[len(NFCPY_READER_PREFIX):], o["timeout"], wait_removal)
        else:
            source = PcscCardSource(o["reader"], _reader_caps(o["reader_kind"]), o["timeout"], wait_removal)
        self._stack.callback(source.close)
        source.check_reader()
        return source


def _report(outcome: CardOutcome, batch: bool = True) -> None:
    """Print one card's outcome; ``batch`` prefixes the households file's line (a single card has none)."""
    where = f"line {outcome.household.line}: " if batch else ""
    if outcome.status is Event.ISSUED and outcome.card is not None:
        _console.print(f"[green]{where}issued card {outcome.card.card_id.hex()} "
                       f"on chip {outcome.uid.hex().upper()}[/]")
    else:
        _console.print(f"[red]{where}chip {outcome.uid.hex().upper()} rejected: {outcome.detail}[/]")


@click.group("provision")
def provision() -> None:
    """Turn blank NTAG215/216 tags into beneficiary cards."""


@provision.command("batch")
@click.argument("households", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_station_options
@click.option("--card-profile", type=click.Choice(["ntag", "secure"]), default="ntag", show_default=True,
              help="ntag: NTAG215/216 tags; secure: Type 4 cards with our application (each beneficiary types "
                   "their PIN when their card is made, docs/secure-card.md).")
@click.option("--pin-reset-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="secure: PEM P-256 public key of the office's PIN-reset key (default: the issuer key, if P-256).")
@click.option("--pin-required/--no-pin-required", default=False,
              help="secure: the cards themselves refuse every update without their PIN.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Batch journal/results directory (default: HOUSEHOLDS without its extension + "
                   "'.provision', next to the CSV, e.g. batch-07.provision/).")
@click.option("--qr-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ntag: write each card's household QR for its card body (as `provision card --qr-out`, "
                   "docs/fallback.md) to DIR/<household label>-<card id>.png, and its text to the same name "
                   "with .txt; DIR is created. Only cards made in this run get one.")
def batch_cmd(households: Path, card_profile: str, pin_reset_key: Path | None, pin_required: bool,
              qr_dir: Path | None, **o: Any) -> None:
    """Provision every household of HOUSEHOLDS (CSV); resumable, one result line per card.

    ``--card-profile secure`` asks each beneficiary's PIN (4..8 digits) when their card is on the reader.
    ``--qr-dir DIR`` writes each issued NTAG card's household QR (PNG + text) into DIR.
    """
    if qr_dir is not None and card_profile == "secure":
        raise click.UsageError("--qr-dir is for --card-profile ntag (a secure card has no household QR)")
    profile = Profile.load(o["profile_path"])
    try:
        rows = load_households(households, profile.programmes)
    except CsvError as exc:
        for err in exc.errors:
            _console.print(f"[red]{households}:{err}[/]", highlight=False)
        raise
    state_dir = o["state_dir"] or households.with_name(households.stem + ".provision")
    if qr_dir is not None:  # before any chip: a card made without its QR is not printable
        _make_qr_dir(qr_dir)
    with ExitStack() as stack:
        st = _Station(stack, o, profile)
        reset_point = _pin_reset_point(st.ctx, pin_reset_key) if card_profile == "secure" else b""
        if card_profile == "secure":
            st.ctx = _secure_station_context(st.ctx, st.ring)
        source = st.open_source(o, wait_removal=True)
        stack.enter_context(station_lock(state_dir))  # before any chip; a refusal before the reader leaves no dir
        state = BatchState(state_dir, batch_key(rows))
        todo = [r for r in rows if state.issued_for(r.ref_hex) is None]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=_console, transient=False) as progress:
            task = progress.add_task("cards", total=len(rows), completed=len(rows) - len(todo))
            source.on_remove_prompt = lambda: progress.update(task, description="remove the card")

            def on_wait(h: Household) -> None:
                progress.update(task, description=f"place a blank card for line {h.line} ({h.region})")

            def on_step(s: Step) -> None:
                progress.update(task, description=s.value)

            def on_card(out: CardOutcome) -> None:
                _report(out)
                if out.status is Event.ISSUED:
                    progress.advance(task)
                    if qr_dir is not None and isinstance(out.card, PersonalisedCard):
                        _write_qr(qr_dir / qr_file_name(out.household.household_ref, out.card.card_id),
                                  out.card, st)

            try:
                if card_profile == "secure":
                    def pin_for(h: Household) -> str:
                        return str(click.prompt(f"PIN for line {h.line} (4..8 digits)", hide_input=True,
                                                confirmation_prompt=True))

                    run_secure_batch(todo, source, st.ctx, state, pin_for=pin_for,
                                     pin_reset_key=reset_point,
                                     pin_required=pin_required, technician=st.technician,
                                     technician_name=st.technician_name, grant=st.grant,
                                     on_card=on_card, on_wait=on_wait, on_step=on_step)
                else:
                    run_batch(todo, source, st.ctx, state, technician=st.technician,
                              technician_name=st.technician_name, grant=st.grant,
                              on_card=on_card, on_wait=on_wait, on_step=on_step)
            finally:
                _console.print(f"results: {state.results_path}; issuance file: {state.directory / 'issuances.cose'}")
        left = [r for r in rows if state.issued_for(r.ref_hex) is None]
        if left:
            raise ProvisionError(f"{count_noun(len(left), 'household', 'households')} not issued yet (no more cards); "
                                 "run again to continue")


def _single_row(household_ref: str, region: str, programmes: str, profile: Profile) -> Household:
    """Validate ``provision card`` options with the CSV rules (one row, no CSV file).

    :raises StationInputError: naming the option and the reason of every bad value.
    """
    for name, value in (("--household-ref", household_ref), ("--region", region), ("--programmes", programmes)):
        if any(c in value for c in ',"\r\n'):
            raise StationInputError(f"{name}: {value!r} may not contain a comma, quote or line break")
    try:
        return parse_households(f"household_ref,region,programmes\n{household_ref},{region},{programmes}\n",
                                profile.programmes)[0]
    except CsvError as exc:
        if not exc.errors:
            raise
        raise StationInputError("; ".join(
            f"{_COLUMN_OPTIONS.get(e.column, 'options')}: {e.reason}: {e.detail}" for e in exc.errors)) from None


@provision.command("card")
@click.option("--household-ref", required=True, help="16 hex digits (pseudonymous registry reference).")
@click.option("--region", required=True, help="Kemendagri code, e.g. 62.71.")
@click.option("--programmes", default="", help="Programme ids separated by ';' (default: all of the profile).")
@click.option("--pin/--no-pin", default=False, help="Let the beneficiary type a 6-digit PIN.")
@click.option("--pin-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The beneficiary's PIN from this file's first line (scripts and tests; implies --pin; else "
                   "--pin asks it twice). Checked before the card is touched: 6 digits, secure 4..8.")
@click.option("--reissue-of", type=HexBytes(CARD_ID_BYTES), default=None, metavar="CARD_ID",
              help="Card id (16 hex) of a lost card this one replaces.")
@click.option("--remaining", default=None,
              help="Re-issue: lower the server's remaining entitlement, e.g. '1=0' (never raise it).")
@click.option("--balance-statement", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Re-issue: the server's signed balance statement of the household (huma server household "
                   "statement, or POST /api/v1/households/<ref>/balance-statement).")
@click.option("--server-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              envvar="HUMA_SERVER_KEY",
              help="Re-issue: PEM public key of the server receipt key (env HUMA_SERVER_KEY).")
@click.option("--card-profile", type=click.Choice(["ntag", "secure"]), default="ntag", show_default=True,
              help="ntag: an NTAG215/216; secure: a Type 4 card with our application (key made on the card, "
                   "PIN on the card, docs/secure-card.md).")
@click.option("--pin-reset-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="secure: PEM P-256 public key of the office's PIN-reset key (default: the issuer key, if P-256).")
@click.option("--pin-required/--no-pin-required", default=False,
              help="secure: the card itself refuses every update without its PIN.")
@click.option("--qr-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ntag: write the household QR for the card body (signed Claim 169, docs/fallback.md) "
                   "to this PNG, and its text to the same name with .txt.")
@_station_options
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=SINGLE_CARDS_DIR,
              show_default=True, help="Journal/results directory shared by every single card made here "
                                      "(relative to the current directory).")
def card_cmd(household_ref: str, region: str, programmes: str, pin: bool, pin_file: Path | None,
             reissue_of: bytes | None,
             remaining: str | None, balance_statement: Path | None, server_key: Path | None, card_profile: str,
             pin_reset_key: Path | None, pin_required: bool, qr_out: Path | None, **o: Any) -> None:
    """Provision one card (or re-issue a lost one with its remaining entitlement).

    ``--card-profile secure`` always asks for the PIN: it is set on the card (4..8 digits).
    ``--pin-file`` reads it from a file's first line instead of asking (and implies ``--pin``).
    """
    profile = Profile.load(o["profile_path"])
    row = _single_row(household_ref, region, programmes, profile)
    rem = _reissue_balance(profile, row, reissue_of, remaining, balance_statement, server_key)  # before any chip
    secure = card_profile == "secure"
    file_pin = _pin_from_file(pin_file, secure) if pin_file is not None else None
    with ExitStack() as stack:
        st = _Station(stack, o, profile)
        reset_point = _pin_reset_point(st.ctx, pin_reset_key) if secure else b""
        if secure:
            st.ctx = _secure_station_context(st.ctx, st.ring)
        pin_value = file_pin if file_pin is not None else (
            click.prompt("Beneficiary PIN (6 digits)", hide_input=True, confirmation_prompt=True)
            if pin or secure else None)
        source = st.open_source(o, wait_removal=False)
        stack.enter_context(station_lock(o["state_dir"]))  # before any chip; a refusal before the reader leaves no dir
        # One journal (and issuance file) for all single cards made in this state dir.
        state = BatchState(o["state_dir"], SINGLE_CARDS_KEY)
        _console.print("place the card on the reader")
        if secure:
            assert pin_value is not None
            out = _provision_secure(source, st, row, state, pin_value, reset_point, pin_required, reissue_of, rem)
        else:
            cm = source.next_card()
            if cm is None:
                raise ProvisionError("no card presented")
            with cm as tag:
                out = provision_card(tag, st.ctx, row, state, grant=st.grant,
                                     reissue_of=reissue_of, remaining=rem, pin=pin_value,
                                     on_step=lambda s: _console.print(f"  {s.value}"))
        write_issuance_file(state, st.technician, st.technician_name, st.grant)
        _report(out, batch=False)
        if out.status is not Event.ISSUED:
            raise ProvisionError(out.detail)
        if qr_out is not None and isinstance(out.card, PersonalisedCard):
            _write_qr(qr_out, out.card, st)
        click.echo(out.card.card_id.hex() if out.card else "")


def _pin_from_file(path: Path, secure: bool) -> str:
    """``--pin-file``: the PIN on the file's first line, checked as the card will take it.

    :param secure: a secure card (4..8 digits); else an NTAG card (6 digits, what a counter takes).
    :returns: the PIN (ASCII digits).
    :raises cardlib.clitypes.OptionError: the file is unreadable or its first line too long.
    :raises StationInputError: the line is not such a PIN (nothing is touched yet).
    """
    from cardlib.clitypes import read_secret_line
    from cardlib.records.claims import check_pin_digits
    from cardlib.records.errors import ClaimsError
    from cardlib.secure.protocol import check_pin_format

    text = read_secret_line(path).decode("ascii", errors="replace")
    try:
        if secure:
            check_pin_format(text)
        else:
            check_pin_digits(text)
    except (ValueError, ClaimsError) as exc:
        raise StationInputError(f"--pin-file {path}: {exc}") from None
    return text


def _write_qr(path: Path, card: PersonalisedCard, st: _Station) -> None:
    """Write the card body's household QR as PNG (``path``) and text (``path`` with ``.txt``).

    The one writer of household QRs (``provision card --qr-out`` and ``provision batch --qr-dir``).

    :raises ProvisionError: the files cannot be written (the card itself is issued and journalled).
    """
    text = household_qr(card.identity_cose, st.issuer, int(time.time()))
    try:
        path.write_bytes(qr_png(text))
        path.with_suffix(".txt").write_text(text + "\n", encoding="ascii")
    except OSError as exc:
        raise ProvisionError(f"card {card.card_id.hex()} is issued, but its household QR {path} cannot be "
                             f"written: {exc.strerror or exc}") from exc
    _console.print(f"household QR written to {path}")


def _make_qr_dir(path: Path) -> None:
    """Create ``--qr-dir`` (and parents) before any card is made.

    :raises StationInputError: it cannot be created, or exists as a file.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StationInputError(f"--qr-dir {path}: cannot create: {exc.strerror or exc}") from exc


def _reissue_balance(profile: Profile, row: Household, reissue_of: bytes | None, remaining: str | None,
                     statement: Path | None, server_key: Path | None) -> dict[int, int] | None:
    """A re-issue's genesis balance from the server's signed statement (``--remaining`` only lowers it).

    :raises click.UsageError: ``--remaining`` or a statement without ``--reissue-of``, or a re-issue without them.
    :raises StationInputError: as :func:`cardlib.provision.reissue.reissue_remaining`, or an unreadable key file.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.provision.reissue import parse_remaining, reissue_remaining

    lower = parse_remaining(remaining) if remaining else None
    if reissue_of is None:
        if remaining or statement:
            raise click.UsageError("--remaining and --balance-statement are for a re-issue (--reissue-of)")
        return None
    if statement is None or server_key is None:
        raise click.UsageError("a re-issue takes the household's balance from the server: --balance-statement "
                               "and --server-key (the balance is never typed; --remaining may only lower it)")
    try:
        key = load_pem_public_key(_read_input(server_key, "--server-key"))
    except ValueError as exc:
        raise StationInputError(f"--server-key {server_key}: not a PEM public key") from exc
    from cardlib.keys.signer import PublicKey

    if not isinstance(key, PublicKey):
        raise StationInputError(f"--server-key {server_key}: not an Ed25519 or P-256 key")
    return reissue_remaining(_read_input(statement, "--balance-statement"), key, row, reissue_of, int(time.time()),
                             profile, lower)


def _pin_reset_point(ctx: StationContext, path: Path | None) -> bytes:
    """The card's PIN-reset key (65-byte point) from ``--pin-reset-key`` or the issuer key.

    :raises StationInputError: unreadable, not a P-256 public key, or no key and a non-P-256 issuer.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.provision.secure import pin_reset_point

    if path is None:
        return pin_reset_point(ctx, None)
    try:
        key = load_pem_public_key(_read_input(path, "--pin-reset-key"))
    except ValueError as exc:
        raise StationInputError(f"--pin-reset-key {path}: not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise StationInputError(f"--pin-reset-key {path}: not a P-256 key")
    return pin_reset_point(ctx, key)


def _secure_station_context(ctx: StationContext, ring: CardPasswordKeys | None) -> StationContext:
    """:func:`cardlib.provision.secure.secure_station_context` (imported when a secure card is made)."""
    from cardlib.provision.secure import secure_station_context as make

    return make(ctx, ring)


def _provision_secure(source: PcscCardSource | NfcpyCardSource, st: _Station, row: Household, state: BatchState,
                      pin: str, reset_point: bytes, pin_required: bool, reissue_of: bytes | None,
                      remaining: dict[int, int] | None) -> CardOutcome:
    """One secure card from the reader (:func:`cardlib.provision.secure.provision_secure_card`)."""
    from cardlib.provision.secure import provision_secure_card

    cm = source.next_secure_card()
    if cm is None:
        raise ProvisionError("no card presented")
    with cm as session:
        return provision_secure_card(session, st.ctx, row, state, pin=pin, pin_reset_key=reset_point,
                                     pin_required=pin_required, grant=st.grant, reissue_of=reissue_of,
                                     remaining=remaining, on_step=lambda s: _console.print(f"  {s.value}"))


@provision.command("grant")
@click.option("--keys", "keydir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              envvar="HUMA_KEYSTORE", required=True, help="Keystore directory with the issuer key (env HUMA_KEYSTORE).")
@click.option("--technician", required=True, help="Technician name (--name of their active technician key).")
@click.option("--max-cards", type=click.IntRange(min=1), required=True,
              help="Most cards the technician's station may issue under this grant.")
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True,
              help="Days from now until the grant expires.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the signed grant (COSE; the station's --grant).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File holding the issuer key passphrase (else $HUMA_KEY_PASSPHRASE, else prompt).")
def grant_cmd(keydir: Path, technician: str, max_cards: int, days: int, out: Path,
              passphrase_file: Path | None) -> None:
    """(Office) allow a technician at most MAX_CARDS cards for DAYS days (signed by the issuer key)."""
    store = KeyStore.open(keydir)
    pw = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Issuer key passphrase")
    issuer = store.signer(store.active(Role.ISSUER).kid, pw)
    tech = store.active(Role.TECHNICIAN, technician)
    out.write_bytes(grant_session(issuer, tech.kid, max_cards, int(time.time()) + days * 86400))
    verify_grant(out.read_bytes(), static_keys(cose_key(issuer)), tech.kid)
    click.echo(f"granted {count_noun(max_cards, 'card', 'cards')} to {technician} ({tech.kid.hex()}) "
               f"for {count_noun(days, 'day', 'days')}")


@provision.command("pin-reset")
@click.option("--card-profile", type=click.Choice(["ntag", "secure"]), default="ntag", show_default=True,
              help="ntag: a format-2 card with a PIN record takes a new PIN (asked twice) and its tries back; an "
                   "older card (PIN in the signed identity) only gets its failed-PIN count cleared; secure: a new "
                   "PIN with the issuer-signed reset (docs/fallback.md).")
@click.option("--new-pin-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The new PIN from this file's first line (scripts and tests; else asked twice). An NTAG card "
                   "that cannot take a new PIN is then refused before any write.")
@click.option("--keep-pin", is_flag=True, default=False,
              help="ntag: only clear the failed-PIN count (the holder remembers the PIN).")
@click.option("--approved-by", default=None,
              help="Who checked the holder's papers and approved the reset (journalled; default: --technician).")
@click.option("--pin-reset-signer", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="secure: the card's PIN-reset private key (encrypted PKCS#8, P-256; default: the issuer key).")
@_station_options
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=SINGLE_CARDS_DIR,
              show_default=True, help="The station journal the reset is written to (as `provision card`), with "
                                      "pin-resets.jsonl and the signed pin-resets.cose (to upload) next to it.")
def pin_reset_cmd(card_profile: str, new_pin_file: Path | None, keep_pin: bool, approved_by: str | None,
                  pin_reset_signer: Path | None, **o: Any) -> None:
    """(Office) give a card whose holder proved who they are a new PIN, or unlock it; journalled.

    An NTAG card issued with a PIN record (format 2, from issue 18 on) gets a new PIN, asked twice
    once the card verified, and its failed-PIN count 0 (``--keep-pin``: the count only). An older
    NTAG card keeps its PIN (it is in the locked, signed identity): its count is reset, and a holder
    who forgot it needs a re-issue (``provision card --reissue-of``). A secure card gets a new PIN
    (asked twice) and its tries back. Prints the card id.

    The station options are those of `provision card`: here --technician names who made
    the reset (journalled with their key id) and --station-key opens the station; a reset
    writes no genesis state and no issuance file.
    """
    from cardlib.clitypes import read_secret_line
    from cardlib.provision.pin_reset import PinResetIntent, reset_ntag_pin, reset_secure_pin

    secure = card_profile == "secure"
    if not secure and pin_reset_signer:
        raise click.UsageError("--pin-reset-signer is for --card-profile secure")
    if keep_pin and (secure or new_pin_file):
        raise click.UsageError("--keep-pin is for an NTAG card without --new-pin-file")
    profile = Profile.load(o["profile_path"])
    with ExitStack() as stack:
        ring = _load_card_keys(o) if o["card_keys"] else None
        st = _Station(stack, o, profile, ring)
        file_pin = read_secret_line(new_pin_file).decode() if new_pin_file is not None else None
        signer = st.issuer
        new_pin = ""
        if secure:
            if pin_reset_signer is not None:
                signer = load_signer(pin_reset_signer, st.key_passphrase)
            new_pin = file_pin if file_pin is not None else str(
                click.prompt("New PIN (4..8 digits)", hide_input=True, confirmation_prompt=True))
        source = st.open_source(o, wait_removal=False)
        stack.enter_context(station_lock(o["state_dir"]))
        state = BatchState(o["state_dir"], SINGLE_CARDS_KEY)
        _console.print("place the card on the reader")
        now = int(time.time())
        seen: dict[str, int] = {}

        def journal_intent(intent: PinResetIntent) -> None:
            """Before the first chip write: the intent, fsync'd, or no write at all."""
            seen["last"] = state.last_pin_epoch(intent.card_id)
            try:
                state.pin_reset_started(intent.card_id, intent.uid, intent.household_ref, st.technician_name,
                                        st.technician.kid, intent.card_profile, intent.pin_changed,
                                        pin_epoch=intent.pin_epoch, epoch_before=intent.epoch_before,
                                        approved_by=approved_by)
            except OSError as exc:
                raise ProvisionError(f"card {intent.card_id.hex()}: the station journal {state.path} cannot take "
                                     f"the reset ({exc}); nothing was written to the card") from exc

        if secure:
            scm = source.next_secure_card()
            if scm is None:
                raise ProvisionError("no card presented")
            with scm as session:
                result = reset_secure_pin(session, st.ctx.trust, signer, new_pin, now, before_write=journal_intent)
        else:
            def ask() -> str:
                if file_pin is not None:
                    return file_pin
                return str(click.prompt("New PIN (6 digits)", hide_input=True, confirmation_prompt=True))

            cm = source.next_card()
            if cm is None:
                raise ProvisionError("no card presented")
            with cm as tag:
                result = reset_ntag_pin(tag, st.ctx.trust, ring or st.ctx.passwords, now,
                                        None if keep_pin else ask, require_new_pin=file_pin is not None,
                                        min_epoch=lambda card: state.last_pin_epoch(card) + 1,
                                        before_write=journal_intent)
            last = seen.get("last", 0)
            if result.epoch_before is not None and result.epoch_before < last:
                _console.print(f"[red]warning: card {result.card_id.hex()} carried PIN epoch {result.epoch_before}, "
                               f"this station set {last}: someone with the card password put an older PIN "
                               "record back (docs/security.md §A PIN that resists a phone)[/]")
        try:
            state.pin_reset(result.card_id, result.uid, result.household_ref, st.technician_name, st.technician.kid,
                            result.card_profile, result.failures_before, result.pin_changed,
                            pin_epoch=result.pin_epoch, epoch_before=result.epoch_before, approved_by=approved_by,
                            signer=st.technician)
        except OSError as exc:
            raise ProvisionError(f"card {result.card_id.hex()}: the card was reset, but its completion could not be "
                                 f"journalled ({exc}); the pin_reset_started line in {state.path} records it") from exc
    if result.pin_changed:
        epoch = f" (PIN epoch {result.pin_epoch})" if result.pin_epoch is not None else ""
        _console.print(f"card {result.card_id.hex()}: new PIN set, tries restored{epoch}")
    elif keep_pin:
        _console.print(f"card {result.card_id.hex()}: {result.failures_before} failed PIN tries reset to 0; "
                       "the PIN is unchanged (--keep-pin)")
    else:
        _console.print(f"card {result.card_id.hex()}: {result.failures_before} failed PIN tries reset to 0; the PIN "
                       "is unchanged: this card keeps it in its signed identity (a forgotten PIN needs a re-issue: "
                       "provision card --reissue-of)")
    click.echo(result.card_id.hex())
