"""``--database`` pointing at something that is not a usable Huma database: one line, exit 2, no traceback.

Each case used to end in a raw Python traceback (exit 1) or, for a foreign SQLite file,
in 16 server tables written into another application's database.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from pathlib import Path

import pytest

from huma.cli import main

#: Every command class that opens the database: serve, migrate, audit, administer.
COMMANDS = [
    ("server", "run", "--port", "0"),
    ("server", "db", "upgrade"),
    ("audit", "reconcile"),
    ("server", "people", "list"),
]


def _huma(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_clean_line(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and err.startswith("error: ") and err.count("\n") == 1, err
    assert "serving on" not in out


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture(autouse=True)
def _no_env_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.mark.parametrize("argv", COMMANDS)
def test_a_file_that_is_not_a_database(argv, tmp_path, capsys):
    garbage = tmp_path / "g.sqlite"
    garbage.write_text("garbage")
    code, out, err = _huma(capsys, *argv, "--database", f"sqlite:///{garbage}")
    _one_clean_line(code, out, err)
    assert f"cannot use the database at {garbage}: file is not a database" in err
    assert garbage.read_text() == "garbage"


@pytest.mark.parametrize("argv", COMMANDS)
def test_a_truncated_database(argv, sqlite_template, tmp_path, capsys):
    cut = tmp_path / "cut.sqlite"
    shutil.copy(sqlite_template, cut)
    with cut.open("r+b") as fh:  # keep the header page, lose the schema's other pages
        fh.truncate(8192)
    code, out, err = _huma(capsys, *argv, "--database", f"sqlite:///{cut}")
    _one_clean_line(code, out, err)
    assert f"cannot use the database at {cut}: database disk image is malformed" in err


@pytest.mark.parametrize("argv", COMMANDS)
@pytest.mark.parametrize("url", ["mysql://u:hunter2pw@127.0.0.1/x", "oracle://u:hunter2pw@db/x", "nonsense://x"])
def test_an_unsupported_scheme_names_the_supported_ones(argv, url, capsys):
    code, out, err = _huma(capsys, *argv, "--database", url)
    _one_clean_line(code, out, err)
    scheme = url.split(":", 1)[0]
    assert f"{scheme!r} is not supported" in err and "sqlite" in err and "postgresql" in err, err
    assert "hunter2pw" not in out + err


def test_an_unsupported_scheme_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://u:hunter2pw@127.0.0.1/x")
    code, out, err = _huma(capsys, "server", "people", "list")
    _one_clean_line(code, out, err)
    assert "'mysql' is not supported" in err and "hunter2pw" not in out + err


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is not None, reason="psycopg2 is installed here")
def test_a_postgresql_driver_that_is_not_installed(capsys):
    code, out, err = _huma(capsys, "server", "db", "upgrade", "--database", "postgresql+psycopg2://u:hunter2pw@h/x")
    _one_clean_line(code, out, err)
    assert "psycopg2" in err and "postgresql+psycopg://" in err and "hunter2pw" not in out + err


# ----------------------------------------------------------------------------- not our database


def _journal(tmp_path: Path) -> Path:
    """A terminal's journal: a non-empty SQLite database of another application (no alembic_version)."""
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
        conn.execute("INSERT INTO journal (entry) VALUES (x'a1')")
    conn.close()
    return path


def test_upgrade_refuses_a_database_that_is_not_ours(tmp_path, capsys):
    journal = _journal(tmp_path)
    code, out, err = _huma(capsys, "server", "db", "upgrade", "--database", f"sqlite:///{journal}")
    _one_clean_line(code, out, err)
    assert f"database at {journal}" in err and "no alembic_version" in err and "journal" in err, err
    assert _tables(journal) == {"journal"}


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[:3] != ("server", "db", "upgrade")])
def test_other_commands_do_not_send_a_foreign_database_to_db_upgrade(argv, tmp_path, capsys):
    journal = _journal(tmp_path)
    code, out, err = _huma(capsys, *argv, "--database", f"sqlite:///{journal}")
    _one_clean_line(code, out, err)
    assert "not a Huma server database" in err and "run `huma server db upgrade`" not in err, err
    assert _tables(journal) == {"journal"}


def test_upgrade_still_creates_an_empty_database_and_upgrades_an_older_one(tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    url = f"sqlite:///{empty}"
    assert _huma(capsys, "server", "db", "upgrade", "--revision", "0004", "--database", url)[0] == 0
    assert _huma(capsys, "server", "db", "upgrade", "--database", url)[0] == 0
    code, out, _err = _huma(capsys, "server", "people", "list", "--database", url)
    assert code == 0 and "no people yet" in out
    assert {"alembic_version", "people", "audit_log"} <= _tables(empty)


def test_upgrade_of_a_database_from_a_newer_release_is_refused(sqlite_template, tmp_path, capsys):
    newer = tmp_path / "newer.sqlite"
    shutil.copy(sqlite_template, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    code, out, err = _huma(capsys, "server", "db", "upgrade", "--database", f"sqlite:///{newer}")
    _one_clean_line(code, out, err)
    assert "revision 9999, unknown to this release" in err


def test_upgrade_to_an_unknown_revision_is_a_usage_error(sqlite_template, tmp_path, capsys):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(sqlite_template, copy)
    code, out, err = _huma(capsys, "server", "db", "upgrade", "--revision", "nope", "--database", f"sqlite:///{copy}")
    assert code == 2 and "nope" in err and "Traceback" not in out + err, err


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_create_app_refuses_an_in_memory_sqlite_database(url):
    """One in-memory database per pooled connection is not a server database: a typed
    ConfigurationError naming the URL, not SQLAlchemy's TypeError about max_overflow."""
    from server import create_app
    from server.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        create_app({"DATABASE_URL": url})
