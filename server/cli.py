"""``huma server``: run the API under waitress, migrate the database, add people."""

from __future__ import annotations

import logging

import click

log = logging.getLogger(__name__)


@click.group("server")
def server() -> None:
    """Central server: API, database, people."""


@server.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int, help="waitress worker threads.")
def run(host: str, port: int, threads: int) -> None:
    """Serve the API with waitress (production WSGI server). DATABASE_URL selects the database."""
    import waitress

    from server import create_app
    from server.http import waitress_options

    app = create_app()
    click.echo(f"serving on http://{host}:{port} ({app.config['DATABASE_URL'].split('://')[0]})")
    waitress.serve(app, host=host, port=port, threads=threads, **waitress_options(app))


@server.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Apply the Alembic migrations to DATABASE_URL (default: the instance SQLite file)."""
    from server import create_app
    from server.db import upgrade as do_upgrade
    from server.extensions import db

    app = create_app()
    with app.app_context():
        try:
            do_upgrade(db.engine, revision)
        finally:
            db.engine.dispose()
    click.echo(f"database at {revision}")


@server.group("people")
def people() -> None:
    """People who log in (admins, technicians, auditors)."""


@people.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "technician", "auditor"]), required=True)
@click.password_option(help="Prompted when omitted (never put it in shell history).")
def add_person(username: str, role: str, password: str) -> None:
    """Create a person (the first admin is created this way); audited as a system action."""
    from server import create_app
    from server.auth import audit, create_person
    from server.errors import BadRequest
    from server.extensions import db
    from server.models import Role

    app = create_app()
    with app.app_context():
        session = db.write_session()
        try:
            person = create_person(session, username, password, Role(role))
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        audit(session, None, "person.create", f"person:{person.id}", username=username, role=role,
              via="cli")
        session.commit()
        session.close()
        db.engine.dispose()
    click.echo(f"created {role} {username}")
