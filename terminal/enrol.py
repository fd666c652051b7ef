"""Enrolment of a counter with the server: the terminal key and CSR, then the certificate.

Two steps, each safe to repeat (docs/api.md, ``/api/v1/terminals``):

1. :func:`create_terminal_key` makes the terminal key (Ed25519, encrypted
   PKCS#8 at the profile's ``paths.key``) and its PKCS#10 CSR (RFC 2986,
   CN = terminal id) next to it as ``<key stem>.csr.pem``; an existing key is
   never overwritten.
2. :func:`enrol` submits the CSR (``POST /api/v1/terminals/enrol``, answered
   202) and polls ``GET /api/v1/terminals/<id>/certificate`` until an
   administrator approved it (200) or the wait is over (202 each time).

The 200 answer is believed only as far as the root vouches for it (docs/security.md
"Enrolment: the counter's pins"): its terminal CA certificate must be signed by the root the
counter was provisioned with (``paths.root_key``), the certificate must be issued by that CA
for this terminal id and this counter's own key, and the server receipt key must come with a
certificate of that CA for a receipt key (:mod:`cardlib.keys.receipt_cert`). Only then is the
certificate saved as ``<key stem>.cert.pem`` and the receipt key pinned as
``<key stem>.receipt-key.pem``. A receipt key already pinned is never replaced (a re-run of
``huma terminal enrol`` keeps it; another key is refused). The first-bundle pin is taken
from the server's bundle bytes, and only when they verify under the root
(:func:`terminal.trust.pin_enrolment_bundle`), never from the answer's unsigned ``bundle``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.fsutil import atomic_write
from cardlib.keys.errors import KeysError
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.receipt_cert import verify_receipt_certificate, verify_terminal_ca
from cardlib.keys.root import load_root_key
from cardlib.keys.signer import PublicKey, derive_kid
from cardlib.keys.terminal_ca import make_terminal_csr, verify_terminal_certificate
from firmware_config.models import TerminalProfile
from terminal.errors import SyncError, SyncRejected, TerminalProfileError, TrustStoreError
from terminal.http_client import HttpApi
from terminal.sync import BUNDLE_PATH
from terminal.trust import pin_enrolment_bundle

log = logging.getLogger(__name__)

#: Seconds between certificate polls while approval is pending.
POLL_S = 2.0


class EnrolmentAnswerRefused(SyncRejected):
    """The certificate answer does not chain to the counter's root, certifies another key or terminal,
    or names a receipt key other than the one pinned: nothing was saved or pinned."""


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


def _pem_bytes(pem: bytes) -> bytes:
    return serialization.load_pem_public_key(pem).public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def pin_history_path(profile: TerminalProfile) -> Path:
    """Where replacements of the pinned receipt key are recorded: ``<key stem>.receipt-key.history`` (JSON lines)."""
    return profile.key_path.with_name(profile.key_path.stem + ".receipt-key.history")


def _fingerprint(pem: bytes) -> str:
    import hashlib

    der = serialization.load_pem_public_key(pem).public_bytes(serialization.Encoding.DER,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _record_replacement(profile: TerminalProfile, old: bytes, new: bytes) -> None:
    """Append one line to :func:`pin_history_path` (never rewritten) and log it as a warning."""
    import getpass
    import os

    try:
        old_fp = _fingerprint(old)
    except ValueError:
        old_fp = "unreadable"
    line = {"at": int(time.time()), "by": getpass.getuser(), "old_sha256": old_fp, "new_sha256": _fingerprint(new)}
    fd = os.open(pin_history_path(profile), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("technician reset: pinned server receipt key %s replaced by %s (recorded in %s)",
                old_fp, line["new_sha256"], pin_history_path(profile))


def save_receipt_key(profile: TerminalProfile, key: ed25519.Ed25519PublicKey, *, replace: bool = False) -> Path:
    """Pin a server receipt key whose certificate chain verified (:func:`check_certificate_answer`).

    A key already pinned is kept: the same key writes nothing, another one is refused unless
    a technician asked to replace it (``huma terminal enrol --replace-server-key``, after the
    server's receipt key was lost); a replacement is appended to :func:`pin_history_path`.

    :param key: the certified server receipt key.
    :param replace: replace another pinned key (the technician reset).
    :returns: the pin file ``<key stem>.receipt-key.pem``.
    :raises EnrolmentAnswerRefused: another receipt key is pinned already and ``replace`` is False (it stays).
    """
    path = pinned_server_key_path(profile)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        held = path.read_bytes()
    except FileNotFoundError:
        atomic_write(path, pem, mode=0o644)
        return path
    try:
        same = _pem_bytes(held) == pem
    except ValueError:
        same = False
    if not same and replace:
        _record_replacement(profile, held, pem)
        atomic_write(path, pem, mode=0o644)
    elif not same:
        raise EnrolmentAnswerRefused(f"this counter already pins another server receipt key ({path}); it is kept "
                                     f"and nothing was saved. If the server's receipt key was replaced, a technician "
                                     f"re-runs 'huma terminal enrol --replace-server-key' (recorded) "
                                     f"(docs/security.md \"Enrolment: the counter's pins\")")
    return path


def _root_key(profile: TerminalProfile) -> PublicKey:
    if profile.root_key_path is None:
        raise TerminalProfileError(f"{profile.source}: no pinned root key (paths.root_key): the certificate "
                                   f"answer cannot be checked, nothing is enrolled")
    try:
        return load_root_key(profile.root_key_path)
    except KeysError as exc:
        raise TerminalProfileError(f"{profile.source}: {exc}") from exc


def check_certificate_answer(profile: TerminalProfile, answer: object,
                             now: float) -> tuple[bytes, ed25519.Ed25519PublicKey]:
    """Check a certificate answer against the root this counter was provisioned with.

    :param answer: the decoded JSON of ``GET /api/v1/terminals/<id>/certificate`` (200):
        ``certificate``, ``ca_certificate``, ``receipt_certificate`` (PEM strings).
    :param now: POSIX seconds for the validity checks.
    :returns: (the terminal certificate PEM, the certified server receipt key).
    :raises EnrolmentAnswerRefused: a field missing, a CA the root did not sign, a certificate
        for another key or terminal id, or a receipt key without the CA's receipt-key certificate.
    :raises TerminalProfileError: no readable root key or CSR.
    """
    from cryptography import x509

    root = _root_key(profile)
    try:
        own = x509.load_pem_x509_csr(csr_path(profile).read_bytes()).public_key()
    except (OSError, ValueError) as exc:
        raise TerminalProfileError(f"no readable CSR at {csr_path(profile)} ({exc})") from exc
    fields = answer if isinstance(answer, dict) else {}
    pems = {name: fields.get(name) for name in ("certificate", "ca_certificate", "receipt_certificate")}
    missing = [name for name, value in pems.items() if not isinstance(value, str)]
    if missing:
        raise EnrolmentAnswerRefused(f"the certificate answer lacks {', '.join(missing)} (a server older than "
                                     f"this counter, or not the server): nothing saved or pinned")
    try:
        ca = verify_terminal_ca(pems["ca_certificate"].encode(), root, now)  # type: ignore[union-attr]
        cert = verify_terminal_certificate(pems["certificate"].encode(), pems["ca_certificate"].encode(),  # type: ignore[union-attr]
                                           expected_key=own, now=int(now))  # type: ignore[arg-type]
        if cert.terminal_id != profile.terminal_id:
            raise EnrolmentAnswerRefused(f"the certificate is for {cert.terminal_id!r}, not {profile.terminal_id!r}")
        receipt_key = verify_receipt_certificate(pems["receipt_certificate"].encode(), ca, now)  # type: ignore[union-attr]
    except KeysError as exc:
        raise EnrolmentAnswerRefused(f"certificate answer refused, nothing saved or pinned: {exc}") from exc
    return cert.pem, receipt_key


def _pin_first_bundle(profile: TerminalProfile, api: HttpApi, now: float) -> None:
    """Pin the server's newest bundle if it verifies under the root (a counter with a pin or bundle keeps its own).

    Best effort: without a verified bundle nothing is pinned and the first bundle the counter
    installs sets its floor (the trust store's checks still apply), as on a server with no bundle yet.
    """
    if profile.bundle_path is None:
        return
    try:
        r = api.request("GET", BUNDLE_PATH)
        if r.status != 200:
            log.info("no bundle pinned at enrolment: the server answered %d", r.status)
            return
        version = pin_enrolment_bundle(profile.bundle_path, r.body, _root_key(profile), now)
    except (SyncError, TrustStoreError) as exc:
        log.warning("no bundle pinned at enrolment: %s", exc)
        return
    if version is not None:
        log.info("pinned trust bundle v%d at enrolment: no older bundle is installed", version)


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
    replace_receipt_key: bool = False,
) -> Path | None:
    """Submit the terminal's CSR and fetch its certificate once approved.

    :param wait_s: seconds to keep polling after submitting (0: ask once).
    :param code: the one-time enrolment code an administrator issued for this terminal id
        (``huma server terminals code``): the CSR is submitted with it. None: the CSR was
        submitted before, only the certificate is polled.
    :param api: the server connection (default: the profile's ``server_url``).
    :param sleep: waits between polls (tests pass a no-op).
    :param replace_receipt_key: the technician reset: a certified receipt key other than the
        pinned one replaces it (recorded in :func:`pin_history_path`); else it is refused.
    :returns: the saved certificate file, or None while approval is pending.
    :raises TerminalProfileError: no CSR yet (:func:`create_terminal_key` first).
    :raises SyncError: the server cannot be reached (message names ``server_url`` and the profile).
    :raises SyncRejected: the server refused the CSR or the certificate request (not 202/200).
    :raises EnrolmentAnswerRefused: the approved answer does not chain to the pinned root, is not
        for this counter's key, or names another receipt key than the one pinned (nothing saved).
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
            try:
                answer = json.loads(r.body)
            except ValueError as exc:
                raise EnrolmentAnswerRefused(f"certificate answer is not JSON: {exc}") from exc
            now = time.time()
            cert_pem, receipt_key = check_certificate_answer(profile, answer, now)
            save_receipt_key(profile, receipt_key, replace=replace_receipt_key)
            cert = certificate_path(profile)
            atomic_write(cert, cert_pem, mode=0o644)
            _pin_first_bundle(profile, api, now)
            return cert
        if r.status != 202:
            raise SyncRejected(f"certificate refused: HTTP {r.status} {r.body[:300]!r}")
        if time.monotonic() >= deadline:
            return None
        sleep(POLL_S)
