"""Click groups of the terminal package: ``huma terminal …`` and ``huma journal …``.

Mounted by :mod:`huma.cli`; typed :class:`terminal.errors.TerminalError`s are
turned into messages and exit codes there, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from cardlib.records.cose import CoseKey
    from firmware_config.models import TerminalProfile
    from terminal.status import CounterStatus


@click.group()
def terminal() -> None:
    """The counter: make its key and CSR (init), enrol it with the server (enrol), run the daemon (run), status."""


@terminal.command("run")
@click.option(
    "--profile",
    "profile_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The terminal profile (TOML).",
)
def run(profile_path: Path) -> None:
    """Run the counter daemon until SIGTERM/SIGINT: readers, taps, journal, sync, counter screen."""
    from terminal.daemon import run_daemon

    run_daemon(profile_path)


def _count(n: int, one: str, many: str) -> str:
    """``"1 boot"``, ``"3 boots"``: a count with its noun in the right number."""
    return f"{n} {one if n == 1 else many}"


_PROFILE = click.option(
    "--profile", "profile_path", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The terminal profile (TOML).",
)


@terminal.command("init")
@_PROFILE
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the new key's passphrase, read once here (else paths.passphrase, "
                   "$HUMA_KEY_PASSPHRASE, the systemd credential huma-key-passphrase, else a prompt).")
def init(profile_path: Path, passphrase_file: Path | None) -> None:
    """Make the terminal key and its CSR (PKCS#10, CN = terminal id) at ``<key stem>.csr.pem``.

    ``[key] store = "file"`` (default): Ed25519, encrypted PKCS#8 at ``paths.key``.
    ``store = "pkcs11"``: generated on the token (the PIN from $HUMA_TOKEN_PIN, the systemd
    credential huma-token-pin, else a prompt) and never leaves it. An existing key is never
    overwritten. Prints the key fingerprint the admin must name when approving.
    """
    import os

    from cardlib.keys.cli import read_secret
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import create_terminal_key, csr_path, key_fingerprint
    from terminal.errors import TerminalProfileError

    profile = load_terminal_profile(profile_path)
    if profile.key_store.store == "pkcs11":
        _init_on_token(profile, profile_path)
        return
    secret_file = passphrase_file or profile.passphrase_path
    if secret_file is not None and not secret_file.is_file():
        secret_file = Path(os.path.normpath(secret_file))
        raise TerminalProfileError(
            f"{profile_path}: paths.passphrase names {secret_file}, which does not exist; create it first "
            f"(one line, the new key's passphrase, readable only by the counter's user), e.g.\n"
            f"  install -m 600 /dev/null {secret_file} && $EDITOR {secret_file}\n"
            f"or remove paths.passphrase and set $HUMA_KEY_PASSPHRASE / answer the prompt")
    if passphrase_file is not None:
        secret = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "New terminal key passphrase", confirm=True)
    else:
        from terminal.keys import terminal_secret

        secret = terminal_secret(profile, prompt=lambda: str(click.prompt(
            "New terminal key passphrase", hide_input=True, confirmation_prompt=True)).encode())
    kid = create_terminal_key(profile, secret)
    click.echo(f"key {profile.key_path.resolve()} (kid {kid.hex()}, slot terminal id {int.from_bytes(kid, 'big')})")
    click.echo(f"key fingerprint (read it to the admin who approves): {key_fingerprint(profile)}")
    click.echo(f"CSR {csr_path(profile).resolve()}: run 'huma terminal enrol --profile {profile_path} --code CODE' "
               "with the enrolment code the admin issued")


def _init_on_token(profile: TerminalProfile, profile_path: Path) -> None:
    """``huma terminal init`` for ``[key] store = "pkcs11"``: the key pair is made on the token."""
    from terminal.enrol import csr_path, key_fingerprint
    from terminal.keys import create_token_key, terminal_secret

    pin = terminal_secret(profile, prompt=lambda: str(click.prompt("Token user PIN", hide_input=True)).encode())
    csr = csr_path(profile)
    if csr.exists():
        raise click.ClickException(f"{csr} exists already: the key was made before (a new key needs a new label)")
    kid, request = create_token_key(profile, pin)
    csr.parent.mkdir(parents=True, exist_ok=True)
    csr.write_bytes(request)
    ks = profile.key_store
    click.echo(f"key {ks.label!r} on token {ks.token!r} (kid {kid.hex()}, "
               f"slot terminal id {int.from_bytes(kid, 'big')})")
    click.echo(f"key fingerprint (read it to the admin who approves): {key_fingerprint(profile)}")
    click.echo(f"CSR {csr.resolve()}: run 'huma terminal enrol --profile {profile_path} --code CODE' "
               "with the enrolment code the admin issued")


@terminal.command("supervisor-hash")
@click.argument("supervisor")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the password on its first line (else asked twice on the terminal, not echoed).")
def supervisor_hash_cmd(supervisor: str, password_file: Path | None) -> None:
    """Print the [supervisors] line of the terminal profile for SUPERVISOR's password (docs/fallback.md).

    The password is asked twice on the terminal (not echoed) or read from --password-file;
    only its scrypt hash is printed (terminal.fallback.supervisor_hash), as one TOML line to
    paste under [supervisors] in the terminal profile. Each run makes a new salt.
    """
    import json

    from cardlib.clitypes import read_secret_line
    from terminal.fallback import APPROVER_ID, MAX_APPROVER_CHARS, MIN_SUPERVISOR_PASSWORD, supervisor_hash

    name = supervisor.strip()
    if APPROVER_ID.fullmatch(name) is None:  # the desk refuses any other id (docs/fallback.md, approver ids)
        raise click.BadParameter(f"{supervisor!r}: a supervisor id is 1..{MAX_APPROVER_CHARS} of the ASCII "
                                 "letters, digits, '.', '_' and '-', starting with a letter or digit",
                                 param_hint="SUPERVISOR")
    if password_file is not None:
        try:
            password = read_secret_line(password_file).decode()
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"{password_file}: the first line is not UTF-8 text",
                                     param_hint="--password-file") from exc
        if not password:
            raise click.BadParameter(f"{password_file}: the first line is empty", param_hint="--password-file")
    else:
        password = str(click.prompt(f"Password for supervisor {name}", hide_input=True, confirmation_prompt=True))
    if len(password) < MIN_SUPERVISOR_PASSWORD:  # the hash is guessed offline by whoever reads the profile
        raise click.BadParameter(f"a supervisor password has at least {MIN_SUPERVISOR_PASSWORD} characters "
                                 "(its hash in the terminal profile can be guessed offline)", param_hint="password")
    # TOML bare keys are letters, digits, '_' and '-'; an id with '.' must be quoted.
    key = name if "." not in name else json.dumps(name)
    click.echo(f"{key} = {json.dumps(supervisor_hash(password))}")
    click.echo("(paste this line under [supervisors] in the terminal profile, then restart the counter)", err=True)


@terminal.command("enrol")
@_PROFILE
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Seconds to keep polling for the certificate after submitting.")
@click.option("--code", envvar="HUMA_ENROL_CODE", default=None,
              help="The one-time enrolment code the admin issued for this terminal id "
                   "(else $HUMA_ENROL_CODE; omit it to only fetch the certificate of a submitted CSR).")
@click.option("--replace-server-key", "replace_key", is_flag=True,
              help="Technician reset after the server's receipt key was replaced: pin the new one, if the root "
                   "certifies it (recorded in <key stem>.receipt-key.history). Without it a pinned key is kept.")
def enrol(profile_path: Path, wait_s: float, code: str | None, replace_key: bool) -> None:
    """Send the CSR with its enrolment code, and fetch the certificate once an admin approved it.

    Idempotent: re-running with the same code re-submits the same CSR (the server
    answers 202); without ``--code`` it only polls. The certificate is saved as
    ``<key stem>.cert.pem`` when it is ready. Prints the key fingerprint the admin
    must name when approving. Exit 0 when the certificate was saved, 3 while approval is pending.
    """
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import enrol as enrol_terminal
    from terminal.enrol import key_fingerprint

    profile = load_terminal_profile(profile_path)
    cert = enrol_terminal(profile, wait_s, code=code, replace_receipt_key=replace_key)
    if cert is None:
        click.echo(f"terminal {profile.terminal_id} is waiting for approval by an administrator")
        click.echo(f"key fingerprint (the admin approves only this key): {key_fingerprint(profile)}")
        raise SystemExit(3)
    click.echo(f"certificate saved to {cert}")


@terminal.command("status")
@_PROFILE
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
def status(profile_path: Path, as_json: bool) -> None:
    """What this counter is and how it stands, read from disk (the daemon may be running; nothing is written).

    Terminal id and server, enrolment, trust bundle version and expiry, last sync, clock and time
    mark, journal size, entries not yet uploaded, whether the daemon runs, exposure against its caps.
    """
    import dataclasses
    import json

    from firmware_config.loader import load_terminal_profile
    from terminal.status import counter_status

    st = counter_status(load_terminal_profile(profile_path))
    if as_json:
        data = dataclasses.asdict(st)
        data["exposure"] = {u.name.lower(): n for u, n in st.exposure.items()}
        data["caps"] = {u.name.lower(): n for u, n in st.caps.items()}
        click.echo(json.dumps(data, indent=2, default=str))
        return
    _print_status(st)


def _when(seconds: float, now: float) -> str:
    """``2026-12-07 10:34 UTC (3 h ago)``; ``never`` for 0."""
    import datetime as dt

    if not seconds:
        return "never"
    at = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ago = now - seconds
    span = abs(ago)
    if span < 60:
        return f"{at} (just now)"
    size = (_count(int(span // 86400), "day", "days") if span >= 86400 else
            _count(int(span // 3600), "hour", "hours") if span >= 3600 else _count(int(span // 60), "min", "min"))
    return f"{at} ({size} ago)" if ago >= 0 else f"{at} (in {size})"


def _print_status(st: CounterStatus) -> None:
    """The status as a two-column table (rich), problems in red."""
    from rich.console import Console
    from rich.table import Table

    now = st.clock.now
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("terminal", st.terminal_id)
    t.add_row("server", f"{st.server_url} ({'enrolled' if st.certificate else '[red]not enrolled yet[/]'})")
    if st.bundle is None:
        t.add_row("trust bundle", f"[red]none: {st.bundle_problem}[/]")
    else:
        b = st.bundle
        expiry = "[red]EXPIRED[/] " if b.expired else ""
        t.add_row("trust bundle", f"v{b.version}, {expiry}in force until {_when(b.in_force_until, now)}")
        t.add_row("last sync", _when(b.checked_at, now) + f"; bundle {b.age_days:.1f} days old")
        if b.unfinished_install is not None:
            t.add_row("", f"[red]v{b.version} install cut short: {b.unfinished_install} not yet renamed; the "
                          "daemon finishes it at its next start[/]")
    c = st.clock
    state = ("[red]WRONG: taps are declined counter_clock_wrong[/]" if c.wrong else "unknown (no bundle)"
             if c.wrong is None else "ok")
    t.add_row("clock", f"{_when(c.now, now).split(' (')[0]}, {'NTP synced' if c.kernel_synced else 'NTP not synced'}, "
                       f"{state}")
    t.add_row("time mark", _when(c.time_mark, now))
    if st.journal is None:
        t.add_row("journal", "none yet (the daemon never started)")
    else:
        j = st.journal
        t.add_row("journal", f"{_count(j.entries, 'entry', 'entries')}, {j.size_bytes / 1e6:.1f} MB, "
                             f"{_count(j.boots, 'boot', 'boots')}: {j.path.resolve()}")
        t.add_row("not uploaded", _count(j.unsent, "entry", "entries")
                  + (f", [red]{_count(j.refused, 'entry', 'entries')} refused by the server[/]" if j.refused else "")
                  + ("" if j.receipt_key_pinned else " [red](no pinned server receipt key: no upload can be "
                                                     "confirmed; run huma terminal enrol again)[/]"))
    t.add_row("daemon", ("running" + (f" (pid {st.daemon_pid})" if st.daemon_pid else "")) if st.daemon_running
              else "[red]not running[/]")
    units = sorted(set(st.exposure) | set(st.caps), key=lambda u: u.name)
    for u in units or ():
        cap = st.caps.get(u)
        out = st.exposure.get(u, 0)
        over = cap is not None and out >= cap
        text = f"{out} of {cap}" if cap is not None else f"{out} (no cap)"
        t.add_row(f"exposure {u.name.lower()}", f"[red]{text}: at the cap[/]" if over else text)
    if not units:
        t.add_row("exposure", "nothing out unconfirmed, no cap")
    Console(highlight=False, soft_wrap=True).print(t)


@click.group()
def journal() -> None:
    """Inspect and audit terminal journals."""


def _load_key(key_path: Path | None, cert_path: Path | None) -> CoseKey | None:
    """The verification key from ``--key`` (PEM SPKI) or ``--cert`` (PEM X.509).

    :raises JournalVerifyError: the file is not what the option needs (named in the message).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.keys.signer import cose_key
    from terminal.errors import JournalVerifyError

    if key_path is not None and cert_path is not None:
        raise click.UsageError("give --key or --cert, not both")
    try:
        if key_path is not None:
            key: object = load_pem_public_key(key_path.read_bytes())
        elif cert_path is not None:
            key = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
        else:
            return None
        if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            raise TypeError(f"a {type(key).__name__}, not an Ed25519 or P-256 key")
        return cose_key(key)
    except (ValueError, TypeError) as exc:
        path, what = (key_path, "a PEM public key (-----BEGIN PUBLIC KEY-----)") if key_path is not None \
            else (cert_path, "a PEM X.509 certificate (-----BEGIN CERTIFICATE-----, the .pem saved by "
                             "`huma terminal enrol`)")
        raise JournalVerifyError(f"{path}: not {what} ({exc})") from exc


class _Head(click.ParamType):
    name = "SEQ[:HASH]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        from terminal.journal_audit import parse_head

        if isinstance(value, tuple):
            return value
        try:
            return parse_head(str(value))
        except ValueError as exc:
            self.fail(f"{value!r}: expected SEQ or SEQ:HASH (64 hex digits) — {exc}", param, ctx)


@journal.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's public key (PEM SubjectPublicKeyInfo).")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's X.509 certificate (PEM) issued at enrolment.")
@click.option("--expect-head", "expect_head", type=_Head(), default=None,
              help="Fail unless the journal ends exactly at this entry: SEQ or SEQ:HASH (the entry hash, hex), "
                   "e.g. the head the server has for this terminal. Catches a journal cut short at the end.")
@click.option("--receipt-key", "receipt_key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The server receipt key the terminal pinned at enrolment (PEM, <key stem>.receipt-key.pem): "
                   "each stored settlement's receipt is then verified, not only its shape.")
def verify(file: Path, key_path: Path | None, cert_path: Path | None,
           expect_head: tuple[int, bytes | None] | None, receipt_key_path: Path | None) -> None:
    """Check a terminal journal offline: signatures, hash chain, gaps, index columns.

    Prints the head (last seq and its entry hash): entries missing at the *end*
    cannot be seen from the file alone — compare the head with the server's, or
    pass it as ``--expect-head``.

    Exits 0 when every entry verifies (and the head matches), 2 with the first
    failing entry's seq and the reason otherwise.
    """
    from terminal.journal_audit import check_head, verify_journal_file

    key = _load_key(key_path, cert_path)
    receipt_key = None
    if receipt_key_path is not None:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            loaded = load_pem_public_key(receipt_key_path.read_bytes())
        except ValueError as exc:
            raise click.BadParameter(f"{receipt_key_path}: not a PEM public key ({exc})",
                                     param_hint="--receipt-key") from exc
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise click.BadParameter(f"{receipt_key_path}: not an Ed25519 public key", param_hint="--receipt-key")
        receipt_key = loaded
    report = verify_journal_file(file, key, receipt_key=receipt_key)
    if expect_head is not None:
        check_head(report, *expect_head)
    click.echo(
        f"OK {file}: terminal {report.terminal_id}, {_count(report.entries, 'entry', 'entries')}, "
        f"{_count(report.boots, 'boot', 'boots')}, head seq {report.last_seq} entry hash {report.head_hash.hex()}"
    )
    if expect_head is None:
        click.echo("(compare the head with the server's for this terminal, or pass --expect-head SEQ:HASH: "
                   "entries cut from the end cannot be seen from the file alone)")
    if report.open_writes:
        click.echo(f"unfinished card writes (resolve on next tap): {len(report.open_writes)}")
    if report.settled_writes:
        signed = "" if report.receipts_signed else " (receipts' shape only)"
        click.echo(f"torn writes settled by the server: {len(report.settled_writes)}{signed}")
    if report.settlements and not report.receipts_signed:
        click.echo(f"warning: {_count(report.settlements, 'settlement', 'settlements')} checked against the shape "
                   "of their stored receipts only; give --receipt-key to verify the server's signatures", err=True)
    if report.key_from_file:
        click.echo(
            "warning: no --key/--cert given; checked against the key stored in the file "
            "(proves integrity, not that the terminal wrote it)",
            err=True,
        )


@journal.command("repair")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's public key (PEM SubjectPublicKeyInfo) for the re-verification.")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's X.509 certificate (PEM) for the re-verification.")
def repair(file: Path, key_path: Path | None, cert_path: Path | None) -> None:
    """Rebuild a journal's damaged SQLite indexes (REINDEX), after a backup, and re-verify it.

    Stop the counter first. Only damage confined to indexes is repaired (the
    signed entries are the source of truth and the indexes are derived from
    them); anything else exits 2 and changes nothing. The backup is
    ``FILE.damaged-<time>`` next to FILE. Exit 0 when the repaired journal verifies.
    """
    from terminal.journal_audit import repair_journal_file

    key = _load_key(key_path, cert_path)
    backup, report = repair_journal_file(file, key)
    click.echo(f"backed up the damaged journal to {backup}; indexes rebuilt")
    click.echo(
        f"OK {file}: terminal {report.terminal_id}, {_count(report.entries, 'entry', 'entries')}, "
        f"{_count(report.boots, 'boot', 'boots')}, head seq {report.last_seq} entry hash {report.head_hash.hex()}"
    )
