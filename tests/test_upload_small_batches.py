"""A small upload costs one pooled connection and no benefit-cycle insert once the cycle is known (issue 21).

- One checkout per request: the terminal look-up and the write share the request's connection,
  so PostgreSQL's pool pre-ping runs once (tests/test_failover.py keeps the failover answers).
- ``ensure_cycles`` runs only for cycles this process has not seen committed; a new database
  connection (a failover, a restore) forgets them, and a miss is the insert-if-absent again.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import event, func, select, text


def _count(engine: Any, name: str) -> list[Any]:
    seen: list[Any] = []
    event.listen(engine, name, lambda *args: seen.append(args))
    return seen


def test_one_upload_checks_out_one_connection(app, world):
    from server.extensions import db

    t = world.enrol("T-ONE")
    with app.app_context():
        engine = db.engine
    checkouts = _count(engine.pool, "checkout")
    for _ in range(3):
        r = world.upload(t, [t.append().message for _ in range(3)])
        assert r.status_code == 200, r.get_json()
    assert len(checkouts) == 3


def test_a_known_cycle_is_not_inserted_again(app, world):
    from server.extensions import db

    t = world.enrol("T-CYC")
    with app.app_context():
        engine = db.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: statements.append(stmt))
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert any("benefit_cycles" in s for s in statements)
    statements.clear()
    r = world.upload(t, [t.append().message for _ in range(3)])
    assert r.status_code == 200, r.get_json()
    assert not any("benefit_cycles" in s for s in statements)


def test_a_new_connection_forgets_the_known_cycles(app, world):
    """A restore that lost the cycle row: after the pool reconnects, the next upload inserts it again."""
    from server.extensions import db

    t = world.enrol("T-RESTORE")
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    with app.app_context():
        session = db.write_session()
        session.execute(text("DELETE FROM benefit_cycles"))
        session.commit()
    with app.app_context():
        db.engine.dispose()  # every pooled connection closed: the next checkout connects anew
    r = world.upload(t, [t.append().message])
    assert r.status_code == 200, r.get_json()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(text("benefit_cycles"))) == 1


def test_known_cycles_ignore_an_insert_that_straddles_a_reconnect():
    from server.cycles import KnownCycles

    known = KnownCycles()
    missing, generation = known.missing({20261, 20262})
    assert missing == {20261, 20262}
    known.forget()  # a new connection while the insert was under way
    known.add(missing, generation)
    assert known.missing({20261})[0] == {20261}
    missing, generation = known.missing({20261})
    known.add(missing, generation)
    assert known.missing({20261, 20262})[0] == {20262}


def test_closing_the_session_returns_the_request_connection(app):
    """``db.session.close(); db.engine.dispose()`` (CLIs, tests) leaves no connection open, and the
    session works again afterwards in the same context."""
    from server.extensions import db

    with app.app_context():
        db.session.execute(text("SELECT 1"))
        assert db.engine.pool.checkedout() == 1
        db.session.close()
        assert db.engine.pool.checkedout() == 0
        assert db.session.execute(text("SELECT 1")).scalar_one() == 1
    with app.app_context():
        assert db.engine.pool.checkedout() == 0


def test_the_envelope_lookup_reads_the_terminal_at_every_upload(app, world):
    """The terminal row is read at every upload (never cached): a terminal revoked after an upload
    is refused at its next one, and on SQLite the look-up starts no transaction of its own."""
    from server.extensions import db
    from server.models import Terminal, TerminalStatus

    t = world.enrol("T-REVOKE-LATER")
    with app.app_context():
        engine = db.engine
    begins = _count(engine, "begin")
    assert world.upload(t, [t.append().message]).status_code == 200
    assert len(begins) == 1  # the write transaction only
    with app.app_context():
        session = db.write_session()
        session.scalars(select(Terminal).where(Terminal.terminal_id == "T-REVOKE-LATER")).one().status = (
            TerminalStatus.REVOKED)
        session.commit()
    r = world.upload(t, [t.append().message])
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "terminal_revoked", r.get_json()


def _pg_store(app: Any, terminal_id: str, signed: list[Any]) -> tuple[list[Any], set[bytes] | None]:
    """Run the PostgreSQL one-statement read + insert in a transaction of its own (committed)."""
    from server.extensions import db
    from server.types import utcnow
    from server.upload import _read_and_insert_pg

    with app.app_context():
        session = db.write_session()
        out = _read_and_insert_pg(session, terminal_id, signed, None, utcnow())
        session.commit()
    return out


def test_the_one_statement_store_inserts_only_a_plain_chain_extension(app, world):
    """PostgreSQL: the neighbour read and the insert are one statement; it inserts only when the
    stored rows show that the batch extends the chain, else nothing, and the upload classifies as before."""
    import pytest

    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("PostgreSQL path")
    t = world.enrol("T-CTE")
    first = [t.append() for _ in range(2)]
    assert world.upload(t, [s.message for s in first]).status_code == 200
    nxt = [t.append() for _ in range(3)]
    stored, inserted = _pg_store(app, "T-CTE", nxt)
    assert [s.seq for s in stored] == [2] and inserted == {s.entry_hash for s in nxt}
    # The same batch again: rows at its seqs, nothing inserted, the rows read are returned.
    stored, inserted = _pg_store(app, "T-CTE", nxt)
    assert inserted is None and sorted(s.seq for s in stored) == [2, 3, 4, 5]
    # An extension whose first link does not match the stored predecessor: nothing inserted.
    from cardlib.records.journal import JournalEntry, sign_entry

    forged = sign_entry(JournalEntry(**{**t.append().entry.__dict__, "prev_entry_hash": b"\x77" * 32}),
                        t.private_key, t.kid)
    stored, inserted = _pg_store(app, "T-CTE", [forged])
    assert inserted is None and [s.seq for s in stored] == [5]
    # An entry reusing the predecessor's entry id, linked correctly: nothing inserted (a conflict upstream).
    t.entries.pop()
    reuse = t.append(entry_id=nxt[-1].entry.entry_id)
    stored, inserted = _pg_store(app, "T-CTE", [reuse])
    assert inserted is None
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(JournalEntryRow)) == 5
    r = world.upload(t, [reuse.message])
    assert r.status_code == 409, r.get_json()


def _pg_commands(monkeypatch: Any) -> list[bytes]:
    """Transaction commands (BEGIN, COMMIT, ROLLBACK...) psycopg sends from now on."""
    import psycopg._connection_base as base

    sent: list[bytes] = []
    real = base.BaseConnection._exec_command

    def recording(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(bytes(command) if isinstance(command, bytes) else str(command).encode())
        return (yield from real(self, command, *args, **kwargs))

    monkeypatch.setattr(base.BaseConnection, "_exec_command", recording)
    return sent


def test_a_plain_small_extension_is_one_statement_without_begin_or_commit(app, world, monkeypatch):
    """PostgreSQL, a known cycle: the terminal look-up and the read-and-insert each run as their own
    statement (autocommit): no BEGIN or COMMIT round trip; the entries are stored and receipted."""
    import pytest

    from cardlib.records.statements import verify_receipt
    from server.extensions import db
    from server.models import JournalEntryRow
    from server.receipts import receipt_signer

    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("PostgreSQL path")
    t = world.enrol("T-ONCE")
    assert world.upload(t, [t.append().message]).status_code == 200  # the cycle is known from now on
    sent = _pg_commands(monkeypatch)
    batch = [t.append() for _ in range(3)]
    r = world.upload(t, [s.message for s in batch])
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["counts"]["accepted"] == 3
    assert not [c for c in sent if c.split()[0] in (b"BEGIN", b"COMMIT")], sent
    with app.app_context():
        receipt = verify_receipt(base64.b64decode(r.get_json()["receipt"]), receipt_signer(app).public_key)
        assert [line.result for line in receipt.lines] == ["accepted"] * 3
        assert db.session.scalar(select(func.count()).select_from(JournalEntryRow)) == 4
        # the connection went back to the pool in its ordinary mode (autocommit off)
        with db.engine.connect() as c:
            assert c.connection.driver_connection.autocommit is False


def test_an_at_once_store_that_loses_a_row_classifies_the_rest_as_before(app, world):
    """An entry reusing an entry id stored at another seq is lost by the one-statement insert (its other
    rows are stored): the upload still answers accepted for those it stored, conflict for the reused one."""
    t = world.enrol("T-LOST")
    first = [t.append() for _ in range(2)]
    assert world.upload(t, [s.message for s in first]).status_code == 200
    ok = t.append()
    reused = t.append(entry_id=first[0].entry.entry_id)
    r = world.upload(t, [ok.message, reused.message])
    assert r.status_code == 409, r.get_json()
    assert [x["result"] for x in r.get_json()["results"]] == ["accepted", "conflict"]
    again = world.upload(t, [ok.message])
    assert [x["result"] for x in again.get_json()["results"]] == ["duplicate"]
