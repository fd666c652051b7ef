"""People: password login, bearer tokens, roles, and the audit log of their changes.

Passwords are hashed with werkzeug's scrypt (``scrypt:32768:8:1``, 32 MiB and about
0.1 s of CPU each), at most :func:`hash_slots` at once per process; tokens are 256-bit
random strings of which only the SHA-256 is stored. Password logins, with their
throttling and lock-out, are :func:`server.logins.password_login`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from flask import g, request
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from server.errors import AuthenticationFailed, BadRequest, Forbidden, ServerBusy, shown
from server.models import ApiToken, AuditLog, Person, PersonRole
from server.types import utcnow

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

PASSWORD_METHOD = "scrypt"
MIN_PASSWORD_LENGTH = 10
TOKEN_BYTES = 32
MAX_USERNAME_LENGTH = 64


#: Seconds a password check waits for a hashing slot before answering 503.
HASH_WAIT_S = 2.0
#: Retry-After (seconds) of the 503 when no hashing slot came free.
HASH_RETRY_AFTER_S = 1

_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def hash_slots(limit: int | None = None) -> threading.BoundedSemaphore:
    """The process-wide semaphore bounding concurrent scrypt hashes to ``limit`` (default: CPU cores).

    One per distinct ``limit``, shared by every app and thread of the process.
    """
    size = max(1, limit if limit is not None else (os.cpu_count() or 1))
    with _slots_lock:
        if size not in _slots:
            _slots[size] = threading.BoundedSemaphore(size)
        return _slots[size]


@contextmanager
def hashing_slot(limit: int | None = None, wait_s: float = HASH_WAIT_S) -> Iterator[None]:
    """Hold one of :func:`hash_slots` while hashing a password.

    scrypt takes a core and 32 MiB for about 0.1 s: sixteen at once stalled every other
    request. The rest wait up to ``wait_s`` seconds, then get 503.

    :param limit: hashes at once (None: CPU cores).
    :param wait_s: seconds to wait for a slot.
    :raises ServerBusy: no slot within ``wait_s`` (``retry_after`` :data:`HASH_RETRY_AFTER_S`).
    """
    slots = hash_slots(limit)
    if not slots.acquire(timeout=wait_s):
        log.warning("no password hashing slot within %.1f s: answering 503", wait_s)
        raise ServerBusy("too many logins at once, retry later", retry_after=HASH_RETRY_AFTER_S)
    try:
        yield
    finally:
        slots.release()


def hash_password(password: str) -> str:
    """scrypt hash of ``password`` (werkzeug format, salted), in a :func:`hashing_slot`.

    :raises ServerBusy: no hashing slot came free.
    """
    with hashing_slot():
        return generate_password_hash(password, method=PASSWORD_METHOD)


def verify_password(stored_hash: str | None, password: str, *, limit: int | None = None,
                    wait_s: float = HASH_WAIT_S) -> bool:
    """Whether ``password`` matches ``stored_hash``, checked in a :func:`hashing_slot`.

    :param stored_hash: werkzeug hash string; None (no such person) checks a dummy hash so
        the time taken does not tell which usernames exist.
    :param limit: / :param wait_s: see :func:`hashing_slot`.
    :raises ServerBusy: no hashing slot came free.
    """
    with hashing_slot(limit, wait_s):
        return check_password_hash(stored_hash if stored_hash is not None else _DUMMY_HASH, password)


def check_username(username: str) -> str:
    """``username`` if a person may be created with it, else :class:`BadRequest` (``field: username``).

    Names show up in ``people list``, the audit log and the auditor UI, so each must be one
    readable word an admin can tell apart from the others: 1..64 characters, no whitespace, no
    control or format characters (newline, ESC, zero-width space, right-to-left override), and
    in Unicode NFKC form (fullwidth ``ＡＤＭＩＮ`` is refused, not stored beside ``admin``).
    """
    if not username:
        raise BadRequest("username is empty", field="username")
    if len(username) > MAX_USERNAME_LENGTH:
        raise BadRequest(f"username has {len(username)} characters, at most {MAX_USERNAME_LENGTH} are allowed",
                         field="username")
    for ch in username:
        if ch.isspace():
            raise BadRequest(f"username {shown(username)} has a space or other whitespace; use . _ or -",
                             field="username")
        if unicodedata.category(ch).startswith("C"):
            raise BadRequest(f"username {shown(username)} has a control or invisible character "
                             f"U+{ord(ch):04X}", field="username")
    if unicodedata.normalize("NFKC", username) != username:
        raise BadRequest(f"username {shown(username)} is not in Unicode NFKC form; "
                         f"write it as {shown(unicodedata.normalize('NFKC', username))}", field="username")
    return username


def normalise_username(username: str) -> str:
    """The stored form of a username: lower case, so ``Auditor`` and ``auditor`` are one login."""
    return username.lower()


def username_is(username: str) -> ColumnElement[bool]:
    """SQL condition matching the person called ``username`` in any case (uses ``lower(username)``'s index)."""
    return func.lower(Person.username) == normalise_username(username)


def create_person(session: Session, username: str, password: str, role: PersonRole) -> Person:
    """Add a person (the caller commits and audits).

    The username is stored in lower case (:func:`normalise_username`); the database refuses a
    second person whose name differs only in case (unique index on ``lower(username)``).

    :raises BadRequest: a username :func:`check_username` refuses.
    :raises ValueError: password shorter than :data:`MIN_PASSWORD_LENGTH` characters.
    """
    check_username(username)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    person = Person(username=normalise_username(username), password_hash=hash_password(password), role=role,
                    disabled=False)
    session.add(person)
    session.flush()
    return person


def issue_token(session: Session, person: Person, ttl: dt.timedelta) -> tuple[str, dt.datetime]:
    """Add a bearer token for ``person`` (the caller commits).

    :param ttl: how long the token lives.
    :returns: (token, expiry as aware UTC).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = utcnow() + ttl
    session.add(ApiToken(token_sha256=token_digest(token), person_id=person.id, expires_at=expires))
    return token, expires


_DUMMY_HASH = generate_password_hash("not-a-real-password", method=PASSWORD_METHOD)


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def person_from_token(session: Session, header: str | None) -> Person:
    """Resolve ``Authorization: Bearer <token>``.

    :raises AuthenticationFailed: missing, unknown or expired token, disabled person.
    """
    if not header or not header.startswith("Bearer "):
        raise AuthenticationFailed("missing bearer token")
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_sha256 == token_digest(header[len("Bearer "):].strip()))
    ).one_or_none()
    if row is None or row.expires_at <= utcnow():
        raise AuthenticationFailed("invalid or expired token")
    person = session.get(Person, row.person_id)
    if person is None or person.disabled:
        raise AuthenticationFailed("account disabled")
    return person


def require_role(*roles: PersonRole) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """View decorator: a logged-in person with one of ``roles``; sets ``g.person``.

    :raises AuthenticationFailed: not logged in.
    :raises Forbidden: logged in with another role.
    """

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            from server.extensions import db

            person = person_from_token(db.session, request.headers.get("Authorization"))
            if person.role not in roles:
                raise Forbidden(f"role {person.role.value} may not do this",
                                needed=[r.value for r in roles])
            g.person = person
            return view(*args, **kwargs)

        return wrapped

    return decorate


def audit(session: Session, person: Person | None, action: str, target: str, **detail: Any) -> None:
    """Record a change made by a person (same transaction as the change itself)."""
    session.add(
        AuditLog(
            person_id=person.id if person is not None else None,
            action=action,
            target=target,
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )
    log.info("audit: %s %s by person %s", action, target, person.id if person is not None else "-")


def find_person(session: Session, username: str) -> Person:
    """The person called ``username``.

    :raises NotFound: no such person.
    """
    from server.errors import NotFound, shown

    person = session.scalars(select(Person).where(username_is(username))).one_or_none()
    if person is None:
        raise NotFound(f"no person {shown(username)}")
    return person


def end_sessions(session: Session, person: Person) -> int:
    """Delete every bearer token of ``person`` (after a password change or disabling).

    :returns: tokens deleted.
    """
    from sqlalchemy import delete

    result = session.execute(delete(ApiToken).where(ApiToken.person_id == person.id))
    return int(getattr(result, "rowcount", 0) or 0)


def set_disabled(session: Session, username: str, disabled: bool) -> Person:
    """Disable (or re-enable) a login; disabling ends the person's sessions. The caller audits and commits.

    :raises NotFound: no such person.
    """
    person = find_person(session, username)
    person.disabled = disabled
    if disabled:
        end_sessions(session, person)
    return person


def set_password(session: Session, username: str, password: str) -> Person:
    """Replace a password (scrypt) and end the person's sessions. The caller audits and commits.

    :raises NotFound: no such person.
    :raises BadRequest: a username :func:`check_username` refuses.
    :raises ValueError: password shorter than :data:`MIN_PASSWORD_LENGTH` characters.
    """
    check_username(username)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    person = find_person(session, username)
    person.password_hash = hash_password(password)
    end_sessions(session, person)
    return person
