"""The signed decline reason of a DECLINED entry as a column: ``journal_entries.decline_reason``.

/audit/declines looked for copy attempts by searching each DECLINED row's signed bytes for a reason's
CBOR text (``instr`` / ``position``) and decoding the rows found, at most a bound per page: a text
claim of another kind (programme, card id) holding those bytes matched too, and enough such rows
hid the real attempts behind the bound. The upload now stores claim 20 (docs/api.md §Journal entry
format) of the verified entry in this column, and the page reads one reason's rows through
``ix_journal_decline_reason (decline_reason, wall_time, id)``, partial on ``decline_reason IS NOT
NULL`` (the index holds DECLINED entries only).

Back-fill: the stored DECLINED rows are read in batches of :data:`BATCH` in ``(terminal_id, seq)``
order, by key (the unique key every journal layout has: plain, hash-partitioned by terminal, Citus,
docs/scaling.md §5), their claim 20 decoded from the exact signed bytes (no signature check: every
stored row was verified at upload) and written back by the same key, so on a partitioned or
distributed table each read and each update touches one terminal's partition or shard. The column
is added without a default (PostgreSQL: a catalogue change, no table rewrite); the index is built
after the back-fill. A claim that is not text of 1..32 characters (the upload refuses those) is
left NULL. Same on SQLite and PostgreSQL.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from typing import Any

import cbor2
import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

#: DECLINED rows decoded and updated per batch.
BATCH = 5_000
#: Journal entry kind DECLINED and the decline reason claim (docs/api.md §Journal entry format; frozen here).
_DECLINED = 6
_DECLINE_REASON = 20
_COSE_SIGN1_TAG = 18
_MAX_REASON = 32


def decline_reason_of(raw: bytes) -> str | None:
    """Claim 20 of a stored journal entry's COSE_Sign1 bytes (RFC 9052 §4.2), else ``None``."""
    try:
        message: Any = cbor2.loads(raw)
        if isinstance(message, cbor2.CBORTag):
            if message.tag != _COSE_SIGN1_TAG:
                return None
            message = message.value
        if not isinstance(message, list) or len(message) != 4 or not isinstance(message[2], bytes):
            return None
        claims: Any = cbor2.loads(message[2])
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
        return None
    reason = claims.get(_DECLINE_REASON) if isinstance(claims, dict) else None
    return reason if isinstance(reason, str) and 0 < len(reason) <= _MAX_REASON else None


def backfill(conn: sa.Connection, batch: int = BATCH) -> int:
    """Fill ``decline_reason`` of every stored DECLINED row from its signed bytes; returns the rows read."""
    read = sa.text("SELECT terminal_id, seq, raw FROM journal_entries WHERE kind = :kind "
                   "AND (terminal_id, seq) > (:t, :s) ORDER BY terminal_id, seq LIMIT :n")
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:  # one statement per batch (a row-per-statement executemany took ~4x as long)
        write = sa.text("UPDATE journal_entries AS j SET decline_reason = v.r "
                        "FROM unnest(CAST(:t AS text[]), CAST(:s AS bigint[]), CAST(:r AS text[])) AS v (t, s, r) "
                        "WHERE j.terminal_id = v.t AND j.seq = v.s")
    else:
        write = sa.text("UPDATE journal_entries SET decline_reason = :r WHERE terminal_id = :t AND seq = :s")
    after, total = ("", -1), 0
    while True:
        rows = conn.execute(read, {"kind": _DECLINED, "t": after[0], "s": after[1], "n": batch}).all()
        if not rows:
            return total
        total += len(rows)
        found = [(t, s, reason) for t, s, raw in rows if (reason := decline_reason_of(bytes(raw))) is not None]
        if found and postgresql:
            conn.execute(write, {"t": [f[0] for f in found], "s": [f[1] for f in found], "r": [f[2] for f in found]})
        elif found:
            conn.execute(write, [{"t": t, "s": s, "r": r} for t, s, r in found])
        after = (rows[-1][0], rows[-1][1])


def upgrade() -> None:
    op.add_column("journal_entries", sa.Column("decline_reason", sa.String(32), nullable=True))
    backfill(op.get_bind())
    op.create_index("ix_journal_decline_reason", "journal_entries", ["decline_reason", "wall_time", "id"],
                    postgresql_where=sa.text("decline_reason IS NOT NULL"),
                    sqlite_where=sa.text("decline_reason IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_journal_decline_reason", table_name="journal_entries")
    # ALTER TABLE ... DROP COLUMN: PostgreSQL, and SQLite >= 3.35 (no table copy: other tables reference this one)
    op.execute("ALTER TABLE journal_entries DROP COLUMN decline_reason")
