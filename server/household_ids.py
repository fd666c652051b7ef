"""Which household an office command means: a typed reference or printed label, resolved here.

:func:`cardlib.records.household_label.parse_household_id` reads what was typed (16 hex
digits or ``HB-XXXXXXXX``); a label names only the reference's first 8 hex digits, so this
module looks it up among the households of registered cards (``card_profiles.household_ref``)
and refuses a label that fits none or more than one.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.records.household_label import parse_household_id
from server.errors import BadRequest, NotFound
from server.reconcile.models import CardProfile

__all__ = ["AmbiguousHouseholdLabel", "resolve_household"]


class AmbiguousHouseholdLabel(BadRequest):
    """A printed label (32 bits of the reference) fits more than one registered household."""

    code = "ambiguous_household_label"


def resolve_household(session: Session, text: str) -> str:
    """The full household reference ``text`` names.

    A full reference is returned as typed (lower case), known or not: the caller says what
    it lacks. A label must fit exactly one household with a registered card.

    :param session: a database session.
    :param text: ``0123456789abcdef`` or ``HB-01234567`` (either case).
    :returns: 16 lower-case hex digits.
    :raises cardlib.records.household_label.HouseholdIdError: neither form.
    :raises NotFound: a label no registered card's household starts with.
    :raises AmbiguousHouseholdLabel: a label two or more households start with (they are listed).
    """
    hid = parse_household_id(text)
    if hid.ref is not None:
        return hid.ref
    refs = sorted(str(r) for r in session.scalars(
        select(CardProfile.household_ref).where(CardProfile.household_ref.like(hid.prefix + "%")).distinct().limit(11)))
    if not refs:
        raise NotFound(f"no registered card serves a household labelled {hid.label}")
    if len(refs) > 1:
        listed = ", ".join(refs[:10]) + (", …" if len(refs) > 10 else "")
        raise AmbiguousHouseholdLabel(f"the label {hid.label} fits {len(refs)} households ({listed}): "
                                      "give the full 16-digit reference")
    return refs[0]
