"""The grievance page's redemption table gives the evidence a "did not receive" complaint needs.

The table showed raw UTC ISO text (every other page writes WIB), did not say the redemption was a QR
fallback nor who let it through, and showed the household as an unlinked 16-hex reference. Now: WIB
time, how it was served (card tap, or the fallback step and its approver), and the household linked to
its page with the ``HB-`` label clerks use. SQLite and PostgreSQL, in Indonesian and English.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from cardlib.records.household_label import household_label
from cardlib.records.journal import EntryKind
from tests.reconcile_support import upload
from tests.test_dashboard import _login, _ms, audit_db, programme  # noqa: F401 - fixtures


def _qr_fallback(app: Any, served: dict[str, Any], world: Any) -> str:
    """A QR fallback redemption approved by petugas-ani at 10:05 WIB, uploaded; its receipt code."""
    from cardlib.records.receipt import receipt_code
    from server.extensions import db
    from server.models import JournalEntryRow

    card = served["by_region"]["62.71"][2]
    t71 = served["district"].local_terminals("62.71")[0]
    t71.append(EntryKind.FALLBACK, _ms(2, 3, 5), card_id=card.card_id, programme="food", amount=1,
               fallback="qr", approved_by="petugas-ani")  # 10:05 WIB
    for r in upload(world, t71, t71.messages()):
        assert r.status_code == 200, r.get_json()
    with app.app_context():
        row = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.kind == int(EntryKind.FALLBACK))).one()
        return receipt_code(row.entry_hash)


def test_the_receipt_command_says_fallback_and_who_approved_it(
        app: Any, programme: dict[str, Any], world: Any, db_url: str, monkeypatch: Any,  # noqa: F811
        capsys: Any) -> None:
    from huma.cli import main

    code = _qr_fallback(app, programme, world)
    monkeypatch.setenv("DATABASE_URL", db_url)
    capsys.readouterr()
    assert main(["server", "receipt", code]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2026-03-02 10:05:00 WIB "), out
    assert out.rstrip().endswith("· fallback qr approved by petugas-ani"), out


def test_the_redemption_table_shows_wib_the_fallback_its_approver_and_the_household(
        app: Any, programme: dict[str, Any], world: Any) -> None:  # noqa: F811 - fixture
    card = programme["by_region"]["62.71"][2]
    ref = programme["refs"][card.card_id]
    code = _qr_fallback(app, programme, world)
    r = world.client.post("/api/v1/grievances", headers=world.auth(),
                          json={"text": "saya tidak menerima paket", "receipt_code": code})
    assert r.status_code == 201, r.get_json()
    gid = r.get_json()["id"]

    _login(world.client)
    label = household_label(bytes.fromhex(ref))
    for lang, served in (("id", "cadangan qr · disetujui oleh petugas-ani"),
                         ("en", "fallback qr · approved by petugas-ani")):
        html = world.client.get(f"/audit/grievances/{gid}?lang={lang}").get_data(as_text=True)
        table = html[html.index('id="receipt-entries"'):html.index("</table>", html.index('id="receipt-entries"'))]
        assert "2026-03-02 10:05 WIB" in table and "+00:00" not in table, table
        assert served in table, table
        links = re.findall(rf'<a [^>]*href="/audit/households/{ref}"[^>]*>(.*?)</a>', html, re.S)
        assert links and all(label in x and ref in x for x in links), (links, html)
