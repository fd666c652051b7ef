"""Auditor and dashboard pages: a malformed ``cycle`` or an unknown region is 400 (as other bad
parameters), the login redirect carries no stray ``?``, the error page's lead is translated;
and ``huma journal verify`` says "1 boot", not "1 boots"."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db  # noqa: F401 - audit_db is a fixture


@pytest.fixture
def auditor(app: Any, audit_db: str, world: Any) -> Any:  # noqa: F811 - fixture
    from tests.audit_login import form_login

    add_auditor(app)
    form_login(world.client, "audrey", AUDITOR_PASSWORD)
    return world.client


@pytest.mark.parametrize(("query", "field"), [
    ("cycle=abc", "cycle"), ("cycle=2026", "cycle"), ("cycle=20263", "cycle"),
    ("region=62.99", "region"), ("region=62.99.01", "region"), ("region=zz", "region"),
])
def test_a_malformed_cycle_or_an_unknown_region_is_400(auditor, query, field) -> None:
    for path in ("/audit/programme/", "/audit/programme/charts/daily.svg", "/audit/programme/pending"):
        r = auditor.get(f"{path}?{query}")
        assert r.status_code == 400, (path, query, r.status_code)
    html = auditor.get(f"/audit/programme/?{query}").get_data(as_text=True)
    assert "Permintaan tidak sah." in html and f"Periksa parameter <code>{field}</code>" in html, html
    en = auditor.get(f"/audit/programme/?{query}&lang=en").get_data(as_text=True)
    assert "The request is not valid." in en and f"Check the parameter <code>{field}</code>" in en


def test_a_well_formed_unknown_cycle_is_still_404(auditor) -> None:
    r = auditor.get("/audit/programme/?cycle=19991")
    assert r.status_code == 404 and "Tidak ditemukan." in r.get_data(as_text=True)


def test_the_login_redirect_has_no_stray_question_mark(app, audit_db, world) -> None:  # noqa: F811 - fixture
    client = app.test_client()
    r = client.get("/audit/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/login?next=/audit/"), r.headers
    r = client.get("/audit/findings?status=open")
    assert r.headers["Location"].endswith("next=/audit/findings?status%3Dopen"), r.headers


def test_journal_verify_counts_one_boot_and_one_entry_in_the_singular(tmp_path, capsys) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cardlib.keys.signer import SoftwareSigner
    from huma.cli import main
    from terminal.journal_store import JournalStore

    path = tmp_path / "journal.sqlite"
    JournalStore(path, terminal_id="T-6271-0001", signer=SoftwareSigner(ed25519.Ed25519PrivateKey.generate())).close()
    assert main(["journal", "verify", str(path)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "terminal T-6271-0001, 1 entry, 1 boot, head seq 1" in out, out


@pytest.mark.parametrize("path", ["/audit/no-such-page", "/audit/programme/no-such-page", "/audit/card/x/y/z"])
def test_an_unknown_page_under_audit_is_the_translated_html_error_page(auditor, path) -> None:
    """A mistyped address under /audit is a page for a person (HTML, their language), not API JSON."""
    r = auditor.get(path)
    assert r.status_code == 404 and r.mimetype == "text/html", (path, r.status_code, r.mimetype)
    assert "Tidak ditemukan." in r.get_data(as_text=True)
    assert "Not found." in auditor.get(f"{path}?lang=en").get_data(as_text=True)


def test_an_unknown_page_under_audit_stays_json_for_a_script_and_for_the_api(app, audit_db, world) -> None:  # noqa: F811
    client = app.test_client()
    r = client.get("/audit/no-such-page", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and r.is_json and r.get_json()["error"]["code"] == "not_found", r.get_data()
    r = client.get("/api/v1/no-such-endpoint")
    assert r.status_code == 404 and r.is_json
