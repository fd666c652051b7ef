"""Receipt codes of FALLBACK payouts stored before they were indexed: ``receipt_codes`` back-fill.

A counter prints a receipt code for a QR or supervisor payout (journal kind FALLBACK, 11) as for a
card tap's COMMIT or FINISHED (docs/fallback.md). The server's index of codes
(:func:`server.audit.receipts.index_receipts`) took FALLBACK entries only from commit d95b95f on, and
it extends itself from ``LOOKBACK`` (10,000) journal ids below the newest indexed one: on a server
with data, FALLBACK rows uploaded before the upgrade and older than that window would never get a
code, so ``huma server receipt``, complaint linking and the auditor's search said no redemption had
the code the beneficiary holds.

Back-fill: the stored FALLBACK rows without a code are read in batches of :data:`BATCH` in
``(terminal_id, seq)`` order, by key, as 0021 does (the unique key every journal layout has: plain,
hash-partitioned by terminal, Citus, docs/scaling.md §5); each code is computed from the row's
``entry_hash`` by :func:`receipt_code_of` (a frozen copy of :func:`cardlib.records.receipt.receipt_code`,
a test keeps them equal) and inserted or ignored (an index_receipts running at the same time may have
added it). Same on SQLite and PostgreSQL.

Complaints: a complaint filed with such a code found no redemption, so it was stored without the card
and household. After the back-fill, a complaint whose code names a FALLBACK entry and which lacks its
card or household is linked as :func:`server.grievances.record_grievance` links a new one (the missing
fields only, and only when every entry the code names has the same card and household); each link is
written to ``audit_log`` as ``grievance.linked`` (no person: the server; ``before``/``after`` the
unchanged status, so the complaint's history shows the link and its reason).

Downgrade: nothing is undone. The codes added are the ones the server itself adds from this release
on (not distinguishable from them, and correct for any revision); the links stay, as their
``audit_log`` rows do.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

#: FALLBACK rows read and codes written per batch.
BATCH = 5_000
#: Journal entry kind FALLBACK (docs/api.md §Journal entry format; frozen here).
_FALLBACK = 11
#: The receipt code's hash context and length (docs/card-format.md, receipts; frozen here).
_CONTEXT = b"huma-betang/receipt/v1"
_CHARS = 8
#: The reason a migration link gives in the complaint's history.
LINK_REASON = "linked by upgrade 0024: the receipt code names a fallback payout stored before it was indexed"


def receipt_code_of(entry_hash: bytes) -> str:
    """``XXXX-XXXX``: the first 40 bits of SHA-256(context ‖ ``entry_hash``), RFC 4648 §6 base32."""
    code = base64.b32encode(hashlib.sha256(_CONTEXT + entry_hash).digest()[:5]).decode("ascii")[:_CHARS]
    return f"{code[:4]}-{code[4:]}"


def backfill(conn: sa.Connection, batch: int = BATCH) -> int:
    """Insert the receipt code of every stored FALLBACK row that has none; returns the rows read (= codes added,
    less any a concurrent indexer added first)."""
    read = sa.text("SELECT j.terminal_id, j.seq, j.id, j.entry_hash FROM journal_entries j "
                   "LEFT JOIN receipt_codes rc ON rc.journal_id = j.id "
                   "WHERE j.kind = :kind AND rc.journal_id IS NULL AND (j.terminal_id, j.seq) > (:t, :s) "
                   "ORDER BY j.terminal_id, j.seq LIMIT :n")
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:  # one statement per batch
        write = sa.text("INSERT INTO receipt_codes (journal_id, code) "
                        "SELECT * FROM unnest(CAST(:i AS bigint[]), CAST(:c AS text[])) ON CONFLICT DO NOTHING")
    else:
        write = sa.text("INSERT OR IGNORE INTO receipt_codes (journal_id, code) VALUES (:i, :c)")
    after, total = ("", -1), 0
    while True:
        rows = conn.execute(read, {"kind": _FALLBACK, "t": after[0], "s": after[1], "n": batch}).all()
        if not rows:
            return total
        total += len(rows)
        codes = [(i, receipt_code_of(bytes(h))) for _, _, i, h in rows]
        if postgresql:
            conn.execute(write, {"i": [c[0] for c in codes], "c": [c[1] for c in codes]})
        else:
            conn.execute(write, [{"i": i, "c": c} for i, c in codes])
        after = (rows[-1][0], rows[-1][1])


def link_complaints(conn: sa.Connection) -> int:
    """Link each complaint whose code names a FALLBACK entry and lacks its card or household; returns those linked."""
    unlinked = conn.execute(sa.text(
        "SELECT id, receipt_code, card_id, household_ref, status FROM grievances "
        "WHERE receipt_code IS NOT NULL AND (card_id IS NULL OR household_ref IS NULL) ORDER BY id")).all()
    named = sa.text("SELECT j.card_id, cp.household_ref, j.kind FROM receipt_codes rc "
                    "JOIN journal_entries j ON j.id = rc.journal_id "
                    "LEFT JOIN card_profiles cp ON cp.card_id = j.card_id WHERE rc.code = :c")
    update = sa.text("UPDATE grievances SET card_id = :card, household_ref = :household WHERE id = :id")
    audit_log = sa.table("audit_log", sa.column("person_id", sa.Integer), sa.column("action", sa.String),
                         sa.column("target", sa.String), sa.column("detail", sa.Text),
                         sa.column("at", sa.DateTime(timezone=True)))
    now = dt.datetime.now(dt.UTC)
    at = now.replace(tzinfo=None) if conn.dialect.name == "sqlite" else now  # UTC text on SQLite (0007)
    linked = 0
    for gid, code, card, household, status in unlinked:
        entries = conn.execute(named, {"c": code}).all()
        pairs = {(c, h) for c, h, _ in entries}
        if len(pairs) != 1 or not any(kind == _FALLBACK for _, _, kind in entries):
            continue
        [(found_card, found_household)] = pairs
        new_card, new_household = card or found_card, household or found_household
        if (new_card, new_household) == (card, household):
            continue
        conn.execute(update, {"card": new_card, "household": new_household, "id": gid})
        detail = {"before": status, "after": status, "reason": LINK_REASON, "receipt_code": code,
                  "card_id": new_card, "household_ref": new_household}
        conn.execute(audit_log.insert().values(person_id=None, action="grievance.linked", target=f"grievance:{gid}",
                                               detail=json.dumps(detail, sort_keys=True), at=at))
        linked += 1
    return linked


def upgrade() -> None:
    conn = op.get_bind()
    backfill(conn)
    link_complaints(conn)


def downgrade() -> None:
    pass  # nothing to undo (module docstring)
