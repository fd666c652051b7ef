"""Receipt codes: what a beneficiary holds after a tap, found again by an auditor.

A counter shows (and may print) ``XXXX-XXXX`` for each payout it journals, a card tap's COMMIT,
a recovered write's FINISHED and a QR or supervisor entry's FALLBACK (docs/fallback.md): the
first 40 bits of SHA-256(``"huma-betang/receipt/v1"`` ‖ entry hash), RFC 4648 base32.
Both the counter and the server compute it with :func:`cardlib.records.receipt.receipt_code`.

The code is not reversible, so the server keeps an index (``receipt_codes``) that
:func:`index_receipts` extends from the journal's newest rows before each search.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cardlib.records.journal import EntryKind
from cardlib.records.receipt import receipt_code
from server.audit.models import ReceiptCode
from server.models import JournalEntryRow
from server.upload import insert_or_ignore

#: Entry kinds a counter gives a receipt for (a redemption that took effect): terminal/tap.py and
#: terminal/secure_tap.py for COMMIT and FINISHED, terminal/fallback.py for FALLBACK.
RECEIPT_KINDS = (int(EntryKind.COMMIT), int(EntryKind.FINISHED), int(EntryKind.FALLBACK))
_CODE = re.compile(r"^[A-Z2-7]{4}-?[A-Z2-7]{4}$")
#: Rows read and written per round trip while indexing.
BATCH = 5000
#: Journal ids below the newest indexed one that are looked at again (late commits).
LOOKBACK = 10_000


def normalise_code(text: str) -> str | None:
    """``text`` as a stored receipt code (upper case, hyphenated), or ``None`` if it cannot be one."""
    text = text.strip().upper()
    if not _CODE.match(text):
        return None
    text = text.replace("-", "")
    return f"{text[:4]}-{text[4:]}"


def index_receipts(session: Session, limit: int | None = None) -> int:
    """Add the receipt codes of journal rows not indexed yet (caller commits).

    Looks at rows from :data:`LOOKBACK` ids below the newest indexed one, not only above
    it: on PostgreSQL an upload holding a lower id may commit after a higher one was
    indexed. Insert-or-ignore, so two searches at once do not collide.

    :param limit: most rows to index in this call (``None``: all).
    :returns: codes added.
    """
    j, rc = JournalEntryRow, ReceiptCode
    start = max((session.scalar(select(func.max(rc.journal_id))) or 0) - LOOKBACK, 0)
    added = 0
    while limit is None or added < limit:
        rows = session.execute(
            select(j.id, j.entry_hash).outerjoin(rc, rc.journal_id == j.id)
            .where(j.id > start, j.kind.in_(RECEIPT_KINDS), rc.journal_id.is_(None))
            .order_by(j.id).limit(BATCH)).all()
        if not rows:
            break
        session.execute(insert_or_ignore(session, rc), [{"journal_id": r.id, "code": receipt_code(r.entry_hash)}
                                                         for r in rows])
        start, added = rows[-1].id, added + len(rows)
    return added
