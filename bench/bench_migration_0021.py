"""Migration 0021's back-fill of ``journal_entries.decline_reason`` on a big journal (SQLite and PostgreSQL).

A database at revision 0020 gets ``--entries`` signed journal entries of ``--terminals`` counters
(every ``--declined-every``-th a DECLINED entry with a reason, the others COMMITs), inserted as the
0020 upload stored them; then ``upgrade(engine, "0021")`` runs once, timed, and the back-fill alone
is timed again on the upgraded copy (reasons reset to NULL first, ``backfill`` called directly).

    .venv/bin/python -m bench.bench_migration_0021 [--entries 100000] [--declined-every 10] [--pg URL]

PostgreSQL: a fresh database is created next to ``--pg`` (default ``$HUMA_TEST_PG_URL`` or the test
server) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench._common import load_average
from cardlib.records.journal import EntryKind
from simulator.journals import District

UTC = dt.UTC
MIGRATION = Path(__file__).parents[1] / "server" / "migrations" / "versions" / "0021_journal_decline_reason.py"
REASONS = ("nothing_left", "not_enough_left", "clone_check_failed", "card_denied", "over_card_cycle_limit")


def _rows(n: int, terminals: int, declined_every: int) -> list[dict[str, Any]]:
    d = District.new(terminals, 64, seed=5, regions=["62.71"])
    start = int(dt.datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
    for t in d.terminals:
        t.boot(start)
    rows = []
    for i in range(n - terminals):
        t, card = d.terminals[i % terminals], d.cards[i % len(d.cards)]
        if i % declined_every == 0:
            t.append(EntryKind.DECLINED, start + i, card_id=card.card_id, tag_uid=card.tag_uid, programme="food",
                     decline_reason=REASONS[(i // declined_every) % len(REASONS)])
        else:
            t.append(EntryKind.COMMIT, start + i, card_id=card.card_id, tag_uid=card.tag_uid, programme="food",
                     amount=1)
    for t in d.terminals:
        for s in t.entries:
            e = s.entry
            rows.append({"id": e.entry_id, "t": e.terminal_id, "boot": e.boot_id, "seq": e.seq, "kind": int(e.kind),
                         "wall": e.wall_time, "mono": e.mono_ns, "synced": e.clock_synced, "card": e.card_id,
                         "uid": e.tag_uid, "prog": e.programme, "amount": e.amount, "prev": e.prev_entry_hash,
                         "hash": s.entry_hash, "raw": s.message})
    return rows


def _load(engine: Engine, rows: list[dict[str, Any]]) -> None:
    sqlite = engine.dialect.name == "sqlite"
    now = dt.datetime(2026, 3, 3, tzinfo=UTC)

    def when(v: dt.datetime) -> Any:
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else v

    with engine.begin() as conn:
        for tid in sorted({r["t"] for r in rows}):
            conn.execute(text("INSERT INTO terminals (terminal_id, status, csr_der, public_key, kid, created_at) "
                              "VALUES (:t, 'APPROVED', :b, :b, :k, :c)"),
                         {"t": tid, "b": b"\x00", "k": tid.encode()[-4:], "c": when(now)})
        conn.execute(text(
            "INSERT INTO journal_entries (entry_id, terminal_id, boot_id, seq, kind, wall_time, mono_ns, "
            "clock_synced, card_id, tag_uid, programme, amount, prev_entry_hash, entry_hash, raw, received_at) "
            "VALUES (:id, :t, :boot, :seq, :kind, :wall, :mono, :synced, :card, :uid, :prog, :amount, :prev, "
            ":hash, :raw, :now)"), [{**r, "wall": when(r["wall"]), "now": when(now)} for r in rows])


def _measure(engine: Engine, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from server.db import upgrade

    upgrade(engine, "0020")
    _load(engine, rows)
    t0 = time.perf_counter()
    upgrade(engine, "0021")
    whole = time.perf_counter() - t0
    spec = importlib.util.spec_from_file_location("migration_0021", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with engine.begin() as conn:
        conn.execute(text("UPDATE journal_entries SET decline_reason = NULL"))
    with engine.begin() as conn:
        t0 = time.perf_counter()
        read = module.backfill(conn)
        alone = time.perf_counter() - t0
    with engine.connect() as conn:
        filled = conn.execute(text("SELECT count(*) FROM journal_entries WHERE decline_reason IS NOT NULL")).scalar()
    return {"upgrade_s": whole, "backfill_s": alone, "declined_read": read, "filled": filled}


def main() -> None:
    from server.db import make_engine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--terminals", type=int, default=50)
    p.add_argument("--declined-every", type=int, default=10)
    p.add_argument("--pg", default=os.environ.get("HUMA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = _rows(args.entries, args.terminals, args.declined_every)
    print(f"{len(rows)} entries signed in {time.perf_counter() - t0:.1f} s; load {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        print("sqlite", _measure(engine, rows))
        engine.dispose()
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"huma_bench_m21_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = make_engine(args.pg.rsplit("/", 1)[0] + "/" + name)
        print("postgresql", _measure(engine, rows))
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(f"load {load_average()}")


if __name__ == "__main__":
    main()
