"""Household references as people type them: the full reference or the label printed for it.

A household's pseudonymous reference is 8 bytes (``IdentityClaims.household_ref``), written as
16 lower-case hex digits by the registry, the server and the issuance file. Counters, slips and
letters print the shorter *label* ``HB-`` + the reference's first 8 hex digits in upper case
(:func:`household_label`). The counter formats it with this module, and every office
command that takes a household parses what was typed with :func:`parse_household_id`,
so both forms are read one way. A label names a 32-bit prefix, not the household: the
server resolves it against the households it knows and refuses an ambiguous one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cardlib.records.errors import RecordError

__all__ = ["LABEL_HEX_DIGITS", "LABEL_PREFIX", "HouseholdId", "HouseholdIdError", "household_label",
           "parse_household_id"]

#: What every printed household label starts with.
LABEL_PREFIX = "HB-"
#: Hex digits of the reference a label shows (the first ones).
LABEL_HEX_DIGITS = 8
#: Hex digits of a full reference (8 bytes).
REF_HEX_DIGITS = 16

_FULL = re.compile(r"[0-9a-fA-F]{16}")
_LABEL = re.compile(r"HB-([0-9a-fA-F]{8})", re.IGNORECASE)


class HouseholdIdError(RecordError, ValueError):
    """Typed text is neither a household reference (16 hex digits) nor a printed label (``HB-XXXXXXXX``)."""


@dataclass(frozen=True)
class HouseholdId:
    """A household as typed, normalised.

    :ivar prefix: lower-case hex: the whole reference (16 digits) or the label's 8 digits.
    """

    prefix: str

    @property
    def ref(self) -> str | None:
        """The full reference (16 lower-case hex digits) when it was typed whole, else None (a label)."""
        return self.prefix if len(self.prefix) == REF_HEX_DIGITS else None

    @property
    def label(self) -> str:
        """The printed label of this household (``HB-`` + 8 upper-case hex digits)."""
        return LABEL_PREFIX + self.prefix[:LABEL_HEX_DIGITS].upper()


def household_label(ref: bytes) -> str:
    """The label printed on slips, letters and the counter screen: ``HB-`` + first 8 hex digits, upper case.

    :param ref: the household reference (8 bytes; only the first 4 are shown).
    """
    return LABEL_PREFIX + ref.hex()[:LABEL_HEX_DIGITS].upper()


def parse_household_id(text: str) -> HouseholdId:
    """Read a household as a person typed it: ``0123456789abcdef`` or the printed label ``HB-01234567``.

    Surrounding blanks are ignored, hex digits and the ``HB-`` prefix in either case.

    :param text: what was typed.
    :returns: the normalised id (its :attr:`HouseholdId.ref` is None for a label).
    :raises HouseholdIdError: anything else, with the text and both accepted forms in the message.
    """
    value = text.strip()
    if _FULL.fullmatch(value):
        return HouseholdId(value.lower())
    m = _LABEL.fullmatch(value)
    if m:
        return HouseholdId(m.group(1).lower())
    raise HouseholdIdError(f"household {text!r}: expected the reference (16 hex digits, e.g. 0123456789abcdef) "
                           f"or the label printed on cards and letters ({LABEL_PREFIX} and 8 hex digits, "
                           f"e.g. {LABEL_PREFIX}01234567)")
