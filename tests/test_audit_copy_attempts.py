"""Copied, cloned and deny-listed cards on the auditor pages (SQLite and PostgreSQL).

A counter declines a copy (``clone_check_failed``: the chip failed PWD_AUTH, so only the UID the
reader read is journalled), a restored copy (``card_forked``), a deny-listed card (``card_denied``)
and the like; reconciliation raises no finding for a tap that got nothing, so the auditor finds
these attempts on ``/audit/declines``, across terminals, newest first, and by the chip UID in the
main search. Decline reasons read in the page's language, English included, and the terminal
page's journal is a table of labelled blocks on a phone like the other tables.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from cardlib.records.journal import EntryKind
from simulator.journals import District
from tests.reconcile_support import add_auditor, audit_db, install, run, upload_all  # noqa: F401 - audit_db

UTC = dt.UTC
HOUSEHOLD = "9f3c2a1b00000002"
UNKNOWN_UID = bytes.fromhex("04deadbeef0001")


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def copy_world(app: Any, audit_db: str, world: Any) -> dict[str, Any]:  # noqa: F811 - fixture
    """Three terminals; a registered card copied (UID only), restored, a deny-listed card, an empty one."""
    from sqlalchemy import update

    from server.auth import create_person
    from server.extensions import db
    from server.models import Card, PersonRole
    from server.reconcile.models import CardProfile

    d = District.new(3, 4, seed=13, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    card, denied, empty = d.cards[0], d.cards[1], d.cards[2]
    t0, t1, t2 = d.terminals
    t0.redeem(card, _ms(1), "food", 150_000)
    t2.append(EntryKind.DECLINED, _ms(1, 10), tag_uid=UNKNOWN_UID, programme="food",
              decline_reason="clone_check_failed")
    t1.append(EntryKind.DECLINED, _ms(2), card_id=denied.card_id, tag_uid=denied.tag_uid, programme="food",
              decline_reason="card_denied")
    t0.append(EntryKind.DECLINED, _ms(3), tag_uid=card.tag_uid, programme="food",
              decline_reason="clone_check_failed")
    t1.append(EntryKind.DECLINED, _ms(3, 30), card_id=card.card_id, tag_uid=card.tag_uid, programme="food",
              decline_reason="card_forked")
    t2.append(EntryKind.DECLINED, _ms(4), card_id=empty.card_id, tag_uid=empty.tag_uid, programme="cash",
              decline_reason="nothing_left")
    install(app, world, d)
    upload_all(world, d)
    with app.app_context():
        session = db.write_session()
        tech = create_person(session, "tech-9", "x" * 16, PersonRole.TECHNICIAN)
        session.flush()
        for c in d.cards:
            session.add(Card(card_id=c.card_id, tag_uid=c.tag_uid, kid=b"\x00\x00\x00\x01", technician_id=tech.id,
                             issued_at=dt.datetime(2026, 2, 1, tzinfo=UTC)))
        session.execute(update(CardProfile).where(CardProfile.card_id == card.card_id)
                        .values(household_ref=HOUSEHOLD))
        session.commit()
    run(app)
    add_auditor(app)
    return {"district": d, "card": card, "denied": denied, "empty": empty, "household": HOUSEHOLD}


def _login(client: Any) -> None:
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD

    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr class="attempt".*?</tr>', html, re.S)


def test_every_decline_reason_reads_in_english_and_indonesian():
    from server.audit.i18n import translations
    from terminal.policy import DeclineReason

    for reason in DeclineReason:
        for lang in ("en", "id"):
            text = translations(lang).gettext(reason.value)
            assert text != reason.value and "_" not in text, (lang, reason.value, text)


def test_finding_kinds_and_upload_rejections_read_in_words_in_english_too():
    """The findings queue, a finding's title and a rejected entry's reason show these codes, translated."""
    from server.audit.i18n import translations
    from server.reconcile.models import FindingKind
    from server.upload import RejectReason

    for code in [k.value for k in FindingKind] + [r.value for r in RejectReason]:
        for lang in ("en", "id"):
            text = translations(lang).gettext(code)
            assert "_" not in text, (lang, code, text)


def test_english_pages_show_decline_reasons_in_words(app, copy_world, world):
    client = world.client
    _login(client)
    d, card = copy_world["district"], copy_world["card"]
    terminal = client.get(f"/audit/terminals/{d.terminals[0].terminal_id}?lang=en").get_data(as_text=True)
    assert "clone_check_failed<" not in terminal
    assert 'data-code="clone_check_failed" class="decline">copy check failed<' in terminal
    page = client.get(f"/audit/cards/{card.card_id}?lang=en").get_data(as_text=True)
    assert 'class="decline">card shows signs of copying<' in page
    assert 'class="decline">copy check failed<' in page  # the UID-only attempt on the genuine card's page
    denied = client.get(f"/audit/cards/{copy_world['denied'].card_id}?lang=en").get_data(as_text=True)
    assert 'class="decline">card blocked (deny list)<' in denied and "card_denied<" not in denied
    assert 'class="decline">kartu diblokir<' in client.get(
        f"/audit/cards/{copy_world['denied'].card_id}?lang=id").get_data(as_text=True)


def test_copy_attempts_across_terminals_newest_first(app, copy_world, world):
    client = world.client
    _login(client)
    d, card = copy_world["district"], copy_world["card"]
    html = client.get("/audit/declines?lang=en").get_data(as_text=True)
    assert 'id="nav-declines"' in html
    rows = _rows(html)
    reasons = [re.search(r'data-code="([a-z_]+)"', r).group(1) for r in rows]  # type: ignore[union-attr]
    assert reasons == ["card_forked", "clone_check_failed", "card_denied", "clone_check_failed"]  # newest first
    forked, clone, denied, stranger = rows
    assert d.terminals[1].terminal_id in forked and f"/audit/terminals/{d.terminals[0].terminal_id}" in clone
    assert "2026-03-02 10:00" in clone  # 03:00 UTC in WIB
    assert card.tag_uid.hex() in clone and f"/audit/cards/{card.card_id}" in clone  # the card, by its UID
    assert 'class="by-uid"' in clone and 'class="by-uid"' not in forked
    assert f"/audit/households/{HOUSEHOLD}" in clone
    assert ">copy check failed<" in clone and ">card blocked (deny list)<" in denied
    assert UNKNOWN_UID.hex() in stranger and "/audit/cards/" not in stranger
    assert "nothing_left" not in html and copy_world["empty"].card_id not in html
    only = _rows(client.get(f"/audit/declines?uid={card.tag_uid.hex().upper()}").get_data(as_text=True))
    assert len(only) == 2
    assert len(_rows(client.get("/audit/declines?reason=card_denied").get_data(as_text=True))) == 1
    assert client.get("/audit/declines?reason=nothing_left").status_code == 400
    assert client.get("/audit/declines?uid=zz").status_code == 400


def test_search_by_chip_uid_links_the_card_and_its_attempts(app, copy_world, world):
    client = world.client
    _login(client)
    card = copy_world["card"]
    html = client.get(f"/audit/findings?status=all&q={card.tag_uid.hex()}&lang=en").get_data(as_text=True)
    assert "chip UID" in html  # the search field says it takes UIDs
    assert f'class="lookup-card" href="/audit/cards/{card.card_id}"' in html
    assert f'href="/audit/declines?uid={card.tag_uid.hex()}" id="lookup-uid"' in html
    stranger = client.get(f"/audit/findings?status=all&q={UNKNOWN_UID.hex()}").get_data(as_text=True)
    assert f'href="/audit/declines?uid={UNKNOWN_UID.hex()}"' in stranger  # an unknown chip's attempts too
    household = client.get(f"/audit/findings?status=all&q={HOUSEHOLD}").get_data(as_text=True)
    assert f'href="/audit/households/{HOUSEHOLD}" id="lookup-household"' in household


def test_household_and_terminals_pages(app, copy_world, world):
    client = world.client
    _login(client)
    d, card = copy_world["district"], copy_world["card"]
    html = client.get(f"/audit/households/{HOUSEHOLD.upper()}?lang=en").get_data(as_text=True)
    assert f"/audit/cards/{card.card_id}" in html and len(_rows(html)) == 2  # its card, the copy attempts
    assert client.get("/audit/households/0000000000000000").status_code == 404
    terminals = client.get("/audit/terminals").get_data(as_text=True)
    assert all(f"/audit/terminals/{t.terminal_id}" in terminals for t in d.terminals)
    assert 'id="nav-terminals"' in terminals


def test_terminal_journal_shows_the_read_uid_in_labelled_cells(app, copy_world, world):
    client = world.client
    _login(client)
    d, card = copy_world["district"], copy_world["card"]
    html = client.get(f"/audit/terminals/{d.terminals[0].terminal_id}?lang=en").get_data(as_text=True)
    journal = html[html.index('id="journal"'):]
    assert '<table class="stack" id="journal">' in html
    assert card.tag_uid.hex() in journal and 'data-label="UID"' in journal
    assert 'data-label="Card"' in journal
    declined = re.search(r'<tr class="entry">(?:(?!</tr>).)*copy check failed.*?</tr>', journal, re.S)
    assert declined and f"/audit/cards/{card.card_id}" in declined.group(0) and 'class="by-uid"' in declined.group(0)
