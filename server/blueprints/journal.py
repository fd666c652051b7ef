"""Journal upload: signed batches from terminals, a result per entry (see :mod:`server.upload`); journal heads.

Every upload answer carries a receipt signed by the server receipt key
(:mod:`server.receipts`): a counter marks an entry uploaded only when the receipt
for its request names it (docs/security.md "Server answers are signed").
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from typing import cast

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from cardlib.records.claims import cycle_of
from cardlib.records.statements import ReceiptLine, Settlement, sign_receipt
from server.db import busy_as_503, is_unreachable
from server.errors import BadRequest
from server.extensions import db
from server.heads import record_head
from server.http import json_body
from server.receipts import receipt_signer
from server.reconcile.settlements import receipt_settlements
from server.reconcile_trigger import after_upload
from server.registry import ensure_cycles
from server.upload import (
    GROUP_MAX_ENTRIES,
    SIGNATURE_HEADER,
    EntryResult,
    GroupCommit,
    Outcome,
    UploadTerminal,
    authenticate,
    parse_body,
    store_entries,
    store_extension_direct,
    verify_batch,
)

log = logging.getLogger(__name__)

bp = Blueprint("journal", __name__, url_prefix="/api/v1/journal")


@bp.post("/batches")
def upload_batch() -> ResponseReturnValue:
    """Upload a signed batch of journal entries.

    Status: 200 when every entry is accepted or duplicate; 409 when some conflict
    (and none is rejected); 422 when some are rejected. Accepted and duplicate
    entries are stored whatever the batch status, so the terminal marks exactly
    those as uploaded.
    """
    body = json_body()  # 413 above MAX_CONTENT_LENGTH; 400 with a reason for bad JSON
    raw = request.get_data(cache=True)  # the exact bytes the envelope signs
    retry_after = int(current_app.config["RETRY_AFTER"])
    with busy_as_503(retry_after):
        # Read outside any SQLAlchemy transaction (server.upload._terminal_by_kid): on SQLite a
        # one-statement read, so no lock is held during the CPU-bound part (the write transaction
        # takes the database's write lock); on PostgreSQL the write goes on in its transaction.
        terminal = _authenticate(request.headers.get(SIGNATURE_HEADER), raw)
    batch = parse_body(body, int(current_app.config["MAX_BATCH_ENTRIES"]))
    rejected, verified = verify_batch(batch, terminal)
    # The province cycles (docs/card-format.md §conventions) the entries' wall times fall in:
    # reconciliation and /audit/regions group redemptions by benefit_cycles rows.
    # Only cycles this process has not seen stored are inserted (server.cycles: a failover forgets them).
    cycles, generation = db.known_cycles.missing(cycle_of(signed.entry.wall_time) for _, signed in verified)
    entries = [signed.entry for _, signed in verified]

    def after(session: Session) -> list[Settlement]:
        # Torn writes of this terminal whose PENDING the request names, as reconciliation settled them.
        settlements = receipt_settlements(session, terminal.terminal_id, entries)
        if cycles:
            ensure_cycles(session, cycles)
        return settlements

    with busy_as_503(retry_after):
        # Without a cycle to insert, a plain extension of the chain is stored by one statement in a
        # transaction of its own (PostgreSQL; server.upload.store_entries).
        group = _group_commit()
        direct: list[EntryResult] | None = None
        stored_already: frozenset[bytes] = frozenset()
        settlements: list[Settlement]
        bind = db.session.bind
        if (len(verified) <= GROUP_MAX_ENTRIES and not cycles and not rejected and group.idle()
                and isinstance(bind, Connection) and not db.session.in_transaction()):
            # No other upload to share a commit with: a plain extension of the chain is stored on the
            # request's connection without a session (server.upload.store_extension_direct); it names
            # no settlement (all its entries are new).
            direct, stored_already = store_extension_direct(bind, terminal.terminal_id, verified, batch.batch_id)
        if direct is not None:
            results, settlements = direct, []
            group.stored_direct()
        elif len(verified) <= GROUP_MAX_ENTRIES and not stored_already:
            # Small batches of concurrent uploads share one transaction (server.upload.GroupCommit);
            # this returns once the batch is committed, with its own results.
            results, settlements = group.store(
                lambda: db.write_session(continue_read=True), terminal, batch.batch_id, verified, rejected,
                after=after, at_once=not cycles)
        else:
            session = db.write_session(continue_read=True)
            results = store_entries(session, terminal, batch.batch_id, verified, rejected,
                                    at_once=not cycles and not stored_already, stored_already=stored_already)
            settlements = after(session)
            session.commit()
    db.known_cycles.add(cycles, generation)
    counts = {o.value: sum(1 for r in results if r.outcome is o) for o in Outcome}
    # RECONCILE_AFTER_UPLOAD: a background incremental run (server.reconcile_trigger); never waits or raises.
    after_upload(current_app._get_current_object(), counts[Outcome.ACCEPTED.value])  # type: ignore[attr-defined]
    status = 200
    lines = [ReceiptLine(r.entry_id or b"", r.seq, r.outcome.value, r.reason.value if r.reason else None)
             for r in results]
    receipt = sign_receipt(receipt_signer(current_app), terminal.terminal_id, raw, lines, time.time(),
                           settlements=settlements)
    payload: dict[str, object] = {"terminal_id": terminal.terminal_id, "batch_id": batch.batch_id,
                                  "counts": counts, "results": [r.to_json() for r in results],
                                  "receipt": base64.b64encode(receipt).decode("ascii")}
    if counts[Outcome.REJECTED.value]:
        status = 422
        payload["error"] = {"code": "entries_rejected",
                            "message": f"{counts['rejected']} entries rejected; see results"}
    elif counts[Outcome.CONFLICT.value]:
        status = 409
        payload["error"] = {"code": "entries_conflict",
                            "message": f"{counts['conflict']} entries conflict with stored ones"}
    return jsonify(payload), status


_GROUP_COMMIT = "huma.group_commit"
_group_lock = threading.Lock()


def _group_commit() -> GroupCommit:
    """This process's :class:`server.upload.GroupCommit` for the current app (made at first use, after
    any fork of the server's worker processes)."""
    extensions = current_app.extensions
    group = extensions.get(_GROUP_COMMIT)
    if group is None:
        with _group_lock:
            group = extensions.setdefault(_GROUP_COMMIT, GroupCommit())
    return cast(GroupCommit, group)


def _authenticate(header: str | None, raw: bytes) -> UploadTerminal:
    """:func:`server.upload.authenticate` on the request's connection, once more on a new one if that
    connection was found dead.

    PostgreSQL's pool pings a connection at checkout only after it sat idle (server.db.PING_IDLE_S):
    one the server dropped since its last use fails at this first statement, a read, with nothing
    written yet, so the look-up is simply repeated on another connection, as the pre-ping would have.

    :raises: as :func:`server.upload.authenticate`; a second failure to reach the database propagates
        (503 ``database_unavailable``, server/http.py).
    """
    try:
        return authenticate(db.session, header, raw)
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        log.info("the request's pooled connection was dead (%s); looking the terminal up on another",
                 type(exc).__name__)
        db.discard_connection()
    return authenticate(db.session, header, raw)


@bp.post("/heads")
def report_head() -> ResponseReturnValue:
    """A counter's signed journal head ``{"head": base64(COSE_Sign1)}`` (:mod:`server.heads`).

    Answers 200 ``{"terminal_id", "seq", "stored": bool}``; ``stored`` is false when the
    same head was reported before.

    :raises BadRequest: ``head`` missing or not base64; the head does not verify (400,
        ``reason`` ``bad_head``); unknown, revoked or unapproved terminal as for uploads.
    """
    body = json_body()
    try:
        message = base64.b64decode(body.get("head") or "", validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise BadRequest("head (base64) required", field="head") from exc
    if not message:
        raise BadRequest("head (base64) required", field="head")
    with busy_as_503(int(current_app.config["RETRY_AFTER"])):
        session = db.write_session()
        head, stored = record_head(session, message)
        session.commit()
    return jsonify({"terminal_id": head.terminal_id, "seq": head.seq, "stored": stored}), 200
