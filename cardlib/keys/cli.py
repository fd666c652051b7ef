"""``huma keys``: keystore ceremonies (init, issue, rotate, revoke, list) and terminal enrolment.

Secrets never come from a command-line value (shell history, ``ps``): each is read from
``--…-file`` if given, else from an environment variable (for automation), else from a
hidden prompt. Environment variables: ``HUMA_ROOT_PASSPHRASE``, ``HUMA_KEY_PASSPHRASE``,
``HUMA_PKCS11_PIN``; ``HUMA_KEYSTORE`` is the default ``--dir``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console
from rich.table import Table

from cardlib.clitypes import (
    Checked,
    HexBytes,
    count_noun,
    force_option,
    input_lines,
    parse_hex,
    read_secret_line,
    refuse_overwrite,
)
from cardlib.fsutil import atomic_write
from cardlib.keys.errors import CertificateError, InputFileError
from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import KID_LENGTH
from cardlib.keys.terminal_ca import TerminalCA, TerminalCertificate, make_terminal_csr, verify_terminal_certificate
from cardlib.keys.terminal_id import check_terminal_id
from cardlib.records.cose import Algorithm

_PEM = Encoding.PEM
_ALGS = {"ed25519": Algorithm.EDDSA, "es256": Algorithm.ES256}
#: A 4-byte key id in hex (docs/design.md §What is on the card), e.g. ``--pin-root 1a2b3c4d``.
KID = HexBytes(KID_LENGTH)
TERMINAL_ID = Checked("TERMINAL_ID", check_terminal_id)
_PEM_CERT_END = b"-----END CERTIFICATE-----"


def read_secret(path: Path | None, env: str, prompt: str, *, confirm: bool = False) -> bytes:
    """Read a passphrase or PIN: from ``path`` (first line), else ``$env``, else a hidden prompt.

    :returns: the secret as UTF-8 bytes, without the trailing newline or a leading byte-order mark.
    """
    if path is not None:
        return read_secret_line(path)
    value = os.environ.get(env)
    if value is not None:
        return value.encode()
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)).encode()


def _dir_option(f: Any) -> Any:
    return click.option(
        "--dir", "keydir", type=click.Path(file_okay=False, path_type=Path), envvar="HUMA_KEYSTORE",
        required=True, help="Keystore directory (env HUMA_KEYSTORE).",
    )(f)


def _root_pw_option(f: Any) -> Any:
    return click.option(
        "--root-passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="File holding the root passphrase (else $HUMA_ROOT_PASSPHRASE, else prompt).",
    )(f)


def _key_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--alg", type=click.Choice(sorted(_ALGS)), default="ed25519", show_default=True,
                     help="Signature algorithm of the new key: ed25519 (COSE EdDSA) or es256 (P-256, COSE ES256)."),
        click.option("--name", default="", help="Label, e.g. the technician's staff id."),
        click.option("--validity-days", type=click.IntRange(min=1), default=None,
                     help="Default and maximum depend on the role (docs/security.md)."),
        click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="File holding the new key's passphrase (else $HUMA_KEY_PASSPHRASE, else prompt)."),
        click.option("--pkcs11-module", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Generate the key on a PKCS#11 token through this module (e.g. libsofthsm2.so)."),
        click.option("--pkcs11-token", default=None, help="Token label."),
        click.option("--pkcs11-pin-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="File holding the token PIN (else $HUMA_PKCS11_PIN, else prompt)."),
    ]):
        f = opt(f)
    return f


def _open_token(stack: ExitStack, module: str | None, label: str | None, pin_file: Path | None) -> Any:
    if module is None:
        return None
    if not label:
        raise click.UsageError("--pkcs11-token is required with --pkcs11-module")
    from cardlib.keys.pkcs11 import Pkcs11Token  # optional extra

    pin = read_secret(pin_file, "HUMA_PKCS11_PIN", "Token PIN").decode()
    return stack.enter_context(Pkcs11Token(module, label, pin))


def _when(ts: int | None) -> str:
    """UNIX seconds as ``YYYY-MM-DD HH:MMZ``; a time no calendar date holds (past year 9999) as ``<ts> (invalid)``."""
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%MZ")
    except (ValueError, OverflowError, OSError):  # year out of range, beyond time_t
        return f"{ts} (invalid)"


@click.group("keys")
def keys() -> None:
    """Key hierarchy: root → issuer, terminal CA, bundle, technician keys."""


@keys.command("init")
@_dir_option
@click.option("--alg", type=click.Choice(sorted(_ALGS)), default="ed25519", show_default=True,
              help="Signature algorithm of the root key: ed25519 (COSE EdDSA) or es256 (P-256, COSE ES256).")
@_root_pw_option
def init_cmd(keydir: Path, alg: str, root_passphrase_file: Path | None) -> None:
    """Create a keystore and its root key (then move the root key offline)."""
    pw = read_secret(root_passphrase_file, "HUMA_ROOT_PASSPHRASE", "New root passphrase", confirm=True)
    store = KeyStore.init(keydir, pw, alg=_ALGS[alg])
    click.echo(f"root kid {store.root_kid.hex()}  (pin this kid on terminals and the server)")


def _issue(keydir: Path, role: str, rotate: bool, root_passphrase_file: Path | None, alg: str, name: str,
           validity_days: int | None, passphrase_file: Path | None, pkcs11_module: str | None,
           pkcs11_token: str | None, pkcs11_pin_file: Path | None) -> None:
    store = KeyStore.open(keydir)
    r = Role(role)
    if r is Role.TECHNICIAN and not name:
        raise click.UsageError("technician keys need --name (the technician's staff id)")
    with ExitStack() as stack:
        token = _open_token(stack, pkcs11_module, pkcs11_token, pkcs11_pin_file)
        root = store.root_signer(read_secret(root_passphrase_file, "HUMA_ROOT_PASSPHRASE", "Root passphrase"))
        kwargs: dict[str, Any] = {"alg": _ALGS[alg], "validity_days": validity_days, "name": name}
        if token is not None:
            kwargs["token"] = token
        else:
            kwargs["passphrase"] = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE",
                                               f"Passphrase for the new {role} key", confirm=True)
        if rotate:
            entry, retired = store.rotate(r, root, **kwargs)
            for old in retired:
                click.echo(f"retired {old.role.value} {old.kid.hex()} (verify-only)")
        else:
            entry = store.issue(r, root, **kwargs)
    click.echo(f"issued {entry.role.value} key {entry.kid.hex()} ({entry.alg.name}, {entry.backend.value})")


_ROLE_CHOICE = click.Choice([r.value for r in Role if r is not Role.ROOT])


@keys.command("issue")
@_dir_option
@click.argument("role", type=_ROLE_CHOICE)
@_root_pw_option
@_key_options
def issue_cmd(keydir: Path, role: str, **kw: Any) -> None:
    """Issue a new key of ROLE below the root."""
    _issue(keydir, role, False, **kw)


@keys.command("rotate")
@_dir_option
@click.argument("role", type=_ROLE_CHOICE)
@_root_pw_option
@_key_options
def rotate_cmd(keydir: Path, role: str, **kw: Any) -> None:
    """Issue a new key of ROLE and retire the old one (verify-only)."""
    _issue(keydir, role, True, **kw)


@keys.command("revoke")
@_dir_option
@click.argument("kid", type=KID)
@click.option("--at", "at", type=click.IntRange(min=0), default=None,
              help="Compromise time, UNIX seconds (default: now).")
@_root_pw_option
def revoke_cmd(keydir: Path, kid: bytes, at: int | None, root_passphrase_file: Path | None) -> None:
    """Revoke key KID (hex); the next trust bundle carries the status (a bundle key: the root's revocation list)."""
    store = KeyStore.open(keydir)
    entry = store.entry(kid)
    root = store.root_signer(read_secret(root_passphrase_file, "HUMA_ROOT_PASSPHRASE", "Root passphrase"))
    e = store.revoke(entry.kid, root, at=at)
    click.echo(f"revoked {e.role.value} key {e.kid.hex()} from {_when(e.status_time)}")


@keys.command("endorse")
@_dir_option
@click.argument("kid", type=KID)
@click.option("--days", type=click.IntRange(min=1), default=60, show_default=True,
              help="Days the endorsement lasts (at most 90).")
@_root_pw_option
def endorse_cmd(keydir: Path, kid: bytes, days: int, root_passphrase_file: Path | None) -> None:
    """Renew the root's endorsement of bundle key KID (hex); counters refuse bundles under a lapsed one."""
    store = KeyStore.open(keydir)
    root = store.root_signer(read_secret(root_passphrase_file, "HUMA_ROOT_PASSPHRASE", "Root passphrase"))
    endorsed = store.endorse_bundle_key(store.entry(kid).kid, root, days=days)
    click.echo(f"bundle key {kid.hex()} endorsed {_when(endorsed.valid_from)} to {_when(endorsed.valid_until)}; "
               "publish a bundle to carry it")


@keys.command("list")
@_dir_option
@click.option("--pin-root", type=KID, default=None, help="Refuse unless the manifest is signed by this root kid (hex).")
def list_cmd(keydir: Path, pin_root: bytes | None) -> None:
    """List keys (verifies the manifest signature first)."""
    store = KeyStore.open(keydir, pinned_root_kid=pin_root)
    table = Table(title=f"keystore {keydir} (manifest #{store.serial})")
    for col in ("kid", "role", "name", "alg", "status", "since", "created", "not after", "storage"):
        table.add_column(col)
    for e in store.entries:
        table.add_row(e.kid.hex(), e.role.value, e.name, e.alg.name, e.status.value, _when(e.status_time),
                      _when(e.created), _when(e.not_after), f"{e.backend.value}:{e.location}")
    # Full width when piped (scripts grep kids), the terminal's width otherwise.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@keys.command("export-root")
@_dir_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@force_option
def export_root_cmd(keydir: Path, out: Path, force: bool) -> None:
    """Write the root PUBLIC key as PEM to OUT (the file terminals pin as paths.root_key).

    Needs no passphrase: only the public key in the verified manifest is read.
    """
    from cryptography.hazmat.primitives.serialization import PublicFormat

    store = KeyStore.open(keydir)
    pem = store.entry(store.root_kid).public_key.public_bytes(_PEM, PublicFormat.SubjectPublicKeyInfo)
    refuse_overwrite(out, force)
    atomic_write(out, pem, mode=0o644)
    click.echo(f"wrote root public key {store.root_kid.hex()} to {out} (copy it to each terminal's paths.root_key)")


@keys.command("csr")
@click.option("--terminal-id", type=TERMINAL_ID, required=True,
              help="Upper-case letters, digits and -, 3 to 32 (the profile's terminal_id).")
@click.option("--alg", type=click.Choice(sorted(_ALGS)), default="ed25519", show_default=True,
              help="Signature algorithm of the terminal key: ed25519 (COSE EdDSA) or es256 (P-256, COSE ES256).")
@click.option("--key-out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new terminal private key (PKCS#8, encrypted with the passphrase).")
@click.option("--csr-out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the certificate signing request (PEM) for the administrator.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File holding the new key's passphrase (else $HUMA_KEY_PASSPHRASE, else prompt twice).")
def csr_cmd(terminal_id: str, alg: str, key_out: Path, csr_out: Path, passphrase_file: Path | None) -> None:
    """(On the terminal) make the terminal key and a CSR for enrolment.

    On a counter the usual way is `huma terminal init` (key and CSR at the profile's paths)
    then `huma terminal enrol`; this command is for enrolment by hand (`huma keys certify`).
    """
    key, csr = make_terminal_csr(terminal_id, _ALGS[alg])
    passphrase = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Terminal key passphrase", confirm=True)
    save_private_key(key_out, key, passphrase)
    csr_out.write_bytes(csr)
    click.echo(f"wrote {key_out} and {csr_out}")


@keys.command("certify")
@_dir_option
@click.argument("csr", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--terminal-id", type=TERMINAL_ID, required=True, help="The terminal id the administrator approved.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the terminal certificate followed by the terminal CA certificate (PEM).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Terminal CA passphrase file (else $HUMA_KEY_PASSPHRASE, else prompt).")
def certify_cmd(keydir: Path, csr: Path, terminal_id: str, out: Path, passphrase_file: Path | None) -> None:
    """(Administrator) certify an approved terminal CSR with the terminal CA."""
    store = KeyStore.open(keydir)
    ca = TerminalCA.from_keystore(store, read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Terminal CA passphrase"))
    cert = ca.issue(csr.read_bytes(), terminal_id=terminal_id)
    info = verify_terminal_certificate(cert, ca.certificate_pem)
    out.write_bytes(cert + ca.certificate_pem)
    click.echo(f"certified {info.terminal_id}: kid {info.kid.hex()}, valid until {_when(info.not_after)}")


def _terminal_certificate(path: Path, ca_pem: bytes) -> TerminalCertificate:
    """Verify the first certificate of a PEM file (``keys certify`` writes cert + CA cert).

    :raises InputFileError: the file holds no PEM certificate or it does not verify (file named).
    """
    data = path.read_bytes()
    end = data.find(_PEM_CERT_END)
    if b"-----BEGIN CERTIFICATE-----" not in data or end < 0:
        raise InputFileError(path, "not a PEM certificate (no -----BEGIN/END CERTIFICATE----- block); "
                                   "pass the file `huma keys certify --out` wrote")
    try:
        return verify_terminal_certificate(data[:end + len(_PEM_CERT_END)] + b"\n", ca_pem)
    except CertificateError as exc:
        raise InputFileError(path, f"terminal certificate refused: {exc}") from exc


def read_id_list(path: Path, width: int, what: str) -> list[bytes]:
    """Read a list of ids, one per line in hex (blank lines and ``#`` comments ignored; a leading BOM too).

    :param width: bytes per id (8 for card ids).
    :returns: the ids in file order.
    :raises InputFileError: a line is not ``2 * width`` hex digits or not UTF-8 (file and line named).
    """
    ids: list[bytes] = []
    for no, raw in enumerate(input_lines(path.read_bytes()), start=1):
        try:
            text = raw.decode("utf-8").split("#", 1)[0].strip()
        except UnicodeDecodeError:
            raise InputFileError(path, "not UTF-8 text", no) from None
        if not text:
            continue
        try:
            ids.append(parse_hex(text, length=width))
        except ValueError as exc:
            raise InputFileError(path, f"{what}: {exc}", no) from None
    return ids


@keys.command("bundle")
@_dir_option
@click.option("--version", "version", type=click.IntRange(min=0), required=True, help="Must exceed the last one.")
@click.option("--days", type=click.IntRange(min=1), default=14, show_default=True, help="Validity before stale.")
@click.option("--terminal-cert", "terminal_certs", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Certificate (PEM) of an enrolled terminal; repeatable.")
@click.option("--deny-cards", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File of denied card ids, 16 hex digits per line.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the signed trust bundle (CBOR, copied to terminals and stations).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Bundle key passphrase file (else $HUMA_KEY_PASSPHRASE, else prompt).")
def bundle_cmd(keydir: Path, version: int, days: int, terminal_certs: tuple[Path, ...], deny_cards: Path | None,
               out: Path, passphrase_file: Path | None) -> None:
    """Sign a trust bundle: keystore issuer/technician keys, enrolled terminals, a deny list.

    (Offline tool; the server builds bundles from its registry with the same library calls.)
    """
    import time

    from cardlib.records.bundle import CARD_ID_LENGTH, SortedIdSet, sign_keystore_bundle, terminal_bundle_key

    store = KeyStore.open(keydir)
    ca_entry = store.active(Role.TERMINAL_CA)
    ca_pem = store.certificate(ca_entry.kid).public_bytes(_PEM)
    terminals = [terminal_bundle_key(info.public_key, info.not_after)
                 for info in (_terminal_certificate(p, ca_pem) for p in terminal_certs)]
    ids = read_id_list(deny_cards, CARD_ID_LENGTH, "card id") if deny_cards is not None else []
    now = int(time.time())
    bundle, blob = sign_keystore_bundle(
        store, read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Bundle key passphrase"),
        version=version, issued_at=now, expires_at=now + days * 86400, terminal_keys=terminals,
        deny_cards=SortedIdSet.from_ids(ids, CARD_ID_LENGTH))
    out.write_bytes(blob)
    click.echo(f"bundle v{version}: {count_noun(len(bundle.keys), 'key', 'keys')}, "
               f"{count_noun(len(bundle.deny_cards), 'denied card', 'denied cards')}, expires in {days} d")


# ----------------------------------------------------------------------------- card-password keys

#: Environment variable of the card-password key file's passphrase (stations, `huma keys card-passwords`).
CARD_KEYS_PASSPHRASE_ENV = "HUMA_CARD_KEYS_PASSPHRASE"


def _card_keys_pw(path: Path | None, *, confirm: bool = False) -> bytes:
    return read_secret(path, CARD_KEYS_PASSPHRASE_ENV, "Card-password key file passphrase", confirm=confirm)


def _save_card_keys(path: Path, ring: Any, passphrase: bytes) -> None:
    """Replace the key file atomically (mode 0600): a crash never leaves half a key ring.

    :raises ValueError: a passphrase shorter than 12 bytes.
    """
    from cardlib.records.access import seal_password_keys

    atomic_write(path, seal_password_keys(ring, passphrase), mode=0o600)


@keys.group("card-passwords")
def card_passwords() -> None:
    """The provincial card-password key file: which PWD/PACK opens a card's private pages.

    An encrypted key ring (scrypt + AES-256-GCM, docs/card-format.md §2.2), versioned: new cards
    carry the current version on their page 10, terminals hold every version still in the field.
    Passphrase: --passphrase-file, else $HUMA_CARD_KEYS_PASSPHRASE, else a prompt.
    """


_CARD_KEYS_PW_OPTION = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help=f"Key file passphrase (else ${CARD_KEYS_PASSPHRASE_ENV}, else prompt); at least 12 bytes.")


@card_passwords.command("create")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format1-secret", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The office's --pwd-secret-file that format-1 cards were issued with: kept as version 1 "
                   "so counters can open and migrate those cards; a new random key becomes version 2.")
@_CARD_KEYS_PW_OPTION
@force_option
def card_passwords_create(out: Path, format1_secret: Path | None, passphrase_file: Path | None, force: bool) -> None:
    """Create the card-password key file OUT (a fresh random key, version 1 or 2)."""
    from cardlib.records.access import CardPasswordKeys

    refuse_overwrite(out, force)
    legacy = format1_secret.read_bytes().strip() if format1_secret is not None else None
    try:
        ring = CardPasswordKeys.create(legacy)
    except ValueError as exc:
        raise InputFileError(f"--format1-secret {format1_secret}", str(exc)) from None
    try:
        _save_card_keys(out, ring, _card_keys_pw(passphrase_file, confirm=True))
    except ValueError as exc:
        raise InputFileError(out, str(exc)) from None
    click.echo(f"{out}: card-password keys, current version {ring.current}"
               + (f", format-1 cards under version {ring.format1}" if ring.format1 else ""))


@card_passwords.command("rotate")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_CARD_KEYS_PW_OPTION
def card_passwords_rotate(path: Path, passphrase_file: Path | None) -> None:
    """Add a fresh key under the next version and make it current (older versions stay for cards in the field)."""
    from cardlib.records.access import load_password_keys

    pw = _card_keys_pw(passphrase_file)
    ring = load_password_keys(path, pw)
    try:
        ring = ring.rotated()
    except ValueError as exc:
        raise InputFileError(path, str(exc)) from None
    _save_card_keys(path, ring, pw)
    click.echo(f"{path}: current version {ring.current} (held: {', '.join(map(str, sorted(ring.keys)))})")


@card_passwords.command("show")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_CARD_KEYS_PW_OPTION
def card_passwords_show(path: Path, passphrase_file: Path | None) -> None:
    """List the versions the key file holds (never the keys)."""
    from cardlib.records.access import load_password_keys

    ring = load_password_keys(path, _card_keys_pw(passphrase_file))
    click.echo(f"versions {', '.join(map(str, sorted(ring.keys)))}; current {ring.current}; "
               f"format-1 cards {ring.format1 if ring.format1 is not None else 'not held'}")
