"""``huma server``: run the API under waitress, migrate the database, administer people and terminals.

Every failure is a typed :class:`server.errors.ServerError` (``huma`` prints one line and
exits 2): a busy port, an unusable ``DATABASE_URL``, an unreachable database, an existing
username. Messages never carry secrets: no password, hash or URL password is printed.

Every change made here is written to the audit log (``audit_log``) like the same change
through the API, with ``person_id`` empty and ``via: cli`` plus the operating-system user.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from cardlib.records.bundle import Programme

log = logging.getLogger(__name__)

#: Environment variable that may carry a new person's password (for scripts; never argv).
PASSWORD_ENV = "HUMA_PERSON_PASSWORD"


#: Characters of :func:`console_time`'s text (``2026-03-02 08:00:15 WIB``): a column's width.
CONSOLE_TIME_WIDTH = 23


def console_time(when: object) -> str:
    """An instant as every ``huma server`` line writes it, the audit pages' WIB (UTC+7) to the second:
    ``2026-03-02 08:00:15 WIB``. Takes an aware datetime or its ISO 8601 text (as an API record holds
    it); anything else (``None``: not on record) is ``–``.

    :raises ValueError: text that is not ISO 8601.
    """
    from server.audit.i18n import wib

    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when)
    return wib(when if isinstance(when, dt.datetime) else None, "en", seconds=True)


def _safe_url(url: str) -> str:
    """``url`` without its password, or a placeholder when it does not parse."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number ("@[::1/x")
        return "<unparseable URL>"


def check_database_url(url: str) -> None:
    """Refuse a database URL no command can work with, before SQLAlchemy sees it.

    A port that is not a number (``…@[::1/x``, ``host:port``) raised a bare ValueError, a
    traceback. (An in-memory SQLite URL is refused by :func:`server.db.make_engine`, which every
    command and the app open the database with.)

    :raises ConfigurationError: with the URL shown without its password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from server.errors import ConfigurationError

    expected = "expected postgresql+psycopg://user@host:5432/name or sqlite:///path.db"
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - parsed lazily by some SQLAlchemy versions
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"database URL {_safe_url(url)} is not usable: "
                                 f"{str(exc).splitlines()[0][:120]}; {expected}") from None


def _where(url: str) -> str:
    """``host:port`` (PostgreSQL) or the file (SQLite) of a database URL, for messages."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    if "host" in parsed.query:  # several hosts (docs/operations.md): ?host=h1:p1&host=h2:p2, ?host=h1,h2&port=p1,p2
        hosts, ports = parsed.query["host"], parsed.query.get("port")
        shown = ",".join(hosts) if isinstance(hosts, tuple) else hosts
        return f"{shown}{f' port {ports}' if ports else ''}/{parsed.database or ''}"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


#: ``click.Context.meta`` key where :data:`DATABASE_OPTION` leaves the chosen URL.
_DB_META = "huma.database_url"


def _remember_database(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_DB_META] = value


#: ``--database URL`` (default ``$DATABASE_URL``), for every command that opens the database.
DATABASE_OPTION = click.option(
    "--database", metavar="URL", envvar="DATABASE_URL", show_envvar=True, expose_value=False,
    callback=_remember_database, is_eager=True,
    help="Database: postgresql+psycopg://user@host:5432/name or sqlite:///path.db "
         "(default: $DATABASE_URL, else instance/huma.db beside the server package).")


class AliasOption(click.Option):
    """An option whose old names still parse but are left out of ``--help`` (one name per concept).

    ``click.option("-o", "--out", "--output", "output", cls=AliasOption, hidden_names=("--output",))``
    """

    def __init__(self, *args: Any, hidden_names: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_names = hidden_names

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """The help line without :attr:`hidden_names`."""
        every = self.opts
        self.opts = [o for o in every if o not in self.hidden_names]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every

    def get_error_hint(self, ctx: click.Context) -> str:
        """How a usage error names the option (``'-o' / '--out'``), without :attr:`hidden_names`."""
        every = self.opts
        self.opts = [o for o in every if o not in self.hidden_names]
        try:
            return super().get_error_hint(ctx)
        finally:
            self.opts = every


def make_app() -> Flask:
    """The application for a CLI command: ``--database``/``DATABASE_URL`` and ``HUMA_*`` from the environment.

    :raises ConfigurationError: the database URL is not one this server can use (a backend
        other than sqlite/postgresql, an unknown or uninstalled driver, malformed); the
        message shows it without its password.
    """
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from server import create_app
    from server.errors import ConfigurationError

    ctx = click.get_current_context(silent=True)
    url = ctx.meta.get(_DB_META) if ctx is not None else None
    if url or os.environ.get("DATABASE_URL"):
        check_database_url(url or os.environ["DATABASE_URL"])
    try:
        return create_app({"DATABASE_URL": url} if url else None)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        shown = str(url or os.environ.get("DATABASE_URL", ""))
        why = (f"its driver needs the Python package {exc.name or str(exc)!r}, which is not installed"
               if isinstance(exc, ImportError) else str(exc))
        raise ConfigurationError(f"database URL {_safe_url(shown)} is not usable: {why}; expected "
                                 "postgresql+psycopg://user@host:5432/name or sqlite:///path.db") from None


@contextmanager
def database(app: Flask, *, require_schema: bool = True) -> Iterator[None]:
    """Run a block in ``app``'s context and turn database failures into typed errors.

    :param require_schema: first check that the schema is at the Alembic head (every command
        but ``db upgrade``); never creates a SQLite file.
    :raises SchemaNotCurrent: no schema (revision none) or an older one: run ``huma server db upgrade``.
    :raises DatabaseUnavailable: cannot connect, or the database cannot be read: a SQLite file
        that is not a database or is corrupt (names host:port or the file, never the password).
    :raises Conflict: a uniqueness constraint (the driver's first line, no parameters).
    """
    from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError

    from server.db import check_schema, is_busy
    from server.errors import Conflict, DatabaseBusy, DatabaseUnavailable
    from server.extensions import db

    # The app context's teardown returns the request's connection to the pool (server.extensions);
    # the pool is disposed only after it, or that connection would be left open, unreferenced.
    engine: Engine | None = None
    try:
        with app.app_context():
            engine = db.engine
            try:
                if require_schema:
                    check_schema(db.engine, _where(app.config["DATABASE_URL"]))
                yield
            except IntegrityError as exc:
                # str(exc) would include the statement's parameters (e.g. a password hash).
                raise Conflict(f"refused by the database: {str(exc.orig).splitlines()[0]}") from None
            except (OperationalError, InterfaceError, DatabaseError) as exc:
                # A bare DatabaseError is the driver's own base class: SQLite's "file is not a
                # database" (SQLITE_NOTADB) and "database disk image is malformed" (SQLITE_CORRUPT).
                # Its other subclasses (ProgrammingError, DataError...) are bugs: keep their traceback.
                if not isinstance(exc, (OperationalError, InterfaceError)) and type(exc) is not DatabaseError:
                    raise
                if is_busy(exc):
                    raise DatabaseBusy("database busy, retry later",
                                       retry_after=int(app.config["RETRY_AFTER"])) from None
                first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise DatabaseUnavailable(
                    f"cannot use the database at {_where(app.config['DATABASE_URL'])}: {first}") from None
    finally:
        if engine is not None:
            engine.dispose()


def _console() -> dict[str, str]:
    """Audit detail of a console change: who at which machine account."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return {"via": "cli", "os_user": user}


def _write_session() -> Session:
    from server.extensions import db

    return db.write_session()


@click.group("server")
def server() -> None:
    """Central server: API, database, people, terminals."""


@server.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on (0: any free port).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="waitress worker threads (per process).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes on the one socket (signature checks use one core each; "
                   "production: the number of cores, docs/operations.md).")
@DATABASE_OPTION
def run(host: str, port: int, threads: int, workers: int) -> None:
    """Serve the API with waitress (production WSGI server).

    Refuses to start (exit 2) unless the database answers and its schema is at this
    release's migration head.
    \f
    :raises SchemaNotCurrent: no schema or an old one (run `huma server db upgrade`).
    :raises DatabaseUnavailable: the database cannot be reached or opened.
    :raises ListenError: the address cannot be bound (in use, no permission, unknown host).
    """
    import waitress

    from server.errors import ListenError
    from server.http import waitress_options

    app = make_app()
    with database(app):  # connect + revision == head, before binding (then the pool is disposed)
        pass
    try:  # bind here, so a failure closes the socket (waitress leaks it) and is one clear message
        listener = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    backend = _safe_url(app.config["DATABASE_URL"]).split("://")[0]
    bound = listener.getsockname()[1]
    if workers > 1:
        import sys

        from server.workers import supervise

        sys.exit(supervise(listener, app.config["DATABASE_URL"], workers=workers, threads=threads,
                           on_ready=lambda: click.echo(
                               f"serving on http://{host}:{bound} ({backend}, {workers} worker processes)")))
    server_ = waitress.create_server(app, sockets=[listener], threads=threads, **waitress_options(app))
    click.echo(f"serving on http://{host}:{bound} ({backend})")
    server_.run()


@server.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True,
              help="Alembic revision to migrate to (head: the newest).")
@DATABASE_OPTION
def upgrade(revision: str) -> None:
    """Apply the Alembic migrations (creates the default instance SQLite file and its directory).

    Migrates an empty database or one at an older revision; refuses (exit 2) a database with
    tables but no alembic_version (another application's) and one from a newer release.
    """
    from alembic.util import CommandError

    from server.db import sqlite_file
    from server.db import upgrade as do_upgrade
    from server.extensions import db

    app = make_app()
    path = sqlite_file(app.config["DATABASE_URL"])
    if path is not None and path.parent == Path(app.instance_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with database(app, require_schema=False):
        try:
            now = do_upgrade(db.engine, revision, where=_where(app.config["DATABASE_URL"]))
        except CommandError as exc:  # the database's own revision was checked: this is --revision
            raise click.BadParameter(f"{revision!r}: {exc}", param_hint="'--revision'") from None
    click.echo(f"database at {now}")


# ----------------------------------------------------------------------------- people


def _read_password(password_file: Path | None) -> str:
    """A new password from ``--password-file`` (first line), ``$HUMA_PERSON_PASSWORD`` or a prompt.

    Never from the command line (shell history, ``ps``; docs/operations.md).

    :raises click.UsageError: the file is empty.
    :raises OptionError: the file is not a regular file, not UTF-8, or its first line is huge.
    """
    if password_file is not None:
        from cardlib.clitypes import OptionError, read_secret_line

        first = read_secret_line(password_file)
        if not first:
            raise click.UsageError(f"{password_file}: the first line (the password) is empty")
        try:
            return first.decode("utf-8")
        except UnicodeDecodeError:
            raise OptionError(f"{password_file}: the first line is not UTF-8 text") from None
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


_PASSWORD_FILE = click.option(
    "--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Read the password from the file's first line (else ${PASSWORD_ENV}, else a prompt).")


@server.group("people")
def people() -> None:
    """People who log in (admins, technicians, auditors, programme managers)."""


@people.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "technician", "auditor", "manager"]), required=True,
              help="What the person may do: admin, technician, auditor (findings and exports), manager "
                   "(programme dashboard only); docs/api.md and docs/dashboard.md per endpoint.")
@_PASSWORD_FILE
@DATABASE_OPTION
def add_person(username: str, role: str, password_file: Path | None) -> None:
    """Create a person (the first admin is created this way); audited as a console action.

    USERNAME is stored in lower case; a name that differs from an existing one only in case is refused.
    The password has at least 10 characters (server.auth.MIN_PASSWORD_LENGTH); a shorter one is refused.
    """
    from server.auth import check_username
    from server.models import PersonRole
    from server.people import add_person as add

    check_username(username)  # before the password prompt
    app = make_app()
    password = _read_password(password_file)
    with database(app):
        session = _write_session()
        add(session, username, password, PersonRole(role), None, **_console())
        session.commit()
    click.echo(f"created {role} {username.lower()}")


@people.command("list")
@DATABASE_OPTION
def list_people() -> None:
    """Every person: id, username, role, enabled/disabled, created."""
    from cardlib.clitypes import count_noun
    from server.extensions import db
    from server.people import list_people as people_of

    app = make_app()
    with database(app):
        rows = people_of(db.session)
        if rows:
            click.echo(f"{'ID':>5}  {'USERNAME':<24} {'ROLE':<10} {'STATE':<8} CREATED")
        for p in rows:
            state = "disabled" if p.disabled else "enabled"
            click.echo(f"{p.id:>5}  {p.username:<24} {p.role.value:<10} {state:<8} {console_time(p.created_at)}")
    if not rows:
        click.echo("no people yet: `huma server people add NAME --role admin`")
    else:
        click.echo(count_noun(len(rows), "person", "people"))


def _change_person(change: Callable[[Session], object]) -> None:
    """Run one audited change of a person (:mod:`server.people`) in a write session and commit it."""
    app = make_app()
    with database(app):
        session = _write_session()
        change(session)
        session.commit()


@people.command("disable")
@click.argument("username")
@DATABASE_OPTION
def disable_person(username: str) -> None:
    """Disable a login and end its sessions (audited)."""
    from server.people import set_person_disabled

    _change_person(lambda session: set_person_disabled(session, username, True, None, **_console()))
    click.echo(f"disabled {username}; their sessions are ended")


@people.command("enable")
@click.argument("username")
@DATABASE_OPTION
def enable_person(username: str) -> None:
    """Re-enable a disabled login (audited)."""
    from server.people import set_person_disabled

    _change_person(lambda session: set_person_disabled(session, username, False, None, **_console()))
    click.echo(f"enabled {username}")


@people.command("set-password")
@click.argument("username")
@_PASSWORD_FILE
@DATABASE_OPTION
def set_password_cmd(username: str, password_file: Path | None) -> None:
    """Replace a person's password and end their sessions (audited; the password is not logged).

    The password has at least 10 characters (server.auth.MIN_PASSWORD_LENGTH); a shorter one is refused.
    """
    from server.people import change_password

    password = _read_password(password_file)
    _change_person(lambda session: change_password(session, username, password, None, **_console()))
    click.echo(f"password of {username} replaced; their sessions are ended")


@people.command("unlock")
@click.argument("username")
@DATABASE_OPTION
def unlock_person(username: str) -> None:
    """Lift a login lock-out (too many wrong passwords) before it ends by itself (audited)."""
    from server.people import unlock_login

    lifted: list[bool] = []
    _change_person(lambda session: lifted.append(unlock_login(session, username, None, **_console())))
    click.echo(f"{username}: lock-out lifted" if lifted[0] else f"{username} was not locked out")


# ----------------------------------------------------------------------------- terminals


@server.group("terminals")
def terminals() -> None:
    """Enrolled counter terminals: enrolment codes, list, approve, reject, revoke."""


def _grouped(hex_digits: str) -> str:
    """``"3f1a 09c2 …"``: hex in groups of 4, as ``huma terminal init/enrol`` print the key fingerprint."""
    return " ".join(hex_digits[i:i + 4] for i in range(0, len(hex_digits), 4))


@terminals.command("list")
@click.option("--status", type=click.Choice(["pending", "approved", "rejected", "revoked"]),
              help="Only terminals in this status.")
@DATABASE_OPTION
def list_terminals(status: str | None) -> None:
    """Terminal id, status, key id, enrolment and decision times, key fingerprint."""
    from cardlib.clitypes import count_noun
    from server.extensions import db
    from server.models import TerminalStatus
    from server.terminals import list_terminals as terminals_of
    from server.terminals import terminal_fingerprint

    app = make_app()
    with database(app):
        rows = terminals_of(db.session, TerminalStatus(status) if status else None)
        stamp = CONSOLE_TIME_WIDTH
        if rows:
            click.echo(f"{'TERMINAL':<24} {'STATUS':<9} {'KEY ID':<{len(rows[0].kid.hex())}}  {'ENROLLED':<{stamp}}"
                       f"  {'DECIDED':<{stamp}}  FINGERPRINT")
        for t in rows:
            decided = console_time(t.decided_at) if t.decided_at else "-"
            click.echo(f"{t.terminal_id:<24} {t.status.value:<9} {t.kid.hex()}  {console_time(t.created_at):<{stamp}}"
                       f"  {decided:<{stamp}}  {_grouped(terminal_fingerprint(t))}")
    if not rows:
        click.echo("no terminals" + (f" {status}" if status else ""))
    else:
        click.echo(count_noun(len(rows), "terminal", "terminals") + (f" {status}" if status else ""))


def _decide(terminal_id: str, to: str, key_fingerprint: str | None = None) -> None:
    from server.models import TerminalStatus
    from server.terminals import decide_terminal

    app = make_app()
    with database(app):
        session = _write_session()
        terminal = decide_terminal(session, terminal_id, TerminalStatus(to), None, key_fingerprint=key_fingerprint,
                                   **_console())
        session.commit()
        click.echo(f"{terminal.terminal_id}: {terminal.status.value} (kid {terminal.kid.hex()})")


@terminals.command("code")
@click.argument("terminal_id")
@DATABASE_OPTION
def enrolment_code(terminal_id: str) -> None:
    """Issue a one-time enrolment code for TERMINAL_ID (shown once, valid ENROL_CODE_TTL, audited).

    Hand it to the technician who sets up that counter ('huma terminal enrol --code').
    """
    from cardlib.keys.terminal_id import check_terminal_id
    from server.enrolment import EnrolPolicy, issue_code

    try:
        check_terminal_id(terminal_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TERMINAL_ID") from exc
    app = make_app()
    with database(app):
        session = _write_session()
        code, expires = issue_code(session, terminal_id, None, EnrolPolicy.from_config(app.config))
        from server.auth import audit

        audit(session, None, "enrolment.code_issued", f"terminal:{terminal_id}", expires_at=expires.isoformat(),
              **_console())
        session.commit()
    click.echo(f"enrolment code for {terminal_id}: {code}")
    click.echo(f"valid until {console_time(expires)}, once; only its hash is stored")


@terminals.command("codes")
@click.option("--terminal", "terminal_id", help="Only the codes issued for this terminal id.")
@DATABASE_OPTION
def list_codes(terminal_id: str | None) -> None:
    """Enrolment codes still usable: terminal id, issued, expires (the codes were shown once and are not stored)."""
    from cardlib.clitypes import count_noun
    from server.enrolment import open_codes
    from server.extensions import db

    app = make_app()
    with database(app):
        rows = open_codes(db.session, terminal_id)
        if rows:
            click.echo(f"{'TERMINAL':<24} {'ISSUED':<{CONSOLE_TIME_WIDTH}}  EXPIRES")
        for row in rows:
            click.echo(f"{row.terminal_id:<24} {console_time(row.created_at):<{CONSOLE_TIME_WIDTH}}  "
                       f"{console_time(row.expires_at)}")
    if not rows:
        click.echo("no usable enrolment codes" + (f" for {terminal_id}" if terminal_id else ""))
    else:
        click.echo(count_noun(len(rows), "usable enrolment code", "usable enrolment codes"))


@terminals.command("cancel-codes")
@click.argument("terminal_id")
@DATABASE_OPTION
def cancel_enrolment_codes(terminal_id: str) -> None:
    """End every usable enrolment code of TERMINAL_ID now (audited), e.g. one handed to the wrong person."""
    from cardlib.clitypes import count_noun
    from server.enrolment import cancel_codes

    app = make_app()
    with database(app):
        session = _write_session()
        cancelled = cancel_codes(session, terminal_id, None, **_console())
        session.commit()
    click.echo(f"{terminal_id}: {count_noun(cancelled, 'enrolment code', 'enrolment codes')} cancelled")


@terminals.command("approve")
@click.argument("terminal_id")
@click.option("--fingerprint", "key_fingerprint", required=True,
              help="The key fingerprint the counter printed (64 hex digits, spaces or colons allowed); "
                   "the approval is refused when the pending key is another one.")
@DATABASE_OPTION
def approve_terminal(terminal_id: str, key_fingerprint: str) -> None:
    """Approve a pending enrolment of the named key: the terminal CA issues its certificate (audited)."""
    _decide(terminal_id, "approved", key_fingerprint)


@terminals.command("reject")
@click.argument("terminal_id")
@DATABASE_OPTION
def reject_terminal(terminal_id: str) -> None:
    """Reject a pending enrolment (audited)."""
    _decide(terminal_id, "rejected")


@terminals.command("revoke")
@click.argument("terminal_id")
@DATABASE_OPTION
def revoke_terminal(terminal_id: str) -> None:
    """Revoke a terminal key: its uploads are refused from now on (audited; publish a new bundle)."""
    _decide(terminal_id, "revoked")


# ----------------------------------------------------------------------------- trust bundles


def _read_programmes(path: Path) -> list[Programme]:
    """Programmes from TOML: ``[[programme]]`` tables with id, name, unit, per_cycle (cardlib Programme).

    :raises click.UsageError: not TOML or a table lacks a field (file named).
    """
    import tomllib

    from cardlib.records.bundle import Programme

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        return [Programme(int(p["id"]), str(p["name"]), str(p["unit"]), int(p["per_cycle"]))
                for p in doc.get("programme", [])]
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{path}: expected [[programme]] tables with id, name, unit, per_cycle: "
                               f"{exc!r}") from None


@server.group("bundle")
def bundle_group() -> None:
    """Trust bundles: publish the next one from the registry, show the newest."""


def _duration_s(text: str) -> int:
    """Seconds of a duration like ``6h``, ``30m``, ``1d``, ``90s``.

    :raises click.BadParameter: not a positive whole number with one of s, m, h, d.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise click.BadParameter(f"{text!r}: a duration like 6h, 30m, 1d or 90s")
    return int(number) * units[unit]


@bundle_group.command("publish")
@click.option("--keystore", "keydir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              envvar="HUMA_KEYSTORE", required=True, help="Keystore directory (env HUMA_KEYSTORE).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Bundle key passphrase file (else $HUMA_KEY_PASSPHRASE, else prompt).")
@click.option("--programmes", "programmes_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML [[programme]] list (default: the previous bundle's programmes).")
@click.option("--valid-days", type=click.IntRange(min=1), default=14, show_default=True,
              help="Days before terminals treat the bundle as stale.")
@click.option("--if-changed", is_flag=True,
              help="Publish only when the deny lists or keys changed, or half the newest bundle's validity passed.")
@click.option("--every", "every", metavar="DURATION",
              help="Check (as --if-changed) every DURATION (6h, 30m, 1d) in a loop of --max-runs checks.")
@click.option("--max-runs", type=click.IntRange(min=1), default=28, show_default=True,
              help="With --every: checks before the loop ends (28 × 6h = one week; a systemd timer is the "
                   "unbounded way, docs/systemd/huma-bundle-publish.timer).")
@click.option("--policy", "policy_args", multiple=True, metavar="NAME=VALUE",
              help="Set a bundle policy (repeatable), e.g. fallback.qr.food=1 (docs/operations.md §Bundle policies).")
@click.option("--unset-policy", "unset_args", multiple=True, metavar="NAME",
              help="Drop a policy the previous bundle carries (repeatable).")
@DATABASE_OPTION
def publish_bundle(keydir: Path, passphrase_file: Path | None, programmes_file: Path | None, valid_days: int,
                   if_changed: bool, every: str | None, max_runs: int, policy_args: tuple[str, ...],
                   unset_args: tuple[str, ...]) -> None:
    """Sign and store the next trust bundle (version = newest + 1; audited).

    Keys: the keystore's issuer/technician keys and every approved or revoked terminal.
    Deny lists: the previous bundle's (less cards an auditor cleared) ∪ confirmed and
    provisional clone/fraud findings, abandoned and replaced cards (server.bundles.next_deny_lists).
    Programmes and policies: the previous bundle's unless --programmes; --policy NAME=VALUE
    sets and --unset-policy NAME drops a policy, checked before signing (an unknown name
    or a value out of range exits 2, nothing signed). The previous bundle
    must verify under the keystore's root. With --if-changed or --every nothing is signed
    while the newest bundle still says it all (server.bundles.publish_due).
    """
    import time

    from cardlib.clitypes import count_noun
    from cardlib.keys.cli import read_secret
    from cardlib.keys.keystore import KeyStore
    from server.bundles import parse_policy_assignment, publish_due, publish_next_bundle

    set_policies = dict(parse_policy_assignment(a) for a in policy_args)
    if (set_policies or unset_args) and (if_changed or every is not None):
        raise click.UsageError("--policy/--unset-policy publish at once: not with --if-changed or --every")
    period = _duration_s(every) if every is not None else None
    store = KeyStore.open(keydir)
    passphrase = read_secret(passphrase_file, "HUMA_KEY_PASSPHRASE", "Bundle key passphrase")
    programmes = _read_programmes(programmes_file) if programmes_file is not None else None
    app = make_app()
    for run in range(max_runs if period is not None else 1):
        if run:
            time.sleep(period or 0)
        with database(app):
            session = _write_session()
            reason = publish_due(session, store) if if_changed or period is not None else "asked"
            if reason is None:
                click.echo("bundle unchanged: deny lists and keys as published, within half its validity")
                continue
            published = publish_next_bundle(session, store, passphrase, programmes=programmes,
                                            valid_days=valid_days, audit_detail={**_console(), "why": reason},
                                            set_policies=set_policies, unset_policies=unset_args)
            session.commit()
        bundle, row = published.bundle, published.row
        why = "" if reason == "asked" else f" ({reason})"  # a due bundle says why; an asked-for one needs no reason
        click.echo(f"published bundle v{bundle.version}{why}: {count_noun(len(bundle.keys), 'key', 'keys')}, "
                   f"{count_noun(len(bundle.deny_cards), 'denied card', 'denied cards')}, "
                   f"{count_noun(len(bundle.deny_uids), 'denied UID', 'denied UIDs')}, "
                   f"{count_noun(len(bundle.programmes), 'programme', 'programmes')}, "
                   f"{count_noun(len(bundle.policies), 'policy', 'policies')}, ETag \"{row.sha256.hex()}\"")


@bundle_group.command("deny-list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@DATABASE_OPTION
def deny_list_cmd(as_json: bool) -> None:
    """Cards the next bundle denies from findings: provisional (signed proof, no decision yet) or confirmed.

    Provisional cards are denied by counters like confirmed ones; an auditor lifts one by
    dismissing its finding or keeps it by confirming (docs/security.md).
    """
    import json

    from server.extensions import db
    from server.reconcile.denylist import deny_list_candidates

    app = make_app()
    with database(app):
        candidates = deny_list_candidates(db.session)
    rows = [{"card_id": c.card_id, "status": "provisional" if c.provisional else "confirmed",
             "findings": list(c.finding_ids), "uids": [u.hex() for u in c.tag_uids]} for c in candidates]
    if as_json:
        click.echo(json.dumps({"cards": rows}))
        return
    if not rows:
        click.echo("no card denied by findings")
    for c in candidates:
        uids = ", ".join(u.hex() for u in c.tag_uids) or "-"
        click.echo(f"{c.card_id}  {'provisional' if c.provisional else 'confirmed':<11}  "
                   f"findings {', '.join(map(str, c.finding_ids))}  UIDs {uids}")


@bundle_group.command("show")
@DATABASE_OPTION
def show_bundle() -> None:
    """The newest stored bundle: version, expiry, ETag, size (`huma server bundle export` writes its bytes)."""
    from server.bundles import newest_stored_bundle
    from server.extensions import db

    app = make_app()
    with database(app):
        row = newest_stored_bundle(db.session)
        if row is None:
            click.echo("no trust bundle published yet: `huma server bundle publish`")
            return
        click.echo(f"bundle v{row.version}: expires {console_time(row.expires_at)}, {len(row.blob)} bytes, "
                   f"ETag \"{row.sha256.hex()}\"")


@bundle_group.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the bundle (COSE_Sign1 bytes, as GET /api/v1/bundle serves them).")
@DATABASE_OPTION
def export_bundle(out: Path) -> None:
    """Write the newest stored signed bundle, the file a provisioning station takes as --bundle."""
    from cardlib.fsutil import atomic_write
    from server.bundles import newest_stored_bundle
    from server.errors import NotFound, ServerError
    from server.extensions import db

    app = make_app()
    with database(app):
        row = newest_stored_bundle(db.session)
        if row is None:
            raise NotFound("no trust bundle published yet: `huma server bundle publish`")
        version, blob, sha256 = row.version, bytes(row.blob), row.sha256.hex()
    try:
        atomic_write(out, blob, mode=0o644)
    except OSError as exc:
        raise ServerError(f"cannot write {out}: {exc.strerror or exc}") from exc
    click.echo(f"bundle v{version} ({len(blob)} bytes, ETag \"{sha256}\") written to {out}")


# ----------------------------------------------------------------------------- households, grievances (issue 18)

from server.household_cli import cards_group, grievance_group, household_group, receipt_cmd  # noqa: E402

for _command in (household_group, cards_group, grievance_group, receipt_cmd):
    server.add_command(_command)


# ----------------------------------------------------------------------------- cards reported lost (server.card_blocks)


def _office_person(session: Session, username: str) -> Any:
    """The person ``--by`` names (any case), or a usage error naming the option."""
    from sqlalchemy import select

    from server.auth import username_is
    from server.models import Person

    person = session.scalars(select(Person).where(username_is(username))).first()
    if person is None:
        raise click.BadParameter(f"no person named {username!r}", param_hint="--by")
    return person


def _blocked_card(session: Session, card_id: str | None, household: str | None) -> str:
    from server.card_blocks import card_of_household

    if household is not None:
        return card_of_household(session, household, card_id)
    if card_id is None:
        raise click.UsageError("name the card: CARD_ID, or --household REF (its one current card)")
    return card_id.lower()


_CARD_ARG = click.argument("card_id", required=False, metavar="[CARD_ID]")
_HOUSEHOLD_OPT = click.option(
    "--household", metavar="REF", help="The household (16 hex digits or the HB-XXXXXXXX label on its card and "
                                       "letters): its one current card, or the CARD_ID given, which must serve it.")
_BY_OPT = click.option("--by", "by", required=True, metavar="USERNAME",
                       help="Who records it (a technician, auditor or admin; audited under that person).")


@cards_group.command("block")
@_CARD_ARG
@_HOUSEHOLD_OPT
@click.option("--reason", type=click.Choice(["lost", "stolen", "damaged"]), required=True,
              help="What the household reported.")
@_BY_OPT
@click.option("--note", default=None, help="Kept with the block: who reported it, where (at most 500 characters).")
@DATABASE_OPTION
def block_cmd(card_id: str | None, household: str | None, reason: str, by: str, note: str | None) -> None:
    """Block a card reported lost, stolen or damaged: the next bundle denies it (card id and chip UIDs; audited).

    Counters decline it ("card_denied") from their next bundle fetch after `huma server bundle publish`
    (or the scheduled --if-changed run). A later re-issue works as before; the replaced card stays denied.
    """
    from server.card_blocks import BlockReason, block_card
    from server.reconcile.denylist import card_uids

    app = make_app()
    with database(app):
        session = _write_session()
        person = _office_person(session, by)
        card = _blocked_card(session, card_id, household)
        block = block_card(session, card, BlockReason(reason), person=person, note=note, audit_detail=_console())
        uids = sorted(u.hex() for u in card_uids(session, [card])[card] if len(u) == 7)  # what the bundle takes
        session.commit()
        click.echo(f"card {card} blocked: {block.reason}, recorded by {person.username}, "
                   f"{console_time(block.blocked_at)}")
    click.echo(f"the next bundle denies card {card} and chip UID(s) {', '.join(uids) or '-'}: "
               "publish it (`huma server bundle publish`) or wait for the scheduled run")


@cards_group.command("unblock")
@_CARD_ARG
@_HOUSEHOLD_OPT
@click.option("--reason", required=True, help="Why the block is lifted (e.g. found by the household).")
@_BY_OPT
@DATABASE_OPTION
def unblock_cmd(card_id: str | None, household: str | None, reason: str, by: str) -> None:
    """Lift a card's block (found again): the next bundle drops it unless something else denies it (audited).

    A technician may not lift an auditor's or admin's block, nor the block of a card an open or
    confirmed fraud finding names.
    """
    from server.card_blocks import unblock_card

    app = make_app()
    with database(app):
        session = _write_session()
        person = _office_person(session, by)
        card = _blocked_card(session, card_id, household)
        still = unblock_card(session, card, person=person, reason=reason, audit_detail=_console())
        session.commit()
    click.echo(f"card {card} unblocked by {person.username}")
    if still:
        click.echo("still denied by the next bundle: " + "; ".join(still))
    else:
        click.echo("the next bundle honours it again: publish it (`huma server bundle publish`)")


@cards_group.command("blocks")
@click.option("--all", "every", is_flag=True, help="Lifted blocks too.")
@DATABASE_OPTION
def blocks_cmd(every: bool) -> None:
    """Cards blocked at the office: card, reason, who and when (and who lifted it, with --all)."""
    from server.card_blocks import standing_blocks
    from server.extensions import db

    app = make_app()
    with database(app):
        rows = standing_blocks(db.session, lifted=every)
    if not rows:
        click.echo("no blocked cards")
    for b in rows:
        lifted = f"  lifted {console_time(b.lifted_at)} by {b.lifted_by}: {b.lift_reason}" if b.lifted_at else ""
        click.echo(f"{b.card_id}  {b.reason:<7}  by {b.blocked_by} ({b.blocked_by_role})  {console_time(b.blocked_at)}"
                   f"{'  ' + b.note if b.note else ''}{lifted}")
