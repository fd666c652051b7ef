"""Reading stored signed entries for display: the conflicting newcomer of a ``journal_conflict``,
a rejected entry, a DECLINED entry's reason, a fallback entry's step and approver.

The server keeps every entry's exact COSE_Sign1 bytes (RFC 9052 §4.2). Displaying one
needs its claims only, not a new verification: the stored row was verified at upload,
a conflict's newcomer was verified before it was set aside, and a rejected entry is
shown *because* it failed. So the payload is decoded without a signature check, and
anything that does not decode is shown as undecodable rather than raising.
"""

from __future__ import annotations

from typing import Any

import cbor2

from cardlib.records.cose import parse_sign1_layout
from cardlib.records.errors import RecordError
from cardlib.records.journal import Claim, JournalEntry


def decode_entry(raw: bytes) -> JournalEntry | None:
    """The claims of a signed journal entry, unverified; ``None`` if they do not decode.

    Only the layout this project signs is read (:func:`cardlib.records.cose.parse_sign1_layout`).
    """
    parts = parse_sign1_layout(raw)
    if parts is None:
        return None
    try:
        return JournalEntry.from_claims(cbor2.loads(parts[3]))
    except (RecordError, cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
        return None


def decline_reason(raw: bytes) -> str | None:
    """A DECLINED entry's signed reason code (``nothing_left``...), else ``None``."""
    parts = parse_sign1_layout(raw)
    if parts is None:
        return None
    try:
        claims: Any = cbor2.loads(parts[3])
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
        return None
    reason = claims.get(int(Claim.DECLINE_REASON)) if isinstance(claims, dict) else None
    return reason if isinstance(reason, str) else None


def fallback_of(raw: bytes) -> tuple[str, str] | None:
    """A fallback entry's signed step and approver (claims 21 and 22, docs/fallback.md), else ``None``.

    :returns: ``("qr" | "manual", approver id)`` for a FALLBACK entry or a refused fallback's
        DECLINED entry; the approver is ``""`` if the entry names none.
    """
    parts = parse_sign1_layout(raw)
    if parts is None:
        return None
    try:
        claims: Any = cbor2.loads(parts[3])
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    step, who = claims.get(int(Claim.FALLBACK)), claims.get(int(Claim.APPROVED_BY))
    if not isinstance(step, str):
        return None
    return step, who if isinstance(who, str) else ""
