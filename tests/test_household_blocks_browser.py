"""A household's blocked cards: ``huma server household show`` and the auditor household page say who, when, why.

The gap: ``household show`` listed the household's cards without their block, so the technician
answering "why is my card refused?" at the office saw nothing; the household page named the reason
and the blocker but not the office's note. Now both show the block (reason, who with their role at
block time, when in WIB, the note); the page in Indonesian and English, measured on a 390 px phone in
headless Chromium.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_audit_layout_browser import OUTSIDE_VALUE_COLUMN, _width
from tests.test_dashboard import audit_db, programme  # noqa: F401 - fixtures
from tests.test_dashboard_browser import _log_in, _viewport

#: A note as an office writes it: long, with no break for a phone's narrow column in its long word.
NOTE = ("dilaporkan hilang oleh kepala rumah tangga di kantor kecamatan Selat, kartu terakhir dipakai "
        "di pasar Kuala Kapuas; nomor-laporan-kepolisian-KPS/2026/03/0042")


def _block(app: Any, card_id: str) -> None:
    from sqlalchemy import select

    from server.card_blocks import BlockReason, block_card
    from server.extensions import db
    from server.models import Person

    with app.app_context():
        session = db.write_session()
        person = session.scalars(select(Person).where(Person.username == "audrey")).one()
        block_card(session, card_id, BlockReason.STOLEN, person=person, note=NOTE)
        session.commit()


def test_household_show_lists_the_block_of_a_blocked_card(app, programme, db_url, capsys) -> None:  # noqa: F811
    from huma.cli import main

    kapuas = programme["by_region"]["62.03"]
    blocked, other = kapuas[-1].card_id, kapuas[-2].card_id  # one household's two cards
    ref = programme["refs"][blocked]
    assert main(["server", "household", "show", ref, "--database", db_url]) == 0
    assert "blocked" not in capsys.readouterr().out
    _block(app, blocked)
    assert main(["server", "household", "show", ref, "--database", db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if "blocked" in line]
    assert len(said) == 1 and said[0].startswith(f"  card {blocked} blocked: stolen, by audrey (auditor), "), lines
    assert " WIB · " in said[0] and said[0].endswith(NOTE)
    assert any(f"card {other}" in line for line in lines)  # the household's other card, not blocked


@pytest.mark.browser
def test_household_page_shows_the_block_on_a_phone_in_both_languages(
        app, programme, live_server, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    kapuas = programme["by_region"]["62.03"]
    blocked = kapuas[-1].card_id
    ref = programme["refs"][blocked]
    _block(app, blocked)
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, 390, 844)
    _log_in(browser, base, "audrey")
    for lang, words in (("id", "diblokir: dicuri, dilaporkan oleh audrey, "),
                        ("en", "blocked: stolen, reported by audrey, ")):
        browser.get(f"{base}/audit/households/{ref}?lang={lang}")
        spans = browser.find_elements(By.CSS_SELECTOR, "tr.household-card span.blocked")
        assert len(spans) == 1, lang
        assert spans[0].text.startswith(words) and "WIB" in spans[0].text, spans[0].text
        note = browser.find_element(By.CSS_SELECTOR, "tr.household-card .block-note")
        assert note.text == NOTE
        scroll, inner = _width(browser, 390)
        assert scroll <= inner, f"household ({lang}): {scroll} px wide at a {inner} px viewport"
        assert browser.execute_script(OUTSIDE_VALUE_COLUMN, "tr.household-card td") == [], lang
