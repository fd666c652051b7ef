"""A finding's summary in the auditor's language.

Reconciliation writes each summary once, in English, with the numbers filled in
(``server/reconcile/card_checks.py``, ``terminal_checks.py``); the stored text is what
exports carry. The page shows it translated: each known sentence shape is a pattern
whose named groups fill the gettext message of the same shape, so the Indonesian
catalogue (``locale/id/LC_MESSAGES/audit.po``) holds the wording. A summary of a shape
not listed here (a check added later) is shown as stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def N_(message: str) -> str:  # noqa: N802 - gettext's conventional marker name
    """Mark ``message`` for extraction (babel's ``N_``) without translating it here."""
    return message


_D = r"\d+"
#: (pattern of the stored English summary, gettext message with the same named fields).
SHAPES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p + r"\Z"), m) for p, m in (
    (r"card (?P<card>\S+): slot state forked at seq (?P<seqs>[\d, ]+) \((?P<n>\d+) redemptions at "
     r"(?P<terminals>\d+) terminals\) — clone or replay",
     N_("card %(card)s: slot state forked at seq %(seqs)s (%(n)s redemptions at %(terminals)s terminals) "
        "— clone or replay")),
    (r"card (?P<card>\S+): same chip \(counter rising\) but slot seq went back from (?P<a>\d+) to (?P<b>\d+) "
     r"— restored from an old dump",
     N_("card %(card)s: same chip (counter rising) but slot seq went back from %(a)s to %(b)s "
        "— restored from an old dump")),
    (r"card (?P<card>\S+) UID (?P<uid>\S+): NFC counter fell from (?P<a>\d+) to (?P<b>\d+) "
     r"\((?P<p>\S+) → (?P<t>\S+)\) — a second chip",
     N_("card %(card)s UID %(uid)s: NFC counter fell from %(a)s to %(b)s (%(p)s → %(t)s) — a second chip")),
    (r"card (?P<card>\S+): slot seq (?P<a>\d+) → (?P<b>\d+): (?P<n>\d+) redemption\(s\) without a journal entry",
     N_("card %(card)s: slot seq %(a)s → %(b)s: %(n)s redemption(s) without a journal entry")),
    (r"card (?P<card>\S+): (?P<programme>\S+) in cycle (?P<cycle>\S+): (?P<total>-?\d+) redeemed of "
     r"(?P<entitled>-?\d+) \(remaining (?P<left>-?\d+)\)",
     N_("card %(card)s: %(programme)s in cycle %(cycle)s: %(total)s redeemed of %(entitled)s "
        "(remaining %(left)s)")),
    (r"card (?P<card>\S+): (?P<n>\d+) redemptions after its revocation",
     N_("card %(card)s: %(n)s redemptions after its revocation")),
    (r"card (?P<card>\S+): (?P<p>\S+) → (?P<t>\S+), (?P<km>\d+) km in (?P<min>\d+) min",
     N_("card %(card)s: %(p)s → %(t)s, %(km)s km in %(min)s min")),
    (r"card (?P<card>\S+): (?P<n>\d+) redemption\(s\) dated before its issuance "
     r"\((?P<m>\d+) at the fallback desk\)",
     N_("card %(card)s: %(n)s redemption(s) dated before its issuance (%(m)s at the fallback desk)")),
    (r"card (?P<card>\S+): (?P<n>\d+) redemption\(s\) on a card id no issuance names "
     r"\((?P<m>\d+) at the fallback desk\)",
     N_("card %(card)s: %(n)s redemption(s) on a card id no issuance names (%(m)s at the fallback desk)")),
    (r"terminal (?P<t>\S+): entries (?P<a>\d+)\.\.(?P<b>\d+) missing \((?P<n>\d+)\)",
     N_("terminal %(t)s: entries %(a)s..%(b)s missing (%(n)s)")),
    (r"terminal (?P<t>\S+): seq (?P<s>\d+) does not link to seq (?P<p>\d+)",
     N_("terminal %(t)s: seq %(s)s does not link to seq %(p)s")),
    (r"terminal (?P<t>\S+): clock went back (?P<n>-?\d+) s between seq (?P<a>\d+) and (?P<b>\d+)",
     N_("terminal %(t)s: clock went back %(n)s s between seq %(a)s and %(b)s")),
    (r"terminal (?P<t>\S+): a second, different entry signed for seq (?P<s>\d+)",
     N_("terminal %(t)s: a second, different entry signed for seq %(s)s")),
    (r"terminal (?P<t>\S+): (?P<n>\d+) uploaded entries rejected \((?P<r>[^)]+)\)",
     N_("terminal %(t)s: %(n)s uploaded entries rejected (%(r)s)")),
    (r"terminal (?P<t>\S+): (?P<n>\d+) entries signed after its key was revoked/compromised",
     N_("terminal %(t)s: %(n)s entries signed after its key was revoked/compromised")),
    (r"terminal (?P<t>\S+) boot (?P<b>\d+): wall clock moved (?P<n>-?\d+) s against its monotonic clock",
     N_("terminal %(t)s boot %(b)s: wall clock moved %(n)s s against its monotonic clock")),
    (r"terminal (?P<t>\S+): entries dated up to (?P<n>-?\d+) s after the server received them",
     N_("terminal %(t)s: entries dated up to %(n)s s after the server received them")),
    (r"terminal (?P<t>\S+): (?P<n>\d+) stored entries do not match their signature \((?P<r>.*)\)",
     N_("terminal %(t)s: %(n)s stored entries do not match their signature (%(r)s)")),
))


def translate_summary(summary: str, gettext: Callable[[str], str]) -> str:
    """``summary`` in the language of ``gettext`` when its shape is known, else unchanged.

    :param gettext: the page catalogue's ``gettext`` (identity for English).
    """
    for pattern, message in SHAPES:
        m = pattern.match(summary)
        if m:
            return gettext(message) % m.groupdict()
    return summary
