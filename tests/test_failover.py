"""The server's PostgreSQL fails over (issue 21) without losing an acknowledged journal entry.

A pg_auto_failover formation on this machine (docs/operations.md §High availability): a monitor
and two PostgreSQL 15 nodes, a primary and its synchronous secondary, each on its own loopback
port with its data under one temporary directory, run as the ``postgres`` OS user (pg_autoctl
refuses root). The real server (waitress) uses the multi-host URL
``?host=…&host=…&target_session_attrs=read-write``; two simulated terminals upload signed
journal batches without pause and retry whatever was not acknowledged. The primary's node is
killed (SIGKILL of its pg_autoctl and postgres); the monitor promotes the secondary. Every entry
the server answered ``accepted``/``duplicate`` for must be on the new primary, and while the
database is away the server answers 503 + ``Retry-After`` (retry), never 500.

The monitor's failure detection is shortened from its defaults (about a minute to promote) to
a few seconds, with the settings of pg_autoctl(5); the keeper's network-partition timeout stays
below the monitor's ``primary_demote_timeout``, as that page requires.

The fast tests at the end need no cluster: the multi-host URL forms, and a 503 (not a 500)
when no PostgreSQL host answers.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.db import ADMIN_PASSWORD, LiveServer, SimTerminal, World, serving

UPLOAD = "/api/v1/journal/batches"
HOST = "127.0.0.1"
#: Monitor settings (milliseconds; pg_autoctl(5) "PG_AUTO_FAILOVER MONITOR"), defaults in comments.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": 1000,  # 5000
    "pgautofailover.health_check_timeout": 1000,  # 5000
    "pgautofailover.health_check_max_retries": 1,  # 2
    "pgautofailover.health_check_retry_delay": 500,  # 2000
    "pgautofailover.node_considered_unhealthy_timeout": 2000,  # 20000
    "pgautofailover.primary_demote_timeout": 5000,  # 30000; must exceed network_partition_timeout
    "pgautofailover.startup_grace_period": 1000,  # 10000
}
#: Keeper setting (seconds; pg_autoctl(5) "timeout"): a primary cut off from monitor and standby
#: this long stops itself, before the monitor's primary_demote_timeout promotes the standby.
NETWORK_PARTITION_TIMEOUT_S = 3
#: Bounds of every wait, seconds.
SETUP_TIMEOUT_S = 90.0
FAILOVER_TIMEOUT_S = 60.0


def _pg_autoctl() -> tuple[str, Path]:
    """pg_autoctl and the bin directory of the PostgreSQL with the pgautofailover extension; else skip/fail.

    Debian: /usr/bin/pg_autoctl (pg-auto-failover-cli) and /usr/lib/postgresql/15/lib/pgautofailover.so
    (postgresql-15-auto-failover). Outside CI a machine without them skips; in CI (``CI`` set) it fails.
    """
    binary = shutil.which("pg_autoctl")
    libs = sorted(glob.glob("/usr/lib/postgresql/*/lib/pgautofailover.so"),
                  key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if binary is None or not libs:
        why = ("pg_autoctl or the pgautofailover extension is not installed (Debian package "
               "postgresql-15-auto-failover; scripts/setup-system.sh installs it)")
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run the failover test")
        pytest.skip(why)
    return binary, Path(libs[-1]).parent.parent / "bin"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on (the kernel's ephemeral choice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pg(port: int, dbname: str = "postgres", **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(host=HOST, port=port, user="postgres", dbname=dbname, connect_timeout=2,
                           autocommit=True, **kwargs)


def _until(what: str, timeout_s: float, probe: Any, every_s: float = 0.2) -> Any:
    """Call ``probe`` until it returns something truthy (exceptions count as not yet); bounded."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a server starting up refuses connections
            last = exc
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last error: {last})")


class Formation:
    """A pg_auto_failover monitor and two nodes under ``base``, each ``pg_autoctl run`` in its own session."""

    def __init__(self, binary: str, bindir: Path, base: Path) -> None:
        self.binary = binary
        self.base = base
        self.monitor_port, *ports = _free_ports(3)
        self.nodes = {f"node{i}": port for i, port in enumerate(ports, 1)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg_ctl = str(bindir / "pg_ctl")
        self.env = {"PATH": f"{bindir}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(base),
                    "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "share"),
                    "XDG_RUNTIME_DIR": str(base / "run")}
        self.as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:  # pg_autoctl refuses to run as root
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
            self.as_postgres = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.monitor_uri = f"postgres://autoctl_node@{HOST}:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    # -- processes

    def _autoctl(self, *args: str, timeout_s: float = SETUP_TIMEOUT_S) -> None:
        log = self.base / "autoctl.log"
        with log.open("ab") as out:
            proc = subprocess.run([self.binary, *args], env=self.env, cwd=self.base, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, check=False, **self.as_postgres)
        if proc.returncode != 0:
            raise AssertionError(f"pg_autoctl {args[0]} {args[1]} failed ({proc.returncode}):\n"
                                 + log.read_text(errors="replace")[-3000:])

    def _run(self, name: str) -> None:
        """``pg_autoctl run`` for ``name`` in a new session (process group), so a kill takes all of it."""
        out = (self.base / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [self.binary, "run", "--pgdata", str(self.base / name)], env=self.env, cwd=self.base,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **self.as_postgres)
        out.close()

    def start(self) -> None:
        """Monitor, then node1 (primary), then node2 (synchronous secondary); returns when both report it."""
        common = ["--hostname", HOST, "--listen", HOST, "--auth", "trust", "--no-ssl", "--pgctl", self.pg_ctl]
        self._autoctl("create", "monitor", "--pgdata", str(self.base / "monitor"),
                      "--pgport", str(self.monitor_port), *common)
        self._run("monitor")
        _until("monitor accepts connections", SETUP_TIMEOUT_S, lambda: _pg(self.monitor_port).close() or True)
        with _pg(self.monitor_port, "pg_auto_failover") as conn:
            for name, value in MONITOR_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = {int(value)}")
            conn.execute("SELECT pg_reload_conf()")
        for name, port in self.nodes.items():
            stop = threading.Event()
            if name != "node1":
                # pg_basebackup waits for the primary's next checkpoint (a spread one: minutes): ask for it.
                threading.Thread(target=self._checkpoints, args=(self.nodes["node1"], stop), daemon=True).start()
            try:
                self._autoctl("create", "postgres", "--pgdata", str(self.base / name), "--pgport", str(port),
                              "--name", name, "--dbname", "huma", "--monitor", self.monitor_uri, *common)
            finally:
                stop.set()
            self._autoctl("config", "set", "--pgdata", str(self.base / name),
                          "timeout.network_partition_timeout", str(NETWORK_PARTITION_TIMEOUT_S))
            self._run(name)
        self.wait_states({"node1": "primary", "node2": "secondary"}, SETUP_TIMEOUT_S)
        _until("synchronous replication on the primary", SETUP_TIMEOUT_S, lambda: self._sync_standby())

    @staticmethod
    def _checkpoints(port: int, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            try:
                with _pg(port) as conn:
                    conn.execute("CHECKPOINT")
            except Exception:  # not up yet, or the backup is done
                pass

    def _sync_standby(self) -> bool:
        with _pg(self.nodes["node1"]) as conn:
            return bool(conn.execute("SHOW synchronous_standby_names").fetchone()[0])

    def states(self) -> dict[str, tuple[str, str]]:
        """``{node name: (reported state, assigned state)}`` from the monitor."""
        with _pg(self.monitor_port, "pg_auto_failover") as conn:
            rows = conn.execute("SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node")
            return {name: (reported, goal) for name, reported, goal in rows}

    def wait_states(self, want: dict[str, str], timeout_s: float) -> None:
        """Wait until each named node reports, and is assigned, the state wanted."""
        _until(f"nodes in states {want}", timeout_s,
               lambda: all(self.states().get(n) == (s, s) for n, s in want.items()))

    def kill(self, name: str) -> None:
        """SIGKILL the node's pg_autoctl and its postmaster (one process group); backends exit on postmaster death."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def stop(self) -> None:
        """Stop every process (SIGTERM: pg_autoctl stops its postgres; SIGKILL after 15 s); bounded."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for name in ("monitor", *self.nodes):  # a postmaster left behind by a killed keeper
            pidfile = self.base / name / "postmaster.pid"
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


@pytest.fixture
def formation() -> Iterator[Formation]:
    """A running monitor + primary + synchronous secondary; stopped and removed afterwards, even on failure."""
    binary, bindir = _pg_autoctl()
    base = Path(tempfile.mkdtemp(prefix="huma-failover-"))
    f = Formation(binary, bindir, base)
    try:
        f.start()
        yield f
    finally:
        f.stop()
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- terminals uploading


@dataclass
class Uploads:
    """What the simulated terminals saw; shared by their threads (``lock``)."""

    acked: dict[bytes, str] = field(default_factory=dict)  #: entry id -> terminal, answered accepted/duplicate
    made: set[bytes] = field(default_factory=set)  #: every entry id signed
    ok_times: list[float] = field(default_factory=list)  #: monotonic time of each 200
    failures: list[tuple[float, str]] = field(default_factory=list)  #: (time, "503 database_unavailable" …)
    unexpected: list[str] = field(default_factory=list)  #: any answer but 200/503: a test failure
    lock: threading.Lock = field(default_factory=threading.Lock)


def _terminal_loop(live: LiveServer, t: SimTerminal, seen: Uploads, stop: threading.Event, deadline: float) -> None:
    """Sign 10 entries at a time and upload the oldest unacknowledged (at most 50), retrying after 0.1 s.

    Stops making entries when ``stop`` is set, and returns once all are acknowledged (or at ``deadline``).
    """
    pending: list[Any] = []
    while time.monotonic() < deadline and not (stop.is_set() and not pending):
        if not stop.is_set() and len(pending) < 50:
            new = [t.append() for _ in range(10)]
            pending += new
            with seen.lock:
                seen.made.update(e.entry.entry_id for e in new)
        batch = pending[:50]
        body = t.body([e.message for e in batch])
        try:
            status, _headers, data = live.post(UPLOAD, body, t.headers(body))
        except OSError as exc:
            status, data = 0, str(exc).encode()
        now = time.monotonic()
        if status == 200:
            results = json.loads(data)["results"]
            done = {bytes.fromhex(r["entry_id"]) for r in results if r["result"] in ("accepted", "duplicate")}
            pending = [e for e in pending if e.entry.entry_id not in done]
            with seen.lock:
                seen.acked.update((i, t.terminal_id) for i in done)
                seen.ok_times.append(now)
                if len(done) != len(batch):
                    seen.unexpected.append(f"{t.terminal_id}: not accepted: {results}")
            time.sleep(0.02)
            continue
        with seen.lock:
            if status == 503:
                seen.failures.append((now, f"503 {json.loads(data)['error']['code']}"))
            else:
                seen.unexpected.append(f"{t.terminal_id}: {status} {data[:300]!r}")
        time.sleep(0.1)


def _server_app(url: str, tmp_path: Path, ca_key_path: Path, trust_root_path: Path) -> tuple[Any, World]:
    """The app on ``url`` (migrated here), an admin logged in and the World helpers over its test client."""
    from server import create_app
    from server.auth import create_person
    from server.db import make_engine, upgrade
    from server.extensions import db
    from server.models import PersonRole

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    app = create_app({"TESTING": True, "DATABASE_URL": url, "TERMINAL_CA_KEY": str(ca_key_path),
                      "TRUST_ROOT_CERT": str(trust_root_path), "DB_BUSY_TIMEOUT": 2.0, "RETRY_AFTER": 1})
    app.instance_path = str(tmp_path / "instance")
    with app.app_context():
        session = db.write_session()
        create_person(session, "admin", ADMIN_PASSWORD, PersonRole.ADMIN)
        session.commit()
    client = app.test_client()
    r = client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.get_json()
    return app, World(client, r.get_json()["token"])


@pytest.mark.slow
@pytest.mark.postgres
def test_primary_killed_mid_upload_loses_no_acknowledged_entry(formation, tmp_path, ca_key_path, trust_root_path):
    from server.extensions import db

    (p1, p2) = formation.nodes.values()
    url = (f"postgresql+psycopg://postgres@/huma?host={HOST}:{p1}&host={HOST}:{p2}"
           "&target_session_attrs=read-write&connect_timeout=2")
    app, world = _server_app(url, tmp_path, ca_key_path, trust_root_path)
    terminals = [world.enrol("T-FO-1"), world.enrol("T-FO-2")]
    seen = Uploads()
    stop = threading.Event()
    try:
        with serving(app) as live:
            deadline = time.monotonic() + SETUP_TIMEOUT_S + FAILOVER_TIMEOUT_S
            threads = [threading.Thread(target=_terminal_loop, args=(live, t, seen, stop, deadline), daemon=True)
                       for t in terminals]
            for th in threads:
                th.start()
            _until("uploads acknowledged before the kill", 30, lambda: len(seen.acked) >= 200, 0.05)
            acked_before = len(seen.acked)
            killed_at = time.monotonic()
            formation.kill("node1")
            formation.wait_states({"node2": "wait_primary"}, FAILOVER_TIMEOUT_S)
            promoted_at = time.monotonic()
            _until("an upload acknowledged after the failover", FAILOVER_TIMEOUT_S,
                   lambda: seen.failures and seen.ok_times[-1] > seen.failures[0][0], 0.05)
            time.sleep(1.0)  # uploads go on on the new primary
            stop.set()
            for th in threads:
                th.join(FAILOVER_TIMEOUT_S)
            assert not any(th.is_alive() for th in threads), "terminals still uploading at the deadline"
    finally:
        stop.set()
        with app.app_context():
            db.engine.dispose()

    assert seen.unexpected == [], seen.unexpected[:5]
    assert seen.failures, "killing the primary failed no upload: was it the primary?"
    codes = {code for _, code in seen.failures}
    assert codes <= {"503 database_unavailable", "503 database_busy"}, codes
    first_failure = seen.failures[0][0]
    first_ok_after = min(t for t in seen.ok_times if t > seen.failures[-1][0])
    with _pg(p2, "huma") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        stored = {bytes(r[0]) for r in conn.execute("SELECT entry_id FROM journal_entries")}
    lost = set(seen.acked) - stored
    failover_s = first_ok_after - first_failure
    print(f"\nfailover: {failover_s:.1f} s from the first failed upload to the first acknowledged one after "
          f"({first_ok_after - killed_at:.1f} s from the kill, promotion seen {promoted_at - killed_at:.1f} s "
          f"after it); {len(seen.failures)} uploads answered 503 {sorted(codes)}; "
          f"{len(seen.acked)} entries acknowledged ({acked_before} before the kill), {len(lost)} lost")
    assert lost == set(), f"{len(lost)} acknowledged entries missing on the new primary"
    assert set(seen.acked) == seen.made, "every entry signed was acknowledged in the end"
    assert stored == seen.made
    assert failover_s < FAILOVER_TIMEOUT_S


# ----------------------------------------------------------------------------- no cluster needed


@pytest.mark.parametrize("query", [
    "host=127.0.0.1:5441&host=127.0.0.1:5442",
    "host=127.0.0.1,127.0.0.1&port=5441,5442",
    "host=127.0.0.1:5441,127.0.0.1:5442",  # libpq's form: SQLAlchemy passed "127.0.0.1:5441" on as a host name
])
def test_multi_host_urls_reach_libpq_as_host_and_port_lists(query):
    from server.cli import _where, check_database_url
    from server.db import make_engine

    url = f"postgresql+psycopg://postgres@/huma?{query}&target_session_attrs=read-write"
    check_database_url(url)
    engine = make_engine(url)
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1,127.0.0.1", "5441,5442")
    assert kwargs["target_session_attrs"] == "read-write"
    assert "127.0.0.1" in _where(url) and "5442" in _where(url) and "localhost" not in _where(url)


def test_no_reachable_database_answers_503_not_500(tmp_path, ca_key_path, trust_root_path):
    """Both hosts of a multi-host URL refusing connections (a failover under way) is "retry", not a bug."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cardlib.keys.signer import derive_kid
    from server import create_app
    from server.extensions import db

    p1, p2 = _free_ports(2)
    url = f"postgresql+psycopg://postgres@/huma?host={HOST}:{p1}&host={HOST}:{p2}&target_session_attrs=read-write"
    app = create_app({"TESTING": True, "DATABASE_URL": url, "TERMINAL_CA_KEY": str(ca_key_path),
                      "TRUST_ROOT_CERT": str(trust_root_path), "RETRY_AFTER": 3})
    app.instance_path = str(tmp_path / "instance")
    key = ed25519.Ed25519PrivateKey.generate()
    t = SimTerminal("T-503", key, derive_kid(key.public_key()))
    body = t.body([t.append().message])
    client = app.test_client()
    try:
        for r in (client.post(UPLOAD, data=body, headers=t.headers(body)),
                  client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})):
            assert r.status_code == 503, r.get_json()
            assert r.get_json()["error"]["code"] == "database_unavailable"
            assert r.headers["Retry-After"] == "3"
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("path", ["copy", "rows", "cte"])
def test_connection_lost_mid_upload_answers_503_and_the_retry_is_stored(db_url, world, live_server, monkeypatch,
                                                                        path):
    """The primary going away during the upload's COPY (a raw driver cursor, which SQLAlchemy does not
    watch) is a 503, and the connection is discarded: the retry on a fresh one stores the batch."""
    import psycopg
    from sqlalchemy.engine import make_url

    from server import upload

    name = {"copy": "_insert_entries_pg_copy", "rows": "_insert_entries_pg_rows", "cte": "_read_and_insert_pg"}[path]
    real, killed = getattr(upload, name), []

    def dying(connection: Any, *args: Any) -> Any:
        if not killed:  # the first batch only: its server process ends, as on a primary's crash
            # _read_and_insert_pg takes the session
            conn = connection.connection() if path == "cte" else connection
            pid = conn.connection.driver_connection.info.backend_pid
            u = make_url(db_url)
            with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True) as c:
                killed.append(c.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0])
        return real(connection, *args)

    monkeypatch.setattr(upload, name, dying)
    t = world.enrol("T-LOST")
    # batches above PG_COPY_MIN_ROWS go through COPY, smaller ones are one multi-row INSERT, or, when
    # they extend the chain in upload order, one statement that reads the neighbours and inserts
    n = upload.PG_COPY_MIN_ROWS + 1 if path == "copy" else 3
    messages = [t.append().message for _ in range(n)]
    body = t.body(messages[::-1] if path == "rows" else messages)
    status, headers, data = live_server.post(UPLOAD, body, t.headers(body))
    assert killed == [True]
    assert (status, json.loads(data)["error"]["code"], headers["Retry-After"]) == (503, "database_unavailable", "2")
    status, _headers, data = live_server.post(UPLOAD, body, t.headers(body))
    assert status == 200, data
    assert [r["result"] for r in json.loads(data)["results"]] == ["accepted"] * n
