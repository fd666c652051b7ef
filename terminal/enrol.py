"""Enrolment of a counter with the server: the terminal key and CSR, then the certificate.

Two steps, each safe to repeat (docs/api.md, ``/api/v1/terminals``):

1. :func:`create_terminal_key` makes the terminal key (Ed25519, encrypted
   PKCS#8 at the profile's ``paths.key``) and its PKCS#10 CSR (RFC 2986,
   CN = terminal id) next to it as ``<key stem>.csr.pem``; an existing key is
   never overwritten.
2. :func:`enrol` submits the CSR (``POST /api/v1/terminals/enrol``, answered
   202) and polls ``GET /api/v1/terminals/<id>/certificate`` until an
   administrator approved it (200: the certificate is saved as
   ``<key stem>.cert.pem``, the server receipt key it carries pinned as
   ``<key stem>.receipt-key.pem``) or the wait is over (202 each time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.fsutil import atomic_write
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import derive_kid
from cardlib.keys.terminal_ca import make_terminal_csr
from firmware_config.models import TerminalProfile
from terminal.errors import SyncError, SyncRejected, TerminalProfileError
from terminal.sync import HttpApi
from terminal.trust import pin_enrolment_bundle

#: Seconds between certificate polls while approval is pending.
POLL_S = 2.0


def _server_message(body: bytes) -> str:
    """The server's error text (docs/api.md error body ``{"error": {"code", "message"}}``), else the raw start.

    :param body: the HTTP answer body (bytes).
    """
    try:
        err = json.loads(body)["error"]
        return f"{err['message']} ({err['code']})"
    except (ValueError, KeyError, TypeError):
        return repr(body[:300])


def csr_path(profile: TerminalProfile) -> Path:
    """Where the terminal's CSR is kept: ``<key stem>.csr.pem`` next to the key."""
    return profile.key_path.with_name(profile.key_path.stem + ".csr.pem")


def certificate_path(profile: TerminalProfile) -> Path:
    """Where the terminal's certificate is saved: ``<key stem>.cert.pem`` next to the key."""
    return profile.key_path.with_name(profile.key_path.stem + ".cert.pem")


def pinned_server_key_path(profile: TerminalProfile) -> Path:
    """Where the pinned server receipt key is kept: ``<key stem>.receipt-key.pem`` beside the certificate."""
    return profile.key_path.with_name(profile.key_path.stem + ".receipt-key.pem")


def save_receipt_key(profile: TerminalProfile, pem: object) -> Path:
    """Pin the server receipt key the enrolment answer carries (SubjectPublicKeyInfo PEM).

    :raises SyncRejected: the answer carries none, or not an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else b"")
    except ValueError as exc:
        raise SyncRejected(f"the certificate answer carries no usable server receipt key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SyncRejected("the server receipt key is not an Ed25519 key")
    path = pinned_server_key_path(profile)
    atomic_write(path, key.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    return path


def load_receipt_key(profile: TerminalProfile) -> ed25519.Ed25519PublicKey:
    """The server receipt key pinned at enrolment (only answers it signed change the journal or bundle age).

    :raises TerminalProfileError: none pinned (enrolled before keys were pinned: run enrol again) or unreadable.
    """
    path = pinned_server_key_path(profile)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TerminalProfileError(f"no pinned server receipt key at {path} ({exc}); run "
                                   f"'huma terminal enrol --profile {profile.source}' again to fetch it") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TerminalProfileError(f"{path} is not an Ed25519 public key")
    return key


def key_fingerprint(profile: TerminalProfile) -> str:
    """The terminal key's fingerprint from its CSR, for the admin who approves it.

    SHA-256 (FIPS 180-4) of the key's SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7), 64 hex
    digits in groups of 4; the server shows the same value for the pending enrolment.

    :raises TerminalProfileError: no readable CSR yet.
    """
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        request = x509.load_pem_x509_csr(csr_path(profile).read_bytes())
    except (OSError, ValueError) as exc:
        raise TerminalProfileError(f"no readable CSR at {csr_path(profile)} ({exc})") from exc
    spki = request.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).hexdigest()
    return " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def create_terminal_key(profile: TerminalProfile, passphrase: bytes) -> bytes:
    """Make the terminal key and its CSR, save both next to each other.

    :param passphrase: encrypts the PKCS#8 key file (bytes, UTF-8 as typed).
    :returns: the key's 4-byte kid (SHA-256 of its SPKI, first 4 bytes; the slot terminal id).
    :raises cardlib.keys.errors.KeysError: the key file exists already or the passphrase is too weak.
    """
    key, csr = make_terminal_csr(profile.terminal_id)
    profile.key_path.parent.mkdir(parents=True, exist_ok=True)
    save_private_key(profile.key_path, key, passphrase)
    csr_path(profile).write_bytes(csr)
    return derive_kid(key.public_key())


def enrol(
    profile: TerminalProfile,
    wait_s: float = 0.0,
    *,
    code: str | None = None,
    api: HttpApi | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Path | None:
    """Submit the terminal's CSR and fetch its certificate once approved.

    :param wait_s: seconds to keep polling after submitting (0: ask once).
    :param code: the one-time enrolment code an administrator issued for this terminal id
        (``huma server terminals code``): the CSR is submitted with it. None: the CSR was
        submitted before, only the certificate is polled.
    :param api: the server connection (default: the profile's ``server_url``).
    :param sleep: waits between polls (tests pass a no-op).
    :returns: the saved certificate file, or None while approval is pending.
    :raises TerminalProfileError: no CSR yet (:func:`create_terminal_key` first).
    :raises SyncError: the server cannot be reached (message names ``server_url`` and the profile).
    :raises SyncRejected: the server refused the CSR or the certificate request (not 202/200).
    """
    csr_file = csr_path(profile)
    if not csr_file.is_file():
        raise TerminalProfileError(f"no CSR at {csr_file}: run 'huma terminal init --profile {profile.source}' first")
    try:
        api = api or HttpApi(profile.server_url)
    except ValueError as exc:  # plain http to another host: server answers would travel unprotected
        raise TerminalProfileError(f"{profile.source}: {exc}") from exc
    tid = profile.terminal_id
    # Where the counter stands (terminal_sites: regional totals, impossible travel), from its profile.
    body = json.dumps({"terminal_id": tid, "csr": csr_file.read_text(), "code": code,
                       "region": profile.region}).encode()
    try:
        if code is not None:
            r = api.request("POST", "/api/v1/terminals/enrol", body, {"Content-Type": "application/json"})
        else:
            r = api.request("GET", f"/api/v1/terminals/{tid}/certificate")
    except SyncError as exc:
        raise SyncError(f"cannot reach the server at {api.host}:{api.port} (server_url {profile.server_url} "
                        f"in {profile.source}); is it running and reachable from this counter? ({exc})") from exc
    if code is None and r.status == 404:
        raise SyncRejected(f"terminal {tid} is not enrolled yet: pass the enrolment code an administrator "
                           f"issued for it (huma terminal enrol --code)")
    if code is not None and r.status != 202:
        raise SyncRejected(f"enrolment refused: HTTP {r.status}: {_server_message(r.body)}")
    deadline = time.monotonic() + wait_s
    while True:
        r = api.request("GET", f"/api/v1/terminals/{tid}/certificate")
        if r.status == 200:
            answer = json.loads(r.body)
            save_receipt_key(profile, answer.get("receipt_key"))
            if profile.bundle_path is not None:  # no older bundle than the server's newest at enrolment
                pin_enrolment_bundle(profile.bundle_path, answer.get("bundle"))
            cert = certificate_path(profile)
            cert.write_text(answer["certificate"])
            return cert
        if r.status != 202:
            raise SyncRejected(f"certificate refused: HTTP {r.status} {r.body[:300]!r}")
        if time.monotonic() >= deadline:
            return None
        sleep(POLL_S)
