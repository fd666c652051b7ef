"""The provincial card-password keys: which PWD/PACK opens a card's private pages.

docs/card-format.md §2.2 and docs/security.md §What the NTAG password stops. A card of
format 2 keeps its identity and slots behind the chip's own access control (NTAG213/215/216
datasheet §8.8: PWD_AUTH, PACK, AUTH0, PROT = 1). Its 4-byte password and 2-byte PACK are
derived per chip from a provincial key (:func:`cardlib.provision.password.derive_password`,
``HMAC-SHA256(key, "huma-betang/ntag-pwd/v1" ‖ UID)[:6]``); the key's version is in the
card's public header page, so a terminal knows which key to use and the province can
rotate: new cards take the new version, terminals keep the versions still in the field.

The same keys give each format-2 card its PIN key (:meth:`CardPasswordKeys.pin_key`,
``HMAC-SHA256(key, "huma-betang/ntag-pin/v1" ‖ UID)``), which keys the card's PIN record
(:mod:`cardlib.records.pin`): another label, so knowing a card's PWD (sent in clear by
PWD_AUTH) gives nothing about its PIN key.

The keys reach terminals and provisioning stations in an encrypted key file (scrypt +
AES-256-GCM, :func:`save_password_keys` / :func:`load_password_keys`), never inside the
trust bundle, which every counter publishes and anyone may read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cardlib.provision.password import MIN_SECRET_BYTES, CardPassword, derive_password
from cardlib.records.errors import CardPasswordUnavailable, RecordError

__all__ = [
    "KEY_FILE_FORMAT",
    "PIN_KEY_CONTEXT",
    "CardPasswordKeys",
    "PasswordKeyFileError",
    "load_password_keys",
    "save_password_keys",
    "seal_password_keys",
]

#: Format marker of the encrypted key file (a version in every artefact).
KEY_FILE_FORMAT = "huma-betang/card-password-keys/v1"
#: Label of the per-card PIN key (docs/card-format.md §3.2): never the password's label.
PIN_KEY_CONTEXT = b"huma-betang/ntag-pin/v1"
#: Key versions fit the one byte of the card's public header (docs/card-format.md §2.2); 0 is unused.
MAX_KEY_VERSION = 0xFF
#: Bytes of a key made by :meth:`CardPasswordKeys.create` / :meth:`CardPasswordKeys.rotated`.
NEW_KEY_BYTES = 32
_MIN_PASSPHRASE = 12
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12


class PasswordKeyFileError(RecordError):
    """The key file is not ours, the passphrase is wrong or the content is damaged."""


@dataclass(frozen=True)
class CardPasswordKeys:
    """The card-password keys a terminal or station holds, by version.

    :ivar keys: key version (1..255) -> key (≥ 16 random bytes).
    :ivar current: the version new cards are issued with.
    :ivar format1: the version whose key is the issuing office's password secret that format-1
        cards already carry (their PWD guards only the configuration pages); a counter holding it
        could open those cards and migrate them (docs/security.md §What the NTAG password stops). None:
        no format-1 password is held.
    :raises ValueError: a version out of range, a short key, or ``current``/``format1`` not held.
    """

    keys: Mapping[int, bytes] = field(repr=False)
    current: int
    format1: int | None = None

    def __post_init__(self) -> None:
        for version, key in self.keys.items():
            if not 1 <= version <= MAX_KEY_VERSION:
                raise ValueError(f"key version {version} outside 1..{MAX_KEY_VERSION}")
            if len(key) < MIN_SECRET_BYTES:
                raise ValueError(f"key version {version} is shorter than {MIN_SECRET_BYTES} bytes")
        if self.current not in self.keys:
            raise ValueError(f"current key version {self.current} is not held")
        if self.format1 is not None and self.format1 not in self.keys:
            raise ValueError(f"format-1 key version {self.format1} is not held")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @classmethod
    def create(cls, format1_secret: bytes | None = None) -> CardPasswordKeys:
        """A new key ring: version 1 is the format-1 office secret when given (and marked
        :attr:`format1`), and the current version a fresh 32-byte random key.

        :param format1_secret: the ``--pwd-secret-file`` bytes format-1 cards were issued with (≥ 16).
        :raises ValueError: a short secret.
        """
        if format1_secret is None:
            return cls({1: os.urandom(NEW_KEY_BYTES)}, 1)
        return cls({1: format1_secret, 2: os.urandom(NEW_KEY_BYTES)}, 2, format1=1)

    def rotated(self) -> CardPasswordKeys:
        """The same ring plus a fresh random key under the next version, which becomes current.

        Older versions stay: cards keep the version on their locked page 10 for life, so
        terminals need every version still in the field (docs/security.md).

        :raises ValueError: version 255 is taken already.
        """
        version = max(self.keys) + 1
        if version > MAX_KEY_VERSION:
            raise ValueError(f"no key version left after {MAX_KEY_VERSION}")
        return CardPasswordKeys({**self.keys, version: os.urandom(NEW_KEY_BYTES)}, version, self.format1)

    def password(self, version: int, uid: bytes) -> CardPassword:
        """PWD and PACK of one chip under one key version.

        :param version: the key version named by the card's public header.
        :param uid: the 7-byte chip UID.
        :raises CardPasswordUnavailable: this holder has no key of that version.
        """
        key = self.keys.get(version)
        if key is None:
            raise CardPasswordUnavailable(f"card password key version {version} is not held here")
        return derive_password(key, uid)

    def pin_key(self, version: int, uid: bytes) -> bytes:
        """The card's PIN-record key: ``HMAC-SHA256(key, "huma-betang/ntag-pin/v1" ‖ UID)``, 32 bytes.

        Terminals and office stations hold it (they hold the ring); a phone, or someone who sniffed
        the card's PWD, does not.

        :param version: the key version named by the card's public header.
        :param uid: the 7-byte chip UID.
        :raises CardPasswordUnavailable: this holder has no key of that version.
        :raises ValueError: a UID that is not 7 bytes.
        """
        key = self.keys.get(version)
        if key is None:
            raise CardPasswordUnavailable(f"card password key version {version} is not held here")
        if len(uid) != 7:
            raise ValueError("NTAG21x UIDs are 7 bytes")
        return hmac.new(key, PIN_KEY_CONTEXT + bytes(uid), hashlib.sha256).digest()


def seal_password_keys(keys: CardPasswordKeys, passphrase: bytes) -> bytes:
    """The key file's bytes: the keys encrypted (scrypt N=2^15, r=8, p=1 -> AES-256-GCM).

    :param passphrase: at least 12 bytes.
    :raises ValueError: a short passphrase.
    """
    if len(passphrase) < _MIN_PASSPHRASE:
        raise ValueError(f"passphrase must be at least {_MIN_PASSPHRASE} bytes")
    salt = os.urandom(_SALT_BYTES)
    nonce = os.urandom(_NONCE_BYTES)
    plain = json.dumps({"current": keys.current, "format1": keys.format1,
                        "keys": {str(v): k.hex() for v, k in keys.keys.items()}})
    sealed = AESGCM(_kek(passphrase, salt)).encrypt(nonce, plain.encode(), KEY_FILE_FORMAT.encode())
    doc = {"format": KEY_FILE_FORMAT, "salt": salt.hex(), "nonce": nonce.hex(), "ciphertext": sealed.hex()}
    return json.dumps(doc).encode()


def save_password_keys(path: Path, keys: CardPasswordKeys, passphrase: bytes) -> None:
    """Write the keys encrypted (:func:`seal_password_keys`), mode 0600.

    :param passphrase: at least 12 bytes.
    :raises ValueError: a short passphrase.
    """
    data = seal_password_keys(keys, passphrase)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_password_keys(path: Path, passphrase: bytes) -> CardPasswordKeys:
    """Read and decrypt a key file written by :func:`save_password_keys`.

    :raises PasswordKeyFileError: not a key file of this format, a wrong passphrase or damage.
    :raises OSError: the file cannot be read.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.get("format") != KEY_FILE_FORMAT:
            raise PasswordKeyFileError(f"{path}: not a {KEY_FILE_FORMAT} file")
        salt, nonce, sealed = (bytes.fromhex(doc[k]) for k in ("salt", "nonce", "ciphertext"))
        plain = json.loads(AESGCM(_kek(passphrase, salt)).decrypt(nonce, sealed, KEY_FILE_FORMAT.encode()))
        format1 = plain.get("format1")
        return CardPasswordKeys({int(v): bytes.fromhex(k) for v, k in plain["keys"].items()}, int(plain["current"]),
                                None if format1 is None else int(format1))
    except InvalidTag as exc:
        raise PasswordKeyFileError(f"{path}: wrong passphrase or damaged file") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PasswordKeyFileError(f"{path}: malformed key file ({exc})") from exc


def _kek(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)
