"""Click groups of the terminal package: ``huma terminal …`` and ``huma journal …``.

Mounted by :mod:`huma.cli`; typed :class:`terminal.errors.TerminalError`s are
turned into messages and exit codes there, not here.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def terminal() -> None:
    """Run the counter daemon."""


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


@click.group()
def journal() -> None:
    """Inspect and audit terminal journals."""


def _load_key(key_path: Path | None, cert_path: Path | None) -> object | None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.keys.signer import cose_key

    if key_path is not None and cert_path is not None:
        raise click.UsageError("give --key or --cert, not both")
    if key_path is not None:
        return cose_key(load_pem_public_key(key_path.read_bytes()))  # type: ignore[arg-type]
    if cert_path is not None:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return cose_key(cert.public_key())  # type: ignore[arg-type]
    return None


@journal.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's public key (PEM SubjectPublicKeyInfo).")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The terminal's X.509 certificate (PEM) issued at enrolment.")
def verify(file: Path, key_path: Path | None, cert_path: Path | None) -> None:
    """Check a terminal journal offline: signatures, hash chain, gaps, index columns.

    Exits 0 when every entry verifies, 2 with the first failing entry and the reason otherwise.
    """
    from terminal.journal import verify_journal_file

    key = _load_key(key_path, cert_path)
    report = verify_journal_file(file, key)  # type: ignore[arg-type]
    click.echo(
        f"OK {file}: terminal {report.terminal_id}, {report.entries} entries, "
        f"{report.boots} boots, head {report.head_hash.hex()}"
    )
    if report.open_writes:
        click.echo(f"unfinished card writes (resolve on next tap): {len(report.open_writes)}")
    if report.key_from_file:
        click.echo(
            "warning: no --key/--cert given; checked against the key stored in the file "
            "(proves integrity, not that the terminal wrote it)",
            err=True,
        )
