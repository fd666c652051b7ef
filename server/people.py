"""People administration: add, list, disable/enable, replace a password; each change audited.

The use cases behind ``huma server people`` (and the API's ``POST /people``): the checks and
the audit row live here, the caller parses its input, commits and prints. Hashing, tokens
and the lower-level helpers are :mod:`server.auth`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.auth import audit, check_username, create_person, find_person, set_disabled, set_password, username_is
from server.errors import BadRequest, Conflict
from server.logins import unlock
from server.models import Person, PersonRole

__all__ = ["add_person", "change_password", "list_people", "set_person_disabled"]


def list_people(session: Session) -> list[Person]:
    """Every person, in id (creation) order."""
    return list(session.scalars(select(Person).order_by(Person.id)))


def add_person(session: Session, username: str, password: str, role: PersonRole, by: Person | None,
               **audit_detail: Any) -> Person:
    """Create a person after every check, audited as ``person.create``; the caller commits.

    :param username: stored in lower case (:func:`server.auth.normalise_username`).
    :param by: who adds them (None: a console action, said by ``audit_detail``).
    :raises BadRequest: a username :func:`server.auth.check_username` refuses (``field: username``),
        or a password shorter than :data:`server.auth.MIN_PASSWORD_LENGTH` characters (``field: password``).
    :raises Conflict: a person of that name exists, in any case (``Auditor`` is ``auditor``).
    """
    check_username(username)
    existing = session.scalars(select(Person.username).where(username_is(username))).first()
    if existing is not None:
        raise Conflict(f"person {existing!r} exists (use `huma server people set-password`)")
    try:
        person = create_person(session, username, password, role)
    except ValueError as exc:
        raise BadRequest(str(exc), field="password") from None
    audit(session, by, "person.create", f"person:{person.id}", username=person.username, role=role.value,
          **audit_detail)
    return person


def set_person_disabled(session: Session, username: str, disabled: bool, by: Person | None,
                        **audit_detail: Any) -> Person:
    """Disable a login and end its sessions, or re-enable it; audited; the caller commits.

    :param by: who does it (None: a console action, said by ``audit_detail``).
    :raises NotFound: no such person.
    """
    person = set_disabled(session, username, disabled)
    audit(session, by, "person.disable" if disabled else "person.enable", f"person:{person.id}",
          username=username, **audit_detail)
    return person


def change_password(session: Session, username: str, password: str, by: Person | None,
                    **audit_detail: Any) -> Person:
    """Replace a person's password and end their sessions; audited (never the password); the caller commits.

    :param by: who does it (None: a console action, said by ``audit_detail``).
    :raises NotFound: no such person.
    :raises BadRequest: a username :func:`server.auth.check_username` refuses, or a password
        shorter than :data:`server.auth.MIN_PASSWORD_LENGTH` characters (``field: password``).
    """
    try:
        person = set_password(session, username, password)
    except ValueError as exc:
        raise BadRequest(str(exc), field="password") from None
    audit(session, by, "person.set_password", f"person:{person.id}", username=username, **audit_detail)
    return person


def unlock_login(session: Session, username: str, by: Person | None, **audit_detail: Any) -> bool:
    """Lift a person's login lock-out and back-off before it ends by itself; audited; the caller commits.

    :param by: who does it (None: a console action, said by ``audit_detail``).
    :returns: whether there was a lock-out or back-off to lift.
    :raises NotFound: no such person.
    """
    person = find_person(session, username)
    lifted = unlock(session, person.username)
    audit(session, by, "login.unlock", f"person:{person.id}", username=person.username, lifted=lifted,
          **audit_detail)
    return lifted
