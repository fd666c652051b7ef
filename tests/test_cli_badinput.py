"""``huma`` file arguments given the wrong kind of path: a device, a FIFO or a directory.

``huma audit verify-export /dev/zero`` read without bound (memory grew until killed), and
``huma journal verify /dev/zero`` said "no such file" about a path that exists.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from huma.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    _out, err = capsys.readouterr()
    return code, err


def test_verify_export_refuses_a_device_instead_of_reading_forever():
    """In a child process with a deadline and 1 GiB of address space: before the fix it read until killed."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, "-m", "huma.cli", "audit", "verify-export", "/dev/zero",
                           "--terminal-ca", __file__, "--server-key", __file__],  # refused before they are read
                          capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_verify_export_refuses_a_fifo(tmp_path, capsys):
    fifo = tmp_path / "export.json"
    os.mkfifo(fifo)
    # a writer that never writes would block open() for ever; the refusal must come before any read
    opener = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)), daemon=True)
    opener.start()
    code, err = _run(capsys, "audit", "verify-export", str(fifo), "--terminal-ca", __file__, "--server-key", __file__)
    assert code == 2 and "not a regular file" in err
    if opener.is_alive():  # unblock the helper thread
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("command", ["verify", "repair"])
def test_journal_commands_on_a_device_say_what_it_is(command, capsys):
    code, err = _run(capsys, "journal", command, "/dev/null")
    assert code == 2 and "not a regular file" in err and "no such file" not in err, err


def test_journal_verify_on_a_missing_file_still_says_no_such_file(tmp_path: Path, capsys):
    code, err = _run(capsys, "journal", "verify", str(tmp_path / "nope.sqlite"))
    assert code == 2 and "no such file" in err


# ----------------------------------------------------------------------------- odd --database URLs

DB_COMMANDS = [("server", "people", "list"), ("server", "db", "upgrade"), ("audit", "reconcile"),
               ("server", "run", "--port", "0")]


@pytest.mark.parametrize("argv", DB_COMMANDS)
@pytest.mark.parametrize(("url", "says"), [
    ("sqlite://", "in-memory"),  # these three were "TypeError: Invalid argument(s) 'max_overflow'"
    ("sqlite:///", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("postgresql+psycopg://u:hunter2pw@[::1/x", "is not usable"),  # was "ValueError: invalid literal for int()"
    ("postgresql://u:hunter2pw@host:port/x", "is not usable"),
])
def test_a_database_url_that_cannot_work_is_one_line(argv, url, says, capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = main([*argv, "--database", url])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert "Traceback" not in out + err and "hunter2pw" not in out + err and "serving on" not in out


def test_the_same_url_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    code = main(["server", "people", "list"])
    _out, err = capsys.readouterr()
    assert code == 2 and "in-memory" in err, err


# ----------------------------------------------------------------------------- secret files

def _limited(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``huma argv`` in a child with 1 GiB of address space and a deadline (a /dev/zero read ends)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "huma.cli", *argv], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'huma.db'}"
    assert main(["server", "db", "upgrade", "--database", url]) == 0
    return url


@pytest.mark.parametrize(("content", "says"), [
    (None, "not a regular file"),  # /dev/zero: was a MemoryError traceback
    (b"\xe4\xff\x00garbage\n", "not UTF-8"),  # was a UnicodeDecodeError traceback
    (b"x" * 70_000, "over 65536 bytes"),
])
def test_people_add_password_file_of_the_wrong_kind(content, says, sqlite_db, tmp_path):
    path = "/dev/zero"
    if content is not None:
        (tmp_path / "pw").write_bytes(content)
        path = str(tmp_path / "pw")
    proc = _limited("server", "people", "add", "zed", "--role", "auditor", "--password-file", path,
                    "--database", sqlite_db)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_passphrase_file_that_is_a_device_is_refused(tmp_path):
    """``huma keys init --root-passphrase-file /dev/zero`` read until memory ran out; no keystore is made."""
    proc = _limited("keys", "init", "--dir", str(tmp_path / "ks"), "--root-passphrase-file", "/dev/zero")
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr
    assert not (tmp_path / "ks").exists() or not any((tmp_path / "ks").iterdir())


def test_a_passphrase_file_still_gives_its_first_line(tmp_path, capsys):
    """BOM and CRLF as a Windows editor writes them; only the first line counts."""
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xef\xbb\xbfa long root passphrase\r\nsecond line\r\n")
    assert main(["keys", "init", "--dir", str(tmp_path / "ks"), "--root-passphrase-file", str(pw)]) == 0, \
        capsys.readouterr()
    from cardlib.clitypes import read_secret_line

    assert read_secret_line(pw) == b"a long root passphrase"


# ----------------------------------------------------------------------------- huma audit

@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "-5", "0"])
def test_reconcile_refuses_a_speed_that_is_not_a_positive_number(speed, sqlite_db, capsys):
    """nan/inf turned impossible-travel detection off silently (and a re-run resolved its findings)."""
    code = main(["audit", "reconcile", "--max-speed-kmh", speed, "--database", sqlite_db])
    out, err = capsys.readouterr()
    assert code == 2 and "--max-speed-kmh" in err and "run " not in out, (out, err)


def test_reconcile_with_an_ordinary_speed_runs(sqlite_db, capsys):
    assert main(["audit", "reconcile", "--max-speed-kmh", "900", "--database", sqlite_db]) == 0
    assert capsys.readouterr().out.startswith("run 1:")


def test_export_into_a_missing_directory_is_one_line(sqlite_db, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "journal.json"
    code = main(["audit", "export", "journal", "-o", str(out), "--database", sqlite_db])
    _out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and "does not exist" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------- huma sim district --database

SMALL_DISTRICT = ("sim", "district", "--households", "5", "--terminals", "2", "--days", "1")


@pytest.mark.parametrize(("url", "says"), [
    ("garbage", "is not usable"),
    ("sqlite://", "in-memory"),
    ("postgresql://u:hunter2pw@127.0.0.1:1/x", "cannot use the database at 127.0.0.1:1/x"),
    ("sqlite:////nonexistent/dir/d.db", "cannot use the database at /nonexistent/dir/d.db"),
])
def test_sim_district_bad_database_is_one_line(url, says, capsys):
    """Each of these was a SQLAlchemy traceback (exit 1)."""
    code = main([*SMALL_DISTRICT, "--database", url])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert "Traceback" not in err and "hunter2pw" not in out + err


def test_sim_district_refuses_a_database_that_holds_data(sqlite_db, capsys):
    """The simulation writes fake terminals, an admin and journal entries: never into a real database."""
    from sqlalchemy import create_engine, text

    code = main([*SMALL_DISTRICT, "--database", sqlite_db])
    _out, err = capsys.readouterr()
    assert code == 2 and "must be an empty database" in err, err
    engine = create_engine(sqlite_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM terminals")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM people")).scalar() == 0
    engine.dispose()


def test_sim_district_into_a_new_file_still_runs(tmp_path, capsys):
    assert main([*SMALL_DISTRICT, "--database", f"sqlite:///{tmp_path / 'new.db'}"]) == 0, capsys.readouterr()
    assert "unexplained findings: 0" in capsys.readouterr().out
