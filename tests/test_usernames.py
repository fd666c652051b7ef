"""Usernames given to ``huma server people add`` and ``POST /api/v1/people``: one rule for both.

A username shows up in ``people list``, the audit log and the auditor UI, so a name an admin
cannot read or tell apart from another is refused: empty, blank, over 64 characters, with
spaces or tabs, newlines, terminal escapes or other control/format characters (``"admin\\u200b"``
looks like ``admin``), or not in Unicode NFKC form (fullwidth ``ＡＤＭＩＮ``).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from huma.cli import main
from server.extensions import db
from server.models import Person

BAD_NAMES = [
    ("", "empty"),
    (" ", "space"),
    (" admin", "space"),
    ("admin ", "space"),
    ("jo smith", "space"),
    ("evil\nadmin", "whitespace"),
    ("a\x1b[31mred", "control"),
    ("admin\u200b", "control"),  # zero-width space: a second "admin" on screen
    ("\u202eadmin", "control"),  # right-to-left override
    ("\uff21\uff24\uff2d\uff29\uff2e", "NFKC"),  # fullwidth ADMIN
    ("x" * 65, "64"),
]


@pytest.fixture
def env(db_url: str, ca_key_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("HUMA_TERMINAL_CA_KEY", str(ca_key_path))
    monkeypatch.setenv("HUMA_PERSON_PASSWORD", "a long enough password")
    return db_url


def _names(app: Any) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(Person.username).order_by(Person.id)))


@pytest.mark.parametrize(("name", "says"), BAD_NAMES)
def test_cli_refuses_an_unreadable_username(name, says, app, world, env, capsys):
    before = _names(app)
    code = main(["server", "people", "add", name, "--role", "auditor"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: username") and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert _names(app) == before


@pytest.mark.parametrize(("name", "says"), BAD_NAMES)
def test_api_refuses_an_unreadable_username(name, says, app, world):
    before = _names(app)
    r = world.client.post("/api/v1/people", headers=world.auth(),
                          json={"username": name, "password": "a long enough password", "role": "auditor"})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "malformed_request" and error["field"] == "username" and says in error["message"]
    assert _names(app) == before


@pytest.mark.parametrize("name", ["siti.rahma", "budi_01", "Dewi-K", "José", "ᬅᬓ᭄ᬱᬭ", "x" * 64])
def test_ordinary_names_still_work(name, app, world, env, capsys):
    assert main(["server", "people", "add", name, "--role", "auditor"]) == 0, capsys.readouterr()
    r = world.client.post("/api/v1/auth/login", json={"username": name, "password": "a long enough password"})
    assert r.status_code == 200, r.get_json()


def test_api_password_error_names_the_password_field(app, world):
    r = world.client.post("/api/v1/people", headers=world.auth(),
                          json={"username": "short", "password": "short", "role": "auditor"})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "password"
