"""Journal entries accepted per second through the HTTP API, signature checks on, per database.

Compares with Ed25519 verification alone (the floor, docs/design.md §Performance targets) on the same machine: one
thread, measured right before and after each database run. The server is one process
(waitress threads share one GIL), so both sides use one core; the CPU column says so.
Runs the real app under waitress on 127.0.0.1 and posts signed batches over HTTP.

    .venv/bin/python -m bench.bench_upload --entries 20000 --batch 1000 \
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Small batches (issue 21): ``--small 3`` compares the per-entry cost of batches of 3 entries
with bulk batches on a stored journal (``--journal 100000``), through the Flask test client.

    .venv/bin/python -m bench.bench_upload --small 3 --bulk 1000 --journal 100000 --db both

``--concurrent`` instead posts them through ``huma server run --workers 2``, every terminal at
once (a day of counters syncing; PostgreSQL's commits share their WAL flushes), and prints wall
and server CPU (the worker processes + PostgreSQL backends) per entry, small vs bulk.

    .venv/bin/python -m bench.bench_upload --small 3 --bulk 1000 --journal 1000000 --terminals 200 \
        --rounds 2 --db both --concurrent

Every core (issue 21): ``--workers N`` instead posts from 1 and 2 terminals at once to
``huma server run --workers 1`` and ``--workers N`` (``--db``: SQLite, PostgreSQL or both) and prints
entries/s with the cores the machine kept busy meanwhile.

    .venv/bin/python -m bench.bench_upload --entries 10000 --batch 1000 --workers 2 --db both
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import waitress
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import create_engine, text

from cardlib.keys.signer import derive_kid as key_id
from server import create_app
from server.auth import create_person
from server.db import make_engine, upgrade
from server.extensions import db
from server.models import PersonRole, Terminal, TerminalStatus
from tests.fixtures.db import SimTerminal


def make_entries(n: int) -> SimTerminal:
    key = ed25519.Ed25519PrivateKey.generate()
    t = SimTerminal("T-BENCH", key, key_id(key.public_key()))
    for _ in range(n):
        t.append()
    return t


def ed25519_floor(t: SimTerminal) -> float:
    """Seconds per raw Ed25519 verify of the entries' signatures (same sizes)."""
    pub = t.private_key.public_key()
    data = [(e.message[-64:], e.message[:-64]) for e in t.entries]
    sigs = [(t.private_key.sign(m), m) for _, m in data]
    start = time.perf_counter()
    for sig, msg in sigs:
        pub.verify(sig, msg)
    return (time.perf_counter() - start) / len(sigs)


def _pg_backend_cpu_s(engine: Any) -> float:
    """CPU seconds (user + system) used so far by every PostgreSQL backend on this engine's database.

    PostgreSQL runs on this machine (127.0.0.1), so its backends' ``/proc/<pid>/stat``
    are readable: the database's share of the work, which runs beside the Python process.
    """
    with engine.connect() as conn:
        pids = [pid for (pid,) in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the backend ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_one(url: str, t: SimTerminal, batch: int) -> tuple[float, float, float]:
    """Post every batch over HTTP.

    :returns: wall seconds, this process's CPU seconds, and the PostgreSQL backends' CPU
        seconds (0 on SQLite, whose work is inside this process) of the posts.
    """
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    app = create_app({"DATABASE_URL": url, "MAX_BATCH_ENTRIES": batch,
                      "MAX_CONTENT_LENGTH": 64 * 1024 * 1024})
    from cryptography.hazmat.primitives import serialization

    with app.app_context():
        s = db.write_session()
        spki = t.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        s.add(Terminal(terminal_id=t.terminal_id, status=TerminalStatus.APPROVED, csr_der=b"-",
                       public_key=spki, kid=t.kid))
        create_person(s, "bench", "bench password", PersonRole.ADMIN)
        s.commit()
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    bodies = []
    for i in range(0, len(t.entries), batch):
        body = t.body([e.message for e in t.entries[i:i + batch]])
        bodies.append((body, t.headers(body)))
    with app.app_context():
        pg = db.engine.dialect.name == "postgresql"
        db_cpu_start = _pg_backend_cpu_s(db.engine) if pg else 0.0
    start = time.perf_counter()
    cpu_start = time.process_time()
    for body, headers in bodies:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=600)
        conn.request("POST", "/api/v1/journal/batches", body=body, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        assert resp.status == 200 and data["counts"]["accepted"] == len(json.loads(body)["entries"]), data
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    # Workers first, then the sockets: closing first let a finishing worker pull the
    # closed trigger (EBADF noise on stderr).
    server.task_dispatcher.shutdown()
    server.close()
    thread.join(timeout=5)
    with app.app_context():
        db_cpu = _pg_backend_cpu_s(db.engine) - db_cpu_start if pg else 0.0
        db.engine.dispose()
    return elapsed, cpu, db_cpu


def _machine_busy_s() -> float:
    """CPU seconds every core of this machine spent not idle since boot (``/proc/stat``), all processes."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def run_workers(url: str, terminals: list[SimTerminal], batch: int, workers: int,
                tmp: str) -> tuple[float, float, float]:
    """Upload every terminal's journal at once (one client thread per terminal) to ``huma server run --workers``.

    :returns: (wall seconds from the first post to the last answer, CPU seconds the whole machine
        spent in that window — server processes, database, client threads and anything else —,
        CPU seconds of this process's client threads in it).
    """
    import signal
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
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
    env = dict(os.environ, DATABASE_URL=url,  # batches within the default limits (2,000 entries, 4 MiB)
               HUMA_RECEIPT_KEY=os.path.join(tmp, "receipt.pem"))
    proc = subprocess.Popen([sys.executable, "-m", "huma", "server", "run", "--port", "0", "--threads", "4",
                             "--workers", str(workers)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split(" ")[0])
        plans = []
        for t in terminals:
            bodies = []
            for i in range(0, len(t.entries), batch):
                body = t.body([e.message for e in t.entries[i:i + batch]])
                bodies.append((body, t.headers(body)))
            plans.append(bodies)

        def post_all(bodies: list[tuple[bytes, dict[str, str]]]) -> None:
            for body, headers in bodies:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                conn.request("POST", "/api/v1/journal/batches", body=body, headers=headers)
                resp = conn.getresponse()
                data = json.loads(resp.read())
                conn.close()
                assert resp.status == 200 and data["counts"]["accepted"] == len(json.loads(body)["entries"]), data

        clients = [threading.Thread(target=post_all, args=(b,)) for b in plans]
        busy, cpu, start = _machine_busy_s(), time.process_time(), time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        return (time.perf_counter() - start, _machine_busy_s() - busy, time.process_time() - cpu)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def workers_main(entries: int, batch: int, max_workers: int, kinds: list[str], pg_admin: str) -> None:
    """Entries/s with 1 and 2 terminals uploading at once, server with 1 and ``max_workers`` processes.

    ``kinds``: databases (``sqlite``, ``postgresql``: a scratch database on ``pg_admin``). Besides
    entries/s each row shows the cores the machine kept busy in the timed window (server
    processes, PostgreSQL's backends and the client threads share the same cores) and the
    client threads' own CPU, so a ratio under 2× can be told apart from a machine already full.
    """
    terminals = []
    for n in range(2):
        key = ed25519.Ed25519PrivateKey.generate()
        t = SimTerminal(f"T-BENCH{n}", key, key_id(key.public_key()))
        for _ in range(entries):
            t.append()
        terminals.append(t)
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; `huma server run --workers N`, "
          f"{entries} entries per terminal, batches of {batch}, terminals uploading at once")
    print("| database | server processes | terminals at once | entries | seconds | entries/s "
          "| cores busy (machine) | client CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for workers in sorted({1, max_workers}):
            for clients in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    url, drop = _small_db(kind, pg_admin, tmp)
                    try:
                        secs, busy, client = run_workers(url, terminals[:clients], batch, workers, tmp)
                    finally:
                        drop()
                n = entries * clients
                print(f"| {kind} | {workers} | {clients} | {n} | {secs:.2f} | {n / secs:,.0f} "
                      f"| {busy / secs:.2f} | {client:.2f} |", flush=True)


# ----------------------------------------------------------------------------- small batches (issue 21)


def _small_db(kind: str, pg_admin: str, tmp: str) -> tuple[str, Callable[[], None]]:
    """A fresh migrated database of ``kind`` (``sqlite`` or ``postgresql``); returns (url, drop)."""
    if kind == "sqlite":
        url = f"sqlite:///{os.path.join(tmp, 'small.db')}"
        drop: Callable[[], None] = lambda: None  # noqa: E731 - the temp dir goes away
    else:
        name = f"huma_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = pg_admin.rsplit("/", 1)[0] + "/" + name

        def drop() -> None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url, drop


def _load_journal(url: str, journal: int, terminals: int) -> tuple[list[SimTerminal], list[Terminal]]:
    """Enrol ``terminals`` approved terminals and store ``journal`` entries over them (store path, no HTTP).

    :returns: the simulated terminals (their journals signed so far) and their stored rows.
    """
    from cryptography.hazmat.primitives import serialization

    from server.db import WRITE, make_sessionmaker
    from server.upload import store_entries

    sims = []
    for n in range(terminals):
        key = ed25519.Ed25519PrivateKey.generate()
        sims.append(SimTerminal(f"T-{n:05d}", key, key_id(key.public_key())))
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        s.connection(execution_options={WRITE: True})
        rows = [Terminal(terminal_id=t.terminal_id, status=TerminalStatus.APPROVED, csr_der=b"-",
                         public_key=t.private_key.public_key().public_bytes(
                             serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
                         kid=t.kid) for t in sims]
        s.add_all(rows)
        s.commit()
    per = journal // terminals
    for t, row in zip(sims, rows, strict=True):
        for _ in range(per):
            t.append()
        with sessions() as s:
            s.connection(execution_options={WRITE: True})
            for i in range(0, per, 5000):
                store_entries(s, row, None, list(enumerate(t.entries[i:i + 5000])), [])
            s.commit()
        t.entries[:-1] = [None] * (len(t.entries) - 1)  # SimTerminal needs the count and the head only
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
    engine.dispose()
    return sims, rows


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live children (server workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except OSError:
                continue
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_concurrent(url: str, journal: int, terminals: int, small: int, bulk: int, rounds: int,
                   workers: int, threads: int, bulk_terminals: int, tmp: str) -> dict[str, float]:
    """A day of small batches through a real server: every terminal posts at once (issue 21).

    The journal is loaded first (store path, no HTTP). Then ``huma server run --workers
    workers --threads threads`` serves it; every one of ``terminals`` client threads posts
    one warm-up batch, then (timed) ``rounds`` batches of ``small`` new entries, all
    terminals at once, each on a new connection, as counters syncing every few minutes
    do. Then, the same server, ``bulk_terminals`` terminals post ``rounds`` batches of
    ``bulk`` entries at once (the bulk load under the same set-up). Entries are signed
    before timing.

    :returns: per phase (``small``/``bulk``): wall µs per entry, server CPU µs per entry
        (the server processes + PostgreSQL backends), this client's CPU µs per entry.
    """
    import signal
    import subprocess
    import sys

    sims, _rows = _load_journal(url, journal, terminals)

    def plan(t: SimTerminal, n: int) -> tuple[bytes, dict[str, str]]:
        start = len(t.entries)
        for _ in range(n):
            t.append()
        body = t.body([e.message for e in t.entries[start:]])
        t.entries[:-1] = [None] * (len(t.entries) - 1)
        return body, t.headers(body)

    warm = [[plan(t, small)] for t in sims]
    small_plans = [[plan(t, small) for _ in range(rounds)] for t in sims]
    bulk_plans = [[plan(t, bulk) for _ in range(rounds)] for t in sims[:bulk_terminals]]
    pg = url.startswith("postgresql")
    pg_engine = create_engine(url) if pg else None
    env = dict(os.environ, DATABASE_URL=url, HUMA_RECEIPT_KEY=os.path.join(tmp, "receipt.pem"),
               HUMA_MAX_CONTENT_LENGTH=str(64 * 1024 * 1024))
    log = open(os.path.join(tmp, "server.log"), "w")  # noqa: SIM115 - closed in finally; waitress's queue notes
    proc = subprocess.Popen([sys.executable, "-m", "huma", "server", "run", "--port", "0", "--threads",
                             str(threads), "--workers", str(workers)], stdout=subprocess.PIPE, text=True, env=env,
                            stderr=log)
    try:
        assert proc.stdout is not None
        line = ""
        while "serving on http://127.0.0.1:" not in line:  # after any log line (a new receipt key)
            line = proc.stdout.readline()
            assert line, "the server did not start"
        port = int(line.split("http://127.0.0.1:")[1].split(" ")[0])
        failures: list[str] = []

        def post_all(bodies: list[tuple[bytes, dict[str, str]]]) -> None:
            for body, headers in bodies:
                for _attempt in range(20):  # a 503 (database busy) is retried, as a counter does
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                    conn.request("POST", "/api/v1/journal/batches", body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                    if resp.status != 503:
                        break
                    time.sleep(0.05)
                if resp.status != 200:
                    failures.append(f"{resp.status} {data[:200]!r}")

        def phase(plans: list[list[tuple[bytes, dict[str, str]]]]) -> tuple[float, float, float, float, float]:
            clients = [threading.Thread(target=post_all, args=(b,)) for b in plans]
            worker_cpu = _tree_cpu_s(proc.pid)
            db_cpu = _pg_backend_cpu_s(pg_engine) if pg_engine else 0.0
            start, cpu_start = time.perf_counter(), time.process_time()
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            worker_cpu = _tree_cpu_s(proc.pid) - worker_cpu
            db_cpu = (_pg_backend_cpu_s(pg_engine) if pg_engine else 0.0) - db_cpu
            assert not failures, failures[:3]
            n = sum(len(json.loads(body)["entries"]) for bodies in plans for body, _ in bodies)
            return (wall / n * 1e6, (worker_cpu + db_cpu) / n * 1e6, db_cpu / n * 1e6, cpu / n * 1e6,
                    wall / sum(map(len, plans)) * 1e3)

        phase(warm)
        out: dict[str, float] = {}
        for name, plans in (("small", small_plans), ("bulk", bulk_plans)):
            wall_us, server_us, db_us, client_us, request_ms = phase(plans)
            out |= {f"{name}_us": wall_us, f"{name}_server_cpu_us": server_us, f"{name}_db_cpu_us": db_us,
                    f"{name}_client_cpu_us": client_us, f"{name}_request_ms": request_ms}
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
        if pg_engine is not None:
            pg_engine.dispose()


def concurrent_main(args: argparse.Namespace) -> None:
    """Print the concurrent small-batch vs bulk per-entry cost through a real server (issue 21)."""
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; journal of {args.journal:,} rows over {args.terminals} "
          f"terminals; `huma server run --workers {args.server_workers} --threads {args.threads}`; all "
          f"{args.terminals} terminals at once post {args.rounds} batches of {args.small}, then "
          f"{args.bulk_terminals} terminals at once {args.rounds} batches of {args.bulk}; a new connection "
          "per request")
    print("| db | wall µs/entry, small / bulk | small ÷ bulk | server CPU µs/entry, small / bulk | small ÷ bulk "
          "| (of which PostgreSQL, small / bulk) | (client CPU µs/entry, small / bulk) | ms wall ÷ small requests |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = _small_db(kind, args.pg, tmp)
            try:
                r = run_concurrent(url, args.journal, args.terminals, args.small, args.bulk, args.rounds,
                                   args.server_workers, args.threads, args.bulk_terminals, tmp)
            finally:
                drop()
        print(f"| {kind} | {r['small_us']:.0f} / {r['bulk_us']:.0f} | {r['small_us'] / r['bulk_us']:.2f}× "
              f"| {r['small_server_cpu_us']:.0f} / {r['bulk_server_cpu_us']:.0f} "
              f"| {r['small_server_cpu_us'] / r['bulk_server_cpu_us']:.2f}× "
              f"| ({r['small_db_cpu_us']:.0f} / {r['bulk_db_cpu_us']:.0f}) "
              f"| ({r['small_client_cpu_us']:.0f} / {r['bulk_client_cpu_us']:.0f}) "
              f"| {r['small_request_ms']:.1f} |", flush=True)


def run_small(url: str, journal: int, terminals: int, small: int, bulk: int, rounds: int,
              profile: str | None = None) -> dict[str, float]:
    """Per-entry cost of small vs bulk batches over the full request path, on a journal of ``journal`` rows.

    The journal is loaded first (stored without the request path), then every terminal
    posts ``rounds`` batches of ``small`` new entries each (a day's +1 %: a few entries per
    terminal) through the Flask test client (envelope check, terminal lookup, Ed25519,
    store, commit, receipt), then one terminal posts ``rounds`` batches of ``bulk`` entries.

    :returns: ``small_us`` / ``bulk_us`` (wall µs per entry) and their ratio.
    """
    from server.db import WRITE, make_sessionmaker
    from server.upload import store_entries

    sims, rows = _load_journal(url, journal, terminals)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)

    # The store path alone (no HTTP, no envelope): verify_batch + store_entries + commit.
    from server.upload import Batch, verify_batch

    def direct(batches: list[tuple[Terminal, Batch]]) -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        for row, batch in batches:
            rejected, verified = verify_batch(batch, row)
            with sessions() as s:
                s.connection(execution_options={WRITE: True})
                results = store_entries(s, row, batch.batch_id, verified, rejected)
                s.commit()
            assert all(r.outcome.value == "accepted" for r in results)
        return time.perf_counter() - start, time.process_time() - cpu_start

    def direct_plan(t: SimTerminal, row: Terminal, n: int) -> tuple[Terminal, Batch]:
        start = len(t.entries)
        for _ in range(n):
            t.append()
        return row, Batch(t.terminal_id, None, [base64.b64encode(e.message).decode() for e in t.entries[start:]])

    d_small = [direct_plan(t, row, small) for _ in range(rounds) for t, row in zip(sims, rows, strict=True)]
    d_bulk = [direct_plan(sims[1], rows[1], bulk) for _ in range(rounds)]
    d_small_s, d_small_cpu = direct(d_small)
    d_bulk_s, d_bulk_cpu = direct(d_bulk)
    engine.dispose()
    app = create_app({"DATABASE_URL": url, "MAX_BATCH_ENTRIES": max(bulk, 2000),
                      "MAX_CONTENT_LENGTH": 64 * 1024 * 1024})
    client = app.test_client()

    def plan(t: SimTerminal, n: int) -> tuple[bytes, dict[str, str]]:
        start = len(t.entries)
        for _ in range(n):
            t.append()
        body = t.body([e.message for e in t.entries[start:]])
        return body, t.headers(body)

    small_plan = [plan(t, small) for _ in range(rounds) for t in sims]
    bulk_plan = [plan(sims[0], bulk) for _ in range(rounds)]

    cpu = {"small": 0.0, "bulk": 0.0}

    def post(bodies: list[tuple[bytes, dict[str, str]]], kind: str = "small") -> float:
        start, cpu_start = time.perf_counter(), time.process_time()
        for body, headers in bodies:
            resp = client.post("/api/v1/journal/batches", data=body, headers=headers)
            assert resp.status_code == 200, resp.get_json()
        cpu[kind] = time.process_time() - cpu_start
        return time.perf_counter() - start

    post(small_plan[:2])  # warm up: receipt key, pools, first statements
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        small_s = post(small_plan[2:])
        prof.disable()
        prof.dump_stats(profile)
    else:
        small_s = post(small_plan[2:])
    bulk_s = post(bulk_plan, "bulk")
    with app.app_context():
        db.engine.dispose()
    small_us = small_s / (small * (len(small_plan) - 2)) * 1e6
    bulk_us = bulk_s / (bulk * len(bulk_plan)) * 1e6
    small_cpu_us = cpu["small"] / (small * (len(small_plan) - 2)) * 1e6
    bulk_cpu_us = cpu["bulk"] / (bulk * len(bulk_plan)) * 1e6
    d_small_n, d_bulk_n = small * len(d_small), bulk * len(d_bulk)
    return {"direct_small_us": d_small_s / d_small_n * 1e6, "direct_bulk_us": d_bulk_s / d_bulk_n * 1e6,
            "direct_small_cpu_us": d_small_cpu / d_small_n * 1e6, "direct_bulk_cpu_us": d_bulk_cpu / d_bulk_n * 1e6,
            "small_us": small_us, "bulk_us": bulk_us, "ratio": small_us / bulk_us,
            "batch_ms": small_s / (len(small_plan) - 2) * 1e3,
            "small_cpu_us": small_cpu_us, "bulk_cpu_us": bulk_cpu_us, "cpu_ratio": small_cpu_us / bulk_cpu_us}


def _backend_cpu_ns(engine: Any) -> int:
    """CPU nanoseconds used so far by every PostgreSQL backend connected to this engine's database
    (``/proc/<pid>/schedstat``, first field: time on a CPU; the server runs on this machine)."""
    with engine.connect() as conn:
        pids = [pid for (pid,) in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # the backend ended meanwhile
            continue
    return total


def run_store_path(url: str, journal: int, terminals: int, small: int, bulk: int, rounds: int, threads: int,
                   repeat: int, profile: str | None = None) -> list[dict[str, float]]:
    """The store path alone (no HTTP): verify + store + commit + receipt, small vs bulk, serial and concurrent.

    The journal is loaded first (:func:`_load_journal`). Then, ``repeat`` times, alternating:
    ``serial``: every terminal's batch of ``small`` entries, one after the other (``rounds`` rounds);
    ``bulk``: ``rounds`` batches of ``bulk`` entries of one terminal; ``own``: every terminal's small
    batch handed at once to ``threads`` threads (as waitress's request threads), each batch its own
    transaction (:func:`server.upload.store_entries` + commit); ``group``: the same through
    :class:`server.upload.GroupCommit`; ``floor``: the serial small batches again, each verified and
    receipted as in ``serial`` but storing only one 200-byte row of a scratch table in its write
    transaction: what one durable commit per acknowledged batch costs whatever the store does; ``raw``: the
    same on a pooled DB-API connection (no session); ``direct``: the serial small batches as the upload
    route stores a lone one (:func:`server.upload.store_extension_direct`). Each batch:
    :func:`server.upload.verify_batch`, the store, the commit, :func:`cardlib.records.statements.sign_receipt`.

    :returns: per repetition, µs per entry of each phase: ``<phase>_wall``, ``<phase>_app`` (this
        process's CPU, every thread), ``<phase>_db`` (PostgreSQL backends' CPU, 0 on SQLite), and
        ``group_size`` (batches per group transaction, mean).
    """
    import queue

    from cryptography.hazmat.primitives.asymmetric import ed25519 as ed

    from cardlib.records.statements import ReceiptLine, sign_receipt
    from server.db import WRITE, make_sessionmaker
    from server.receipts import _ReceiptSigner
    from server.upload import (
        Batch,
        EntryResult,
        GroupCommit,
        Outcome,
        _autocommit,
        store_entries,
        store_extension_direct,
        verify_batch,
    )

    sims, rows = _load_journal(url, journal, terminals)
    engine = make_engine(url, pool_size=threads + 2)
    sessions = make_sessionmaker(engine)
    pg = engine.dialect.name == "postgresql"
    signer = _ReceiptSigner(ed.Ed25519PrivateKey.generate())

    def plan(t: SimTerminal, row: Terminal, n: int) -> tuple[Terminal, Batch, bytes]:
        start = len(t.entries)
        for _ in range(n):
            t.append()
        batch = Batch(t.terminal_id, None, [base64.b64encode(e.message).decode() for e in t.entries[start:]])
        return row, batch, json.dumps({"entries": batch.entries}).encode()

    def receipt(row: Terminal, body: bytes, results: list[Any]) -> None:
        assert all(r.outcome.value == "accepted" for r in results), results
        sign_receipt(signer, row.terminal_id, body,
                     [ReceiptLine(r.entry_id or b"", r.seq, r.outcome.value, None) for r in results], time.time())

    def begin_on(s: Any) -> Any:
        """As the upload route's write session: SQLite ``BEGIN IMMEDIATE``; PostgreSQL nothing yet
        (its first statement begins the transaction, or runs alone: ``at_once``)."""
        if not pg:
            s.connection(execution_options={WRITE: True})
        return s

    def one(item: tuple[Terminal, Batch, bytes]) -> None:  # a batch in a transaction of its own
        row, batch, body = item
        rejected, verified = verify_batch(batch, row)
        with sessions() as s:
            begin_on(s)
            results = store_entries(s, row, batch.batch_id, verified, rejected, at_once=True)
            s.commit()
        receipt(row, body, results)

    group = GroupCommit()
    local = threading.local()

    def begin() -> Any:
        return begin_on(local.session)

    def grouped(item: tuple[Terminal, Batch, bytes]) -> None:
        row, batch, body = item
        rejected, verified = verify_batch(batch, row)
        with sessions() as s:
            local.session = s
            results, _ = group.store(begin, row, batch.batch_id, verified, rejected, after=lambda _s: None,
                                     at_once=True)
        receipt(row, body, results)

    with engine.begin() as c:  # the floor phase's scratch table (this database is a scratch copy)
        c.exec_driver_sql("CREATE TABLE bench_floor (n BIGINT NOT NULL, b BYTEA NOT NULL)" if pg
                          else "CREATE TABLE bench_floor (n INTEGER NOT NULL, b BLOB NOT NULL)")

    def floor(item: tuple[Terminal, Batch, bytes]) -> None:
        """The least a serial small batch can cost with a durable commit per receipt: the same
        verification and receipt, and one 200-byte row in a write transaction of its own (as
        :func:`one`: SQLite ``BEGIN IMMEDIATE``; PostgreSQL one autocommit statement)."""
        row, batch, body = item
        rejected, verified = verify_batch(batch, row)
        assert not rejected
        with sessions() as s:
            begin_on(s)
            if pg:  # as the at-once store: one statement, a transaction of its own
                driver = s.connection().connection.driver_connection
                with _autocommit(driver, True), driver.cursor() as cur:
                    cur.execute("INSERT INTO bench_floor (n, b) VALUES (%s, %s)", (len(verified), b"x" * 200))
            else:
                s.connection().exec_driver_sql("INSERT INTO bench_floor (n, b) VALUES (?, ?)",
                                               (len(verified), b"x" * 200))
            s.commit()
        receipt(row, body, [EntryResult(i, Outcome.ACCEPTED, s.entry.entry_id, s.entry.seq) for i, s in verified])

    def direct(item: tuple[Terminal, Batch, bytes]) -> None:
        """As the upload route stores a lone small batch: :func:`server.upload.store_extension_direct` on
        a pooled connection (the request's), no session; the classifier only if it declines."""
        row, batch, body = item
        rejected, verified = verify_batch(batch, row)
        with engine.connect() as c:
            results, _stored = store_extension_direct(c, row.terminal_id, verified, batch.batch_id)
        assert results is not None, "not a plain extension"
        receipt(row, body, results)

    def raw_floor(item: tuple[Terminal, Batch, bytes]) -> None:
        """As :func:`floor` on a pooled DB-API connection, without session or SQLAlchemy statements: the
        least this server can spend per batch with one durable commit per receipt."""
        row, batch, body = item
        rejected, verified = verify_batch(batch, row)
        assert not rejected
        rc = engine.raw_connection()
        if pg:
            rc.driver_connection.autocommit = True
        cur = rc.driver_connection.cursor()
        if pg:
            cur.execute("INSERT INTO bench_floor (n, b) VALUES (%s, %s)", (len(verified), b"x" * 200))
        else:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT INTO bench_floor (n, b) VALUES (?, ?)", (len(verified), b"x" * 200))
            cur.execute("COMMIT")
        cur.close()
        if pg:
            rc.driver_connection.autocommit = False
        rc.close()
        receipt(row, body, [EntryResult(i, Outcome.ACCEPTED, s.entry.entry_id, s.entry.seq) for i, s in verified])

    def timed(run: Callable[[], None]) -> tuple[float, float, float]:
        db0 = _backend_cpu_ns(engine) if pg else 0
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, ((_backend_cpu_ns(engine) - db0) / 1e9 if pg else 0.0)

    def serial(items: list[tuple[Terminal, Batch, bytes]],
               work: Callable[[tuple[Terminal, Batch, bytes]], None] = one) -> Callable[[], None]:
        def run() -> None:
            for i in items:
                work(i)
        return run

    def concurrent(items: list[tuple[Terminal, Batch, bytes]], work: Callable[..., None]) -> Callable[[], None]:
        def run() -> None:
            q: queue.SimpleQueue[tuple[Terminal, Batch, bytes] | None] = queue.SimpleQueue()
            for i in items:
                q.put(i)
            errors: list[BaseException] = []

            def worker() -> None:
                while (i := q.get()) is not None:
                    try:
                        work(i)
                    except BaseException as exc:  # reported after the phase
                        errors.append(exc)
            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for _ in pool:
                q.put(None)
            for w in pool:
                w.start()
            for w in pool:
                w.join()
            assert not errors, errors[:3]
        return run

    out = []
    serial([plan(t, r, small) for t, r in list(zip(sims, rows, strict=True))[:4]])()  # warm up
    for _ in range(repeat):
        res: dict[str, float] = {}
        phases = {
            "serial": (lambda: serial([plan(t, r, small) for _ in range(rounds)
                                       for t, r in zip(sims, rows, strict=True)]), small),
            "bulk": (lambda: serial([plan(sims[0], rows[0], bulk) for _ in range(rounds)]), bulk),
            "floor": (lambda: serial([plan(t, r, small) for _ in range(rounds)
                                      for t, r in zip(sims, rows, strict=True)], floor), small),
            "direct": (lambda: serial([plan(t, r, small) for _ in range(rounds)
                                       for t, r in zip(sims, rows, strict=True)], direct), small),
            "raw": (lambda: serial([plan(t, r, small) for _ in range(rounds)
                                    for t, r in zip(sims, rows, strict=True)], raw_floor), small),
            "own": (lambda: concurrent([plan(t, r, small) for _ in range(rounds)
                                        for t, r in zip(sims, rows, strict=True)], one), small),
            "group": (lambda: concurrent([plan(t, r, small) for _ in range(rounds)
                                          for t, r in zip(sims, rows, strict=True)], grouped), small),
        }
        groups0, batches0 = group.groups, group.batches
        for name, (make, _size) in phases.items():
            run = make()  # signs the entries: not timed
            if profile and name == "serial":
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
                wall, cpu, dbs = timed(run)
                prof.disable()
                prof.dump_stats(profile)
            else:
                wall, cpu, dbs = timed(run)
            n = (bulk * rounds) if name == "bulk" else (small * rounds * terminals)
            res |= {f"{name}_wall": wall / n * 1e6, f"{name}_app": cpu / n * 1e6, f"{name}_db": dbs / n * 1e6}
        res["group_size"] = (group.batches - batches0) / max(1, group.groups - groups0)
        out.append(res)
    engine.dispose()
    return out


def store_path_main(args: argparse.Namespace) -> None:
    """Print the store path's per-entry cost (no HTTP), small vs bulk, serial and concurrent (issue 21)."""
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; journal of {args.journal:,} rows over {args.terminals} "
          f"terminals; store path (verify + store + commit + receipt, no HTTP); small = every terminal "
          f"{args.rounds} batches of {args.small}, bulk = {args.rounds} batches of {args.bulk}; concurrent "
          f"= every small batch at once to {args.threads} threads, each batch its own transaction (own) or "
          "group commit (group); CPU = this process + the PostgreSQL backends (/proc/<pid>/schedstat)")
    print("| db | run | µs/entry wall: serial small / own / group / bulk "
          "| CPU (app + db): serial small / own / group / bulk / floor / raw floor / direct "
          "| CPU ÷ bulk: serial / own / group / floor / raw floor / **direct** "
          "| wall ÷ bulk: serial / own / group / floor / raw floor / direct | batches per group |")
    print("|---|---|---|---|---|---|---|")
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = _small_db(kind, args.pg, tmp)
            try:
                runs = run_store_path(url, args.journal, args.terminals, args.small, args.bulk, args.rounds,
                                      args.threads, args.repeat,
                                      f"{args.profile}.{kind}" if args.profile else None)
            finally:
                drop()
        for i, r in enumerate(runs, 1):
            def cpu(phase: str, r: dict[str, float] = r) -> str:
                return f"{r[phase + '_app'] + r[phase + '_db']:.0f} ({r[phase + '_db']:.0f})"

            tot = {p: r[p + "_app"] + r[p + "_db"]
                   for p in ("serial", "own", "group", "bulk", "floor", "raw", "direct")}
            print(f"| {kind} | {i} | {r['serial_wall']:.0f} / {r['own_wall']:.0f} / {r['group_wall']:.0f} "
                  f"/ {r['bulk_wall']:.0f} | {cpu('serial')} / {cpu('own')} / {cpu('group')} / {cpu('bulk')} "
                  f"/ {cpu('floor')} / {cpu('raw')} / {cpu('direct')} | {tot['serial'] / tot['bulk']:.2f}× "
                  f"/ {tot['own'] / tot['bulk']:.2f}× / {tot['group'] / tot['bulk']:.2f}× "
                  f"/ {tot['floor'] / tot['bulk']:.2f}× / {tot['raw'] / tot['bulk']:.2f}× "
                  f"/ **{tot['direct'] / tot['bulk']:.2f}×** "
                  f"| {r['serial_wall'] / r['bulk_wall']:.2f}× / {r['own_wall'] / r['bulk_wall']:.2f}× "
                  f"/ {r['group_wall'] / r['bulk_wall']:.2f}× / {r['floor_wall'] / r['bulk_wall']:.2f}× "
                  f"/ {r['raw_wall'] / r['bulk_wall']:.2f}× / {r['direct_wall'] / r['bulk_wall']:.2f}× "
                  f"| {r['group_size']:.1f} |", flush=True)


def small_main(args: argparse.Namespace) -> None:
    """Print the small-batch vs bulk per-entry cost on the requested databases (issue 21)."""
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; journal of {args.journal:,} rows over {args.terminals} "
          f"terminals, then batches of {args.small} (every terminal, {args.rounds} rounds) and of "
          f"{args.bulk} (one terminal, {args.rounds} rounds), Flask test client (no socket)")
    print("| db | store path µs/entry, small / bulk | small ÷ bulk | (CPU µs/entry, small / bulk) "
          "| request µs/entry, small / bulk | small ÷ bulk | ms per small request "
          "| (CPU µs/entry, small / bulk) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = _small_db(kind, args.pg, tmp)
            try:
                r = run_small(url, args.journal, args.terminals, args.small, args.bulk, args.rounds,
                              f"{args.profile}.{kind}" if args.profile else None)
            finally:
                drop()
        print(f"| {kind} | {r['direct_small_us']:.0f} / {r['direct_bulk_us']:.0f} "
              f"| {r['direct_small_us'] / r['direct_bulk_us']:.2f}× "
              f"| ({r['direct_small_cpu_us']:.0f} / {r['direct_bulk_cpu_us']:.0f}) "
              f"| {r['small_us']:.0f} / {r['bulk_us']:.0f} | {r['ratio']:.2f}× | {r['batch_ms']:.2f} "
              f"| ({r['small_cpu_us']:.0f} / {r['bulk_cpu_us']:.0f}) |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                   help="admin URL; a scratch database is created and dropped")
    p.add_argument("--workers", type=int, default=0,
                   help="instead: 1 and 2 terminals at once against `huma server run` with 1 and N processes")
    p.add_argument("--small", type=int, default=0,
                   help="instead: per-entry cost of batches of SMALL entries vs --bulk (issue 21)")
    p.add_argument("--bulk", type=int, default=1000, help="with --small: entries per bulk batch")
    p.add_argument("--journal", type=int, default=100_000, help="with --small: rows stored before")
    p.add_argument("--terminals", type=int, default=200, help="with --small: terminals")
    p.add_argument("--rounds", type=int, default=3, help="with --small: batches per terminal")
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both", help="with --small or --workers")
    p.add_argument("--profile", default=None, help="with --small: cProfile the small batches into FILE.<db>")
    p.add_argument("--concurrent", action="store_true",
                   help="with --small: every terminal posts at once to `huma server run` (not the test client)")
    p.add_argument("--server-workers", type=int, default=2, help="with --concurrent: server processes")
    p.add_argument("--threads", type=int, default=8, help="with --concurrent: waitress threads per process")
    p.add_argument("--store-path", action="store_true",
                   help="with --small: the store path alone (no HTTP), serial, concurrent and group commit")
    p.add_argument("--repeat", type=int, default=1, help="with --store-path: repetitions (alternating phases)")
    p.add_argument("--bulk-terminals", type=int, default=2,
                   help="with --concurrent: terminals posting bulk batches at once")
    args = p.parse_args()
    if args.small and args.store_path:
        store_path_main(args)
        return
    if args.small and args.concurrent:
        concurrent_main(args)
        return
    if args.small:
        small_main(args)
        return
    if args.workers:
        workers_main(args.entries, args.batch, args.workers,
                     ["sqlite", "postgresql"] if args.db == "both" else [args.db], args.pg)
        return
    t = make_entries(args.entries)
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; floor = Ed25519 verify alone, one thread, "
          "measured just before and after each database run (mean)")

    def report(name: str, run: Callable[[], tuple[float, float, float]]) -> None:
        before = ed25519_floor(t)
        secs, cpu, db_cpu = run()
        floor = (before + ed25519_floor(t)) / 2
        n = args.entries
        print(f"{name:<11} {n} entries in {secs:.2f} s = {n / secs:,.0f} entries/s, "
              f"{secs / n * 1e6:.0f} µs/entry = {secs / n / floor:.2f}× Ed25519 alone "
              f"({floor * 1e6:.1f} µs, {1 / floor:,.0f}/s); CPU: this process {cpu / secs:.2f} cores"
              + (f", PostgreSQL backends {db_cpu / secs:.2f} cores; all CPU time "
                 f"{(cpu + db_cpu) / n / floor:.2f}× Ed25519 alone" if db_cpu else ""))

    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite:", lambda: run_one(f"sqlite:///{os.path.join(tmp, 'bench.db')}", t, args.batch))
    name = f"huma_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        report("postgresql:", lambda: run_one(args.pg.rsplit("/", 1)[0] + "/" + name, t, args.batch))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
