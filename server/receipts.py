"""The server receipt key: signs upload receipts and bundle freshness statements (no Flask routes).

Counters pin its public key at enrolment (the certificate answer carries it) and
believe an upload or bundle answer only when it carries a statement signed by it
(:mod:`cardlib.records.statements`, docs/security.md "Server answers are signed").

Configuration (docs/operations.md "Server receipt key"): ``RECEIPT_KEY``, a PKCS#8 PEM
Ed25519 key file (default ``<instance>/receipt-key.pem``), encrypted with
``RECEIPT_KEY_PASSWORD`` when that is set. A missing file is generated once, mode 0600,
exclusively (several workers starting at once end up with one key); every worker
then loads that one file. Losing the file means every counter must re-enrol to pin
the new key, so back it up with the terminal CA key.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.fsutil import atomic_write
from cardlib.keys.signer import SoftwareSigner
from server.errors import ConfigurationError

log = logging.getLogger(__name__)

_EXTENSION = "huma.receipt_signer"
_lock = threading.Lock()


def receipt_key_path(config: Any, instance_path: str) -> Path:
    """Where the receipt key is: ``RECEIPT_KEY`` or ``<instance>/receipt-key.pem``."""
    configured = config.get("RECEIPT_KEY")
    return Path(configured) if configured else Path(instance_path) / "receipt-key.pem"


def _password(config: Any) -> bytes | None:
    password = config.get("RECEIPT_KEY_PASSWORD")
    return password.encode() if isinstance(password, str) else password


def _generate(path: Path, password: bytes | None) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    atomic_write(tmp, pem, mode=0o600)
    try:
        os.link(tmp, path)  # exclusive: a key another worker made first is kept
        log.warning("generated the server receipt key %s; counters pin it at enrolment: back it up", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_receipt_signer(path: Path, password: bytes | None, *, create: bool = True) -> SoftwareSigner:
    """Load (generating it first when missing) the receipt key at ``path``.

    :param create: False (the CLI): a missing file is an error, never a new key.
    :raises ConfigurationError: missing (``create=False``), unreadable, wrong password, or not an Ed25519 key.
    """
    try:
        if not path.exists():
            if not create:
                raise ConfigurationError(f"server receipt key {path} does not exist")
            _generate(path, password)
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (OSError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"server receipt key {path} unusable: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(f"server receipt key {path} is not an Ed25519 key")
    return SoftwareSigner(key)


def receipt_signer(app: Any) -> SoftwareSigner:
    """The application's receipt key, loaded once per process.

    :param app: the Flask application (its config and instance path).
    :raises ConfigurationError: as :func:`load_receipt_signer`.
    """
    signer = app.extensions.get(_EXTENSION)
    if signer is None:
        with _lock:
            signer = app.extensions.get(_EXTENSION)
            if signer is None:
                signer = load_receipt_signer(receipt_key_path(app.config, app.instance_path),
                                             _password(app.config))
                app.extensions[_EXTENSION] = signer
    return cast(SoftwareSigner, signer)  # app.extensions is typed dict[str, Any]


def cli_receipt_signer(app: Any) -> SoftwareSigner:
    """The server's receipt key for a CLI command (``huma audit export journal``): named, never made.

    A command run beside a checkout would otherwise sign with (and silently create)
    ``<instance>/receipt-key.pem``, a key no counter pins; so ``HUMA_RECEIPT_KEY`` must
    name the server's key file, and a missing file is an error.

    :param app: the Flask application (its config).
    :raises ConfigurationError: ``HUMA_RECEIPT_KEY`` unset, or as :func:`load_receipt_signer`.
    """
    configured = app.config.get("RECEIPT_KEY")
    if not configured:
        raise ConfigurationError("the journal export is signed with the server receipt key: set HUMA_RECEIPT_KEY "
                                 "to the server's key file (and HUMA_RECEIPT_KEY_PASSWORD if it has one)")
    return load_receipt_signer(Path(configured), _password(app.config), create=False)


def receipt_public_pem(app: Any) -> str:
    """The receipt key's public key as SubjectPublicKeyInfo PEM (what a counter pins)."""
    return receipt_signer(app).public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
