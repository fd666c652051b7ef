"""Tables of the auditor's view (no Flask imports); imported by :mod:`server.models` for ``Base.metadata``.

Added by migration ``0010_programme_dashboard``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from server.models import Base


class ReceiptCode(Base):
    """The receipt code of one COMMIT/FINISHED/FALLBACK journal entry, for the auditor's search.

    ``code`` is ``XXXX-XXXX`` as the counter showed it (:func:`server.audit.receipts.receipt_code`).
    Codes are 40 bits of a hash, so two entries may share one: a search lists every match.
    """

    __tablename__ = "receipt_codes"

    journal_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                            ForeignKey("journal_entries.id"), primary_key=True,
                                            autoincrement=False)
    code: Mapped[str] = mapped_column(String(9), index=True)
