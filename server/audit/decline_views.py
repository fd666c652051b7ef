"""Auditor pages for copied and blocked cards, households and the terminal list, on the ``/audit`` blueprint.

- ``GET /audit/declines?uid=&reason=&before=``: the DECLINED entries of every terminal whose reason
  means a copied, forged or blocked card (:data:`COPY_REASONS`), newest first. A counter that
  declines a copy (``clone_check_failed``) could not read the card id: the entry names only the
  chip UID the reader read, and the page names the card registered with that UID. Reconciliation
  raises no finding for a tap that got nothing, so this page is where such attempts are seen.
- ``GET /audit/households/<ref>``: a household's cards and their copy attempts.
- ``GET /audit/terminals``: every enrolled terminal with its last upload (the dashboard's health query).

The reason is the signed claim 20 of the entry, stored at upload in ``journal_entries.decline_reason``
(migration 0021): each reason's rows are read newest first through ``ix_journal_decline_reason``,
paged by key ``(wall_time, id)``, and merged. No other claim is looked at, so neither ordinary
declines (red team r5, tests/test_redteam_r5_decline_flood.py) nor entries whose programme or card id
holds a copy reason's text (tests/test_audit_decline_reason_column.py) reach the page or delay it.

Imported by :mod:`server.audit.views` so the routes are on its blueprint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import re
from collections.abc import Sequence
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy import and_, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from cardlib.records.declines import DeclineReason
from cardlib.records.journal import EntryKind
from server.audit.views import _household, _path_id, bp, render
from server.errors import BadRequest, NotFound
from server.extensions import db
from server.http import int_param, query_params
from server.models import Card, JournalEntryRow
from server.reconcile.models import CardProfile

#: Decline reasons that mean a copied, cloned, forged or blocked card (the page's reasons, in its order).
COPY_REASONS: tuple[str, ...] = tuple(r.value for r in (
    DeclineReason.CLONE_CHECK_FAILED,       # a copy of the readable pages: no card password / PACK, no key proof
    DeclineReason.CARD_FORKED,              # a card older than what this counter wrote: a restored copy or replay
    DeclineReason.CARD_COUNTER_REPEATED,    # a secure card's counter not above the last seen: replay or cloned key
    DeclineReason.STATE_FROM_ANOTHER_CARD,  # the record was issued for another chip (copied onto this one)
    DeclineReason.CARD_SIGNATURE_INVALID,   # the identity does not verify: forged or damaged
    DeclineReason.CARD_DENIED,              # on the deny list (reported lost or stolen, or blocked)
))
#: Attempts per page.
DECLINES_PAGE = 100
_UID = re.compile(r"(?:[0-9a-fA-F]{2}[:\s-]?){4,10}")


def parse_uid(text: str) -> bytes | None:
    """A chip UID typed as hex (``04A1B2C3D4E5F6``, ``04:a1:…``): 4, 7 or 10 bytes, else ``None``."""
    text = text.strip()
    if _UID.fullmatch(text) is None:
        return None
    raw = bytes.fromhex(re.sub(r"[:\s-]", "", text))
    return raw if len(raw) in (4, 7, 10) else None


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One declined tap of a copied or blocked card.

    :ivar row_id: ``journal_entries.id`` (the page cursor).
    :ivar card_id: the card the entry names, else the card registered with ``tag_uid``, else ``None``.
    :ivar by_uid: ``card_id`` was found by the chip UID (the entry named no card).
    :ivar tag_uid: the UID the reader read (4/7/10 bytes), ``None`` if the entry has none.
    :ivar reason: the signed decline reason code, one of :data:`COPY_REASONS`.
    :ivar household_ref: the card's household (16 hex digits), if known.
    """

    row_id: int
    terminal_id: str
    seq: int
    wall_time: dt.datetime
    clock_synced: bool
    card_id: str | None
    by_uid: bool
    tag_uid: bytes | None
    reason: str
    programme: str | None
    household_ref: str | None


def copy_attempts(session: Session, *, uid: bytes | None = None, reason: str | None = None,
                  household: str | None = None, before: int | None = None,
                  limit: int = DECLINES_PAGE) -> tuple[list[Attempt], int | None]:
    """DECLINED entries with a reason of :data:`COPY_REASONS`, newest first (wall time, then row id).

    One query per reason on ``journal_entries.decline_reason`` (index ``ix_journal_decline_reason``:
    reason, wall time, id), each at most ``limit + 1`` rows after the cursor, merged in that order.

    :param uid: only entries whose journalled chip UID is this.
    :param reason: only this reason (one of :data:`COPY_REASONS`).
    :param household: only entries naming a card of this household, or naming no card but the UID of one.
    :param before: a ``journal_entries.id`` from an earlier page: only entries after it in this order
        (an id that is not stored starts from the newest).
    :param limit: most attempts returned (≥ 1).
    :returns: ``(attempts, next_before)``; ``next_before`` is the id of the last attempt returned when
        more follow it, else ``None``.
    """
    j = JournalEntryRow
    stmt = select(j.id, j.terminal_id, j.seq, j.wall_time, j.clock_synced, j.card_id, j.tag_uid, j.programme,
                  j.decline_reason).where(j.kind == int(EntryKind.DECLINED))
    if uid is not None:
        stmt = stmt.where(j.tag_uid == uid)
    if household is not None:
        cards = select(CardProfile.card_id).where(CardProfile.household_ref == household)
        uids = select(Card.tag_uid).where(Card.card_id.in_(cards))
        stmt = stmt.where(or_(j.card_id.in_(cards),
                              and_(or_(j.card_id.is_(None), j.card_id == ""), j.tag_uid.in_(uids))))
    if before is not None:
        at = session.scalar(select(j.wall_time).where(j.id == before))
        if at is not None:
            # a row-value comparison: an index range after (reason) on both databases, not a filter
            cursor = tuple_(literal(at, j.wall_time.type), literal(before, j.id.type))
            stmt = stmt.where(tuple_(j.wall_time, j.id) < cursor)
    stmt = stmt.order_by(j.wall_time.desc(), j.id.desc()).limit(limit + 1)
    per_reason = [session.execute(stmt.where(j.decline_reason == code)).all()
                  for code in ((reason,) if reason else COPY_REASONS)]
    merged = list(heapq.merge(*per_reason, key=lambda r: (r.wall_time, r.id), reverse=True))
    found = [(r, r.decline_reason) for r in merged[:limit]]
    return _named(session, found), (found[-1][0].id if len(merged) > limit else None)


def _named(session: Session, found: Sequence[tuple[Any, str]]) -> list[Attempt]:
    """The attempts with their card (by id or by registered UID) and household."""
    unnamed = {r.tag_uid for r, _ in found if not r.card_id and r.tag_uid}
    by_uid: dict[bytes, str] = {}
    if unnamed:
        for card_id, tag_uid in session.execute(select(Card.card_id, Card.tag_uid).where(
                Card.tag_uid.in_(unnamed)).order_by(Card.issued_at.desc(), Card.card_id)).tuples():
            by_uid.setdefault(bytes(tag_uid), card_id)  # a re-used UID: the newest issuance
    cards = {r.card_id or by_uid.get(bytes(r.tag_uid or b"")) for r, _ in found} - {None, ""}
    households = dict(session.execute(select(CardProfile.card_id, CardProfile.household_ref).where(
        CardProfile.card_id.in_(cards))).tuples().all()) if cards else {}
    out = []
    for r, code in found:
        card = r.card_id or by_uid.get(bytes(r.tag_uid or b""))
        out.append(Attempt(r.id, r.terminal_id, r.seq, r.wall_time, r.clock_synced, card or None,
                           bool(card) and not r.card_id, bytes(r.tag_uid) if r.tag_uid else None, code,
                           r.programme, households.get(card) if card else None))
    return out


@bp.get("/declines")
def declines() -> ResponseReturnValue:
    """Declined taps of copied, forged or blocked cards across terminals (:func:`copy_attempts`).

    ``?uid=`` a chip UID in hex, ``?reason=`` one of :data:`COPY_REASONS`, ``?before=`` the page cursor.

    :raises BadRequest: a UID that is not 4, 7 or 10 bytes of hex, another reason, a bad cursor,
        or an unknown parameter.
    """
    query_params("uid", "reason", "before")
    uid_text = (request.args.get("uid") or "").strip()
    uid = parse_uid(uid_text) if uid_text else None
    if uid_text and uid is None:
        raise BadRequest("uid must be a chip UID: 4, 7 or 10 bytes in hex", field="uid")
    reason = request.args.get("reason") or None
    if reason is not None and reason not in COPY_REASONS:
        raise BadRequest(f"reason must be one of {list(COPY_REASONS)}", field="reason")
    before = int_param("before", 0) or None
    rows, next_before = copy_attempts(db.session, uid=uid, reason=reason, before=before)
    return render("declines.html", rows=rows, uid=uid.hex() if uid else "", reason=reason or "",
                  reasons=COPY_REASONS, before=before, next_before=next_before)


@bp.get("/households/<ref>")
def household_page(ref: str) -> ResponseReturnValue:
    """A household (16 hex digits or its printed ``HB-`` label): its cards and their copy attempts.

    :raises NotFound: no card of the server belongs to it.
    """
    query_params()
    _path_id(ref, "household")
    household = _household(ref)
    cards = list(db.session.execute(
        select(CardProfile.card_id, CardProfile.region, CardProfile.revoked_at)
        .where(CardProfile.household_ref == household).order_by(CardProfile.card_id)).all()) if household else []
    if not cards:
        raise NotFound(f"no household {ref!r}")
    uids = dict(db.session.execute(select(Card.card_id, Card.tag_uid).where(
        Card.card_id.in_([c.card_id for c in cards]))).tuples().all())
    rows, next_before = copy_attempts(db.session, household=household)
    from server.card_blocks import blocks_of

    return render("household.html", household=household, cards=cards, uids=uids, rows=rows,
                  next_before=next_before, blocks=blocks_of(db.session, [c.card_id for c in cards]))


@bp.get("/terminals")
def terminals() -> ResponseReturnValue:
    """Every enrolled terminal (approved or revoked) with region, entries stored and last upload."""
    from server.dashboard.queries import terminal_health

    query_params()
    rows = sorted(terminal_health(db.session), key=lambda h: h.terminal_id)
    return render("terminals.html", rows=rows)
