"""Counter terminals: the terminal CA, CSR checks, and an admin's decision on an enrolment.

Shared by the enrolment API (:mod:`server.blueprints.enrol`) and ``huma server terminals``
(:mod:`server.cli`). Certificates are issued by :class:`cardlib.keys.terminal_ca.TerminalCA`
(X.509, RFC 5280) from the CSR the terminal sent at enrolment.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.keys.errors import CsrError, KeysError
from cardlib.keys.pkcs8 import load_signer
from cardlib.keys.signer import SoftwareSigner
from cardlib.keys.terminal_ca import CheckedCsr, TerminalCA, check_terminal_csr
from server.auth import audit
from server.errors import ConfigurationError, Conflict, InvalidCsr, NotFound, clipped, shown
from server.models import Person, Terminal, TerminalStatus
from server.types import utcnow

__all__ = ["check_csr", "decide_terminal", "list_terminals", "storable_id", "terminal_ca"]

log = logging.getLogger(__name__)

#: Longest terminal id or card id a row can have (``String(64)`` columns).
MAX_ID_LENGTH = 64


def storable_id(value: str, what: str) -> str:
    """Refuse an id no row can have (NUL, which PostgreSQL text cannot hold; > 64 chars) as 404.

    :param what: the kind of id for the message (``terminal``, ``card``).
    :raises NotFound: ``no <what> <value>``.
    """
    if "\x00" in value or not 0 < len(value) <= MAX_ID_LENGTH:
        raise NotFound(f"no {what} {shown(value)}")
    return value


#: (message, argument) pairs already logged by :func:`_warn_once` in this process.
_WARNED: set[tuple[str, str]] = set()


def _warn_once(message: str, arg: str) -> None:
    """Log a configuration warning once per process: the CA is loaded at every approval, and a
    district simulation approving 300 counters logged each warning 300 times."""
    if (message, arg) not in _WARNED:
        _WARNED.add((message, arg))
        log.warning(message, arg)


def _ca_signer(path: Path, password: bytes | None) -> SoftwareSigner:
    if password:
        return load_signer(path, password)  # encrypted PKCS#8, as `huma keys` writes it
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise ConfigurationError(f"terminal CA key {path} is encrypted: set HUMA_TERMINAL_CA_KEY_PASSWORD") from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load terminal CA key {path}: {exc}") from exc
    _warn_once("terminal CA key %s is not encrypted: acceptable for tests and simulations only", str(path))
    return SoftwareSigner(key)  # type: ignore[arg-type]  # an Ed25519/P-256 key, else SoftwareSigner raises


def terminal_ca() -> TerminalCA:
    """The configured terminal CA (:class:`cardlib.keys.terminal_ca.TerminalCA`); needs an app context.

    ``TERMINAL_CA_KEY``: PKCS#8 PEM key file (encrypted when ``TERMINAL_CA_KEY_PASSWORD``
    is set). ``TERMINAL_CA_CERT``: its certificate (PEM); default the keystore's
    ``certs/<kid>.crt.pem`` next to ``keys/``, which chains to the root; without one the
    key certifies itself (development: terminals must pin that certificate).

    :raises ConfigurationError: no key configured, unreadable, or not matching its certificate.
    """
    path = current_app.config.get("TERMINAL_CA_KEY")
    if not path:
        raise ConfigurationError("TERMINAL_CA_KEY is not configured (set $HUMA_TERMINAL_CA_KEY, docs/operations.md): "
                                 "cannot issue certificates")
    password = current_app.config.get("TERMINAL_CA_KEY_PASSWORD")
    try:
        signer = _ca_signer(Path(path), password.encode() if isinstance(password, str) else password)
        cert_path = current_app.config.get("TERMINAL_CA_CERT")
        candidate = Path(cert_path) if cert_path else Path(path).parent.parent / "certs" / f"{signer.kid.hex()}.crt.pem"
        if candidate.is_file():
            return TerminalCA(signer, x509.load_pem_x509_certificate(candidate.read_bytes()))
        if cert_path:
            raise ConfigurationError(f"TERMINAL_CA_CERT {cert_path} is not a file")
        _warn_once("no certificate for terminal CA %s: using a self-signed one", signer.kid.hex())
        return TerminalCA.self_signed(signer)
    except (KeysError, ValueError) as exc:
        raise ConfigurationError(f"terminal CA unusable: {exc}") from exc


def check_csr(csr: bytes, terminal_id: str) -> CheckedCsr:
    """:func:`cardlib.keys.terminal_ca.check_terminal_csr` as an API error.

    :param csr: PKCS#10 (RFC 2986), PEM or DER bytes.
    :raises InvalidCsr: with the CSR problem as ``reason``.
    """
    try:
        return check_terminal_csr(csr, terminal_id)
    except CsrError as exc:
        raise InvalidCsr(clipped(str(exc), 300), reason=exc.reason) from exc


def terminal_fingerprint(terminal: Terminal) -> str:
    """The terminal key's fingerprint as shown to admins: hex SHA-256 of its SubjectPublicKeyInfo DER."""
    return hashlib.sha256(terminal.public_key).hexdigest()


def list_terminals(session: Session, status: TerminalStatus | None = None) -> list[Terminal]:
    """Every terminal (or those in ``status``), in terminal id order."""
    stmt = select(Terminal).order_by(Terminal.terminal_id)
    if status is not None:
        stmt = stmt.where(Terminal.status == status)
    return list(session.scalars(stmt))


def decide_terminal(session: Session, terminal_id: str, to: TerminalStatus, person: Person | None,
                    *, key_fingerprint: str | None = None, **audit_detail: Any) -> Terminal:
    """Move a terminal to ``to`` (approve issues its certificate now); audited; the caller commits.

    Shared by the API (``person`` = the logged-in admin) and ``huma server terminals``
    (``person`` None, ``audit_detail`` saying who at the console). Needs an app context
    (the terminal CA comes from the app config).

    :param to: APPROVED or REJECTED (from PENDING), REVOKED (from APPROVED or PENDING).
        Already in ``to``: returned unchanged (idempotent), nothing audited.
    :param key_fingerprint: approving: the key the admin approves (hex SHA-256 of its
        SubjectPublicKeyInfo, :func:`server.enrolment.check_fingerprint`); required.
    :raises NotFound: unknown terminal id.
    :raises Conflict: not allowed from the terminal's current status.
    :raises ConfigurationError: approving without a usable terminal CA.
    :raises FingerprintMismatch: approving without ``key_fingerprint`` (400) or with another key's (409).
    """
    allowed_from = {TerminalStatus.APPROVED: {TerminalStatus.PENDING},
                    TerminalStatus.REJECTED: {TerminalStatus.PENDING},
                    TerminalStatus.REVOKED: {TerminalStatus.APPROVED, TerminalStatus.PENDING}}[to]
    storable_id(terminal_id, "terminal")
    terminal = session.scalars(select(Terminal).where(Terminal.terminal_id == terminal_id)).one_or_none()
    if terminal is None:
        raise NotFound(f"no terminal {shown(terminal_id)}")
    if terminal.status is to:
        return terminal  # idempotent
    if terminal.status not in allowed_from:
        raise Conflict(f"terminal is {terminal.status.value}, cannot become {to.value}")
    now = utcnow()
    if to is TerminalStatus.APPROVED:
        from server.enrolment import check_fingerprint

        check_fingerprint(terminal, key_fingerprint)
        audit_detail = {**audit_detail, "fingerprint": terminal_fingerprint(terminal)}
        pem = terminal_ca().issue(check_csr(terminal.csr_der, terminal_id).der, terminal_id=terminal_id,
                                  now=int(now.timestamp()))
        terminal.certificate_der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    terminal.status = to
    terminal.decided_at = now
    terminal.decided_by = person.id if person is not None else None
    audit(session, person, f"terminal.{to.value}", f"terminal:{terminal_id}", kid=terminal.kid.hex(),
          **audit_detail)
    return terminal
