"""Journal heads: a counter's signed "my journal ends at seq N with hash H" (no Flask).

A counter reports its head with every sync (``POST /api/v1/journal/heads``), before it
uploads. The server keeps every head its uploads have not reached yet and the highest
one per terminal (:class:`server.reconcile.models.ReportedHead`); reconciliation reports
a head the stored journal never reaches, or reaches with another hash, as
``journal_tail_missing`` (:func:`server.reconcile.terminal_checks.journal_tails`). So an
insider who deletes a counter's unsent tail is seen once one signed head naming that
tail has reached the server (docs/security.md "What an insider with root on a counter
can still hide, and for how long").
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import Table, and_, delete, exists, select
from sqlalchemy.orm import Session

from cardlib.records.cose import CoseKey
from cardlib.records.errors import CoseError, UnknownKid
from cardlib.records.statements import JournalHead as SignedHead
from cardlib.records.statements import StatementError, verify_head
from server.errors import BadRequest, Forbidden, TerminalRevoked, UnknownTerminal
from server.models import JournalEntryRow, Terminal, TerminalStatus
from server.reconcile.models import ReportedHead
from server.types import utcnow
from server.upload import cose_key_of, insert_or_ignore

__all__ = ["record_head"]


def _verified(session: Session, message: bytes) -> tuple[SignedHead, Terminal]:
    found: dict[str, Terminal] = {}

    def resolve(kid: bytes) -> CoseKey:
        terminal = session.scalars(select(Terminal).where(Terminal.kid == kid)).one_or_none()
        if terminal is None:
            raise UnknownKid(kid)
        found["t"] = terminal
        return cose_key_of(terminal)

    try:
        head = verify_head(message, resolve)
    except UnknownKid as exc:
        raise UnknownTerminal(f"no enrolled terminal key with kid {exc.kid.hex()}") from exc
    except (CoseError, StatementError) as exc:
        raise BadRequest(f"journal head does not verify: {exc}", field="head", reason="bad_head") from exc
    terminal = found["t"]
    if head.terminal_id != terminal.terminal_id:
        raise BadRequest("journal head names another terminal than its key", field="head", reason="bad_head")
    if terminal.status is TerminalStatus.REVOKED:
        raise TerminalRevoked(f"terminal {terminal.terminal_id} is revoked")
    if terminal.status is not TerminalStatus.APPROVED:
        raise Forbidden(f"terminal {terminal.terminal_id} is {terminal.status.value}, not approved",
                        reason="terminal_not_approved")
    return head, terminal


def record_head(session: Session, message: bytes, now: dt.datetime | None = None) -> tuple[SignedHead, bool]:
    """Verify and store a signed journal head; prune the heads the stored journal reaches.

    :param message: the head's COSE_Sign1 bytes (:func:`cardlib.records.statements.sign_head`).
    :param now: receipt instant (aware UTC); default now.
    :returns: the verified head and whether it was new (the same head reported again is not).
    :raises BadRequest: the head does not verify (``reason`` ``bad_head``).
    :raises UnknownTerminal, TerminalRevoked, Forbidden: as for an upload
        (:func:`server.upload.authenticate`).
    """
    head, terminal = _verified(session, message)
    at = now or utcnow()
    try:
        signed_at = dt.datetime.fromtimestamp(head.time, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadRequest("journal head time is no date", field="head", reason="bad_head") from exc
    result = session.execute(insert_or_ignore(session, ReportedHead).values(
        terminal_id=terminal.terminal_id, boot_id=head.boot_id, seq=head.seq, entry_hash=head.entry_hash,
        signed_at=signed_at, received_at=at, message=message))
    heads = cast(Table, ReportedHead.__table__)  # a declarative model's __table__ is typed FromClause
    reached = exists().where(and_(JournalEntryRow.terminal_id == heads.c.terminal_id,
                                  JournalEntryRow.seq == heads.c.seq,
                                  JournalEntryRow.entry_hash == heads.c.entry_hash))
    highest = select(heads.c.seq).where(heads.c.terminal_id == terminal.terminal_id).order_by(
        heads.c.seq.desc()).limit(1).scalar_subquery()
    session.execute(delete(heads).where(heads.c.terminal_id == terminal.terminal_id, heads.c.seq < highest,
                                        reached))
    return head, bool(result.rowcount)
