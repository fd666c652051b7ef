"""/audit/declines reads the signed decline reason from its column, not from a substring of the entry bytes.

Before ``journal_entries.decline_reason`` (migration 0021) the page asked the database for DECLINED
rows whose signed bytes *contain* a copy reason as a CBOR text string, then decoded each row, at
most ``SCAN_MAX`` per page. Any other text claim of an entry can hold those bytes: a counter's key
holder journals ordinary declines (``nothing_left``) whose programme is the text
``clone_check_failed`` or whose card id ends in ``kcard_denied`` (``k`` is the CBOR header of an
11-character text string), dated ahead of everything. The substring search returned them all, the
decoding dropped them, and the scan bound was spent before the real copy attempt was reached: the
page said "none" and linked on. With the column, only rows whose *reason claim* is a copy reason
are read, in (time, id) order, whatever the other claims hold.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from cardlib.records.journal import EntryKind
from simulator.journals import District
from tests.reconcile_support import add_auditor, audit_db, install, upload_all  # noqa: F401 - audit_db

UTC = dt.UTC
UID = bytes.fromhex("04deadbeef0003")


def _ms(year: int, h: int) -> int:
    return int(dt.datetime(year, 3, 2, h, tzinfo=UTC).timestamp() * 1000)


def _attempt_rows(client: Any, query: str = "") -> tuple[list[str], str]:
    html = client.get(f"/audit/declines?lang=en{query}").get_data(as_text=True)
    return re.findall(r'<tr class="attempt".*?</tr>', html, re.S), html


def _decoys(d: District, n: int) -> None:
    """``n`` ordinary declines dated ahead whose programme or card id holds a copy reason's CBOR bytes."""
    hostile = d.terminals[1]
    card = d.cards[0]
    for i in range(n):
        if i % 2:
            hostile.append(EntryKind.DECLINED, _ms(2099, 0) + i, card_id=card.card_id, tag_uid=card.tag_uid,
                           programme="clone_check_failed", decline_reason="nothing_left")
        else:
            hostile.append(EntryKind.DECLINED, _ms(2099, 0) + i, card_id=f"{card.card_id}kcard_denied",
                           tag_uid=card.tag_uid, programme="food", decline_reason="nothing_left")


@pytest.fixture
def flooded(app: Any, audit_db: str, world: Any, monkeypatch: Any) -> Any:  # noqa: F811 - fixture
    """One real copy attempt (2026) on an honest counter, then 60 decoys dated 2099 on another."""
    from server.audit import decline_views
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD

    # The old page's scan bound, small so the flood stays small (gone with the column: raising=False).
    monkeypatch.setattr(decline_views, "SCAN_MAX", 40, raising=False)
    monkeypatch.setattr(decline_views, "SCAN_BATCH", 10, raising=False)
    d = District.new(2, 2, seed=37, regions=["62.71"])
    for t in d.terminals:
        t.boot(_ms(2026, 0))
    d.terminals[0].append(EntryKind.DECLINED, _ms(2026, 1), tag_uid=UID, programme="food",
                          decline_reason="clone_check_failed")
    _decoys(d, 60)
    install(app, world, d)
    upload_all(world, d)
    add_auditor(app)
    assert form_login(world.client, "audrey", AUDITOR_PASSWORD).status_code == 302
    return world.client


def test_copy_reason_bytes_in_other_claims_do_not_hide_a_copy_attempt(flooded: Any) -> None:
    rows, html = _attempt_rows(flooded)
    assert len(rows) == 1 and UID.hex() in rows[0] and "clone_check_failed" in rows[0], html[-2000:]
    assert 'id="declines-next"' not in html  # nothing more to page to


def test_copy_reason_bytes_in_other_claims_are_not_attempts(flooded: Any) -> None:
    for query in ("", "&reason=clone_check_failed", "&reason=card_denied"):
        rows, html = _attempt_rows(flooded, query)
        assert all(UID.hex() in r for r in rows), html[-2000:]
    rows, _ = _attempt_rows(flooded, "&reason=card_denied")
    assert rows == []


def test_pages_by_time_then_id_across_reasons_without_loss_or_repeat(app: Any, audit_db: str,  # noqa: F811
                                                                      world: Any) -> None:
    """Attempts of two reasons, several of one reason at one instant: pages of 1, 2 and 3 give every attempt
    once, newest first (the cursor splits a tie within one reason and across reasons)."""
    from sqlalchemy import select

    from server.audit.decline_views import COPY_REASONS, copy_attempts
    from server.extensions import db
    from server.models import JournalEntryRow

    d = District.new(2, 2, seed=43, regions=["62.71"])
    for t in d.terminals:
        t.boot(_ms(2026, 0))
    times = [1, 2, 2, 2, 3, 3, 4]  # hours; ties across reasons and terminals
    for i, h in enumerate(times):
        d.terminals[i % 2].append(EntryKind.DECLINED, _ms(2026, h), tag_uid=UID, programme="food",
                                  decline_reason=COPY_REASONS[i % 2])
        d.terminals[(i + 1) % 2].append(EntryKind.DECLINED, _ms(2026, h), tag_uid=UID, programme="food",
                                        decline_reason="nothing_left")
    install(app, world, d)
    upload_all(world, d)
    with app.app_context():
        j = JournalEntryRow
        want = [r.id for r in db.session.execute(
            select(j.id).where(j.decline_reason.in_(COPY_REASONS)).order_by(j.wall_time.desc(), j.id.desc()))]
        assert len(want) == len(times)
        for limit in (1, 2, 3):
            got: list[int] = []
            before = None
            for _ in range(len(times)):
                page, before = copy_attempts(db.session, before=before, limit=limit)
                got += [a.row_id for a in page]
                assert before is None or before == page[-1].row_id
                if before is None:
                    break
            assert got == want, limit
        only, nxt = copy_attempts(db.session, reason=COPY_REASONS[1], uid=UID)
        assert [a.reason for a in only] == [COPY_REASONS[1]] * 3 and nxt is None  # i = 1, 3, 5
