"""Layout of the auditor and dashboard pages measured in headless Debian Chromium, in Indonesian and English.

What a new user met: the findings page's "Jenis" select wider than a 390 px phone; column headers of
the card page broken inside a word at 1280 px ("Wilaya h"); on a phone, a dashboard row's region code
and "· CSV" on lines of their own with no label (or "·" as the label); "perlu kartu pengganti…" broken
inside words on the not-yet-collected list. Each is measured in the browser, not read from the CSS.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.fallback_support import card_and_qr
from tests.reconcile_support import add_auditor, run, upload_all
from tests.test_dashboard import _ms, audit_db, plant_two_region_tap, programme  # noqa: F401 - fixtures
from tests.test_dashboard_browser import _log_in, _viewport
from tests.test_fallback_receipts import desk_at, upload_journal

pytestmark = pytest.mark.browser
LANGS = ("id", "en")

#: Words of the text inside elements matching the selector that the layout broke across lines.
BROKEN_WORDS = """
const out = [];
for (const el of document.querySelectorAll(arguments[0])) {
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    for (const m of node.textContent.matchAll(/\\S+/g)) {
      const r = document.createRange();
      r.setStart(node, m.index);
      r.setEnd(node, m.index + m[0].length);
      const lines = new Set(Array.from(r.getClientRects()).filter(x => x.width > 0).map(x => Math.round(x.top)));
      if (lines.size > 1) out.push(m[0]);
    }
  }
}
return out;
"""

#: Text of stacked cells (a phone's labelled lines) that lies left of the value column, under the label.
OUTSIDE_VALUE_COLUMN = """
const out = [];
for (const td of document.querySelectorAll(arguments[0])) {
  const cs = getComputedStyle(td);
  if (cs.display !== 'grid') continue;
  const edge = td.getBoundingClientRect().left + parseFloat(cs.paddingLeft)
    + parseFloat(cs.gridTemplateColumns.split(' ')[0]);
  const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    if (!node.textContent.trim()) continue;
    const r = document.createRange();
    r.selectNodeContents(node);
    for (const rect of r.getClientRects()) {
      if (rect.width > 0 && rect.left < edge - 1) out.push(td.dataset.label + ': ' + node.textContent.trim());
    }
  }
}
return out;
"""


def _width(browser: Any, viewport: int) -> tuple[int, int]:
    """``(page width, viewport)`` in CSS px: the page's scroll width against the width the phone has.

    Not ``window.innerWidth``: a mobile viewport zooms out to a page wider than the screen, so that
    grows with the overflow it should show.
    """
    browser.execute_script("return document.body.offsetHeight")  # layout at the new width
    return browser.execute_script("return document.documentElement.scrollWidth"), viewport


def test_findings_filters_fit_a_phone(app, programme, world, live_server, browser) -> None:  # noqa: F811
    d = programme["district"]
    card = programme["by_region"]["62.71"][2]
    d.local_terminals("62.71")[0].redeem(card, _ms(4, 2), "food", 150_000)
    d.local_terminals("62.03")[0].redeem(card.clone(counter=1), _ms(4, 2, 20), "food", 150_000)
    upload_all(world, d)
    run(app)  # findings to list, of several kinds
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, 390, 844)
    _log_in(browser, base, "audrey")
    for lang in LANGS:
        browser.get(f"{base}/audit/findings?lang={lang}")
        scroll, inner = _width(browser, 390)
        assert scroll <= inner, f"findings ({lang}): {scroll} px wide at a {inner} px viewport"
        right = browser.execute_script("return document.querySelector('select[name=kind]')"
                                       ".getBoundingClientRect().right")
        assert right <= inner, f"the kind select ({lang}) ends at {right} px"
        assert browser.execute_script(OUTSIDE_VALUE_COLUMN, "tr.finding td") == [], lang  # card and terminal


def test_card_headers_break_between_words_at_1280_px(
        app, audit_db, world, live_server, browser, tmp_path) -> None:  # noqa: F811
    # A card served by QR, then refused twice at the supervisor's desk: long entry cells, as in the field.
    desk, journal, key = desk_at(world, tmp_path, "T-6271-0095")
    _, qr_text = card_and_qr(1, 1)
    card = desk.qr(qr_text, "food", 1, "clerk-ani").card_id
    assert card
    desk.manual(card, "food", 1, "sri", "tebakan")
    desk.manual(card, "food", 1, "sri", "kunci-sri")
    upload_journal(world, live_server, tmp_path, journal, key)
    add_auditor(app)
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, 1280, 900)
    _log_in(browser, base, "audrey")
    for lang in LANGS:
        browser.get(f"{base}/audit/cards/{card}?lang={lang}")
        _width(browser, 1280)
        assert browser.execute_script(BROKEN_WORDS, "th") == [], lang
        scroll, inner = _width(browser, 1280)
        assert scroll <= inner, f"card ({lang}): {scroll} px wide at a {inner} px viewport"


def test_dashboard_and_pending_rows_keep_their_labels_on_a_phone(
        app, programme, live_server, browser) -> None:  # noqa: F811
    from sqlalchemy import update

    from server.extensions import db
    from server.reconcile.models import CardProfile

    replaced = programme["by_region"]["62.71"][2].card_id  # its household has no other card, none collected
    with app.app_context():
        session = db.write_session()
        session.execute(update(CardProfile).where(CardProfile.card_id == replaced)
                        .values(revoked_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC), revoke_reason="lost"))
        session.commit()
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, 390, 844)
    _log_in(browser, base, "manny")
    for lang in LANGS:
        browser.get(f"{base}/audit/programme/?cycle=20261&lang={lang}")
        _width(browser, 390)
        assert browser.find_elements("css selector", "tr.region small.mono")  # a region code is shown
        assert browser.execute_script(OUTSIDE_VALUE_COLUMN, "tr.region td") == [], lang
        browser.get(f"{base}/audit/programme/pending?cycle=20261&lang={lang}")
        _width(browser, 390)
        assert browser.find_elements("css selector", ".needs-reissue")
        assert browser.execute_script(BROKEN_WORDS, ".needs-reissue") == [], lang
        assert browser.execute_script(OUTSIDE_VALUE_COLUMN, "tr.pending td") == [], lang
        scroll, inner = _width(browser, 390)
        assert scroll <= inner, f"pending ({lang}): {scroll} px wide at a {inner} px viewport"


def test_findings_status_breaks_between_words_at_1280_px_and_fits_a_phone(
        app, programme, world, live_server, browser) -> None:  # noqa: F811
    # A fresh user saw "terbuk / a" in the Status column at 1280 px: the summary column took the width.
    plant_two_region_tap(app, world, programme)
    base = f"http://{live_server.host}:{live_server.port}"
    _log_in(browser, base, "audrey")
    for width, height in ((1280, 900), (390, 844)):
        _viewport(browser, width, height)
        for lang in LANGS:
            browser.get(f"{base}/audit/findings?lang={lang}")
            _width(browser, width)
            assert browser.find_elements("css selector", "tr.finding .finding-status")
            assert browser.execute_script(BROKEN_WORDS, "tr.finding .finding-status") == [], (lang, width)
            scroll, inner = _width(browser, width)
            assert scroll <= inner, f"findings ({lang}): {scroll} px wide at a {inner} px viewport"
