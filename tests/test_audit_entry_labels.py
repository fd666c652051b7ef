"""Audit pages name a fallback entry's person by kind, in Indonesian too (docs/fallback.md, docs/dashboard.md).

A FALLBACK payout was *approved by* its clerk or supervisor; a refused one (DECLINED) was only *entered
by* them, and one refused ``supervisor_refused`` (id or password wrong) only *entered as* that id: no
page may say the supervisor approved it. The terminal page explains its ``*`` after times, names the
terminal's status and the seq/boot/entry id labels in the page's language, and the card page calls
taps "Tempelan" as the counter does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.audit_login import form_login
from tests.fallback_support import card_and_qr
from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db  # noqa: F401 - audit_db: fixture
from tests.test_fallback_receipts import desk_at, upload_journal

TERMINAL_ID = "T-6271-0094"


def test_refused_fallbacks_are_not_shown_as_approved(
        app: Any, audit_db: str, world: Any, live_server: Any, tmp_path: Path) -> None:  # noqa: F811
    desk, journal, key = desk_at(world, tmp_path, TERMINAL_ID)
    _, qr_text = card_and_qr(1, 1)
    paid = desk.qr(qr_text, "food", 1, "clerk-ani")
    assert paid.status is TapStatus.ACCEPTED and paid.card_id
    card_id = paid.card_id
    wrong = desk.manual(card_id, "food", 1, "sri", "tebakan")
    used_up = desk.manual(card_id, "food", 1, "sri", "kunci-sri")
    assert (wrong.reason, used_up.reason) == (DeclineReason.SUPERVISOR_REFUSED, DeclineReason.FALLBACK_USED_UP)
    # another household's entry after more wrong passwords: held back, the password not even checked
    other = "62710000000000b8"
    tries = [desk.manual(other, "food", 1, "sri", "tebakan") for _ in range(3)]
    locked = desk.manual(other, "food", 1, "sri", "kunci-sri")
    assert [t.reason for t in tries] == [DeclineReason.SUPERVISOR_REFUSED] * 3
    assert locked.reason is DeclineReason.SUPERVISOR_LOCKED, locked
    upload_journal(world, live_server, tmp_path, journal, key)

    add_auditor(app)
    client = world.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    for path in (f"/audit/terminals/{TERMINAL_ID}", f"/audit/cards/{card_id}"):
        en = client.get(f"{path}?lang=en").get_data(as_text=True)
        assert "fallback qr · approved by clerk-ani" in en
        assert "fallback manual · entered as sri" in en  # supervisor_refused: the password did not match
        assert "fallback manual · entered by sri" in en  # fallback_used_up: sri entered it, the counter refused
        assert "approved by sri" not in en, path
        id_ = client.get(f"{path}?lang=id").get_data(as_text=True)
        assert "cadangan qr · disetujui oleh clerk-ani" in id_
        assert "cadangan manual · dimasukkan atas nama sri" in id_
        assert "cadangan manual · dimasukkan oleh sri" in id_
        assert "disetujui oleh sri" not in id_, path

    page = client.get(f"/audit/terminals/{TERMINAL_ID}?lang=id").get_data(as_text=True)
    [locked_row] = [r for r in page.split('<tr class="entry">') if 'data-code="supervisor_locked"' in r]
    assert "cadangan manual · dimasukkan atas nama sri" in locked_row
    assert "Status: <span id=\"terminal-status\">disetujui</span>" in page
    assert "<th>urutan</th><th>sesi nyala</th>" in page and ">seq<" not in page and ">boot<" not in page
    assert "* jam loket belum disinkronkan" in page  # what the * after a time means
    en_page = client.get(f"/audit/terminals/{TERMINAL_ID}?lang=en").get_data(as_text=True)
    assert "* the counter's clock was not synchronised" in en_page
    card = client.get(f"/audit/cards/{card_id}?lang=id").get_data(as_text=True)
    assert "<h2>Tempelan (" in card and ">Tap" not in card

    # One decoded entry as the finding page shows a conflict's entries (_entry_cells.html).
    from server.audit.entries import decode_entry
    from server.audit.i18n import environments
    from server.extensions import db
    from server.models import JournalEntryRow

    with app.app_context():
        rows = db.session.scalars(select(JournalEntryRow).where(JournalEntryRow.terminal_id == TERMINAL_ID,
                                                                JournalEntryRow.card_id == card_id)
                                  .order_by(JournalEntryRow.seq)).all()
        cells = [environments()["id"].get_template("_entry_cells.html").render(e=decode_entry(r.raw))
                 for r in rows]
    assert len(cells) == 3
    assert "qr · disetujui oleh clerk-ani" in cells[0]
    assert "manual · dimasukkan atas nama sri" in cells[1] and "manual · dimasukkan oleh sri" in cells[2]
    assert all("urutan" in c and "sesi nyala" in c and "id entri" in c and "entry id" not in c for c in cells)
