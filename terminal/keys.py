"""The counter's own key: an encrypted PKCS#8 file or a PKCS#11 token, and where its secret comes from.

Selected by the profile's ``[key]`` table (docs/terminal.md, docs/operations.md
"Terminal keys on a token"):

- ``store = "file"`` (default): Ed25519 in an encrypted PKCS#8 file at ``paths.key``;
  the passphrase comes from ``$HUMA_KEY_PASSPHRASE``, else the systemd credential
  ``huma-key-passphrase`` (``$CREDENTIALS_DIRECTORY``, filled by ``LoadCredentialEncrypted=``,
  which a TPM can seal), else (``huma terminal init`` only) a prompt. A passphrase file is an
  explicit choice (``paths.passphrase``) and is refused when it sits in the key's directory
  (one copy of that directory would carry both) or when others may read it.
- ``store = "pkcs11"``: the key pair is generated on the token and never leaves it; the
  user PIN comes from ``$HUMA_TOKEN_PIN``, else the credential ``huma-token-pin``, else a prompt
  (init only).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cardlib.keys.signer import PublicKey, Signer
from cardlib.records.access import CardPasswordKeys
from cardlib.records.cose import Algorithm
from firmware_config.models import TerminalProfile
from terminal.errors import TerminalProfileError

if TYPE_CHECKING:
    from cardlib.keys.pkcs11 import Pkcs11Token

#: Environment variable and systemd credential name of the file key's passphrase.
PASSPHRASE_ENV = "HUMA_KEY_PASSPHRASE"
PASSPHRASE_CREDENTIAL = "huma-key-passphrase"
#: Environment variable and systemd credential name of the token's user PIN.
PIN_ENV = "HUMA_TOKEN_PIN"
PIN_CREDENTIAL = "huma-token-pin"
#: Environment variable and systemd credential name of the card-password key file's passphrase.
CARD_KEYS_PASSPHRASE_ENV = "HUMA_CARD_KEYS_PASSPHRASE"
CARD_KEYS_PASSPHRASE_CREDENTIAL = "huma-card-keys-passphrase"
#: Longest secret read from a file or credential, bytes (a FIFO or device is never read without bound).
SECRET_MAX = 4096


def _credential(name: str) -> bytes | None:
    """A systemd credential (systemd.exec(5) "Credentials"): ``$CREDENTIALS_DIRECTORY/<name>``, or None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        with path.open("rb") as fh:
            return fh.read(SECRET_MAX).split(b"\n", 1)[0].rstrip(b"\r")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TerminalProfileError(f"systemd credential {path}: {exc.strerror}") from exc


def _explicit_file(path: Path, key_path: Path | None) -> bytes:
    """The first line of an explicitly configured secret file, refused beside the key or readable by others.

    :raises TerminalProfileError: unreadable, in the key's directory, not a regular file, or group/other-readable.
    """
    if key_path is not None and path.resolve().parent == key_path.resolve().parent:
        raise TerminalProfileError(
            f"passphrase file {path} sits beside the key {key_path}: one copy of that directory would carry "
            f"both; use ${PASSPHRASE_ENV}, the systemd credential {PASSPHRASE_CREDENTIAL}, or a file elsewhere")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise TerminalProfileError(f"passphrase file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise TerminalProfileError(f"passphrase file {path} is readable by others "
                                       f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
        with path.open("rb") as fh:
            data = fh.read(SECRET_MAX)
    except OSError as exc:
        raise TerminalProfileError(f"passphrase file {path}: {exc.strerror}") from exc
    return data.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r")


def terminal_secret(profile: TerminalProfile, prompt: Callable[[], bytes] | None = None) -> bytes:
    """The secret that unlocks the profile's key: the file key's passphrase or the token's PIN.

    Order: the explicit ``paths.passphrase`` file (file keys only), the environment
    variable, the systemd credential, then ``prompt`` (when given: ``huma terminal init``).

    :raises TerminalProfileError: none of them gives one (the message names them), or the file is refused.
    """
    pkcs11 = profile.key_store.store == "pkcs11"
    env, credential = (PIN_ENV, PIN_CREDENTIAL) if pkcs11 else (PASSPHRASE_ENV, PASSPHRASE_CREDENTIAL)
    if profile.passphrase_path is not None and not pkcs11:
        return _explicit_file(profile.passphrase_path, profile.key_path)
    value = os.environ.get(env)
    if value is not None:
        return value.encode()
    secret = _credential(credential)
    if secret is not None:
        return secret
    if prompt is not None:
        return prompt()
    what = "token PIN" if pkcs11 else "key passphrase"
    raise TerminalProfileError(f"no {what}: set ${env} or the systemd credential {credential} "
                               "(LoadCredentialEncrypted=, docs/operations.md)"
                               + ("" if pkcs11 else ", or name a file as paths.passphrase"))


def load_card_passwords(profile: TerminalProfile) -> CardPasswordKeys | None:
    """The provincial card-password keys the profile names (``paths.card_keys``), or None when it names none.

    The passphrase comes the way the terminal key's does: the explicit ``paths.card_keys_passphrase``
    file (0600, not beside the key file), else ``$HUMA_CARD_KEYS_PASSPHRASE``, else the systemd
    credential ``huma-card-keys-passphrase`` (``LoadCredentialEncrypted=``).

    :raises TerminalProfileError: no passphrase from any source, a refused passphrase file, an unreadable key file.
    :raises cardlib.records.access.PasswordKeyFileError: wrong passphrase, or not a key file.
    """
    path = profile.card_keys_path
    if path is None:
        return None
    from cardlib.records.access import load_password_keys

    if profile.card_keys_passphrase_path is not None:
        secret: bytes | None = _explicit_file(profile.card_keys_passphrase_path, path)
    else:
        value = os.environ.get(CARD_KEYS_PASSPHRASE_ENV)
        secret = value.encode() if value is not None else _credential(CARD_KEYS_PASSPHRASE_CREDENTIAL)
    if secret is None:
        raise TerminalProfileError(f"no passphrase for the card-password keys {path}: set ${CARD_KEYS_PASSPHRASE_ENV}, "
                                   f"the systemd credential {CARD_KEYS_PASSPHRASE_CREDENTIAL}, "
                                   "or name a file as paths.card_keys_passphrase")
    try:
        return load_password_keys(path, secret)
    except OSError as exc:
        raise TerminalProfileError(f"card-password keys {path}: {exc.strerror}") from exc


def _token(profile: TerminalProfile, pin: bytes) -> Pkcs11Token:
    from cardlib.keys.pkcs11 import Pkcs11Token

    ks = profile.key_store
    if not ks.module or not ks.token:
        raise TerminalProfileError(f"{profile.source}: [key] store = \"pkcs11\" needs module and token")
    return Pkcs11Token(ks.module, ks.token, pin.decode())


class TokenSigner(Signer):
    """The counter's key on a PKCS#11 token, with the logged-in session it needs (:meth:`close` logs out)."""

    def __init__(self, token: Pkcs11Token, signer: Signer) -> None:
        self._token = token
        self._signer = signer

    @property
    def public_key(self) -> PublicKey:
        return self._signer.public_key

    @property
    def alg(self) -> Algorithm:
        return self._signer.alg

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)

    def close(self) -> None:
        """Close the token session (the daemon holds it until it stops)."""
        self._token.close()

    def __repr__(self) -> str:
        return f"TokenSigner({self._signer!r})"


def load_terminal_signer(profile: TerminalProfile) -> Signer:
    """The terminal key the profile names, unlocked with :func:`terminal_secret` (no prompt).

    :raises TerminalProfileError: no secret available, or a refused passphrase file.
    :raises cardlib.keys.errors.KeysError: wrong passphrase or PIN, unreadable key, no key on the token.
    """
    secret = terminal_secret(profile)
    if profile.key_store.store == "pkcs11":
        token = _token(profile, secret)
        try:
            return TokenSigner(token, token.signer_by_label(profile.key_store.label))
        except BaseException:
            token.close()
            raise
    from cardlib.keys.pkcs8 import load_signer

    return load_signer(profile.key_path, secret)


def create_token_key(profile: TerminalProfile, pin: bytes) -> tuple[bytes, bytes]:
    """Generate the terminal key pair on the profile's PKCS#11 token (never overwriting one) and its CSR.

    :returns: (the key's 4-byte kid, the PKCS#10 CSR PEM naming the terminal id, signed on the token).
    :raises cardlib.keys.errors.KeysError: the label is taken already, wrong PIN, or the token refuses.
    """
    from cardlib.keys.errors import Pkcs11Error
    from cardlib.keys.terminal_ca import terminal_csr_with

    with _token(profile, pin) as token:
        label = profile.key_store.label
        if token.has_label(label):
            raise Pkcs11Error(f"token {token.token_label!r} already holds a key labelled {label!r}; "
                              "a new key needs a new label (or delete the old one with the token's tools)")
        signer = token.generate(Algorithm.ES256 if profile.key_store.alg == "ES256" else Algorithm.EDDSA, label)
        return signer.kid, terminal_csr_with(signer, profile.terminal_id)
