"""An error's message in the auditor page's language.

The server raises its errors in English (the API's JSON body and the logs keep that text).
An auditor or programme page shows the message translated: as for finding summaries
(:mod:`server.audit.summaries`), each known sentence shape is a pattern whose named groups
fill the gettext message of the same shape (catalogue ``locale/<lang>/LC_MESSAGES/audit.po``).
A ``role`` group is itself translated (:data:`ROLE_NAMES`). A message of a shape not listed
here is shown as raised, marked as English by the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from server.audit.summaries import N_

#: Display names of :class:`server.models.PersonRole` values (msgids).
ROLE_NAMES = {
    "auditor": N_("auditor"),
    "manager": N_("programme manager"),
    "admin": N_("administrator"),
    "technician": N_("technician"),
}

_Q = r"(?P<v>.+)"  # a value as the message quotes it (repr, maybe cut with …)
#: (pattern of the English message, gettext message with the same named fields).
SHAPES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p + r"\Z"), m) for p, m in (
    (r"role (?P<role>\S+) may not use this page", N_("the role %(role)s may not use this page")),
    (r"missing or wrong CSRF token", N_("the form has expired or did not come from this site: open the page again")),
    (r"NUL characters are not allowed", N_("NUL characters are not allowed")),
    (r"no card " + _Q, N_("no card %(v)s")),
    (r"no terminal " + _Q, N_("no terminal %(v)s")),
    (r"no finding " + _Q, N_("no finding %(v)s")),
    (r"no grievance " + _Q, N_("no grievance %(v)s")),
    (r"no household " + _Q, N_("no household %(v)s")),
    (r"uid must be a chip UID: 4, 7 or 10 bytes in hex", N_("uid must be a chip UID: 4, 7 or 10 bytes in hex")),
    (r"no export format " + _Q, N_("no export format %(v)s")),
    (r"no chart " + _Q, N_("no chart %(v)s")),
    (r"no cycle " + _Q, N_("no cycle %(v)s")),
    (r"no benefit cycle is registered yet", N_("no benefit cycle is registered yet")),
    (r"(?P<name>\w+) must be one of (?P<values>\[.*\])", N_("%(name)s must be one of %(values)s")),
    (r"(?P<name>\w+) is one of (?P<values>\[.*\])", N_("%(name)s must be one of %(values)s")),
    (r"not an ISO 8601 instant with offset: " + _Q, N_("not an ISO 8601 instant with offset: %(v)s")),
    (r"select at least one finding", N_("select at least one finding")),
    (r"(?P<n>\d+) findings selected; at most (?P<max>\d+) at once",
     N_("%(n)s findings selected; at most %(max)s at once")),
    (r"the reason contains a NUL character \(U\+0000\)", N_("the reason contains a NUL character (U+0000)")),
    (r"the reason has (?P<n>\d+) characters; at most (?P<max>\d+)",
     N_("the reason has %(n)s characters; at most %(max)s")),
    (r"a finding can be confirmed or dismissed, not reopened by hand",
     N_("a finding can be confirmed or dismissed, not reopened by hand")),
    (r"a reason is required", N_("a reason is required")),
    (r"a reason is required, at most (?P<max>\d+) characters", N_("a reason is required, at most %(max)s characters")),
    (r"cycle must be a cycle id like 20261 \(year and half\), not " + _Q,
     N_("cycle must be a cycle id like 20261 (year and half), not %(v)s")),
    (r"region must be a Kemendagri code in province 62 like 62\.71, not " + _Q,
     N_("region must be a Kemendagri code in province 62 like 62.71, not %(v)s")),
    (r"unknown query parameter\(s\) (?P<unknown>.*); allowed: (?P<allowed>.*)",
     N_("unknown query parameter(s) %(unknown)s; allowed: %(allowed)s")),
    (r"query parameter\(s\) given more than once: (?P<names>.*)",
     N_("query parameter(s) given more than once: %(names)s")),
    (r"(?P<name>\w+) must be an integer from (?P<min>-?\d+) to (?P<max>\d+)",
     N_("%(name)s must be an integer from %(min)s to %(max)s")),
    (r"(?P<name>\w+) must be 1 to (?P<max>\d+) printable ASCII characters",
     N_("%(name)s must be 1 to %(max)s printable ASCII characters")),
    (r"receipt code " + _Q + r" is not XXXX-XXXX", N_("receipt code %(v)s is not XXXX-XXXX")),
    (r"not a receipt code XXXX-XXXX", N_("not a receipt code XXXX-XXXX")),
    (r"(?P<name>\w+) is not 16 lower-case hex digits", N_("%(name)s is not 16 lower-case hex digits")),
    (r"a complaint names a receipt code, a card or a household",
     N_("a complaint names a receipt code, a card or a household")),
    (r"text is required, at most (?P<max>\d+) characters", N_("text is required, at most %(max)s characters")),
    (r"text contains a NUL character \(U\+0000\)", N_("text contains a NUL character (U+0000)")),
    (r"grievance (?P<id>\d+) is (?P<a>\w+): it cannot become (?P<b>\w+)",
     N_("grievance %(id)s is %(a)s: it cannot become %(b)s")),
))


def translate_message(message: str, gettext: Callable[[str], str]) -> str | None:
    """``message`` in the language of ``gettext`` when its shape is known, else ``None``.

    :param message: an error's English text (``str(exc)``).
    :param gettext: the page catalogue's ``gettext`` (identity for English).
    :returns: the translated text, or ``None`` for a shape not in :data:`SHAPES`.
    """
    for pattern, shape in SHAPES:
        m = pattern.match(message)
        if m:
            fields = m.groupdict()
            if "role" in fields:
                fields["role"] = gettext(ROLE_NAMES[fields["role"]]) if fields["role"] in ROLE_NAMES \
                    else fields["role"]
            return gettext(shape) % fields
    return None
