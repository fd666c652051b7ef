"""The keystore: a directory of keys plus a manifest signed by the root key.

Hierarchy (docs/design.md §Keys and trust)::

    root (offline) ──┬── issuer keys        sign identity records
                     ├── terminal CA        certifies terminal keys (X.509)
                     ├── bundle key         signs the trust bundle
                     └── technician keys    sign provisioning sessions / issuance files

Directory layout::

    manifest.cose                  COSE_Sign1 by root over the CBOR manifest
    keys/<role>-<kid>.p8.pem       encrypted PKCS#8 (RFC 5958) private keys, mode 0600
    certs/<kid>.crt.pem            X.509: root (self-signed) and terminal CA (signed by root)
    endorsements/<kid>.cose        COSE_Sign1 by root over one key's public entry

The manifest lists every key ever made (never deleted) with kid, role, alg, public key,
status (active / retired = verify-only / revoked, with the time), created and not-after
(UNIX seconds, UTC). Every change is signed by the root, so anyone holding the root public
key (pinned by kid) can check the whole directory; a private key that does not match its
manifest entry is refused. Keys on a PKCS#11 token are listed the same way with
``backend = "pkcs11"`` and the token label as location.

The endorsement of a key (:func:`verify_endorsement`) is what a terminal or the server needs
to trust a bundle key or a technician key given only the pinned root.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from cardlib.fsutil import atomic_write
from cardlib.keys.errors import (
    KeyMismatchError,
    KeyNotFoundError,
    KeyStatusError,
    KeystoreError,
    ManifestSignatureError,
)
from cardlib.keys.pkcs8 import load_signer, save_private_key
from cardlib.keys.signer import (
    PrivateKey,
    PublicKey,
    Signer,
    SoftwareSigner,
    algorithm_of,
    cose_key,
    derive_kid,
    generate_private_key,
    sign1_with,
    spki_der,
)
from cardlib.records.cose import Algorithm, CoseError, verify1

_log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
MANIFEST_AAD = b"huma-betang/keystore-manifest/v1"
"""COSE external_aad of the manifest: a context string so no other signed object fits."""
ENDORSEMENT_AAD = b"huma-betang/key-endorsement/v1"
"""COSE external_aad of a key endorsement."""
REVOCATION_AAD = b"huma-betang/key-revocations/v1"
"""COSE external_aad of the root's list of revoked bundle keys."""

DEFAULT_ENDORSEMENT_DAYS = 60
"""Days a bundle key's endorsement is valid (docs/security.md, "Trust bundle and its keys")."""
MAX_ENDORSEMENT_DAYS = 90
"""Longest endorsement of a bundle key counters accept, in days: a stolen bundle key
signs nothing a counter installs once its endorsement ran out."""

_DAY = 86400
DEFAULT_VALIDITY_DAYS = {
    "root": 20 * 365,
    "issuer": 5 * 365,
    "terminal-ca": 10 * 365,
    "bundle": 3 * 365,
    "technician": 365,
}
"""Default not-after per role, in days."""

_YEAR = 366  # days: a bound in years holds whatever leap days the period spans
MAX_VALIDITY_DAYS = {
    "root": 20 * _YEAR,
    "issuer": 5 * _YEAR,
    "terminal-ca": 10 * _YEAR,
    "bundle": 5 * _YEAR,
    "technician": 2 * _YEAR,
}
"""Longest validity per role, in days (docs/security.md, "Key validity"): each at or above its default.

A key valid for millennia is never replaced, and a ``not_after`` past year 9999 cannot be
shown or written into an X.509 certificate (RFC 5280 §4.1.2.5 ends at 9999-12-31)."""


def check_validity_days(role: str, days: int) -> int:
    """``days`` if a ``role`` key may be valid that long (1..:data:`MAX_VALIDITY_DAYS`).

    :param role: a :class:`Role` value (``"root"``, ``"issuer"``...).
    :raises KeystoreError: outside the range, naming the role's maximum.
    """
    limit = MAX_VALIDITY_DAYS[role]
    if not 1 <= days <= limit:
        raise KeystoreError(f"validity of a {role} key must be 1 to {limit} days ({limit // _YEAR} years), "
                            f"not {days}")
    return days


class Role(str, enum.Enum):
    """What a key may sign."""

    ROOT = "root"
    ISSUER = "issuer"
    TERMINAL_CA = "terminal-ca"
    BUNDLE = "bundle"
    TECHNICIAN = "technician"


class KeyStatus(str, enum.Enum):
    """Lifecycle of a key (docs/design.md §Keys and trust)."""

    ACTIVE = "active"
    RETIRED = "retired"  # verify-only: records it signed stay valid
    REVOKED = "revoked"  # compromised: records it signed after status_time are suspect


class Backend(str, enum.Enum):
    """Where the private key lives."""

    FILE = "file"
    PKCS11 = "pkcs11"


@dataclass(frozen=True)
class KeyEntry:
    """One key's public record in the manifest.

    :ivar kid: 4 bytes, :func:`cardlib.keys.signer.derive_kid`.
    :ivar created: UNIX seconds (UTC); ``not_after`` likewise.
    :ivar status_time: UNIX seconds of the last status change (None while active).
    :ivar location: file name under ``keys/`` (FILE) or token label (PKCS11).
    :ivar name: free label, e.g. the technician's staff id; "" when unused.
    """

    kid: bytes
    role: Role
    alg: Algorithm
    public_key: PublicKey
    status: KeyStatus
    status_time: int | None
    created: int
    not_after: int
    backend: Backend
    location: str
    name: str = ""

    def to_cbor(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "role": self.role.value,
            "alg": int(self.alg),
            "spki": spki_der(self.public_key),
            "status": self.status.value,
            "status_time": self.status_time,
            "created": self.created,
            "not_after": self.not_after,
            "backend": self.backend.value,
            "location": self.location,
            "name": self.name,
        }

    @classmethod
    def from_cbor(cls, m: dict[str, Any]) -> KeyEntry:
        try:
            pub = serialization.load_der_public_key(m["spki"])
            entry = cls(
                kid=m["kid"],
                role=Role(m["role"]),
                alg=Algorithm(m["alg"]),
                public_key=pub,  # type: ignore[arg-type]
                status=KeyStatus(m["status"]),
                status_time=m["status_time"],
                created=m["created"],
                not_after=m["not_after"],
                backend=Backend(m["backend"]),
                location=m["location"],
                name=m.get("name", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeystoreError(f"malformed manifest entry: {exc!r}") from exc
        if derive_kid(entry.public_key) != entry.kid:
            raise KeystoreError(f"manifest entry {entry.kid.hex()}: kid does not match its key")
        return entry

    def usable_for_signing(self, now: int) -> None:
        """Check this key may sign now.

        :raises KeyStatusError: when it is retired, revoked or past not_after.
        """
        if self.status is not KeyStatus.ACTIVE:
            raise KeyStatusError(f"key {self.kid.hex()} ({self.role.value}) is {self.status.value}")
        if now > self.not_after:
            raise KeyStatusError(f"key {self.kid.hex()} ({self.role.value}) expired")


def _now() -> int:
    return int(time.time())


def endorse(root: Signer, entry: KeyEntry, *, valid_from: int | None = None, valid_until: int | None = None,
            serial: int | None = None) -> bytes:
    """Root-signed statement about one key: kid, role, alg, public key, validity, name.

    :param valid_from: start of the endorsement's own validity, UNIX seconds (bundle keys).
    :param valid_until: its end, UNIX seconds; counters install no bundle signed under an
        endorsement they hold to be over (:func:`read_endorsement`).
    :param serial: the manifest serial the endorsement was made at (newer = larger).
    :returns: a COSE_Sign1 (external_aad :data:`ENDORSEMENT_AAD`) whose payload is
        the entry's CBOR map without storage details, plus the three fields when given.
    """
    payload: dict[str, Any] = {k: v for k, v in entry.to_cbor().items() if k not in ("backend", "location")}
    for name, value in (("valid_from", valid_from), ("valid_until", valid_until), ("serial", serial)):
        if value is not None:
            payload[name] = value
    return sign1_with(root, cbor2.dumps(payload), ENDORSEMENT_AAD)


@dataclass(frozen=True)
class Endorsement:
    """A verified endorsement: the key and the period the root vouches for it.

    :ivar valid_from, valid_until: UNIX seconds; None on an endorsement without a period
        (made before endorsements expired; counters refuse it for bundle keys).
    :ivar serial: manifest serial at endorsement time (0 when absent).
    """

    entry: KeyEntry
    valid_from: int | None
    valid_until: int | None
    serial: int


def read_endorsement(message: bytes, root_public_key: PublicKey, role: Role | None = None) -> Endorsement:
    """Verify a key endorsement under the pinned root; the key and the endorsement's period.

    :raises ManifestSignatureError: bad signature or not signed by this root.
    :raises KeystoreError: malformed payload, wrong role, or a period that is not two
        integers with ``valid_from < valid_until``.
    """
    root = cose_key(root_public_key)
    try:
        verified = verify1(message, {root.kid: root}, ENDORSEMENT_AAD)
    except CoseError as exc:
        raise ManifestSignatureError(f"key endorsement does not verify under root {root.kid.hex()}: {exc}") from exc
    try:
        m = cbor2.loads(verified.payload)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise KeystoreError(f"endorsement payload is not CBOR: {exc}") from exc
    if not isinstance(m, dict):
        raise KeystoreError("endorsement payload is not a map")
    entry = KeyEntry.from_cbor({**m, "backend": Backend.FILE.value, "location": ""})
    if role is not None and entry.role is not role:
        raise KeystoreError(f"endorsed key {entry.kid.hex()} is a {entry.role.value} key, not {role.value}")
    start, end, serial = m.get("valid_from"), m.get("valid_until"), m.get("serial", 0)
    if (start is None) != (end is None) or not isinstance(serial, int) or isinstance(serial, bool):
        raise KeystoreError(f"endorsement of {entry.kid.hex()}: malformed period or serial")
    if start is not None and not (type(start) is int and type(end) is int and start < end):
        raise KeystoreError(f"endorsement of {entry.kid.hex()}: period {start!r}..{end!r} is not valid")
    return Endorsement(entry, start, end, serial)


@dataclass(frozen=True)
class RevocationList:
    """The root's list of revoked bundle keys (kids), with a serial that only grows.

    :ivar serial: the manifest serial it was signed at.
    :ivar issued_at: UNIX seconds.
    :ivar revoked: 4-byte kids.
    """

    serial: int
    issued_at: int
    revoked: frozenset[bytes]


def sign_revocations(root: Signer, serial: int, issued_at: int, revoked: frozenset[bytes]) -> bytes:
    """Root-signed revocation list (COSE_Sign1, external_aad :data:`REVOCATION_AAD`).

    Payload: CBOR map ``{"serial": uint, "issued_at": uint, "revoked": [bstr(4), ...]}`` (kids sorted).
    """
    payload = {"serial": serial, "issued_at": issued_at, "revoked": sorted(revoked)}
    return sign1_with(root, cbor2.dumps(payload), REVOCATION_AAD)


def verify_revocations(message: bytes, root_public_key: PublicKey) -> RevocationList:
    """Verify a revocation list under the pinned root.

    :raises ManifestSignatureError: not signed by this root.
    :raises KeystoreError: malformed payload.
    """
    root = cose_key(root_public_key)
    try:
        verified = verify1(message, {root.kid: root}, REVOCATION_AAD)
    except CoseError as exc:
        raise ManifestSignatureError(f"revocation list does not verify under root {root.kid.hex()}: {exc}") from exc
    try:
        m = cbor2.loads(verified.payload)
        serial, issued_at, kids = m["serial"], m["issued_at"], m["revoked"]
        if not (type(serial) is int and type(issued_at) is int and serial >= 0
                and all(isinstance(k, bytes) and len(k) == 4 for k in kids)):
            raise TypeError("serial/issued_at must be uints and kids 4 bytes")
    except (cbor2.CBORDecodeError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise KeystoreError(f"malformed revocation list: {exc!r}") from exc
    return RevocationList(serial, issued_at, frozenset(kids))


def verify_endorsement(message: bytes, root_public_key: PublicKey, role: Role | None = None) -> KeyEntry:
    """Verify a key endorsement under the pinned root and return the endorsed key.

    :param role: when given, the endorsed key must have this role.
    :raises ManifestSignatureError: bad signature or not signed by this root.
    :raises KeystoreError: malformed payload or wrong role.
    """
    return read_endorsement(message, root_public_key, role).entry


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kartu Huma Betang"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate_builder(
    subject: x509.Name, issuer: x509.Name, subject_key: PublicKey,
    not_before: dt.datetime, not_after: dt.datetime, *, ca: bool, path_length: int | None = None,
) -> x509.CertificateBuilder:
    """The start every certificate of the key hierarchy shares (root, terminal CA, terminal, receipt key).

    Names, key, a random serial, the validity, then basicConstraints and keyUsage, both critical
    (RFC 5280 §4.2.1.9, §4.2.1.3), in that order: a CA (``ca=True``, ``path_length`` as given)
    may sign certificates and CRLs only (keyCertSign, cRLSign); an end entity (``path_length``
    ignored) may sign data only (digitalSignature). The caller adds the key identifiers and any
    extended key usage, then signs.

    :param not_before: / :param not_after: aware datetimes (whole seconds are encoded).
    :returns: the unsigned builder.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )


def _ca_certificate(
    subject_key: PublicKey, subject_cn: str, issuer: SoftwareSigner, issuer_cn: str,
    created: int, not_after: int, path_length: int,
) -> x509.Certificate:
    """X.509 CA certificate (RFC 5280 §4.2.1.9 basicConstraints CA, keyCertSign)."""
    builder = (
        _certificate_builder(
            _name(subject_cn), _name(issuer_cn), subject_key,
            dt.datetime.fromtimestamp(created, dt.UTC), dt.datetime.fromtimestamp(not_after, dt.UTC),
            ca=True, path_length=path_length,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key), critical=False
        )
    )
    return builder.sign(issuer.private_key, _hash_for(issuer.private_key))


def _hash_for(key: PrivateKey | PublicKey) -> hashes.SHA256 | None:
    """The digest X.509 signing needs: none for Ed25519 (RFC 8410 §6), SHA-256 for ECDSA P-256.

    :raises UnsupportedAlgorithmError: any other key.
    """
    return None if algorithm_of(key) == Algorithm.EDDSA else hashes.SHA256()


def root_common_name(kid: bytes) -> str:
    return f"Huma Betang root {kid.hex()}"


def terminal_ca_common_name(kid: bytes) -> str:
    return f"Huma Betang terminal CA {kid.hex()}"


class KeyStore:
    """A verified view of a keystore directory. Build with :meth:`init` or :meth:`open`."""

    def __init__(self, path: Path, entries: list[KeyEntry], serial: int, root_kid: bytes) -> None:
        self.path = path
        self._entries = entries
        self.serial = serial
        self.root_kid = root_kid

    # ------------------------------------------------------------------ creation / loading

    @classmethod
    def init(
        cls,
        path: Path,
        root_passphrase: bytes,
        *,
        alg: Algorithm = Algorithm.EDDSA,
        validity_days: int | None = None,
        now: int | None = None,
    ) -> KeyStore:
        """Create a new keystore with a fresh root key (file backend, encrypted).

        The root key must then be moved offline (see docs/keys-and-provisioning.md).

        :param path: an empty or missing directory.
        :param validity_days: the root's validity (default :data:`DEFAULT_VALIDITY_DAYS`).
        :raises KeystoreError: when ``path`` already holds a keystore, or ``validity_days``
            exceeds :data:`MAX_VALIDITY_DAYS` (nothing is created).
        :raises WeakPassphraseError: when the passphrase is too short.
        """
        now = _now() if now is None else now
        days = check_validity_days("root", validity_days if validity_days is not None
                                   else DEFAULT_VALIDITY_DAYS["root"])
        if (path / "manifest.cose").exists():
            raise KeystoreError(f"{path} already holds a keystore")
        for sub in ("keys", "certs", "endorsements"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        key = generate_private_key(alg)
        signer = SoftwareSigner(key)
        fname = f"root-{signer.kid.hex()}.p8.pem"
        save_private_key(path / "keys" / fname, key, root_passphrase)
        entry = KeyEntry(
            kid=signer.kid, role=Role.ROOT, alg=signer.alg, public_key=signer.public_key,
            status=KeyStatus.ACTIVE, status_time=None, created=now,
            not_after=now + days * _DAY, backend=Backend.FILE, location=fname,
        )
        cert = _ca_certificate(
            signer.public_key, root_common_name(signer.kid), signer, root_common_name(signer.kid),
            now, entry.not_after, path_length=1,
        )
        atomic_write(path / "certs" / f"{signer.kid.hex()}.crt.pem", cert.public_bytes(serialization.Encoding.PEM))
        store = cls(path, [entry], 0, signer.kid)
        store._save(signer, now)
        _log.info("initialised keystore %s with root kid %s", path, signer.kid.hex())
        return store

    @classmethod
    def open(cls, path: Path, *, pinned_root_kid: bytes | None = None) -> KeyStore:
        """Load and verify a keystore.

        :param pinned_root_kid: when given, the manifest must be signed by this root.
        :raises KeystoreError: missing or malformed manifest.
        :raises ManifestSignatureError: the manifest signature does not verify or is
            signed by another root than the pinned one.
        """
        try:
            message = (path / "manifest.cose").read_bytes()
        except OSError as exc:
            raise KeystoreError(f"no keystore at {path}: {exc.strerror}") from exc
        try:
            tag = cbor2.loads(message)
            unverified = cbor2.loads(tag.value[2])
            entries = [KeyEntry.from_cbor(m) for m in unverified["keys"]]
            roots = [e for e in entries if e.role is Role.ROOT]
        except (cbor2.CBORDecodeError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise KeystoreError(f"malformed manifest in {path}: {exc!r}") from exc
        if len(roots) != 1:
            raise KeystoreError(f"manifest must list exactly one root key, found {len(roots)}")
        root = roots[0]
        if pinned_root_kid is not None and root.kid != pinned_root_kid:
            raise ManifestSignatureError(
                f"manifest names root {root.kid.hex()}, expected pinned root {pinned_root_kid.hex()}"
            )
        key = cose_key(root.public_key)
        try:
            verified = verify1(message, {key.kid: key}, MANIFEST_AAD)
        except CoseError as exc:
            raise ManifestSignatureError(f"manifest signature does not verify: {exc}") from exc
        m = cbor2.loads(verified.payload)
        if m.get("format") != MANIFEST_FORMAT:
            raise KeystoreError(f"unsupported manifest format {m.get('format')!r}")
        return cls(path, [KeyEntry.from_cbor(e) for e in m["keys"]], m["serial"], root.kid)

    def _save(self, root: Signer, now: int) -> None:
        if root.kid != self.root_kid:
            raise KeyMismatchError(f"signer {root.kid.hex()} is not this keystore's root {self.root_kid.hex()}")
        self.serial += 1
        payload = {
            "format": MANIFEST_FORMAT,
            "serial": self.serial,
            "updated": now,
            "keys": [e.to_cbor() for e in self._entries],
        }
        atomic_write(self.path / "manifest.cose", sign1_with(root, cbor2.dumps(payload), MANIFEST_AAD))

    # ------------------------------------------------------------------ queries

    @property
    def entries(self) -> list[KeyEntry]:
        """All keys, oldest first."""
        return list(self._entries)

    def entry(self, kid: bytes) -> KeyEntry:
        """:raises KeyNotFoundError: no key with this kid."""
        for e in self._entries:
            if e.kid == kid:
                return e
        raise KeyNotFoundError(f"no key with kid {kid.hex()} in {self.path}")

    def find(self, kid_prefix_hex: str) -> KeyEntry:
        """Look a key up by its kid in hex (the CLI's way of naming keys).

        :raises KeyNotFoundError: no such kid.
        """
        try:
            return self.entry(bytes.fromhex(kid_prefix_hex))
        except ValueError as exc:
            raise KeyNotFoundError(f"{kid_prefix_hex!r} is not a hex kid") from exc

    def active(self, role: Role, name: str | None = None) -> KeyEntry:
        """The newest active key of ``role`` (and ``name``, for technicians).

        :raises KeyNotFoundError: when there is none.
        """
        for e in reversed(self._entries):
            if e.role is role and e.status is KeyStatus.ACTIVE and (name is None or e.name == name):
                return e
        who = f" named {name!r}" if name else ""
        raise KeyNotFoundError(f"no active {role.value} key{who} in {self.path}")

    def certificate(self, kid: bytes) -> x509.Certificate:
        """The X.509 certificate of the root or a terminal CA key.

        :raises KeyNotFoundError: when there is none.
        """
        try:
            return x509.load_pem_x509_certificate((self.path / "certs" / f"{kid.hex()}.crt.pem").read_bytes())
        except OSError as exc:
            raise KeyNotFoundError(f"no certificate for kid {kid.hex()}") from exc

    def endorsement(self, kid: bytes) -> bytes:
        """The root's endorsement of key ``kid`` (see :func:`endorse`).

        :raises KeyNotFoundError: when there is none (the root has none).
        """
        try:
            return (self.path / "endorsements" / f"{kid.hex()}.cose").read_bytes()
        except OSError as exc:
            raise KeyNotFoundError(f"no endorsement for kid {kid.hex()}") from exc

    # ------------------------------------------------------------------ private keys

    def signer(
        self,
        kid: bytes,
        passphrase: bytes | None = None,
        *,
        token: Any = None,
        now: int | None = None,
        allow_inactive: bool = False,
    ) -> Signer:
        """Load the private key ``kid`` as a :class:`Signer`.

        :param passphrase: for FILE keys.
        :param token: an open :class:`cardlib.keys.pkcs11.Pkcs11Token` for PKCS11 keys.
        :param allow_inactive: skip the status/expiry check (only for the root's own
            manifest updates, which must work even after the root's not-after).
        :raises WrongPassphraseError: wrong or missing passphrase.
        :raises KeyStatusError: the key is retired, revoked or expired.
        :raises KeyMismatchError: the stored private key does not match the manifest.
        :raises KeystoreError: a PKCS#11 key was requested without a token.
        """
        entry = self.entry(kid)
        if not allow_inactive:
            entry.usable_for_signing(_now() if now is None else now)
        signer: Signer
        if entry.backend is Backend.FILE:
            signer = load_signer(self.path / "keys" / entry.location, passphrase)
        else:
            if token is None:
                raise KeystoreError(f"key {kid.hex()} is on PKCS#11 token {entry.location!r}: open the token")
            signer = token.signer(kid)
        if signer.kid != kid:
            raise KeyMismatchError(f"stored private key for {kid.hex()} belongs to {signer.kid.hex()}")
        return signer

    def root_signer(self, passphrase: bytes) -> SoftwareSigner:
        """The root key (file backend), for root ceremonies.

        :raises WrongPassphraseError: wrong passphrase.
        """
        signer = self.signer(self.root_kid, passphrase, allow_inactive=True)
        assert isinstance(signer, SoftwareSigner)
        return signer

    # ------------------------------------------------------------------ root ceremonies

    def issue(
        self,
        role: Role,
        root: Signer,
        *,
        passphrase: bytes | None = None,
        token: Any = None,
        alg: Algorithm = Algorithm.EDDSA,
        validity_days: int | None = None,
        name: str = "",
        now: int | None = None,
    ) -> KeyEntry:
        """Make a new key of ``role`` below the root and list it in the manifest.

        FILE backend (encrypted PKCS#8, ``passphrase``) unless ``token`` is given
        (generated on the PKCS#11 token). The terminal CA needs a FILE key: X.509
        signing in ``cryptography`` takes an in-memory key.

        :raises KeystoreError: root role requested, a PKCS#11 terminal CA, a kid
            collision with an existing key, or ``validity_days`` outside 1..:data:`MAX_VALIDITY_DAYS`.
        :raises WeakPassphraseError: passphrase too short.
        """
        now = _now() if now is None else now
        if role is Role.ROOT:
            raise KeystoreError("the root is made by `keys init`, not issued")
        if role is Role.TERMINAL_CA and token is not None:
            raise KeystoreError("the terminal CA signs X.509 and needs a file key")
        days = check_validity_days(role.value, validity_days if validity_days is not None
                                   else DEFAULT_VALIDITY_DAYS[role.value])
        signer: Signer
        if token is not None:
            signer = token.generate(alg, label=f"huma-{role.value}")
            backend, location = Backend.PKCS11, token.token_label
        else:
            key = generate_private_key(alg)
            signer = SoftwareSigner(key)
            if any(e.kid == signer.kid for e in self._entries):
                raise KeystoreError(f"kid collision on {signer.kid.hex()}; issue again")
            location = f"{role.value}-{signer.kid.hex()}.p8.pem"
            save_private_key(self.path / "keys" / location, key, passphrase or b"")
            backend = Backend.FILE
        if any(e.kid == signer.kid for e in self._entries):
            raise KeystoreError(f"kid collision on {signer.kid.hex()}; issue again")
        entry = KeyEntry(
            kid=signer.kid, role=role, alg=signer.alg, public_key=signer.public_key,
            status=KeyStatus.ACTIVE, status_time=None, created=now, not_after=now + days * _DAY,
            backend=backend, location=location, name=name,
        )
        if role is Role.TERMINAL_CA:
            if not isinstance(root, SoftwareSigner):
                raise KeystoreError("certifying the terminal CA needs the root as a file key")
            cert = _ca_certificate(
                signer.public_key, terminal_ca_common_name(signer.kid), root,
                root_common_name(root.kid), now, entry.not_after, path_length=0,
            )
            atomic_write(self.path / "certs" / f"{signer.kid.hex()}.crt.pem",
                         cert.public_bytes(serialization.Encoding.PEM))
        self._entries.append(entry)
        self._write_endorsement(root, entry, now, DEFAULT_ENDORSEMENT_DAYS)
        self._save(root, now)
        _log.info("issued %s key kid=%s (%s)", role.value, entry.kid.hex(), backend.value)
        return entry

    def _write_endorsement(self, root: Signer, entry: KeyEntry, now: int, days: int) -> None:
        """Write ``endorsements/<kid>.cose``; a bundle key's carries a period of ``days`` from ``now``."""
        if entry.role is Role.BUNDLE:
            until = min(now + days * _DAY, entry.not_after)
            if until <= now:
                raise KeyStatusError(f"bundle key {entry.kid.hex()} expired: nothing left to endorse")
            message = endorse(root, entry, valid_from=now, valid_until=until, serial=self.serial + 1)
        else:
            message = endorse(root, entry)
        atomic_write(self.path / "endorsements" / f"{entry.kid.hex()}.cose", message)

    def endorse_bundle_key(self, kid: bytes, root: Signer, *, days: int = DEFAULT_ENDORSEMENT_DAYS,
                           now: int | None = None) -> Endorsement:
        """Renew the root's endorsement of an active bundle key for ``days`` (root ceremony).

        Counters install no bundle whose endorsement is over, so the root renews it before
        it runs out (every ``days`` − a margin); a revoked key is never renewed.

        :param days: 1..:data:`MAX_ENDORSEMENT_DAYS`.
        :raises KeyNotFoundError: unknown kid.
        :raises KeyStatusError: the key is not an active bundle key, or it expired.
        :raises KeystoreError: ``days`` out of range.
        """
        now = _now() if now is None else now
        if not 1 <= days <= MAX_ENDORSEMENT_DAYS:
            raise KeystoreError(f"an endorsement lasts 1 to {MAX_ENDORSEMENT_DAYS} days, not {days}")
        entry = self.entry(kid)
        if entry.role is not Role.BUNDLE:
            raise KeyStatusError(f"key {kid.hex()} is a {entry.role.value} key, not a bundle key")
        entry.usable_for_signing(now)
        self._write_endorsement(root, entry, now, days)
        self._save(root, now)
        return read_endorsement(self.endorsement(kid), self.entry(self.root_kid).public_key, Role.BUNDLE)

    def revocations(self) -> bytes | None:
        """The root-signed list of revoked bundle keys (``revocations.cose``), or None when none was revoked."""
        try:
            return (self.path / "revocations.cose").read_bytes()
        except FileNotFoundError:
            return None

    def rotate(
        self, role: Role, root: Signer, *, name: str = "", now: int | None = None, **issue_kwargs: Any
    ) -> tuple[KeyEntry, list[KeyEntry]]:
        """Issue a new key of ``role`` and retire (verify-only) the active ones it replaces.

        For technicians only keys with the same ``name`` are retired.

        :returns: ``(new entry, retired entries)``.
        """
        now = _now() if now is None else now
        new = self.issue(role, root, name=name, now=now, **issue_kwargs)
        retired: list[KeyEntry] = []
        for i, e in enumerate(self._entries):
            same_holder = role is not Role.TECHNICIAN or e.name == name
            if e.kid != new.kid and e.role is role and e.status is KeyStatus.ACTIVE and same_holder:
                self._entries[i] = replace(e, status=KeyStatus.RETIRED, status_time=now)
                retired.append(self._entries[i])
        self._save(root, now)
        return new, retired

    def revoke(self, kid: bytes, root: Signer, *, at: int | None = None, now: int | None = None) -> KeyEntry:
        """Mark a key revoked from time ``at`` (default: now). The root cannot be revoked here.

        :raises KeyNotFoundError: unknown kid.
        :raises KeystoreError: when asked to revoke the root.
        """
        now = _now() if now is None else now
        entry = self.entry(kid)
        if entry.role is Role.ROOT:
            raise KeystoreError("the root cannot revoke itself: make a new keystore and re-pin")
        i = self._entries.index(entry)
        self._entries[i] = replace(entry, status=KeyStatus.REVOKED, status_time=now if at is None else at)
        self._save(root, now)
        revoked = frozenset(e.kid for e in self._entries if e.role is Role.BUNDLE and e.status is KeyStatus.REVOKED)
        if revoked:
            # Counters learn it from the next bundle that carries it (cardlib.records.bundle).
            atomic_write(self.path / "revocations.cose", sign_revocations(root, self.serial, now, revoked))
        _log.info("revoked %s key kid=%s", entry.role.value, kid.hex())
        return self._entries[i]
