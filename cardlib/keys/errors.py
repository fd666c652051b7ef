"""Errors of :mod:`cardlib.keys`: key hierarchy, key storage and the terminal CA.

All derive from :class:`KeysError`, itself a :class:`cardlib.errors.CardlibError`,
so the ``huma`` CLI turns them into one-line messages at its edge.
"""

from __future__ import annotations

from cardlib.errors import CardlibError


class KeysError(CardlibError):
    """Root of every key-management error."""


class WrongPassphraseError(KeysError):
    """The passphrase does not decrypt the encrypted PKCS#8 key file (or none was given)."""


class WeakPassphraseError(KeysError):
    """A new key would be encrypted under a passphrase shorter than the minimum."""


class KeyNotFoundError(KeysError):
    """No key with that kid (or no active key for that role) in the keystore or token."""


class KeyStatusError(KeysError):
    """The key exists but its status (retired, revoked, expired) forbids this use."""


class KeystoreError(KeysError):
    """The keystore directory is missing, already initialised, or inconsistent."""


class ManifestSignatureError(KeystoreError):
    """The keystore manifest's COSE_Sign1 does not verify under the (pinned) root key."""


class KeyMismatchError(KeystoreError):
    """A private key file or token object does not match the public key in the manifest."""


class UnsupportedAlgorithmError(KeysError):
    """The algorithm or key type is not one of ours (Ed25519, ECDSA P-256)."""


class Pkcs11Error(KeysError):
    """The PKCS#11 module or token refused an operation (wrong PIN, no token, no mechanism)."""


class CertificateError(KeysError):
    """A CSR or an X.509 certificate is malformed, badly signed, expired or not ours."""


class CsrError(CertificateError):
    """A terminal's PKCS#10 CSR is refused (RFC 2986).

    :ivar reason: machine-readable cause, one of ``undecodable``, ``bad_signature``
        (no proof of possession), ``unsupported_key`` (not Ed25519 / P-256),
        ``subject_mismatch`` (CN is not the terminal id), ``bad_terminal_id``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InputFileError(KeysError):
    """A file given to a key ceremony command (deny list, terminal certificate) is malformed.

    :ivar path: the file. :ivar line: 1-based line, or None when not tied to one line.
    """

    def __init__(self, path: object, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
