"""N journal entries from the district simulator: uploaded (verified + stored), then reconciled.

docs/design.md §Performance targets / issue 8: upload + signature check + reconciliation of 1,000,000 entries
within 2× the time Ed25519 verification alone needs on the same cores, on SQLite
and PostgreSQL, peak memory ≤ 1 GB.

What runs, per database, in a fresh process (so peak RSS is per database):
1. generate: :class:`simulator.journals.District` honest day with
   ``entries / 3.1`` cards and ``cards / 100`` terminals, every entry Ed25519-signed
   and chained (not timed against the goal: it is the terminals' work);
2. upload: each full batch (2000 entries, the API limit) goes through the upload
   path without HTTP — :func:`server.upload.verify_batch` (base64, COSE, Ed25519,
   claims) then :func:`server.upload.store_entries` (chain links, insert-or-ignore)
   in a write transaction;
3. reconcile: :func:`server.reconcile.engine.reconcile` over the whole journal;
4. floor: raw Ed25519 verifications of same-size messages, timed beside each
   batch and around the reconciliation (one core, like steps 2–3 in this process;
   see :class:`_Floor`). The ratio is upload / floor-beside-upload + reconcile /
   (N × the per-verification time measured around it).

    .venv/bin/python -m bench.bench_reconcile --entries 20000 --db both
    .venv/bin/python -m bench.bench_reconcile --entries 1000000 --db postgresql
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PG_ADMIN_URL = os.environ.get("HUMA_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Entries per card in the simulator's honest day (food + half cash + 10 % balance checks).
ENTRIES_PER_CARD = 3.1
BATCH = 2000
#: Terminal batches generated before they are uploaded together (then the floor is timed).
FLUSH_BATCHES = 8
FLOOR_POOL = 4_000
#: Raw verifications timed just before and just after reconciliation.
FLOOR_AROUND = 10_000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Floor:
    """Raw Ed25519 verifications timed *beside* the pipeline, so both see the same machine.

    A shared virtual machine's core speed drifts by 2× within seconds (measured:
    135–280 µs per verification in one minute), so a floor timed once, before or after,
    says little about the pipeline. Instead, right after each uploaded batch of n
    entries, n raw verifications of same-size messages (a pool of the run's own first
    entries, re-signed with one key) are timed; around the reconciliation a sample is
    timed before and after and its mean speed scales the N verifications.
    """

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self._key = ed25519.Ed25519PrivateKey.generate()
        self._pub = self._key.public_key()
        self._pool: list[tuple[bytes, bytes]] = []
        self._next = 0
        self.upload_s = 0.0
        self.verifications = 0

    def feed(self, messages: list[bytes]) -> None:
        """Add the run's own messages (payload size = message minus its 64-byte signature)."""
        for m in messages[: FLOOR_POOL - len(self._pool)]:
            self._pool.append((self._key.sign(m[:-64]), m[:-64]))

    def time(self, n: int) -> float:
        """Seconds for ``n`` raw verifications now, cycling through the pool."""
        pool, verify, i = self._pool, self._pub.verify, self._next
        start = time.perf_counter()
        for _ in range(n):
            sig, msg = pool[i]
            verify(sig, msg)
            i = (i + 1) % len(pool)
        elapsed = time.perf_counter() - start
        self._next = i
        return elapsed

    def beside_batch(self, n: int) -> None:
        self.upload_s += self.time(n)
        self.verifications += n


def _database(kind: str, workdir: str) -> tuple[str, Any]:
    """A fresh, migrated database; returns (url, cleanup)."""
    from sqlalchemy import create_engine, text

    from server.db import make_engine, upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir}/bench.db"
        cleanup = lambda: None  # noqa: E731 - the temp dir goes away
    else:
        name = f"huma_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

        def cleanup() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url, cleanup


#: ``--increment-kind`` values (docs/reconciliation.md §Incremental, bench/README.md).
INCREMENT_KINDS = ("day", "double-claims")


def _increment(district: Any, share: float, queue: Any, flush: Any, kind: str = "day") -> int:
    """+``share`` of the journal, uploaded: redemptions a month after the honest day, at a local terminal.

    ``day`` (a realistic day): cards that have not drawn their cash yet draw what is left of it in
    the same cycle (the registry's one cycle): nothing over-entitled, no finding expected.
    ``double-claims`` (the figures recorded before 2026-12-07 12:00 UTC): cards redeem their food
    package a second time in the cycle, so every card of the increment makes an
    ``entitlement_exceeded`` finding.
    No terminal boots (an incremental run then sees only the terminals those cards visited).
    :returns: entries added.
    :raises ValueError: unknown ``kind``.
    """
    import random

    from simulator.journals import ENTITLEMENTS

    if kind not in INCREMENT_KINDS:
        raise ValueError(f"increment kind {kind!r} not in {INCREMENT_KINDS}")
    rng = random.Random(7)
    want = max(1, int(len(district.cards) * share * ENTRIES_PER_CARD / 2))  # two entries per redemption
    if kind == "day":
        pool = [c for c in district.cards if c.spent.get("cash", 0) < ENTITLEMENTS["cash"]]
        programme = "cash"
    else:
        pool, programme = district.cards, "food"
    cards = rng.sample(pool, min(want, len(pool)))
    start = int(dt.datetime(2026, 4, 2, 1, 0, tzinfo=dt.UTC).timestamp() * 1000)
    touched: dict[str, Any] = {}
    for i, card in enumerate(cards):
        local = district.local_terminals(card.region)
        t = local[rng.randrange(len(local))]
        amount = ENTITLEMENTS[programme] - card.spent.get(programme, 0) if kind == "day" else ENTITLEMENTS[programme]
        t.redeem(card, start + i * 120_000, programme, amount)
        touched[t.terminal_id] = t
    n = 0
    for t in touched.values():
        n += len(t.entries)
        queue(t)
    flush()
    return n


def _save(kind: str, url: str, engine: Any, target: str) -> None:
    """Copy the bench database: SQLite to the file ``target``, PostgreSQL to a new database named ``target``."""
    if kind == "sqlite":
        import sqlite3

        copy = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        copy.execute("VACUUM INTO ?", (target,))
        copy.close()
        return
    from sqlalchemy import create_engine, text

    engine.dispose()  # CREATE DATABASE ... TEMPLATE needs the source without connections
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{target}" TEMPLATE "{url.rsplit("/", 1)[1]}"'))
    admin.dispose()


def _profile(engine: Any, run: Any, top: int = 25) -> None:
    """Run ``run()`` once and print to stderr the wall time from each SQL statement's start to the next one's.

    That span holds the statement, the fetch of its rows and the Python that handles them (per
    statement, not per check); what is left after the last statement is listed as ``(after)``.
    """
    from sqlalchemy import event

    spans: dict[str, list[float]] = {}
    last: list[Any] = [None, 0.0]

    def close(now: float) -> None:
        if last[0] is not None:
            spans.setdefault(last[0], []).append(now - last[1])

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        now = time.perf_counter()
        close(now)
        last[:] = [" ".join(statement.split())[:150], now]

    event.listen(engine, "before_cursor_execute", before)
    start = time.perf_counter()
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", before)
    end = time.perf_counter()
    close(end)
    total = end - start
    print(f"# profile: {total * 1000:.1f} ms, {sum(len(v) for v in spans.values())} statements", file=sys.stderr)
    for text, times in sorted(spans.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"{sum(times) * 1000:8.1f} ms {len(times):4d}×  {text}", file=sys.stderr)


def run_one(kind: str, entries: int, seed: int, threads: int = 1, increment: float = 0.0,
            profile: bool = False, repeat: int = 0, increment_kind: str = "day") -> dict[str, Any]:
    """The whole measurement on one database, in this process, pinned to one core.

    :param increment: after the full run, add this share of entries (0.01: +1 %) and time an
        incremental run, then a full one (docs/reconciliation.md §Incremental).
    :param increment_kind: what the increment is (:data:`INCREMENT_KINDS`, :func:`_increment`).
    :param threads: upload workers (the server's request threads); with PostgreSQL a
        worker waiting on the database server lets another verify, as under concurrent
        terminal uploads. All of them share the one core the floor is timed on.
    """
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # the pipeline and the Ed25519 floor: the same single core
    from sqlalchemy import func, select

    from server.db import WRITE, make_engine, make_sessionmaker
    from server.models import Terminal, TerminalStatus
    from server.reconcile.engine import reconcile
    from server.reconcile.observations import ReconcileConfig
    from server.upload import Batch, store_entries, verify_batch
    from simulator.journals import District, SimTerminal, registry_rows
    from simulator.registry import load_registry

    cards = max(4, int(entries / ENTRIES_PER_CARD))
    with tempfile.TemporaryDirectory(prefix="huma-bench-") as workdir:
        url, cleanup = _database(kind, workdir)
        engine = make_engine(url, busy_timeout_s=30.0, pool_size=2)
        sessions = make_sessionmaker(engine)
        try:
            district = District.new(max(2, cards // 100), cards, seed=seed)
            with sessions() as s:
                s.connection(execution_options={WRITE: True})
                s.add_all([Terminal(terminal_id=t.terminal_id, status=TerminalStatus.APPROVED, csr_der=b"",
                                    public_key=t.public_key_der, kid=t.kid) for t in district.terminals])
                s.flush()
                load_registry(s, registry_rows(district))
                s.commit()
            rows = {t.terminal_id: t for t in sessions().scalars(select(Terminal))}
            timers = {"generate": 0.0, "upload": 0.0, "verify": 0.0, "store": 0.0, "floor": 0.0}
            floor = _Floor()
            stats = {"accepted": 0, "other": 0}
            pending: list[Batch] = []
            pool = ThreadPoolExecutor(threads, thread_name_prefix="upload") if threads > 1 else None

            def upload_one(batch: Batch) -> tuple[float, float, list[Any]]:
                """One terminal's upload as the server runs it; returns (verify, store) thread CPU s."""
                cpu = time.thread_time()
                terminal = rows[batch.terminal_id]
                rejected, verified = verify_batch(batch, terminal)
                cpu_verified = time.thread_time()
                with sessions() as s:
                    s.connection(execution_options={WRITE: True})
                    results = store_entries(s, terminal, batch.batch_id, verified, rejected)
                    s.commit()
                return cpu_verified - cpu, time.thread_time() - cpu_verified, results

            def flush() -> None:
                """Upload the pending batches (timed), then time as many raw verifications."""
                if not pending:
                    return
                outside = time.perf_counter()
                done = list(pool.map(upload_one, pending)) if pool else [upload_one(b) for b in pending]
                timers["upload"] += time.perf_counter() - outside
                for verify_cpu, store_cpu, results in done:
                    timers["verify"] += verify_cpu
                    timers["store"] += store_cpu
                    for r in results:
                        stats["accepted" if r.outcome.value == "accepted" else "other"] += 1
                floor.beside_batch(sum(len(b.entries) for b in pending))
                pending.clear()
                timers["floor"] += time.perf_counter() - outside

            def queue(t: SimTerminal) -> None:
                signed = t.drain()
                floor.feed([e.message for e in signed])
                # base64 is the terminal's work (its JSON body), not the server's.
                pending.append(Batch(t.terminal_id, None, [base64.b64encode(e.message).decode() for e in signed]))
                if len(pending) >= FLUSH_BATCHES:
                    flush()

            def after_card(t: SimTerminal) -> None:
                if len(t.entries) >= BATCH:
                    queue(t)

            start = time.perf_counter()
            def after_terminal(t: SimTerminal) -> None:
                if t.entries:
                    queue(t)

            district.honest_day(dt.date(2026, 3, 2), after_card=after_card, after_terminal=after_terminal)
            for t in district.terminals:
                if t.entries:
                    queue(t)
            flush()
            if pool and not increment:  # the increment uploads through it too
                pool.shutdown()
            timers["generate"] = time.perf_counter() - start - timers["floor"]
            if not increment:
                del district
            rss_after_upload = _rss_mib()

            if kind == "postgresql":  # autovacuum's statistics (off on the bench server): plans as in production
                with engine.connect() as conn:
                    conn.exec_driver_sql("ANALYZE")
                    conn.commit()
            before = floor.time(FLOOR_AROUND)
            start = time.perf_counter()
            with sessions() as s:  # margin 0: the bench's uploads are seconds old (ReconcileConfig)
                result = reconcile(s, ReconcileConfig(watermark_margin_s=0))
            timers["reconcile"] = time.perf_counter() - start
            after = floor.time(FLOOR_AROUND)
            with sessions() as s:
                stored = s.scalar(select(func.count()).select_from(Terminal.__table__.metadata.tables[
                    "journal_entries"]))
            n = stats["accepted"] + stats["other"]
            assert floor.verifications == n
            extra: dict[str, Any] = {}
            if increment:
                cfg = ReconcileConfig(watermark_margin_s=0)
                added = _increment(district, increment, queue, flush, increment_kind)
                if os.environ.get("HUMA_BENCH_SAVE_DB"):  # keep the state before the incremental run (diagnosis)
                    _save(kind, url, engine, os.environ["HUMA_BENCH_SAVE_DB"])
                if profile:  # diagnosis only: it warms the caches the timed run then finds
                    with sessions() as s:
                        _profile(engine, lambda: reconcile(s, cfg, incremental=True, commit=False))
                        s.rollback()
                warm: list[float] = []
                for _ in range(repeat):  # rolled back: the steady cost, without first-use compilation
                    with sessions() as s:
                        start = time.perf_counter()
                        reconcile(s, cfg, incremental=True, commit=False)
                        warm.append(time.perf_counter() - start)
                        s.rollback()
                start = time.perf_counter()
                with sessions() as s:
                    inc = reconcile(s, cfg, incremental=True)
                inc_s = time.perf_counter() - start
                start = time.perf_counter()
                with sessions() as s:
                    again = reconcile(s, cfg)
                full_s = time.perf_counter() - start
                assert inc.mode == "incremental" and (again.new, again.resolved) == (0, 0), (inc, again)
                extra = {"added": added, "increment_kind": increment_kind, "incremental_new": inc.new,
                         "incremental_s": round(inc_s, 3), "full_after_s": round(full_s, 2),
                         "incremental_share": round(inc_s / full_s, 4), "scope": inc.scope,
                         "incremental_warm_s": round(min(warm), 3) if warm else None}
                n = stats["accepted"] + stats["other"] - added
                if pool:
                    pool.shutdown()
            per_verify = (before + after) / (2 * FLOOR_AROUND)  # seconds, around reconciliation
            reconcile_floor = per_verify * n
            ratio = timers["upload"] / floor.upload_s + timers["reconcile"] / reconcile_floor
            return {
                "db": kind, "entries": n, "accepted": stats["accepted"], "stored": stored, "cards": cards,
                "terminals": len(rows), "findings": result.observed, "threads": threads,
                "generate_s": round(timers["generate"], 2), "upload_s": round(timers["upload"], 2),
                "reconcile_s": round(timers["reconcile"], 2),
                "total_s": round(timers["upload"] + timers["reconcile"], 2),
                "verify_x": round(timers["verify"] / floor.upload_s, 3),
                "store_x": round(timers["store"] / floor.upload_s, 3),
                "reconcile_x": round(timers["reconcile"] / reconcile_floor, 3),
                "ed25519_floor_s": round(floor.upload_s, 2),
                "ed25519_us": round(floor.upload_s / n * 1e6, 1),
                "ratio": round(ratio, 2),
                "peak_rss_mib": round(_rss_mib(), 1), "rss_after_upload_mib": round(rss_after_upload, 1),
                **extra,
            }
        finally:
            engine.dispose()
            cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000, help="journal entries (1000000 for the goal)")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--threads", type=int, default=None,
                        help="upload worker threads (default: 2 on PostgreSQL, whose server works beside "
                             "this process; 1 on SQLite, which works inside it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--increment", type=float, default=0.0,
                        help="then add this share of entries (0.01 = +1%%), time an incremental run and a full one")
    parser.add_argument("--increment-kind", choices=INCREMENT_KINDS, default="day",
                        help="day: cards draw their remaining cash in the cycle (no finding expected); "
                             "double-claims: cards redeem food a second time (one finding each; the figures "
                             "recorded before 2026-12-07 12:00 UTC)")
    parser.add_argument("--profile", action="store_true",
                        help="with --increment: print the statements of one incremental run (rolled back) first")
    parser.add_argument("--repeat", type=int, default=0,
                        help="with --increment: first time this many incremental runs (rolled back), report the best")
    parser.add_argument("--json", action="store_true", help="print one JSON object per database")
    args = parser.parse_args(argv)
    if args.db == "both":
        outs = []
        for kind in ("sqlite", "postgresql"):
            proc = subprocess.run([sys.executable, "-m", "bench.bench_reconcile", "--entries", str(args.entries),
                                   "--db", kind, "--seed", str(args.seed), "--json",
                                   "--increment", str(args.increment), "--increment-kind", args.increment_kind,
                                   *(["--threads", str(args.threads)] if args.threads else [])],
                                  check=True, capture_output=True, text=True)
            outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        threads = args.threads or (2 if args.db == "postgresql" else 1)
        outs = [run_one(args.db, args.entries, args.seed, threads, args.increment, args.profile,
                        args.repeat, args.increment_kind)]
    if args.json:
        for o in outs:
            print(json.dumps(o))
        return
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print("| db | upload threads | entries | upload (verify+store) s | reconcile s | total s "
          "| Ed25519 alone s (µs each) | verify CPU × | store CPU × | reconcile × | total/floor | findings "
          "| peak RSS MiB | generate (sign) s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for o in outs:
        print(f"| {o['db']} | {o['threads']} | {o['entries']} | {o['upload_s']} | {o['reconcile_s']} | "
              f"{o['total_s']} | "
              f"{o['ed25519_floor_s']} ({o['ed25519_us']}) | {o['verify_x']} | {o['store_x']} | "
              f"{o['reconcile_x']} | {o['ratio']}× | {o['findings']} | {o['peak_rss_mib']} | {o['generate_s']} |")
    if args.increment:
        print()
        print(f"# increment kind: {outs[0].get('increment_kind')}")
        print("| db | entries | added | new findings | incremental s | full s (after) | incremental / full "
              "| scope (terminals, cards, households) |")
        print("|---|---|---|---|---|---|---|---|")
        for o in outs:
            print(f"| {o['db']} | {o['entries']} | {o['added']} | {o['incremental_new']} | {o['incremental_s']} | "
                  f"{o['full_after_s']} | "
                  f"{o['incremental_share']:.1%} | {o['scope']} |")
            if o.get("incremental_warm_s"):
                print(f"# best of {args.repeat} rolled-back incremental runs before it: {o['incremental_warm_s']} s "
                      f"({o['incremental_warm_s'] / o['full_after_s']:.1%} of the full run)")

if __name__ == "__main__":
    main()
