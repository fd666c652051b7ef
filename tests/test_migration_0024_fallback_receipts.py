"""Migration 0024 indexes the receipt codes of FALLBACK payouts stored before they were indexed (SQLite, PostgreSQL).

A database at revision 0023 holds journal rows as the upload stored them and the receipt codes the
server indexed before d95b95f (COMMIT and FINISHED only), up to a journal id far above the old FALLBACK
rows: the server's own indexer (:func:`server.audit.receipts.index_receipts`) looks only ``LOOKBACK``
ids below the newest indexed one, so those FALLBACK rows never get a code and the receipt a beneficiary
holds is not found. After the upgrade ``huma server receipt`` finds it, and a complaint filed with it
before the upgrade is linked to the payout's card and household (audited); other complaints are left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cardlib.records.journal import EntryKind, SignedEntry
from cardlib.records.receipt import receipt_code
from simulator.journals import District
from tests.migration_support import database_at, load_migration, ms_at

UTC = dt.UTC
MIGRATION = "0024_fallback_receipt_codes.py"
HOUSEHOLD = "a1b2c3d4e5f60718"
#: The journal id of the newest row indexed before the upgrade: the FALLBACK rows (ids 1..) lie far below
#: its LOOKBACK window.
LATE_ID = 30_000



def _migration() -> ModuleType:
    return load_migration(MIGRATION)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database migrated to 0023 (a fresh PostgreSQL database, dropped afterwards)."""
    yield from database_at(request.param, "0023", tmp_path)


def _journals() -> District:
    """Two counters: card taps (COMMIT) and QR / supervisor payouts (FALLBACK), then one late tap on B."""
    d = District.new(2, 3, seed=24, regions=["62.71"])
    a, b = d.terminals
    for t in d.terminals:
        t.boot(ms_at(0, 30))
    a.redeem(d.cards[0], ms_at(1), "food", 1)
    a.append(EntryKind.FALLBACK, ms_at(2), card_id=d.cards[1].card_id, programme="food", amount=1)
    a.append(EntryKind.FALLBACK, ms_at(3), card_id=d.cards[2].card_id, programme="cash", amount=2)
    b.append(EntryKind.FALLBACK, ms_at(2), card_id=d.cards[0].card_id, programme="food", amount=1)
    b.redeem(d.cards[2], ms_at(4), "cash", 2)
    b.redeem(d.cards[1], ms_at(9), "food", 1)  # the late tap: stored with journal id LATE_ID (and LATE_ID - 1)
    return d


def _insert_at_0023(engine: Engine, d: District) -> dict[bytes, int]:
    """Rows as the 0023 upload stored them, ids 1.. except the late tap's, and the codes indexed before d95b95f
    (COMMIT/FINISHED only); returns the journal id of each entry hash."""
    now = dt.datetime(2026, 3, 3, tzinfo=UTC)
    sqlite = engine.dialect.name == "sqlite"

    def when(value: dt.datetime) -> Any:  # the text form SQLAlchemy writes on SQLite
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value

    late = d.terminals[1].entries[-2:]
    entries: list[SignedEntry] = [s for t in d.terminals for s in t.entries if s not in late]
    ids = {s.entry_hash: i for i, s in enumerate(entries, 1)} | {late[0].entry_hash: LATE_ID - 1,
                                                                 late[1].entry_hash: LATE_ID}
    with engine.begin() as conn:
        for t in d.terminals:
            conn.execute(text("INSERT INTO terminals (terminal_id, status, csr_der, public_key, kid, created_at) "
                              "VALUES (:t, 'APPROVED', :b, :b, :k, :c)"),
                         {"t": t.terminal_id, "b": b"\x00", "k": t.terminal_id.encode()[-4:], "c": when(now)})
        for s in [*entries, *late]:
            e = s.entry
            conn.execute(text(
                "INSERT INTO journal_entries (id, entry_id, terminal_id, boot_id, seq, kind, wall_time, mono_ns, "
                "clock_synced, card_id, tag_uid, programme, amount, prev_entry_hash, entry_hash, raw, received_at) "
                "VALUES (:pk, :id, :t, :boot, :seq, :kind, :wall, :mono, :synced, :card, :uid, :prog, :amount, "
                ":prev, :hash, :raw, :now)"),
                {"pk": ids[s.entry_hash], "id": e.entry_id, "t": e.terminal_id, "boot": e.boot_id, "seq": e.seq,
                 "kind": int(e.kind), "wall": when(e.wall_time), "mono": e.mono_ns, "synced": e.clock_synced,
                 "card": e.card_id, "uid": e.tag_uid, "prog": e.programme, "amount": e.amount,
                 "prev": e.prev_entry_hash, "hash": s.entry_hash, "raw": s.message, "now": when(now)})
            if e.kind in (EntryKind.COMMIT, EntryKind.FINISHED):
                conn.execute(text("INSERT INTO receipt_codes (journal_id, code) VALUES (:i, :c)"),
                             {"i": ids[s.entry_hash], "c": receipt_code(s.entry_hash)})
        conn.execute(text("INSERT INTO card_profiles (card_id, region, household_ref) VALUES (:c, '62.71', :h)"),
                     {"c": d.cards[1].card_id, "h": HOUSEHOLD})
    return ids


def _fallbacks(d: District) -> list[SignedEntry]:
    return [s for t in d.terminals for s in t.entries if s.entry.kind is EntryKind.FALLBACK]


def _codes(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT journal_id, code FROM receipt_codes")).tuples().all())


def _found(engine: Engine, code: str) -> list[tuple[str, int, str | None]]:
    """What the server's lookup (index first, as every search does) finds for ``code``: (terminal, seq, card)."""
    from server.grievances import receipt_entries

    with Session(engine) as session:
        entries = receipt_entries(session, code)
        session.commit()
    return [(e["terminal_id"], e["seq"], e["card_id"]) for e in entries]


def _add_complaint(engine: Engine, code: str | None, card: str | None = None) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text(
            "INSERT INTO grievances (created_at, text, receipt_code, card_id, status) "
            "VALUES (:at, 'the counter printed this, I got nothing', :code, :card, 'open') RETURNING id"),
            {"at": dt.datetime(2026, 3, 3, tzinfo=UTC) if engine.dialect.name != "sqlite" else "2026-03-03 00:00:00",
             "code": code, "card": card}).scalar_one())


def test_fallback_receipts_older_than_the_lookback_are_found_after_the_upgrade(
        old_db: Engine, capsys: Any) -> None:
    from huma.cli import main
    from server.audit.receipts import LOOKBACK
    from server.db import upgrade

    d = _journals()
    ids = _insert_at_0023(old_db, d)
    fallbacks = _fallbacks(d)
    assert max(ids[s.entry_hash] for s in fallbacks) < LATE_ID - LOOKBACK
    # before: the server's own indexer (with FALLBACK in its kinds) does not reach them
    for s in fallbacks:
        assert _found(old_db, receipt_code(s.entry_hash)) == []
    assert set(_codes(old_db)) == {ids[s.entry_hash] for t in d.terminals for s in t.entries
                                   if s.entry.kind is EntryKind.COMMIT}

    assert (upgrade(old_db) or "") >= "0024"
    codes = _codes(old_db)
    assert {codes[ids[s.entry_hash]] for s in fallbacks} == {receipt_code(s.entry_hash) for s in fallbacks}
    assert len(codes) == sum(1 for t in d.terminals for s in t.entries
                             if s.entry.kind in (EntryKind.COMMIT, EntryKind.FALLBACK))
    url = old_db.url.render_as_string(hide_password=False)
    capsys.readouterr()
    for s in fallbacks:
        e = s.entry
        assert _found(old_db, receipt_code(s.entry_hash)) == [(e.terminal_id, e.seq, e.card_id)]
        assert main(["server", "receipt", receipt_code(s.entry_hash), "--database", url]) == 0
        out = capsys.readouterr().out
        assert f"{e.terminal_id} #{e.seq} card {e.card_id}" in out and f" {e.programme} {e.amount}" in out, out


def test_complaints_filed_with_an_unindexed_fallback_code_are_linked_and_audited(old_db: Engine) -> None:
    from server.db import upgrade

    d = _journals()
    _insert_at_0023(old_db, d)
    qr = next(s for s in _fallbacks(d) if s.entry.card_id == d.cards[1].card_id)  # has a household
    manual = next(s for s in _fallbacks(d) if s.entry.card_id == d.cards[0].card_id)  # no profile
    commit = next(s for s in d.terminals[0].entries if s.entry.kind is EntryKind.COMMIT)
    linked_qr = _add_complaint(old_db, receipt_code(qr.entry_hash))
    linked_manual = _add_complaint(old_db, receipt_code(manual.entry_hash))
    named_card = _add_complaint(old_db, receipt_code(qr.entry_hash), card="ffffffffffffffff")
    # not about a FALLBACK payout: left as they are (a COMMIT's complaint is linked when it is filed)
    about_commit = _add_complaint(old_db, receipt_code(commit.entry_hash))
    about_nothing = _add_complaint(old_db, "AAAA-AAAA")

    assert (upgrade(old_db) or "") >= "0024"
    with old_db.connect() as conn:
        got = {i: (c, h) for i, c, h in conn.execute(text("SELECT id, card_id, household_ref FROM grievances"))}
        log = conn.execute(text("SELECT person_id, action, target, detail FROM audit_log ORDER BY id")).all()
    assert got == {linked_qr: (d.cards[1].card_id, HOUSEHOLD), linked_manual: (d.cards[0].card_id, None),
                   # a card named by the complaint is kept, the household of the code's card added
                   named_card: ("ffffffffffffffff", HOUSEHOLD),
                   about_commit: (None, None), about_nothing: (None, None)}
    assert [(p, a, t) for p, a, t, _ in log] == [(None, "grievance.linked", f"grievance:{g}")
                                                 for g in (linked_qr, linked_manual, named_card)]
    detail = json.loads(log[0][3])
    assert (detail["before"], detail["after"], detail["card_id"], detail["household_ref"],
            detail["receipt_code"]) == ("open", "open", d.cards[1].card_id, HOUSEHOLD, receipt_code(qr.entry_hash))
    assert "0024" in detail["reason"]


def test_backfill_in_small_batches_is_idempotent_and_downgrade_keeps_the_codes(old_db: Engine) -> None:
    from alembic import command

    from server.db import alembic_config, upgrade

    d = _journals()
    ids = _insert_at_0023(old_db, d)
    m = _migration()
    with old_db.begin() as conn:  # batches end inside one terminal and at its last row
        assert m.backfill(conn, batch=1) == len(_fallbacks(d))
        assert m.backfill(conn, batch=2) == 0
    after_backfill = _codes(old_db)
    assert {after_backfill[ids[s.entry_hash]] for s in _fallbacks(d)} == {receipt_code(s.entry_hash)
                                                                          for s in _fallbacks(d)}
    upgrade(old_db)
    with old_db.begin() as conn:
        command.downgrade(alembic_config(conn), "0023")
    assert _codes(old_db) == after_backfill
    assert (upgrade(old_db) or "") >= "0024" and _codes(old_db) == after_backfill


def test_backfill_on_a_journal_partitioned_by_terminal(old_db: Engine) -> None:
    """The layout of a Citus shard set (docs/scaling.md §5): the upgrade reads by (terminal_id, seq) there too."""
    from server.db import upgrade
    from tests.test_partitioned import _partition_journal

    if old_db.dialect.name != "postgresql":
        pytest.skip("hash partitions are PostgreSQL's")
    _partition_journal(old_db.url.render_as_string(hide_password=False))
    d = _journals()
    ids = _insert_at_0023(old_db, d)
    with old_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ONLY journal_entries")).scalar() == 0  # all in partitions
    for s in _fallbacks(d):
        assert _found(old_db, receipt_code(s.entry_hash)) == []
    assert (upgrade(old_db) or "") >= "0024"
    codes = _codes(old_db)
    assert {codes[ids[s.entry_hash]] for s in _fallbacks(d)} == {receipt_code(s.entry_hash) for s in _fallbacks(d)}
    for s in _fallbacks(d):
        assert _found(old_db, receipt_code(s.entry_hash)) == [(s.entry.terminal_id, s.entry.seq, s.entry.card_id)]


def test_receipt_code_of_is_cardlibs_receipt_code() -> None:
    m = _migration()
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2000)]
    hashes += [s.entry_hash for t in _journals().terminals for s in t.entries]
    assert [m.receipt_code_of(h) for h in hashes] == [receipt_code(h) for h in hashes]


def test_the_complaint_page_shows_the_link_in_its_history(old_db: Engine, tmp_path: Path) -> None:
    from server import create_app
    from server.db import upgrade
    from server.extensions import db
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor

    d = _journals()
    _insert_at_0023(old_db, d)
    qr = next(s for s in _fallbacks(d) if s.entry.card_id == d.cards[1].card_id)
    gid = _add_complaint(old_db, receipt_code(qr.entry_hash))
    upgrade(old_db)
    app = create_app({"TESTING": True, "DATABASE_URL": old_db.url.render_as_string(hide_password=False)})
    app.instance_path = str(tmp_path / "instance")
    try:
        add_auditor(app)
        client = app.test_client()
        assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
        r = client.get(f"/audit/grievances/{gid}")
        assert r.status_code == 200
        page = r.get_data(as_text=True)
        assert d.cards[1].card_id in page and HOUSEHOLD in page and "linked by upgrade 0024" in page
        history = page[page.index('id="grievance-history"'):]
        assert "terbuka → terbuka" in history  # the status, unchanged (the page is in Indonesian by default)
    finally:
        with app.app_context():
            db.engine.dispose()
