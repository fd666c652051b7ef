"""Journal upload: idempotency (SV-1, SV-2), per-entry results, bad input, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import func, select

from server.extensions import db
from server.models import JournalConflict, JournalEntryRow, RejectedEntry


def _count(app: Any, model: Any) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_upload_accepts_a_chain(app, world):
    t = world.enrol("T-001")
    msgs = [t.append().message for _ in range(5)]
    r = world.upload(t, msgs)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [x["result"] for x in body["results"]] == ["accepted"] * 5
    assert [x["seq"] for x in body["results"]] == [1, 2, 3, 4, 5]
    assert _count(app, JournalEntryRow) == 5
    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.seq == 3)).one()
        assert row.raw == msgs[2]
        assert row.wall_time.tzinfo is not None
