"""``huma server run --workers N``: several processes on one socket serve concurrent uploads, each entry stored once."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import derive_kid
from tests.fixtures.db import SimTerminal

BATCHES, PER_BATCH = 6, 150


def _register(url: str, terminals: list[SimTerminal]) -> None:
    from server import create_app
    from server.extensions import db
    from server.models import Terminal, TerminalStatus

    app = create_app({"DATABASE_URL": url})
    with app.app_context():
        s = db.write_session()
        for t in terminals:
            spki = t.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
            s.add(Terminal(terminal_id=t.terminal_id, status=TerminalStatus.APPROVED, csr_der=b"-",
                           public_key=spki, kid=t.kid))
        s.commit()
        s.close()
        db.engine.dispose()


def _stored(url: str) -> list[tuple[str, bytes]]:
    from sqlalchemy import text

    from server import create_app
    from server.extensions import db

    app = create_app({"DATABASE_URL": url})
    with app.app_context():
        rows = [(str(t), bytes(e)) for t, e in db.session.execute(
            text("SELECT terminal_id, entry_id FROM journal_entries"))]
        db.session.close()
        db.engine.dispose()
    return rows


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _upload(port: int, t: SimTerminal, acked: list[bytes], errors: list[str]) -> None:
    """Post the terminal's journal in batches (the second batch twice: a lost answer); record acked ids."""
    batches = [t.entries[i:i + PER_BATCH] for i in range(0, len(t.entries), PER_BATCH)]
    for i, batch in enumerate(batches[:1] + batches[1:2] * 2 + batches[2:]):
        body = t.body([e.message for e in batch])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/api/v1/journal/batches", body=body, headers=t.headers(body))
            resp = conn.getresponse()
            doc = json.loads(resp.read())
        finally:
            conn.close()
        if resp.status != 200:
            errors.append(f"{t.terminal_id} batch {i}: {resp.status} {doc}")
            return
        acked.extend(e.entry.entry_id for e, r in zip(batch, doc["results"], strict=True)
                     if r["result"] in ("accepted", "duplicate"))


def test_two_workers_store_every_acknowledged_entry_once(db_url: str, tmp_path: Path) -> None:
    terminals = []
    for n in range(2):
        key = ed25519.Ed25519PrivateKey.generate()
        t = SimTerminal(f"T-W{n}", key, derive_kid(key.public_key()))
        for _ in range(BATCHES * PER_BATCH):
            t.append()
        terminals.append(t)
    _register(db_url, terminals)
    env = dict(os.environ, DATABASE_URL=db_url, HUMA_RECEIPT_KEY=str(tmp_path / "receipt-key.pem"))
    proc = subprocess.Popen([sys.executable, "-m", "huma", "server", "run", "--port", "0", "--workers", "2",
                             "--threads", "4"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "2 worker processes" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split(" ")[0])
        acked: list[list[Any]] = [[], []]
        errors: list[str] = []
        threads = [threading.Thread(target=_upload, args=(port, t, a, errors)) for t, a in zip(terminals, acked,
                                                                                                strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
        assert errors == []
        assert len(_children(proc.pid)) == 2  # both workers still alive (none crashed and was replaced)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    stored = _stored(db_url)
    assert len(stored) == len(set(stored)) == 2 * BATCHES * PER_BATCH
    for t, ids in zip(terminals, acked, strict=True):
        assert {e for tid, e in stored if tid == t.terminal_id} == set(ids)
        assert len(ids) == BATCHES * PER_BATCH + PER_BATCH  # the resent batch answered "duplicate"


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A configuration fault seen only by the workers ends the command with status 1, not a restart loop."""
    if not hasattr(signal, "SIGTERM"):
        pytest.skip("POSIX only")
    import socket

    from server.workers import supervise

    listener = socket.create_server(("127.0.0.1", 0))
    # a database the supervisor never checked: the worker's create_app refuses it at once
    assert supervise(listener, "mysql://nowhere/x", workers=1, threads=1) == 1
