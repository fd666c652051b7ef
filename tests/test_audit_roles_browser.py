"""The auditor menu with its settlements link, the findings search's links, a manager's 403 page and
the copied-cards, terminal, card, household and terminal-list pages in headless Debian Chromium:
nothing wider than the screen from 360 to 1366 px, no JavaScript.
"""

from __future__ import annotations

import pytest

from tests.fixtures.browser import PHONE
from tests.test_audit_browser import _follow
from tests.test_audit_copy_attempts import copy_world  # noqa: F401 - a fixture
from tests.test_dashboard import audit_db, programme  # noqa: F401 - fixtures
from tests.test_dashboard_browser import _log_in, _no_overflow, _shot, _viewport

pytestmark = pytest.mark.browser


def test_search_links_menu_and_403_fit_a_phone_and_a_desktop(
        app, db_url, programme, live_server, browser):  # noqa: F811 - fixtures
    from selenium.webdriver.common.by import By

    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, *PHONE)
    _log_in(browser, base, "audrey")
    card = programme["by_region"]["62.71"][2].card_id
    browser.get(f"{base}/audit/findings?q={card}")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.find_element(By.ID, "nav-settlements").get_attribute("href").endswith("/audit/settlements")
    link = browser.find_element(By.CLASS_NAME, "lookup-card")
    assert link.text == card and link.is_displayed()
    _no_overflow(browser, "findings search")
    _follow(browser, link)
    assert browser.current_url.endswith(f"/audit/cards/{card}")
    _follow(browser, browser.find_element(By.ID, "logout"))
    _log_in(browser, base, "manny")
    browser.get(f"{base}/audit/findings")
    assert browser.find_element(By.ID, "nav-dashboard").is_displayed()
    assert "manajer program" in browser.find_element(By.ID, "error-detail").text
    _no_overflow(browser, "a manager's 403 page")
    _viewport(browser, *PHONE)
    browser.get(f"{base}/audit/")
    assert browser.current_url.endswith("/audit/programme/")


def test_copy_attempts_terminal_card_and_household_pages_fit_a_phone_and_a_desktop(
        app, db_url, copy_world, live_server, browser):  # noqa: F811 - fixtures
    """The copied-cards page from the menu, then the terminal journal, the card's taps, the household and
    the terminal list: labelled blocks on a phone (no header wrapped letter by letter), nothing wider than
    the screen at any width."""
    from selenium.webdriver.common.by import By

    base = f"http://{live_server.host}:{live_server.port}"
    d, card = copy_world["district"], copy_world["card"]
    _viewport(browser, *PHONE)
    _log_in(browser, base, "audrey")
    browser.get(f"{base}/audit/findings?lang=en")
    _follow(browser, browser.find_element(By.ID, "nav-declines"))
    assert browser.current_url.endswith("/audit/declines")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.attempt")
    assert len(rows) == 4 and "copy check failed" in rows[1].text and card.tag_uid.hex() in rows[1].text
    assert browser.execute_script("return document.scripts.length") == 0
    _no_overflow(browser, "copied cards")
    _shot(browser, "declines", db_url.split(":")[0])
    for path, what in ((f"/audit/terminals/{d.terminals[0].terminal_id}", "terminal journal"),
                       (f"/audit/cards/{card.card_id}", "card taps"),
                       (f"/audit/households/{copy_world['household']}", "household"),
                       ("/audit/terminals", "terminal list"), ("/audit/regions", "region totals")):
        browser.get(base + path)
        _viewport(browser, *PHONE)
        heads = browser.find_elements(By.CSS_SELECTOR, "table th")
        assert not [h.text for h in heads if h.is_displayed()], f"{what}: table headers shown on a phone"
        _no_overflow(browser, what)
        _viewport(browser, 704, 900)  # just above the 700 px switch: the widest tables as tables
        scroll, inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner, f"{what}: {scroll} px wide at 704 px"
        if what == "terminal journal":
            _shot(browser, "terminal", db_url.split(":")[0])
