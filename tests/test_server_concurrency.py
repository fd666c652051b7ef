"""Concurrent uploads through a real waitress server (SV-2, SV-3), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from server import create_app
from server.extensions import db
from server.models import JournalEntryRow

UPLOAD = "/api/v1/journal/batches"


def _rows(app: Any) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(JournalEntryRow))


def test_SV_2_twenty_parallel_identical_uploads(app, world, live_server):
    t = world.enrol("T-020")
    body = t.body([t.append().message for _ in range(50)])
    headers = t.headers(body)
    barrier = threading.Barrier(20)

    def post(_: int) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        status, _h, data = live_server.post(UPLOAD, body, headers)
        return status, json.loads(data)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert [s for s, _ in answers] == [200] * 20, answers
    accepted = sum(a["counts"]["accepted"] for _, a in answers)
    duplicate = sum(a["counts"]["duplicate"] for _, a in answers)
    assert (accepted, duplicate) == (50, 19 * 50)
    assert _rows(app) == 50


def _upload_with_retry(live_server: Any, body: bytes, headers: dict[str, str]) -> tuple[int, int]:
    """Post until not 503; returns (final status, number of 503s seen). Never sees a 500."""
    busy = 0
    while True:
        status, h, data = live_server.post(UPLOAD, body, headers)
        assert status != 500, data
        if status != 503:
            return status, busy
        busy += 1
        assert int(h["Retry-After"]) >= 1
        time.sleep(0.05)


def test_SV_3_many_terminals_uploading_at_once(app, world, live_server):
    terminals = [world.enrol(f"T-1{i:02d}") for i in range(10)]
    jobs = []
    for t in terminals:
        for _ in range(5):
            msgs = [t.append().message for _ in range(200)]
            body = t.body(msgs)
            jobs.append((body, t.headers(body)))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: _upload_with_retry(live_server, *job), jobs))
    assert [s for s, _ in results] == [200] * 50
    assert _rows(app) == 10 * 5 * 200


def _hold_write_lock(db_url: str) -> Any:
    """Take the journal table's write lock from another connection (the 'other worker')."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn
    conn = psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"))
    conn.execute("LOCK TABLE journal_entries IN EXCLUSIVE MODE")
    return conn


def test_SV_3_busy_database_is_503_with_retry_after_never_500(db_url, ca_key_path, world):
    t = world.enrol("T-030")
    busy_app = create_app({"DATABASE_URL": db_url, "TERMINAL_CA_KEY": str(ca_key_path),
                           "DB_BUSY_TIMEOUT": 0.2, "RETRY_AFTER": 3})
    client = busy_app.test_client()
    body = t.body([t.append().message])
    holder = _hold_write_lock(db_url)
    try:
        r = client.post(UPLOAD, data=body, headers=t.headers(body))
        assert r.status_code == 503, r.get_json()
        assert r.headers["Retry-After"] == "3"
        assert r.get_json()["error"]["code"] == "database_busy"
    finally:
        holder.rollback()
        holder.close()
    # The same request retried after the lock is gone: stored once; the worker's
    # session was cleaned up, so no PendingRollbackError either.
    r = client.post(UPLOAD, data=body, headers=t.headers(body))
    assert r.status_code == 200 and r.get_json()["counts"]["accepted"] == 1
    with busy_app.app_context():
        db.engine.dispose()
