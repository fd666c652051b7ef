"""Red team r5: a counter hides copy attempts from /audit/declines behind ordinary declines.

The decline reason is inside the signed bytes, not a column, so the page read DECLINED rows newest
first and decoded each, at most ``SCAN_MAX`` (20,000) per page. A counter's key holder (an insider
with root on it) journals that many ordinary declines (``nothing_left``: caps bound redemptions, not
declines) dated in the future: every first page then read only those, said "No declined taps of
copied or blocked cards match" and offered an "Older" link, one more per 20,000 of them; the
clone attempts another counter journalled stayed out of sight. Each page also paid 40 OFFSET
queries re-reading the rows before it. The page then asked the database only for DECLINED rows whose
signed bytes hold one of the copy reasons (then decoded them) and paged by key; since migration 0021
it reads the reason column (``journal_entries.decline_reason``) one copy reason at a time, so no
number of ordinary declines is read at all (tests/test_audit_decline_reason_column.py).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from cardlib.records.journal import EntryKind
from simulator.journals import District
from tests.reconcile_support import add_auditor, audit_db, install, upload_all  # noqa: F401 - audit_db

UTC = dt.UTC
UID = bytes.fromhex("04deadbeef0002")


def _ms(year: int, h: int) -> int:
    return int(dt.datetime(year, 3, 2, h, tzinfo=UTC).timestamp() * 1000)


def test_ordinary_declines_dated_ahead_do_not_hide_a_copy_attempt(app: Any, audit_db: str,  # noqa: F811
                                                                   world: Any) -> None:
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD

    d = District.new(2, 2, seed=31, regions=["62.71"])
    honest, hostile = d.terminals
    honest.boot(_ms(2026, 0))
    hostile.boot(_ms(2026, 0))
    honest.append(EntryKind.DECLINED, _ms(2026, 1), tag_uid=UID, programme="food", decline_reason="clone_check_failed")
    card = d.cards[0]
    for i in range(60):  # more than SCAN_MAX, dated ahead of every honest entry
        hostile.append(EntryKind.DECLINED, _ms(2099, 0) + i, card_id=card.card_id, tag_uid=card.tag_uid,
                       programme="food", decline_reason="nothing_left")
    install(app, world, d)
    upload_all(world, d)
    add_auditor(app)
    client = world.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    html = client.get("/audit/declines?lang=en").get_data(as_text=True)
    rows = re.findall(r'<tr class="attempt".*?</tr>', html, re.S)
    assert len(rows) == 1 and UID.hex() in rows[0], html[-2000:]
    assert 'id="declines-next"' not in html  # nothing more to page to
