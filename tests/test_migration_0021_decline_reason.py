"""Migration 0021 and the upload fill ``journal_entries.decline_reason`` from the signed claim 20 (SQLite, PostgreSQL).

A database at revision 0020 holds journal rows as the upload stored them (the exact signed bytes
and the columns of that revision); upgrading decodes every DECLINED row's claim 20 into the new
column, in batches by ``(terminal_id, seq)``, and leaves every other row NULL, whatever text its
other claims hold. After the upgrade the upload fills the column itself on every store path
(SQLite row-by-row and batch, PostgreSQL chain extension, multi-row and ``COPY``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cardlib.records.journal import EntryKind, SignedEntry
from simulator.journals import District
from tests.migration_support import database_at, load_migration, ms_at

UTC = dt.UTC
MIGRATION = "0021_journal_decline_reason.py"



def _migration() -> ModuleType:
    return load_migration(MIGRATION)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database migrated to 0020 (a fresh PostgreSQL database, dropped afterwards)."""
    yield from database_at(request.param, "0020", tmp_path)


def _journals() -> District:
    """Two counters: copy attempts, ordinary declines (one with a copy reason as its programme), other kinds."""
    d = District.new(2, 3, seed=41, regions=["62.71"])
    a, b = d.terminals
    card = d.cards[0]
    for t in d.terminals:
        t.boot(ms_at(0, 30))
    a.redeem(card, ms_at(1), "food", 1)
    a.append(EntryKind.DECLINED, ms_at(2), tag_uid=card.tag_uid, programme="food", decline_reason="clone_check_failed")
    a.append(EntryKind.DECLINED, ms_at(3), card_id=card.card_id, tag_uid=card.tag_uid,
             programme="clone_check_failed", decline_reason="nothing_left")
    b.append(EntryKind.DECLINED, ms_at(2), card_id=f"{card.card_id}kcard_denied", tag_uid=card.tag_uid,
             programme="food", decline_reason="not_enough_left")
    b.append(EntryKind.DECLINED, ms_at(4), card_id=d.cards[1].card_id, tag_uid=d.cards[1].tag_uid, programme="cash",
             decline_reason="card_denied")
    b.append(EntryKind.DECLINED, ms_at(5), card_id=d.cards[2].card_id, programme="cash")  # no reason claim
    b.redeem(d.cards[2], ms_at(6), "cash", 2)
    return d


def _insert_at_0020(engine: Engine, entries: list[SignedEntry]) -> None:
    """Rows as the 0020 upload stored them (no decline_reason column yet)."""
    now = dt.datetime(2026, 3, 3, tzinfo=UTC)
    sqlite = engine.dialect.name == "sqlite"

    def when(value: dt.datetime) -> Any:  # the text form SQLAlchemy writes on SQLite
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value

    with engine.begin() as conn:
        for tid in sorted({s.entry.terminal_id for s in entries}):
            conn.execute(text("INSERT INTO terminals (terminal_id, status, csr_der, public_key, kid, created_at) "
                              "VALUES (:t, 'APPROVED', :b, :b, :k, :c)"),
                         {"t": tid, "b": b"\x00", "k": tid.encode()[-4:], "c": when(now)})
        for s in entries:
            e = s.entry
            conn.execute(text(
                "INSERT INTO journal_entries (entry_id, terminal_id, boot_id, seq, kind, wall_time, mono_ns, "
                "clock_synced, card_id, tag_uid, programme, amount, prev_entry_hash, entry_hash, raw, received_at) "
                "VALUES (:id, :t, :boot, :seq, :kind, :wall, :mono, :synced, :card, :uid, :prog, :amount, :prev, "
                ":hash, :raw, :now)"),
                {"id": e.entry_id, "t": e.terminal_id, "boot": e.boot_id, "seq": e.seq, "kind": int(e.kind),
                 "wall": when(e.wall_time), "mono": e.mono_ns, "synced": e.clock_synced, "card": e.card_id,
                 "uid": e.tag_uid, "prog": e.programme, "amount": e.amount, "prev": e.prev_entry_hash,
                 "hash": s.entry_hash, "raw": s.message, "now": when(now)})


def _column(engine: Engine) -> dict[tuple[str, int], str | None]:
    with engine.connect() as conn:
        return {(t, s): r for t, s, r in conn.execute(text(
            "SELECT terminal_id, seq, decline_reason FROM journal_entries ORDER BY terminal_id, seq"))}


def _expected(d: District) -> dict[tuple[str, int], str | None]:
    return {(s.entry.terminal_id, s.entry.seq): s.entry.decline_reason for t in d.terminals for s in t.entries}


def test_upgrade_fills_the_reason_of_stored_declines_from_their_signed_bytes(old_db: Engine) -> None:
    from server.db import upgrade

    d = _journals()
    _insert_at_0020(old_db, [s for t in d.terminals for s in t.entries])
    assert upgrade(old_db, "0021") == "0021"
    got = _column(old_db)
    assert got == _expected(d)
    assert sorted(r for r in got.values() if r) == ["card_denied", "clone_check_failed", "not_enough_left",
                                                    "nothing_left"]


def test_backfill_in_small_batches_reads_every_declined_row_once(old_db: Engine) -> None:
    from server.db import upgrade

    d = _journals()
    _insert_at_0020(old_db, [s for t in d.terminals for s in t.entries])
    upgrade(old_db)
    with old_db.begin() as conn:
        conn.execute(text("UPDATE journal_entries SET decline_reason = NULL"))
        read = _migration().backfill(conn, batch=2)  # batches end inside one terminal and at its last row
    assert read == sum(1 for t in d.terminals for s in t.entries if s.entry.kind is EntryKind.DECLINED)
    assert _column(old_db) == _expected(d)


def test_downgrade_drops_the_column_and_upgrade_fills_it_again(old_db: Engine) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from server.db import alembic_config, upgrade

    d = _journals()
    _insert_at_0020(old_db, [s for t in d.terminals for s in t.entries])
    upgrade(old_db)
    with old_db.begin() as conn:
        command.downgrade(alembic_config(conn), "0020")
    with old_db.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("journal_entries")}
        indexes = {i["name"] for i in inspect(conn).get_indexes("journal_entries")}
    assert "decline_reason" not in columns and "ix_journal_decline_reason" not in indexes
    upgrade(old_db)
    assert _column(old_db) == _expected(d)


def test_decline_reason_of_reads_only_claim_20_of_a_sign1() -> None:
    m = _migration()
    d = _journals()
    for s in d.terminals[0].entries + d.terminals[1].entries:
        assert m.decline_reason_of(s.message) == s.entry.decline_reason
    assert m.decline_reason_of(b"") is None
    assert m.decline_reason_of(b"\x00") is None
    assert m.decline_reason_of(bytes.fromhex("d2") + b"\x84") is None  # truncated


def test_every_upload_path_stores_the_signed_reason(app: Any, world: Any, monkeypatch: Any) -> None:
    """Terminal A: one batch of >64 rows (SQLite batch path, PostgreSQL COPY); terminal B: batches of 3 out of
    order (SQLite row by row; PostgreSQL chain extension and multi-row insert)."""
    from server import upload as upload_module
    from server.extensions import db
    from tests.reconcile_support import install, upload

    d = _journals()
    a, b = d.terminals
    for i in range(70):
        a.append(EntryKind.DECLINED, ms_at(7) + i, card_id=d.cards[i % 3].card_id, programme="food",
                 decline_reason=("card_forked", "nothing_left", "pin_wrong")[i % 3])
    install(app, world, d)
    assert all(r.status_code == 200 for r in upload(world, a, a.messages(), batch=500))
    messages = b.messages()
    third = [messages[i:i + 3] for i in range(0, len(messages), 3)]
    for part in (third[0], *third[2:], third[1]):  # the first batch after a gap extends no stored chain
        assert all(r.status_code == 200 for r in upload(world, b, part, batch=3))
    with app.app_context():
        got = _column(db.engine)
    assert got == _expected(d)
    assert upload_module.PG_COPY_MIN_ROWS < 70 and upload_module.SMALL_BATCH_ROWS < 70


def test_backfill_on_a_journal_partitioned_by_terminal(old_db: Engine) -> None:
    """The layout of a Citus shard set (docs/scaling.md §5): reads and updates by (terminal_id, seq) work on it."""
    from server.db import upgrade
    from tests.test_partitioned import _partition_journal

    if old_db.dialect.name != "postgresql":
        pytest.skip("hash partitions are PostgreSQL's")
    upgrade(old_db)
    _partition_journal(old_db.url.render_as_string(hide_password=False))
    d = _journals()
    _insert_at_0020(old_db, [s for t in d.terminals for s in t.entries])
    with old_db.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM ONLY journal_entries")).scalar() == 0  # all in partitions
        _migration().backfill(conn, batch=2)
    assert _column(old_db) == _expected(d)
