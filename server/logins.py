"""Password logins: back-off and lock-out per account and per address, audited failures.

Every login (the JSON API and the auditor form) goes through :func:`password_login`:

1. In a short write transaction it *reserves* the attempt: the account's and the
   address's rows in ``login_throttle`` are locked and checked; an account locked out
   or in back-off, or an address in back-off, is refused at once with
   :class:`~server.errors.LoginThrottled` (429, ``Retry-After``) and the password is
   not checked. Otherwise both counters go up by one *before* the check, so attempts
   running in parallel (several waitress threads, several server processes) are counted
   too.
2. The password is checked outside any transaction (scrypt never holds a database
   lock) in a hashing slot (:func:`server.auth.hashing_slot`, 503 when none is free).
3. A second write transaction settles it: success deletes the account's row and gives
   back the address's reserved count, and issues the token; a failure is written to the
   audit log (``login.failed``, with the sanitised name tried and the address) and, at
   the lock-out threshold, locks the account (``login.locked``).

The state lives in the database, not in process memory, because the server runs as
several processes. Policy (``LOGIN_*`` settings, documented in docs/security.md,
"Logins and web"): :class:`LoginPolicy`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.auth import audit, issue_token, normalise_username, username_is, verify_password
from server.errors import AuthenticationFailed, Forbidden, LoginLocked, LoginThrottled, ServerBusy
from server.models import Base, Person, PersonRole
from server.types import UTCDateTime, utcnow

log = logging.getLogger(__name__)

#: Longest key of a throttle row: ``account:`` + a lower-cased username of up to 64 characters
#: (lower-casing can lengthen a name) or ``address:`` + an IPv6 ``/64`` network.
KEY_LENGTH = 200
#: Characters of a tried username kept in the audit log.
AUDITED_NAME_MAX = 64


class LoginThrottle(Base):
    """Failed-login state of one account (``account:<name>``) or one client address (``address:<ip>``).

    :ivar failures: failed attempts (and attempts being checked right now) since the
        count last restarted.
    :ivar last_failure: when the last of them started (the count restarts after
        ``LOGIN_WINDOW`` seconds without one).
    :ivar next_attempt_at: back-off: attempts before this instant are refused.
    :ivar locked_until: lock-out of an account: every attempt before it is refused.
    """

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    failures: Mapped[int]
    last_failure: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class LoginPolicy:
    """How failed logins are slowed down and when an account locks (the ``LOGIN_*`` settings).

    :ivar free_failures: failures of an account before back-off starts.
    :ivar lockout_failures: failures of an account (N) that lock it.
    :ivar window: seconds without a failure after which a count restarts.
    :ivar lockout: seconds an account stays locked (an admin can unlock earlier).
    :ivar address_free_failures: failures from one address before back-off starts (addresses never lock:
        a district office shares one).
    :ivar backoff_max: longest back-off, seconds; back-off doubles from 1 s up to it.
    :ivar hash_concurrency: password hashes at once per process (None: CPU cores).
    :ivar hash_wait: seconds a login waits for a hashing slot before 503.
    """

    free_failures: int = 3
    lockout_failures: int = 10
    window: float = 900.0
    lockout: float = 900.0
    address_free_failures: int = 20
    backoff_max: float = 60.0
    hash_concurrency: int | None = None
    hash_wait: float = 2.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoginPolicy:
        """The policy of an app's configuration (``LOGIN_*`` keys, defaults in :data:`server.DEFAULTS`)."""
        concurrency = config.get("LOGIN_HASH_CONCURRENCY")
        return cls(free_failures=int(config["LOGIN_FREE_FAILURES"]),
                   lockout_failures=int(config["LOGIN_LOCKOUT_FAILURES"]),
                   window=float(config["LOGIN_WINDOW"]), lockout=float(config["LOGIN_LOCKOUT"]),
                   address_free_failures=int(config["LOGIN_ADDRESS_FREE_FAILURES"]),
                   backoff_max=float(config["LOGIN_BACKOFF_MAX"]),
                   hash_concurrency=int(concurrency) if concurrency is not None else None,
                   hash_wait=float(config["LOGIN_HASH_WAIT"]))

    def delay(self, failures: int, free: int) -> float:
        """Back-off after ``failures`` failures, seconds: 0 up to ``free``, then 1, 2, 4... to :attr:`backoff_max`."""
        if failures <= free:
            return 0.0
        return float(min(2.0 ** min(failures - free - 1, 62), self.backoff_max))


def sanitised(text: str, limit: int = AUDITED_NAME_MAX) -> str:
    """``text`` with every non-printable character (control, format, line separators, RTL
    overrides, zero-width) written as ``\\uXXXX``, at most ``limit`` characters in all: safe in
    the audit log, a log file and an admin's terminal."""
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else f"\\u{ord(ch):04x}"
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def account_key(username: str) -> str:
    """Throttle key of the account ``username`` (any case: the stored form)."""
    return "account:" + sanitised(normalise_username(username), KEY_LENGTH - len("account:"))


def address_key(address: str | None) -> str:
    """Throttle key of a client address: the IPv4 address, or the IPv6 ``/64`` (one subscriber's prefix)."""
    text = address or "unknown"
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "address:" + sanitised(text, AUDITED_NAME_MAX)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"address:{ip}"


#: Times :func:`_locked_row` retries when the row it waited for was deleted meanwhile.
_ROW_ATTEMPTS = 5


def _locked_row(session: Session, key: str, now: dt.datetime) -> LoginThrottle:
    """The throttle row of ``key``, created if missing, locked for this transaction (``SELECT ... FOR UPDATE``).

    On PostgreSQL another login may hold the row and delete it (a success) before this one
    gets it: ``FOR UPDATE`` then finds nothing, and the row is created again.

    :raises RuntimeError: the row vanished :data:`_ROW_ATTEMPTS` times in a row (never seen).
    """
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for _ in range(_ROW_ATTEMPTS):
        session.execute(insert(LoginThrottle).values(key=key, failures=0, last_failure=now)
                        .on_conflict_do_nothing(index_elements=["key"]))
        row = session.scalars(select(LoginThrottle).where(LoginThrottle.key == key)
                              .with_for_update().execution_options(populate_existing=True)).one_or_none()
        if row is not None:
            return row
    raise RuntimeError(f"throttle row {key!r} deleted {_ROW_ATTEMPTS} times while waiting for it")


def _seconds(until: dt.datetime, now: dt.datetime) -> int:
    """Whole seconds from ``now`` to ``until``, at least 1 (a ``Retry-After`` value)."""
    return max(1, math.ceil((until - now).total_seconds()))


def _refusal(row: LoginThrottle, now: dt.datetime, policy: LoginPolicy, lockable: bool) -> LoginThrottled | None:
    """Why ``row`` refuses an attempt now, or None; restarts a count whose window or lock has passed."""
    if row.locked_until is not None:
        if row.locked_until > now:
            return LoginLocked("too many failed logins: this account is locked; try later or ask an admin",
                               retry_after=_seconds(row.locked_until, now))
        row.failures, row.locked_until, row.next_attempt_at = 0, None, None  # the lock has ended
    if row.failures and (now - row.last_failure).total_seconds() >= policy.window:
        row.failures, row.next_attempt_at = 0, None  # quiet for a whole window: forgiven
    if row.next_attempt_at is not None and row.next_attempt_at > now:
        return LoginThrottled("too many failed logins: wait before the next attempt",
                              retry_after=_seconds(row.next_attempt_at, now))
    if lockable and row.failures >= policy.lockout_failures:  # the last allowed attempt is being checked
        return LoginThrottled("too many failed logins: wait before the next attempt", retry_after=1)
    return None


def _count(row: LoginThrottle, now: dt.datetime, policy: LoginPolicy, free: int, change: int) -> None:
    """Add ``change`` (+1 reserve, -1 give back) to a row's count and set its back-off."""
    row.failures = max(0, row.failures + change)
    if change > 0:
        row.last_failure = now
    delay = policy.delay(row.failures, free)
    if change > 0 and delay:
        row.next_attempt_at = now + dt.timedelta(seconds=delay)
    elif not delay:
        row.next_attempt_at = None


#: Stale rows one failed login deletes at most.
PRUNE_BATCH = 100


def _prune(session: Session, now: dt.datetime, policy: LoginPolicy) -> None:
    """Delete rows whose count would restart anyway and that hold no lock (keeps the table small).

    Rows another transaction holds are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
    pruning never waits for, or deadlocks with, a login in progress.
    """
    stale = now - dt.timedelta(seconds=max(policy.window, policy.backoff_max))
    keys = (select(LoginThrottle.key)
            .where(LoginThrottle.last_failure < stale,
                   or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now))
            .limit(PRUNE_BATCH).with_for_update(skip_locked=True))
    session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(keys.scalar_subquery())),
                    execution_options={"synchronize_session": False})


def _target(person: Person | None, tried: str) -> str:
    return f"person:{person.id}" if person is not None else f"username:{tried}"


def password_login(write_session: Callable[[], Session], username: str, password: str, *, address: str | None,
                   ttl: dt.timedelta, policy: LoginPolicy, roles: Collection[PersonRole] | None = None,
                   via: str | None = None) -> tuple[str, Person, dt.datetime]:
    """Check a password under the throttling policy and issue a bearer token (commits).

    :param write_session: ends any open transaction and returns the session with a write
        transaction begun (:meth:`server.extensions.Database.write_session`); called once per
        step, so the password is checked with no transaction open.
    :param username: the name typed (any case; at most 64 characters are looked at).
    :param address: the client's IP address (after the trusted proxies, docs/operations.md).
    :param ttl: how long the token lives.
    :param roles: roles that may log in here (None: any); the right password of another
        role is :class:`Forbidden` and counts as a success for the throttle.
    :param via: where the login came from (``audit-ui``), recorded in the audit log.
    :returns: (token, person, expiry as aware UTC).
    :raises LoginLocked: the account is locked (the password is not checked).
    :raises LoginThrottled: account or address in back-off (the password is not checked).
    :raises ServerBusy: no password hashing slot came free (nothing is counted).
    :raises AuthenticationFailed: unknown user, wrong password or disabled account (one message).
    :raises Forbidden: the right password, but not one of ``roles``.
    """
    username = username[:64]
    tried = sanitised(username)
    where = {"via": via} if via else {}
    acct_key, addr_key = account_key(username), address_key(address)
    addr_shown = addr_key.split(":", 1)[1]
    now = utcnow()

    # 1. reserve the attempt (or refuse it)
    session = write_session()
    account = _locked_row(session, acct_key, now)
    client = _locked_row(session, addr_key, now)
    refusal = (_refusal(account, now, policy, lockable=True)
               or _refusal(client, now, policy, lockable=False))
    if refusal is not None:
        session.commit()  # keeps restarted counts
        log.warning("login refused (%s) for %s from %s, retry after %d s", refusal.code, tried, addr_shown,
                    refusal.retry_after)
        raise refusal
    _count(account, now, policy, policy.free_failures, +1)
    _count(client, now, policy, policy.address_free_failures, +1)
    person = session.scalars(select(Person).where(username_is(username))).one_or_none()
    stored = person.password_hash if person is not None else None
    session.commit()

    # 2. check the password (no transaction open: scrypt never holds a database lock)
    try:
        ok = verify_password(stored, password, limit=policy.hash_concurrency, wait_s=policy.hash_wait)
    except ServerBusy:
        session = write_session()
        _count(_locked_row(session, acct_key, now), now, policy, policy.free_failures, -1)
        _count(_locked_row(session, addr_key, now), now, policy, policy.address_free_failures, -1)
        session.commit()
        raise

    # 3. settle
    now = utcnow()
    session = write_session()
    account = _locked_row(session, acct_key, now)
    client = _locked_row(session, addr_key, now)
    if ok and person is not None and not person.disabled:
        session.execute(delete(LoginThrottle).where(LoginThrottle.key == acct_key))
        _count(client, now, policy, policy.address_free_failures, -1)
        if roles is not None and person.role not in roles:
            session.commit()
            raise Forbidden(f"role {person.role.value} may not log in here", needed=[r.value for r in roles])
        token, expires = issue_token(session, person, ttl)
        audit(session, person, "login", f"person:{person.id}", **where)
        session.commit()
        return token, person, expires
    audit(session, None, "login.failed", _target(person, tried), username=tried, address=addr_shown,
          failures=account.failures, **where)
    if account.failures >= policy.lockout_failures and account.locked_until is None:
        account.locked_until = now + dt.timedelta(seconds=policy.lockout)
        account.next_attempt_at = account.locked_until
        audit(session, None, "login.locked", _target(person, tried), username=tried, address=addr_shown,
              failures=account.failures, until=account.locked_until.isoformat())
        log.warning("login: account %s locked until %s after %d failures (last from %s)", tried,
                    account.locked_until.isoformat(), account.failures, addr_shown)
    _prune(session, now, policy)
    session.commit()
    raise AuthenticationFailed("wrong username or password")


def unlock(session: Session, username: str) -> bool:
    """Lift the lock-out and back-off of the account ``username`` (an admin's action; the caller audits and commits).

    :returns: whether there was anything to lift.
    """
    result = session.execute(delete(LoginThrottle).where(LoginThrottle.key == account_key(username)))
    return bool(getattr(result, "rowcount", 0))


def locked_accounts(session: Session, now: dt.datetime | None = None) -> list[LoginThrottle]:
    """Accounts locked or in back-off now (for an admin's overview)."""
    now = now or utcnow()
    return list(session.scalars(select(LoginThrottle).where(
        LoginThrottle.key.startswith("account:"),
        or_(LoginThrottle.locked_until > now, and_(LoginThrottle.next_attempt_at.is_not(None),
                                                   LoginThrottle.next_attempt_at > now)))
        .order_by(LoginThrottle.key)))
