"""Who may enrol a counter: one-time enrolment codes, key fingerprints and a per-address throttle.

Enrolment used to be open: whoever reached the server first enrolled a terminal id with
their own key, and approval named only the terminal id. Now (docs/security.md,
"Enrolment"):

1. An admin issues a one-time code for a named terminal id (:func:`issue_code`,
   ``POST /api/v1/terminals/<id>/enrolment-code`` or ``huma server terminals code``).
   Only the SHA-256 of the code is stored; it expires (``ENROL_CODE_TTL``, default 7 days)
   and is spent by the first enrolment that uses it.
2. ``POST /api/v1/terminals/enrol`` needs the code (:func:`redeem_code`).
3. Approval names the key: the admin compares the fingerprint the counter printed
   (:func:`fingerprint`, SHA-256 of the CSR's SubjectPublicKeyInfo DER) with the one the
   server shows and passes it; another key is refused (:func:`check_fingerprint`).
4. Failed enrolments (no/wrong code, bad CSR, conflicts) count against the client address
   in the ``login_throttle`` table (key ``enrol-address:<ip>``, the same DB-backed rows
   :mod:`server.logins` keeps, so several server processes share them); past
   ``ENROL_FREE_FAILURES`` the address waits 1, 2, 4 ... s up to ``ENROL_BACKOFF_MAX``
   (429 + ``Retry-After``) before it may try again.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ForeignKey, LargeBinary, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.errors import Conflict, EnrolmentCodeInvalid, EnrolThrottled, FingerprintMismatch
from server.logins import LoginThrottle, _locked_row, address_key
from server.models import Base, Person, Terminal, TerminalStatus
from server.types import UTCDateTime, utcnow

#: Random bytes in a code (80 bits: guessing is hopeless within the throttle and expiry).
CODE_BYTES = 10
#: Lower-case RFC 4648 base32 without padding, in groups of 4 (``abcd-efgh-ijkl-mnop``).
_CODE_GROUP = 4
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EnrolmentCode(Base):
    """A one-time enrolment code for one terminal id (stored as its SHA-256 only).

    :ivar used_at: when an enrolment spent it (None: still usable until ``expires_at``).
    :ivar used_fingerprint: the key it enrolled (SHA-256 of the SPKI DER), so the same CSR
        may be re-sent (idempotent) but no other key may use the code.
    """

    __tablename__ = "enrolment_codes"

    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    used_fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary(32))


@dataclass(frozen=True)
class EnrolPolicy:
    """Enrolment settings (``ENROL_*``, defaults in :data:`server.DEFAULTS`).

    :ivar code_ttl: seconds an enrolment code stays valid.
    :ivar free_failures: failed enrolments from one address before back-off.
    :ivar window: seconds without a failure after which an address's count restarts.
    :ivar backoff_max: longest back-off, seconds.
    """

    code_ttl: float = 7 * 86400.0
    free_failures: int = 10
    window: float = 3600.0
    backoff_max: float = 300.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EnrolPolicy:
        """The policy of an app's configuration."""
        return cls(code_ttl=float(config.get("ENROL_CODE_TTL", cls.code_ttl)),
                   free_failures=int(config.get("ENROL_FREE_FAILURES", cls.free_failures)),
                   window=float(config.get("ENROL_WINDOW", cls.window)),
                   backoff_max=float(config.get("ENROL_BACKOFF_MAX", cls.backoff_max)))

    def delay(self, failures: int) -> float:
        """Back-off after ``failures`` failures, seconds: 0 up to :attr:`free_failures`, then 1, 2, 4 ..."""
        if failures <= self.free_failures:
            return 0.0
        return float(min(2.0 ** min(failures - self.free_failures - 1, 62), self.backoff_max))


def fingerprint(spki_der: bytes) -> bytes:
    """A terminal key's fingerprint: SHA-256 (FIPS 180-4) of its SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7)."""
    return hashlib.sha256(spki_der).digest()


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint as typed: 64 hex digits, any case, ``:``/space/``-`` separators allowed.

    :raises ValueError: not 32 bytes of hex.
    """
    cleaned = re.sub(r"[\s:\-]", "", text).lower()
    if not _HEX64.fullmatch(cleaned):
        raise ValueError("a fingerprint is 64 hex digits (SHA-256 of the terminal key)")
    return bytes.fromhex(cleaned)


def check_fingerprint(terminal: Terminal, given: str | None) -> None:
    """Refuse to approve a key other than the one the admin names.

    :param given: the fingerprint the admin read from the counter (see :func:`parse_fingerprint`).
    :raises FingerprintMismatch: ``given`` is missing, malformed or another key's (nothing changes).
    """
    if not given:
        raise FingerprintMismatch("approval must name the key: pass the fingerprint the counter printed",
                                  missing=True)
    try:
        wanted = parse_fingerprint(given)
    except ValueError as exc:
        raise FingerprintMismatch(str(exc), missing=True) from exc
    actual = fingerprint(terminal.public_key)
    if not hmac.compare_digest(wanted, actual):
        raise FingerprintMismatch(f"terminal {terminal.terminal_id} is pending with key {actual.hex()}, "
                                  f"not {wanted.hex()}: do not approve it; reject it and issue a new code")


def _hash(code: str) -> bytes:
    return hashlib.sha256(normalise_code(code).encode("ascii")).digest()


def normalise_code(code: str) -> str:
    """A code as typed, compared without case, spaces or dashes."""
    return re.sub(r"[\s\-]", "", code).lower()


def issue_code(session: Session, terminal_id: str, person: Person | None, policy: EnrolPolicy,
               now: dt.datetime | None = None) -> tuple[str, dt.datetime]:
    """Make a one-time enrolment code for ``terminal_id`` (the caller audits and commits).

    Earlier unused codes for the same terminal id stay valid until they expire or are used.

    :returns: (the code, shown once and never stored; its expiry, aware UTC).
    :raises Conflict: the terminal id is already approved or revoked (a new key means a new id).
    """
    existing = session.scalars(select(Terminal).where(Terminal.terminal_id == terminal_id)).one_or_none()
    if existing is not None and existing.status in (TerminalStatus.APPROVED, TerminalStatus.REVOKED):
        raise Conflict(f"terminal {terminal_id} is {existing.status.value}: enrol a new terminal id instead")
    now = now or utcnow()
    raw = base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode("ascii").rstrip("=").lower()
    code = "-".join(raw[i:i + _CODE_GROUP] for i in range(0, len(raw), _CODE_GROUP))
    expires = now + dt.timedelta(seconds=policy.code_ttl)
    session.add(EnrolmentCode(code_hash=_hash(code), terminal_id=terminal_id, created_at=now, expires_at=expires,
                              created_by=person.id if person is not None else None))
    return code, expires


def redeem_code(session: Session, terminal_id: str, code: object, key_fingerprint: bytes,
                now: dt.datetime | None = None) -> EnrolmentCode:
    """Check an enrolment's code and spend it on this key (the caller commits with the enrolment).

    A code already spent on the same key is accepted again (the counter re-sends its CSR).
    The row is locked (``SELECT ... FOR UPDATE``) so two enrolments cannot both spend it.

    :raises EnrolmentCodeInvalid: no code, unknown, for another terminal id, expired, or spent on another key.
    """
    if not isinstance(code, str) or not code.strip():
        raise EnrolmentCodeInvalid("enrolment needs the one-time code an administrator issued for this "
                                   "terminal id ('huma server terminals code TERMINAL_ID')")
    now = now or utcnow()
    row = session.scalars(select(EnrolmentCode).where(EnrolmentCode.code_hash == _hash(code[:100]))
                          .with_for_update()).one_or_none()
    if row is None or row.terminal_id != terminal_id:
        raise EnrolmentCodeInvalid("unknown enrolment code for this terminal id")
    if row.used_at is not None:
        if row.used_fingerprint is not None and hmac.compare_digest(row.used_fingerprint, key_fingerprint):
            return row
        raise EnrolmentCodeInvalid("this enrolment code was used already")
    if row.expires_at <= now:
        raise EnrolmentCodeInvalid("this enrolment code has expired: ask an administrator for a new one")
    row.used_at, row.used_fingerprint = now, key_fingerprint
    return row


def open_codes(session: Session, terminal_id: str | None = None,
               now: dt.datetime | None = None) -> list[EnrolmentCode]:
    """Enrolment codes still usable (not spent, not expired), oldest first; the codes themselves are never stored.

    :param terminal_id: only the codes for this terminal id; None for all.
    """
    now = now or utcnow()
    query = select(EnrolmentCode).where(EnrolmentCode.used_at.is_(None), EnrolmentCode.expires_at > now)
    if terminal_id is not None:
        query = query.where(EnrolmentCode.terminal_id == terminal_id)
    return list(session.scalars(query.order_by(EnrolmentCode.created_at)))


def cancel_codes(session: Session, terminal_id: str, person: Person | None, **audit_detail: Any) -> int:
    """End every usable enrolment code of ``terminal_id`` now (a code handed to the wrong person,
    a counter set up another way); audited; the caller commits.

    A cancelled code expires now: :func:`redeem_code` refuses it as expired, and the row stays
    as the record that it was issued.

    :returns: how many codes were cancelled.
    """
    from server.auth import audit

    now = utcnow()
    rows = open_codes(session, terminal_id, now)
    for row in rows:
        row.expires_at = now
    audit(session, person, "enrolment.codes_cancelled", f"terminal:{terminal_id}", cancelled=len(rows),
          **audit_detail)
    return len(rows)


def _throttle_key(address: str | None) -> str:
    return "enrol-" + address_key(address)


def _restart_if_quiet(row: LoginThrottle, now: dt.datetime, policy: EnrolPolicy) -> None:
    if row.failures and (now - row.last_failure).total_seconds() >= policy.window:
        row.failures, row.next_attempt_at = 0, None


def check_enrol_throttle(write_session: Callable[[], Session], address: str | None, policy: EnrolPolicy) -> None:
    """Refuse an enrolment from an address in back-off (commits its own short transaction).

    :raises EnrolThrottled: 429 with ``Retry-After``; nothing of the request is looked at.
    """
    key, now = _throttle_key(address), utcnow()
    session = write_session()
    row = session.scalars(select(LoginThrottle).where(LoginThrottle.key == key)).one_or_none()
    wait = None
    if row is not None:
        _restart_if_quiet(row, now, policy)
        if row.next_attempt_at is not None and row.next_attempt_at > now:
            wait = max(1, math.ceil((row.next_attempt_at - now).total_seconds()))
    session.commit()
    if wait is not None:
        raise EnrolThrottled("too many failed enrolments from this address: wait before the next attempt",
                             retry_after=wait)


def count_enrol_failure(write_session: Callable[[], Session], address: str | None, policy: EnrolPolicy) -> None:
    """Count a failed enrolment against ``address`` and set its back-off (commits)."""
    key, now = _throttle_key(address), utcnow()
    session = write_session()
    row = _locked_row(session, key, now)
    _restart_if_quiet(row, now, policy)
    row.failures += 1
    row.last_failure = now
    delay = policy.delay(row.failures)
    row.next_attempt_at = now + dt.timedelta(seconds=delay) if delay else None
    session.commit()


def receipt_key_chain(app: Any) -> dict[str, str]:
    """What lets a counter check the server receipt key it pins (docs/security.md "Enrolment: the counter's pins").

    The terminal CA certificate (which the root certified: ``huma keys issue terminal-ca``) and a
    certificate of the receipt key issued now by that CA
    (:func:`cardlib.keys.receipt_cert.issue_receipt_certificate`). Needs an app context.

    :param app: the Flask application (its receipt key and terminal CA configuration).
    :returns: ``{"ca_certificate": PEM, "receipt_certificate": PEM}``.
    :raises ConfigurationError: no usable terminal CA or receipt key.
    """
    from server.receipts import receipt_signer
    from server.terminals import terminal_ca

    ca = terminal_ca()
    return {"ca_certificate": ca.certificate_pem.decode("ascii"),
            "receipt_certificate": ca.certify_receipt_key(receipt_signer(app).public_key).decode("ascii")}
