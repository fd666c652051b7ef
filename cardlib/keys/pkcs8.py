"""Encrypted PKCS#8 key files (RFC 5958, PEM), the default key storage.

Files are written with :class:`cryptography.hazmat.primitives.serialization.BestAvailableEncryption`
(PBES2 with a memory-hard KDF where the backend has one), mode 0600, atomically
(temp file + ``os.replace``). Passphrases come from the caller as ``bytes``; the CLI
reads them from a prompt, an environment variable or a file, never from a
command-line argument (shell history).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from cardlib.fsutil import atomic_write
from cardlib.keys.errors import KeysError, WeakPassphraseError, WrongPassphraseError
from cardlib.keys.signer import PrivateKey, SoftwareSigner, algorithm_of

_log = logging.getLogger(__name__)

MIN_PASSPHRASE_LENGTH = 12
"""Shortest passphrase (bytes) accepted for a new key file."""

_FILE_MODE = 0o600


def save_private_key(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    """Write ``key`` as an encrypted PKCS#8 PEM file, atomically, mode 0600.

    :param path: destination; its directory must exist. An existing file is refused.
    :param passphrase: at least :data:`MIN_PASSPHRASE_LENGTH` bytes.
    :raises WeakPassphraseError: when the passphrase is too short.
    :raises KeysError: when ``path`` already exists.
    """
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise WeakPassphraseError(
            f"passphrase must be at least {MIN_PASSPHRASE_LENGTH} bytes long"
        )
    if path.exists():
        raise KeysError(f"refusing to overwrite existing key file {path}")
    algorithm_of(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    atomic_write(path, pem, mode=_FILE_MODE)
    _log.info("wrote encrypted key file %s", path)


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    """Read and decrypt an encrypted PKCS#8 PEM file.

    :raises WrongPassphraseError: when the passphrase is missing or does not decrypt it.
    :raises KeysError: when the file is missing, not encrypted, or not a key of ours.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeysError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not passphrase:
        raise WrongPassphraseError(f"{path} is encrypted: a passphrase is required")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography raises TypeError for an unencrypted file given a password.
        raise KeysError(f"{path} is not an encrypted key file; refusing to use it") from exc
    except ValueError as exc:
        # Bad decrypt and malformed PEM both arrive as ValueError; tell them apart.
        if b"ENCRYPTED PRIVATE KEY" in data:
            raise WrongPassphraseError(f"wrong passphrase for {path}") from exc
        raise KeysError(f"{path} is not a PKCS#8 private key") from exc
    algorithm_of(key)  # type: ignore[arg-type]
    return key  # type: ignore[return-value]


def load_signer(path: Path, passphrase: bytes | None) -> SoftwareSigner:
    """:func:`load_private_key` wrapped as a :class:`SoftwareSigner`."""
    return SoftwareSigner(load_private_key(path, passphrase))
