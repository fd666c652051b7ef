"""``huma server`` on SQLite and PostgreSQL: typed one-line errors (exit 2), no secrets printed, admin commands audited."""

from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from huma.cli import main
from server.extensions import db
from server.models import AuditLog, Person, PersonRole, Terminal, TerminalStatus
from tests.fixtures.db import ADMIN_PASSWORD


@pytest.fixture
def env(db_url: str, ca_key_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's environment pointed at the test database and terminal CA."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("HUMA_TERMINAL_CA_KEY", str(ca_key_path))
    monkeypatch.delenv("HUMA_PERSON_PASSWORD", raising=False)
    return db_url


def _huma(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _audit(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    with app.app_context():
        return [(r.action, r.target, json.loads(r.detail)) for r in
                db.session.scalars(select(AuditLog).order_by(AuditLog.id))]


def test_people_add_existing_user_is_a_conflict_without_the_hash(app, world, env, capsys, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("another long password\n")
    code, out, err = _huma(capsys, "server", "people", "add", "admin", "--role", "admin", "--password-file", str(pw))
    assert code == 2 and "person 'admin' exists" in err
    assert "scrypt" not in out + err and "Traceback" not in out + err and "another long" not in out + err


def test_password_never_on_the_command_line(app, env, capsys, tmp_path, monkeypatch):
    code, _out, err = _huma(capsys, "server", "people", "add", "x", "--role", "admin", "--password", "secret pw 123")
    assert code == 2 and "No such option" in err
    pw = tmp_path / "pw"
    pw.write_text("file password 123\nignored second line\n")
    assert _huma(capsys, "server", "people", "add", "filer", "--role", "auditor", "--password-file", str(pw))[0] == 0
    monkeypatch.setenv("HUMA_PERSON_PASSWORD", "env password 1234")
    assert _huma(capsys, "server", "people", "add", "enver", "--role", "technician")[0] == 0
    client = app.test_client()
    for user, password in (("filer", "file password 123"), ("enver", "env password 1234")):
        r = client.post("/api/v1/auth/login", json={"username": user, "password": password})
        assert r.status_code == 200, (user, r.get_json())
    creates = [d for a, _t, d in _audit(app) if a == "person.create"]
    assert {d["username"] for d in creates} == {"filer", "enver"} and all(d["via"] == "cli" for d in creates)
    assert not any("password" in json.dumps(d) for d in creates)


@pytest.mark.parametrize("url, says", [
    ("nonsense://x", "is not usable"),
    ("postgresql+nodriver://u:hunter2pw@127.0.0.1/x", "is not usable"),
    ("::::", "is not usable"),
])
def test_garbage_database_url_is_a_configuration_error(url, says, capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = _huma(capsys, "server", "db", "upgrade")
    assert code == 2 and says in err and "Traceback" not in err and "hunter2pw" not in out + err


def test_database_down_names_host_and_port_not_the_password(capsys, monkeypatch):
    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://huma:hunter2pw@127.0.0.1:{port}/huma")
    code, out, err = _huma(capsys, "server", "db", "upgrade")
    assert code == 2 and f"127.0.0.1:{port}/huma" in err and "cannot use the database" in err
    assert "hunter2pw" not in out + err and "Traceback" not in err


def test_run_on_a_busy_port_is_a_listen_error(env, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _out, err = _huma(capsys, "server", "run", "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_terminals_list_approve_revoke_from_the_console_are_audited(app, world, env, capsys):
    world.enrol("T-501", approve=False)
    world.enrol("T-502", approve=False)
    code, out, _err = _huma(capsys, "server", "terminals", "list", "--status", "pending")
    assert code == 0 and "T-501" in out and "T-502" in out
    # grouped by 4 like the fingerprint the counter prints, so the admin compares group by group
    fingerprints = {line.split()[0]: " ".join(line.split()[-16:]) for line in out.splitlines() if line.startswith("T-")}
    assert all(re.fullmatch(r"([0-9a-f]{4} ){15}[0-9a-f]{4}", f) for f in fingerprints.values()), fingerprints
    assert _huma(capsys, "server", "terminals", "approve", "T-501", "--fingerprint", "0" * 64)[0] == 2
    assert _huma(capsys, "server", "terminals", "approve", "T-501", "--fingerprint", fingerprints["T-501"])[0] == 0
    r = world.client.get("/api/v1/terminals/T-501/certificate")
    assert r.status_code == 200 and "BEGIN CERTIFICATE" in r.get_json()["certificate"]
    assert _huma(capsys, "server", "terminals", "reject", "T-502")[0] == 0
    assert _huma(capsys, "server", "terminals", "revoke", "T-501")[0] == 0
    code, _out, err = _huma(capsys, "server", "terminals", "approve", "T-502",  # rejected stays rejected
                            "--fingerprint", fingerprints["T-502"])
    assert code == 2 and "cannot become approved" in err
    code, _out, err = _huma(capsys, "server", "terminals", "approve", "T-nope", "--fingerprint", "0" * 64)
    assert code == 2 and "no terminal 'T-nope'" in err
    with app.app_context():
        status = dict(db.session.execute(select(Terminal.terminal_id, Terminal.status)).all())
    assert status == {"T-501": TerminalStatus.REVOKED, "T-502": TerminalStatus.REJECTED}
    decisions = [(a, t, d["via"]) for a, t, d in _audit(app) if a.startswith("terminal.")]
    assert decisions == [("terminal.approved", "terminal:T-501", "cli"), ("terminal.rejected", "terminal:T-502", "cli"),
                         ("terminal.revoked", "terminal:T-501", "cli")]


def test_people_list_disable_set_password(app, world, env, capsys, tmp_path):
    code, out, _err = _huma(capsys, "server", "people", "list")
    assert code == 0 and "admin" in out and "enabled" in out and "scrypt" not in out
    assert world.client.get("/api/v1/people", headers=world.auth()).status_code == 200
    assert _huma(capsys, "server", "people", "disable", "admin")[0] == 0
    assert world.client.get("/api/v1/people", headers=world.auth()).status_code == 401  # session ended
    r = world.client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 401
    assert _huma(capsys, "server", "people", "enable", "admin")[0] == 0
    pw = tmp_path / "pw"
    pw.write_text("short\n")
    code, _out, err = _huma(capsys, "server", "people", "set-password", "admin", "--password-file", str(pw))
    assert code == 2 and "at least 10 characters" in err
    pw.write_text("a brand new password\n")
    assert _huma(capsys, "server", "people", "set-password", "admin", "--password-file", str(pw))[0] == 0
    assert world.client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 401
    assert world.client.post("/api/v1/auth/login",
                             json={"username": "admin", "password": "a brand new password"}).status_code == 200
    code, _out, err = _huma(capsys, "server", "people", "disable", "nobody")
    assert code == 2 and "no person 'nobody'" in err
    actions = [a for a, _t, d in _audit(app) if d.get("via") == "cli"]
    assert actions == ["person.disable", "person.enable", "person.set_password"]
    with app.app_context():
        assert db.session.scalars(select(Person.disabled).where(Person.username == "admin")).one() is False


@pytest.fixture
def unmigrated_url(db_url: str, tmp_path: Any) -> Any:
    """A database that exists but was never migrated: an empty SQLite file or a new PostgreSQL database."""
    from sqlalchemy import create_engine, text

    from tests.fixtures.db import PG_ADMIN_URL

    if db_url.startswith("sqlite"):
        path = tmp_path / "empty.db"
        path.write_bytes(b"")
        yield f"sqlite:///{path}"
        return
    name = f"huma_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("argv", [
    ("audit", "export", "journal", "-o", "-"), ("audit", "export", "findings", "-o", "-"), ("audit", "reconcile"),
    ("server", "people", "list"), ("server", "terminals", "list"),
])
def test_commands_on_a_missing_or_unmigrated_database_say_run_db_upgrade(argv, unmigrated_url, tmp_path, capsys,
                                                                         monkeypatch):
    """Never a traceback, never a new database file: one typed line naming the fix, exit 2."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    missing = tmp_path / "no" / "such.db"
    code, out, err = _huma(capsys, *argv, "--database", f"sqlite:///{missing}")
    assert code == 2 and "has no schema (revision none" in err and "huma server db upgrade" in err, err
    assert "Traceback" not in out + err and not missing.parent.exists()
    monkeypatch.setenv("DATABASE_URL", unmigrated_url)  # the option's default
    code, out, err = _huma(capsys, *argv)
    assert code == 2 and "has no schema (revision none); run `huma server db upgrade`" in err, err
    assert "Traceback" not in out + err and err.count("\n") == 1


def test_a_database_behind_head_is_refused_then_upgraded(unmigrated_url, capsys, monkeypatch):
    from server.db import head_revision

    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert _huma(capsys, "server", "db", "upgrade", "--revision", "0004", "--database", unmigrated_url)[0] == 0
    code, _out, err = _huma(capsys, "server", "people", "list", "--database", unmigrated_url)
    assert code == 2 and f"is at revision 0004, not this release's {head_revision()}" in err
    assert "huma server db upgrade" in err
    assert _huma(capsys, "server", "db", "upgrade", "--database", unmigrated_url)[0] == 0
    code, out, _err = _huma(capsys, "server", "people", "list", "--database", unmigrated_url)
    assert code == 0 and "no people yet" in out


def test_run_refuses_a_database_it_cannot_use(unmigrated_url, capsys, monkeypatch):
    """``server run`` checks connect + revision == head before it listens (it used to serve 500s)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    monkeypatch.setenv("DATABASE_URL", "sqlite:////nonexistent/dir/x.db")
    code, out, err = _huma(capsys, "server", "run", "--port", port)
    assert code == 2 and "serving on" not in out and "/nonexistent/dir/x.db has no schema" in err
    code, out, err = _huma(capsys, "server", "run", "--port", port, "--database", unmigrated_url)
    assert code == 2 and "serving on" not in out and "has no schema (revision none)" in err
    assert not Path("/nonexistent/dir").exists()


def test_usernames_are_unique_in_any_case(app, world, env, capsys, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("auditor password 1\n")
    assert _huma(capsys, "server", "people", "add", "auditor", "--role", "auditor", "--password-file", str(pw))[0] == 0
    code, _out, err = _huma(capsys, "server", "people", "add", "Auditor", "--role", "admin", "--password-file", str(pw))
    assert code == 2 and "person 'auditor' exists" in err
    assert _huma(capsys, "server", "people", "add", "Clerk", "--role", "technician", "--password-file", str(pw))[0] == 0
    r = world.client.post("/api/v1/people", headers=world.auth(),
                          json={"username": "CLERK", "password": "another password 2", "role": "admin"})
    assert r.status_code == 409, r.get_json()
    for name in ("clerk", "CLERK", "Clerk"):  # stored as "clerk"; login in any case
        r = world.client.post("/api/v1/auth/login", json={"username": name, "password": "auditor password 1"})
        assert r.status_code == 200, (name, r.get_json())
    assert _huma(capsys, "server", "people", "disable", "AUDITOR")[0] == 0
    with app.app_context():
        names = db.session.scalars(select(Person.username).order_by(Person.id)).all()
        # the database itself refuses a second spelling written past the code (index on lower(username))
        db.session.add(Person(username="Admin", password_hash="x", role=PersonRole.ADMIN, disabled=False))
        with pytest.raises(IntegrityError):
            db.session.flush()
        db.session.rollback()
    assert names == ["admin", "auditor", "clerk"]


def _server_commands() -> list[tuple[str, ...]]:
    from server.audit.cli import audit
    from server.cli import server

    found: list[tuple[str, ...]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        found.append(path)

    walk(server, ("server",))
    walk(audit, ("audit",))
    return found


@pytest.mark.parametrize("argv", _server_commands(), ids=" ".join)
def test_help_shows_no_docstring_markup(argv, capsys):
    code, out, _err = _huma(capsys, *argv, "--help")
    assert code == 0 and "Usage:" in out
    assert not any(mark in out for mark in (":raises", ":param", ":returns", ":ivar", "``")), out
    if argv in {("server", "run"), ("server", "db", "upgrade"), ("audit", "export"), ("audit", "reconcile"),
                ("server", "people", "add"), ("server", "terminals", "approve")}:
        assert "--database URL" in out and "DATABASE_URL" in out


def test_people_unlock_from_the_console_lifts_a_lock_out_and_is_audited(app, world, env, capsys):
    """A clerk locked out by five wrong passwords is let back in by an admin at the console."""
    app.config.update(LOGIN_FREE_FAILURES=100, LOGIN_LOCKOUT_FAILURES=5)
    c = world.client
    for _ in range(5):
        c.post("/api/v1/auth/login", json={"username": "admin", "password": "a wrong password"})
    r = c.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "login_locked"
    code, out, _err = _huma(capsys, "server", "people", "unlock", "admin")
    assert code == 0 and "lock-out lifted" in out
    assert c.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    code, out, _err = _huma(capsys, "server", "people", "unlock", "admin")
    assert code == 0 and "was not locked out" in out
    code, _out, err = _huma(capsys, "server", "people", "unlock", "nobody")
    assert code == 2 and "no person 'nobody'" in err
    unlocks = [(t, d["lifted"], d["via"]) for a, t, d in _audit(app) if a == "login.unlock"]
    assert [(lifted, via) for _t, lifted, via in unlocks] == [(True, "cli"), (False, "cli")]


def test_enrolment_codes_listed_without_the_code_and_cancelled(app, world, env, capsys):
    """A code handed to the wrong person is cancelled before anyone enrols a squatting counter with it."""
    code_a = world.enrolment_code("T-601")
    world.enrolment_code("T-602")
    code, out, _err = _huma(capsys, "server", "terminals", "codes")
    assert code == 0 and "T-601" in out and "T-602" in out and code_a not in out
    code, out, _err = _huma(capsys, "server", "terminals", "codes", "--terminal", "T-602")
    assert code == 0 and "T-601" not in out and "T-602" in out
    code, out, _err = _huma(capsys, "server", "terminals", "cancel-codes", "T-601")
    assert code == 0 and "1 enrolment code cancelled" in out
    code, out, _err = _huma(capsys, "server", "terminals", "codes")
    assert "T-601" not in out and "T-602" in out
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "T-601")]))
           .sign(ed25519.Ed25519PrivateKey.generate(), None))
    r = world.client.post("/api/v1/terminals/enrol", json={
        "terminal_id": "T-601", "csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "code": code_a})
    assert r.status_code in (400, 403) and "expired" in r.get_json()["error"]["message"]
    cancels = [(t, d["cancelled"]) for a, t, d in _audit(app) if a == "enrolment.codes_cancelled"]
    assert cancels == [("terminal:T-601", 1)]
