"""The console's help names what a new user hits, and it writes times as the audit pages do.

``household statement`` refuses without HUMA_RECEIPT_KEY and ``people add`` refuses a short password:
their ``--help`` says so. ``household show``, ``receipt`` and ``grievance list`` print WIB wall time to
the second (server.audit.i18n.wib), not UTC ISO text with microseconds.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from huma.cli import main
from server.auth import MIN_PASSWORD_LENGTH
from tests.test_dashboard import audit_db, programme  # noqa: F401 - fixtures


def _help(capsys: Any, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # click wraps lines


def test_statement_help_names_the_receipt_key(capsys) -> None:
    text = _help(capsys, "server", "household", "statement")
    assert "HUMA_RECEIPT_KEY " in text and "HUMA_RECEIPT_KEY_PASSWORD" in text


@pytest.mark.parametrize("command", ["add", "set-password"])
def test_people_help_names_the_password_minimum(capsys, command: str) -> None:
    assert f"at least {MIN_PASSWORD_LENGTH} characters" in _help(capsys, "server", "people", command)


#: A time as the console writes it: WIB wall time to the second.
WIB_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WIB")


def test_household_show_receipt_and_grievances_print_wib_to_the_second(
        app, programme, db_url, monkeypatch, capsys) -> None:  # noqa: F811 - fixtures
    from sqlalchemy import select

    from cardlib.records.receipt import receipt_code
    from server.extensions import db
    from server.models import JournalEntryRow

    monkeypatch.setenv("DATABASE_URL", db_url)
    card = programme["by_region"]["62.71"][0].card_id  # food at 08:00 WIB, 2 March 2026 (01:00Z)
    ref = programme["refs"][card]
    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.card_id == card,
                                                               JournalEntryRow.kind == 2)).one()
        code, terminal, wall_time = receipt_code(row.entry_hash), row.terminal_id, row.wall_time
    local = wall_time.astimezone(dt.timezone(dt.timedelta(hours=7))).strftime("%Y-%m-%d %H:%M:%S WIB")
    assert local == "2026-03-02 08:00:00 WIB"
    capsys.readouterr()

    assert main(["server", "household", "show", ref]) == 0
    shown = capsys.readouterr().out
    assert f"  {local} {terminal} #" in shown, shown
    assert "+00:00" not in shown and not re.search(r":\d\d\.\d", shown), shown  # no UTC ISO, no microseconds
    assert re.search(rf"issued ({WIB_TIME.pattern}|–)\n", shown) and "None" not in shown, shown  # – : not on record

    assert main(["server", "receipt", code]) == 0
    assert capsys.readouterr().out.startswith(f"{local} {terminal} #")
    assert main(["server", "grievance", "add", "--receipt-code", code, "--text", "got nothing"]) == 0
    capsys.readouterr()
    assert main(["server", "grievance", "list"]) == 0
    listed = capsys.readouterr().out
    assert WIB_TIME.search(listed) and "+00:00" not in listed, listed
