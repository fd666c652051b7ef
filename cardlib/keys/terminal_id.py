"""The one rule for terminal ids, shared by enrolment (``huma keys csr|certify``, the CSR's CN)
and the terminal profile (``firmware_config``, ``terminal_id = "…"``).

A terminal id is 3 to 32 characters: upper-case ASCII letters, digits and ``-``, starting
with a letter or digit, e.g. ``T-6271-0001``. Upper case only, so an id read aloud or typed
from a receipt cannot name two terminals; 32 characters fit a receipt line and the
certificate CN (≤ 64, RFC 5280 ub-common-name). Documented in docs/keys-and-provisioning.md.
"""

from __future__ import annotations

import re
from typing import Final

#: The pattern, usable both by :mod:`re` and as a JSON Schema ``pattern`` (ECMA-262 subset).
TERMINAL_ID_PATTERN: Final = r"^[A-Z0-9][A-Z0-9-]{2,31}$"
TERMINAL_ID_RE: Final = re.compile(TERMINAL_ID_PATTERN)
#: The rule in words, for error messages and schema descriptions.
TERMINAL_ID_RULE: Final = "a terminal id (upper-case letters, digits and -, 3 to 32, e.g. T-6271-0001)"


def check_terminal_id(terminal_id: str) -> str:
    """Check a terminal id against :data:`TERMINAL_ID_PATTERN`.

    :returns: the id unchanged.
    :raises ValueError: the id breaks the rule (the message quotes it and states the rule).
    """
    if not TERMINAL_ID_RE.match(terminal_id):
        raise ValueError(f"{terminal_id!r} is not {TERMINAL_ID_RULE}")
    return terminal_id
